//! Usage: every model call's tokens are stored with the message it wrote and summed per user,
//! day and model in the same statement; GetUsage and `chat-service usage` report them.

use chat_service::{
    api::proto::{
        DeleteConversationRequest, GetUsageRequest, GetUsageResponse, PeriodUsage, Spend, Usage,
    },
    llm::{CatalogModelSettings, CatalogSettings, ModelSettings, Prices},
};
use serde_json::{Value, json};

use super::{
    eventually,
    limits::get_conversation,
    send_message::{read_until_text, send_ok},
    support::{FakeLlm, FakeToolServer, Script, TestApp, app::llm_settings, mcp::TOOLS},
};

/// A catalog of one model, `priced`, at 2 per million input tokens, 0.5 per million cached ones
/// and 8 per million output tokens: a token costs 2, 0.5 and 8 millionths.
pub(super) fn priced(fake: &FakeLlm) -> CatalogSettings {
    CatalogSettings {
        models: vec![CatalogModelSettings {
            name: "priced".to_owned(),
            settings: ModelSettings::OpenAi(llm_settings(fake.base_url())),
            context_window: 128_000,
            prices: Some(Prices {
                input: 2.0,
                cached_input: 0.5,
                output: 8.0,
            }),
            fallbacks: Vec::new(),
        }],
        default: 0,
    }
}

/// What OpenAI reports for a call that read 30 tokens, 20 of them from its cache, and wrote 9,
/// 5 of them reasoning; at [`priced`]'s prices it costs 10 × 2 + 20 × 0.5 + 9 × 8 = 102.
fn reported() -> Value {
    json!({
        "prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39,
        "prompt_tokens_details": {"cached_tokens": 20, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 5, "audio_tokens": 0}
    })
}

/// Each message's stored usage, in the conversation's order.
async fn stored_usage(app: &TestApp, conversation: &str) -> Vec<Value> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        usage: String,
    }
    let statement = format!(
        "SELECT COALESCE(usage::text, 'null') AS usage FROM messages
         WHERE conversation_id = '{conversation}' ORDER BY sequence"
    );
    let mut conn = app.db.connect().await;
    diesel_async::RunQueryDsl::load::<Row>(diesel::sql_query(statement), &mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|row| serde_json::from_str(&row.usage).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// The rows of the per-day sums, as `[model, calls, estimated, input, cached, output,
/// reasoning, cost]`, for every user.
async fn days(app: &TestApp) -> Vec<Value> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        row: String,
    }
    let statement = "SELECT json_build_array(s.subject, d.model, d.calls, d.estimated_calls,
                                d.input_tokens, d.cached_input_tokens, d.output_tokens,
                                d.reasoning_tokens, d.cost_micros)::text AS row
                     FROM usage_days d JOIN users s ON s.id = d.user_id
                     WHERE d.day = (now() AT TIME ZONE 'UTC')::date
                     ORDER BY s.subject, d.model";
    let mut conn = app.db.connect().await;
    diesel_async::RunQueryDsl::load::<Row>(diesel::sql_query(statement), &mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|row| serde_json::from_str(&row.row).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// An app on [`priced`], where alice has had one turn, of a call [`reported`].
async fn one_priced_turn() -> (FakeLlm, TestApp, super::send_message::Turn) {
    let fake = FakeLlm::start().await;
    fake.script([Script::Reported {
        deltas: vec!["Hi".into()],
        usage: reported(),
    }]);
    let catalog = priced(&fake);
    let app = TestApp::spawn_with(|config| config.model = catalog).await;
    let turn = send_ok(&app, "alice", "", "Hello").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    (fake, app, turn)
}

async fn get_usage(app: &TestApp, user: &str) -> GetUsageResponse {
    app.chat()
        .get_usage(app.request(user, GetUsageRequest {}))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
}

fn current(usage: &GetUsageResponse) -> PeriodUsage {
    usage.current.clone().unwrap_or_default()
}

/// The estimate of a call the provider did not report: a token per four bytes of the text sent
/// (each message's, and the calls it made) and of the text written, rounded up.
fn estimate(request: &Value, written: usize) -> (i64, i64) {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let sent: usize = messages
        .iter()
        .map(|message| {
            let calls: usize = message["tool_calls"]
                .as_array()
                .map(|calls| {
                    calls
                        .iter()
                        .map(|call| {
                            let text =
                                |field: &str| call["function"][field].as_str().map_or(0, str::len);
                            text("name") + text("arguments")
                        })
                        .sum()
                })
                .unwrap_or(0);
            message["content"].as_str().map_or(0, str::len) + calls
        })
        .sum();
    let tokens = |bytes: usize| i64::try_from(bytes.div_ceil(4)).unwrap_or(i64::MAX);
    (tokens(sent), tokens(written))
}

#[tokio::test]
async fn each_call_of_a_reply_is_stored_with_its_message_and_added_to_the_users_day() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    let arguments = r#"{"title":"milk"}"#;
    fake.script([
        // The first call reports nothing: it is estimated.
        Script::tool_calls(&[("call_1", "add_task", arguments)]),
        Script::Reported {
            deltas: vec!["Added ".into(), "it.".into()],
            usage: reported(),
        },
    ]);
    let catalog = priced(&fake);
    let app = TestApp::spawn_with(|config| {
        config.model = catalog;
        config.tools.servers = vec![tools.settings("tasks", false)];
    })
    .await;
    app.wait_for_tools(TOOLS).await;

    let turn = send_ok(&app, "alice", "", "Add milk to my list").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    let completed = turn.completed();
    let requests = fake.received();
    assert_eq!(requests.len(), 2);
    let (input, output) = estimate(&requests[0].body, "add_task".len() + arguments.len());
    let estimated_cost = input * 2 + output * 8;
    // completed counts the reply's two calls together.
    assert_eq!(
        completed.usage,
        Some(Usage {
            input_tokens: i32::try_from(input + 30).unwrap_or(i32::MAX),
            output_tokens: i32::try_from(output + 9).unwrap_or(i32::MAX),
            cached_input_tokens: 20,
            reasoning_tokens: 5,
            estimated: true,
            cost_micros: None,
        })
    );

    let conversation = turn.conversation_id();
    assert_eq!(
        stored_usage(&app, &conversation).await,
        [
            Value::Null,
            json!({"input_tokens": input, "cached_input_tokens": 0, "output_tokens": output,
                   "reasoning_tokens": 0, "estimated": true, "cost_micros": estimated_cost}),
            json!({"input_tokens": 30, "cached_input_tokens": 20, "output_tokens": 9,
                   "reasoning_tokens": 5, "estimated": false, "cost_micros": 102}),
        ]
    );
    // The reads give each reply its own call's usage.
    let shown: Vec<Option<Usage>> = get_conversation(&app, &conversation)
        .await
        .messages
        .into_iter()
        .map(|message| message.usage)
        .collect();
    assert_eq!(
        shown,
        [
            None,
            Some(Usage {
                input_tokens: i32::try_from(input).unwrap_or(i32::MAX),
                output_tokens: i32::try_from(output).unwrap_or(i32::MAX),
                cached_input_tokens: 0,
                reasoning_tokens: 0,
                estimated: true,
                cost_micros: Some(estimated_cost),
            }),
            Some(Usage {
                input_tokens: 30,
                output_tokens: 9,
                cached_input_tokens: 20,
                reasoning_tokens: 5,
                estimated: false,
                cost_micros: Some(102),
            }),
        ]
    );
    assert_eq!(
        days(&app).await,
        [json!([
            "alice",
            "priced",
            2,
            1,
            input + 30,
            20,
            output + 9,
            5,
            estimated_cost + 102
        ])]
    );

    let metrics = app.scrape_metrics().await;
    for (kind, count) in [
        ("input", input + 30),
        ("cached_input", 20),
        ("output", output + 9),
        ("reasoning", 5),
    ] {
        let line = format!("chat_tokens_total{{model=\"priced\",kind=\"{kind}\"}} {count}\n");
        assert!(metrics.contains(&line), "no {line} in {metrics}");
    }
}

#[tokio::test]
async fn get_usage_gives_the_callers_own_periods_and_outlives_deleted_conversations() {
    let (_fake, app, turn) = one_priced_turn().await;
    // bob has been seen, and spent nothing.
    app.create_conversation("bob", "Bob's").await;

    let deleted = app
        .conversations()
        .delete_conversation(app.request(
            "alice",
            DeleteConversationRequest {
                conversation_id: turn.conversation_id(),
            },
        ))
        .await;
    assert!(deleted.is_ok(), "{deleted:?}");

    let usage = get_usage(&app, "alice").await;
    let now = current(&usage);
    let spend = Spend {
        calls: 1,
        estimated_calls: 0,
        input_tokens: 30,
        cached_input_tokens: 20,
        output_tokens: 9,
        reasoning_tokens: 5,
        cost_micros: 102,
    };
    assert_eq!(now.total, Some(spend));
    assert_eq!(now.models.len(), 1);
    assert_eq!(now.models[0].model, "priced");
    assert_eq!(now.models[0].spend, Some(spend));
    // Periods are days by default, from midnight UTC, the previous one just before.
    let start = now.start_time.unwrap_or_default().seconds;
    let end = now.end_time.unwrap_or_default().seconds;
    assert_eq!((start % 86_400, end - start), (0, 86_400));
    let before = usage.previous.unwrap_or_default();
    assert_eq!(before.end_time.unwrap_or_default().seconds, start);
    assert_eq!(before.total, Some(Spend::default()));
    assert!(before.models.is_empty());

    let bobs = current(&get_usage(&app, "bob").await);
    assert_eq!(bobs.total, Some(Spend::default()));
    assert!(bobs.models.is_empty());
}

#[tokio::test]
async fn a_reply_cut_off_by_its_client_is_estimated_and_counted() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Stall {
        deltas: vec!["Part ".into(), "of it".into()],
    }]);
    let catalog = priced(&fake);
    let app = TestApp::spawn_with(|config| config.model = catalog).await;
    let mut stream = app.open_stream("alice", "", "Tell me a long story").await;
    let text = "Part of it";
    let conversation = read_until_text(&mut stream, text).await;
    drop(stream);
    let request = fake.received()[0].body.clone();
    let (input, output) = estimate(&request, text.len());
    let stored = eventually(|| {
        let (app, conversation) = (&app, conversation.clone());
        async move {
            let stored = stored_usage(app, &conversation).await;
            (stored.len() == 2).then_some(stored)
        }
    })
    .await;
    assert_eq!(
        stored[1],
        json!({"input_tokens": input, "cached_input_tokens": 0, "output_tokens": output,
               "reasoning_tokens": 0, "estimated": true, "cost_micros": input * 2 + output * 8})
    );
    assert_eq!(
        days(&app).await,
        [json!([
            "alice",
            "priced",
            1,
            1,
            input,
            0,
            output,
            0,
            input * 2 + output * 8
        ])]
    );
}

#[tokio::test]
async fn operators_read_any_users_usage_from_the_command_line() {
    let (_fake, app, _turn) = one_priced_turn().await;

    let run = |user: &'static str| {
        let app = &app;
        async move {
            let args = ["usage", "--user", user, "--usage-period", "month"];
            let (ok, stdout, stderr) = super::budgets::command(app, &args).await;
            assert!(ok, "{stderr}");
            serde_json::from_str::<Value>(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
        }
    };
    let alice = run("alice").await;
    assert_eq!(alice["user"], "alice");
    assert_eq!(alice["period"], "month");
    let spend = json!({"calls": 1, "estimated_calls": 0, "input_tokens": 30,
                       "cached_input_tokens": 20, "output_tokens": 9, "reasoning_tokens": 5,
                       "cost_micros": 102});
    assert_eq!(alice["current"]["total"], spend);
    assert_eq!(
        alice["current"]["models"],
        json!([{"model": "priced", "spend": spend}])
    );
    let start = alice["current"]["start_time"].as_str().unwrap_or_default();
    assert!(start.ends_with("-01T00:00:00Z"), "{start}");
    assert_eq!(alice["previous"]["end_time"].as_str(), Some(start));
    assert_eq!(alice["previous"]["models"], json!([]));

    // A user never seen has spent nothing.
    let nobody = run("nobody").await;
    assert_eq!(nobody["current"]["total"]["calls"], 0);
    assert_eq!(nobody["current"]["models"], json!([]));
}
