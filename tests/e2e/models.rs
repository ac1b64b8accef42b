//! A catalog of models: a request names its model, a model that fails before its first token is
//! replaced by its fallbacks in order, and every reply records the model that wrote it.

use chat_service::{
    api::proto::{
        ListModelsRequest, Model, RegenerateReplyRequest, SendMessageRequest,
        SubmitToolResultsRequest, ToolCallResult, ToolDefinition, regenerate_reply_response,
    },
    llm::{CatalogModelSettings, CatalogSettings, ModelSettings},
};
use tonic::Code;

use super::{
    assert_bad_field,
    limits::get_conversation,
    send_message::Turn,
    support::{
        FakeLlm, FakeToolServer, Script, TestApp, app::llm_settings, mcp::TOOLS,
        streams::read_to_end,
    },
};

/// One model of a test catalog: its name, its upstream, and the names it falls back to.
struct Upstream<'a> {
    name: &'a str,
    fake: &'a FakeLlm,
    context_window: u32,
    fallbacks: &'a [&'a str],
}

impl<'a> Upstream<'a> {
    fn new(
        name: &'a str,
        fake: &'a FakeLlm,
        context_window: u32,
        fallbacks: &'a [&'a str],
    ) -> Self {
        Self {
            name,
            fake,
            context_window,
            fallbacks,
        }
    }
}

/// The catalog of `models`, the first the default; every upstream refuses at once instead of
/// retrying, so that each model is asked exactly once per failure.
fn catalog(models: &[Upstream<'_>]) -> CatalogSettings {
    let index = |name: &str| {
        models
            .iter()
            .position(|model| model.name == name)
            .unwrap_or_else(|| panic!("no model {name}"))
    };
    CatalogSettings {
        models: models
            .iter()
            .map(|model| {
                let mut settings = llm_settings(model.fake.base_url());
                settings.model = format!("upstream-{}", model.name);
                settings.max_retries = 0;
                CatalogModelSettings {
                    name: model.name.to_owned(),
                    settings: ModelSettings::OpenAi(settings),
                    context_window: model.context_window,
                    prices: None,
                    fallbacks: model.fallbacks.iter().map(|name| index(name)).collect(),
                }
            })
            .collect(),
        default: 0,
    }
}

async fn app_with(models: &[Upstream<'_>]) -> TestApp {
    let catalog = catalog(models);
    TestApp::spawn_with(|config| config.model = catalog).await
}

/// Sends `content` to a new conversation of alice's, asking `model` ("" for the default).
async fn send_to(app: &TestApp, model: &str, content: &str, request_id: &str) -> Turn {
    let request = app.request(
        "alice",
        SendMessageRequest {
            content: content.to_owned(),
            model: model.to_owned(),
            request_id: request_id.to_owned(),
            tools: vec![ToolDefinition {
                name: "lookup".to_owned(),
                description: "Looks a word up".to_owned(),
                parameters_json: String::new(),
            }],
            ..Default::default()
        },
    );
    let mut stream = app
        .chat()
        .send_message(request)
        .await
        .unwrap_or_else(|e| panic!("refused: {e:?}"))
        .into_inner();
    let (responses, error) = read_to_end(&mut stream).await;
    let events = responses.into_iter().filter_map(|r| r.event).collect();
    Turn { events, error }
}

/// The stored model of each of the conversation's messages, in order.
async fn stored_models(app: &TestApp, conversation: &str) -> Vec<Option<String>> {
    let mut conn = app.db.connect().await;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        model: Option<String>,
    }
    let statement = format!(
        "SELECT model FROM messages WHERE conversation_id = '{conversation}' ORDER BY sequence"
    );
    diesel_async::RunQueryDsl::load::<Row>(diesel::sql_query(statement), &mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|row| row.model)
        .collect()
}

/// What GetConversation says of the conversation's messages' models.
async fn shown_models(app: &TestApp, conversation: &str) -> Vec<String> {
    get_conversation(app, conversation)
        .await
        .messages
        .into_iter()
        .map(|message| message.model)
        .collect()
}

#[tokio::test]
async fn a_model_that_fails_before_its_first_token_is_replaced_by_its_fallbacks_in_order() {
    let (first, second, third, unused) = (
        FakeLlm::start().await,
        FakeLlm::start().await,
        FakeLlm::start().await,
        FakeLlm::start().await,
    );
    first.script([Script::Status {
        code: 503,
        retry_after: None,
    }]);
    second.script([Script::Status {
        code: 429,
        retry_after: None,
    }]);
    third.script([Script::reply(&["Hello ", "from third"])]);
    // first → second, then unused; second → third. Depth first: third comes before unused.
    let app = app_with(&[
        Upstream::new("first", &first, 8192, &["second", "unused"]),
        Upstream::new("second", &second, 8192, &["third"]),
        Upstream::new("third", &third, 8192, &[]),
        Upstream::new("unused", &unused, 8192, &[]),
    ])
    .await;

    let turn = send_to(&app, "", "Hi", "").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(turn.text(), "Hello from third");
    let completed = turn.completed();
    assert_eq!(completed.model, "third");
    assert_eq!(
        completed.message.map(|message| message.model),
        Some("third".to_owned())
    );
    // Each was asked once, in order, and the one after the answer never.
    assert_eq!(first.received().len(), 1);
    assert_eq!(second.received().len(), 1);
    assert_eq!(third.received().len(), 1);
    assert_eq!(unused.received().len(), 0);
    assert_eq!(
        third.received()[0].body["model"],
        serde_json::json!("upstream-third")
    );
    // The same context went to each.
    assert_eq!(
        first.received()[0].body["messages"],
        third.received()[0].body["messages"]
    );

    let conversation = turn.conversation_id();
    assert_eq!(
        stored_models(&app, &conversation).await,
        vec![None, Some("third".to_owned())]
    );
    assert_eq!(
        shown_models(&app, &conversation).await,
        vec![String::new(), "third".to_owned()]
    );
    let metrics = app.scrape_metrics().await;
    for (from, to) in [("first", "second"), ("second", "third")] {
        let line = format!("chat_model_fallbacks_total{{from=\"{from}\",to=\"{to}\"}} 1\n");
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
}

#[tokio::test]
async fn a_model_that_streamed_text_is_never_replaced() {
    let (first, second) = (FakeLlm::start().await, FakeLlm::start().await);
    first.script([Script::Drop {
        deltas: vec!["Half a ".into()],
    }]);
    second.script([Script::reply(&["never"])]);
    let app = app_with(&[
        Upstream::new("first", &first, 8192, &["second"]),
        Upstream::new("second", &second, 8192, &[]),
    ])
    .await;

    let turn = send_to(&app, "", "Hi", "").await;
    assert_eq!(turn.text(), "Half a ");
    let status = turn.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(second.received().len(), 0);
    // A failed turn stores no reply, whichever model wrote it: its retry generates it again.
    assert_eq!(
        stored_models(&app, &turn.conversation_id()).await,
        vec![None]
    );
}

#[tokio::test]
async fn a_request_names_its_model_and_an_unknown_name_is_refused_with_nothing_stored() {
    let (fast, strong) = (FakeLlm::start().await, FakeLlm::start().await);
    strong.script([Script::reply(&["Strong answer"])]);
    let app = app_with(&[
        Upstream::new("fast", &fast, 32768, &[]),
        Upstream::new("strong", &strong, 128000, &[]),
    ])
    .await;

    let listed = app
        .chat()
        .list_models(app.request("alice", ListModelsRequest {}))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .models;
    assert_eq!(
        listed,
        vec![
            Model {
                name: "fast".into(),
                context_window_tokens: 32768,
                is_default: true
            },
            Model {
                name: "strong".into(),
                context_window_tokens: 128000,
                is_default: false
            },
        ]
    );

    let turn = send_to(&app, "strong", "Hi", "").await;
    assert_eq!(turn.completed().model, "strong");
    assert_eq!(fast.received().len(), 0);
    assert_eq!(
        stored_models(&app, &turn.conversation_id()).await,
        vec![None, Some("strong".to_owned())]
    );

    let before = app.db.snapshot().await;
    let request = app.request(
        "alice",
        SendMessageRequest {
            content: "Hi".into(),
            model: "gpt-9".into(),
            ..Default::default()
        },
    );
    let status = match app.chat().send_message(request).await {
        Ok(_) => panic!("an unknown model was accepted"),
        Err(status) => status,
    };
    assert_bad_field(&status, "model");
    assert!(status.message().contains("gpt-9"), "{status:?}");
    assert_eq!(app.db.snapshot().await, before);
}

#[tokio::test]
async fn a_retry_must_name_the_model_its_request_named() {
    let (fast, strong) = (FakeLlm::start().await, FakeLlm::start().await);
    strong.script([Script::reply(&["Strong answer"])]);
    let app = app_with(&[
        Upstream::new("fast", &fast, 1, &[]),
        Upstream::new("strong", &strong, 1, &[]),
    ])
    .await;
    let turn = send_to(&app, "strong", "Hi", "req-1").await;
    assert_eq!(turn.completed().model, "strong");

    // The same id asking another model is another request.
    let request = app.request(
        "alice",
        SendMessageRequest {
            content: "Hi".into(),
            request_id: "req-1".into(),
            model: "fast".into(),
            tools: vec![ToolDefinition {
                name: "lookup".to_owned(),
                description: "Looks a word up".to_owned(),
                parameters_json: String::new(),
            }],
            ..Default::default()
        },
    );
    let status = match app.chat().send_message(request).await {
        Ok(response) => {
            let (_, error) = read_to_end(&mut response.into_inner()).await;
            error.unwrap_or_else(|| panic!("the retry with another model was taken"))
        }
        Err(status) => status,
    };
    assert_bad_field(&status, "request_id");
    // The same id with the same model replays the turn.
    let again = send_to(&app, "strong", "Hi", "req-1").await;
    assert_eq!(again.completed().model, "strong");
    assert_eq!(strong.received().len(), 1);
    assert_eq!(fast.received().len(), 0);
}

#[tokio::test]
async fn a_reply_that_awaits_the_clients_tools_goes_on_with_the_model_that_answered() {
    let (first, second) = (FakeLlm::start().await, FakeLlm::start().await);
    first.script([Script::Status {
        code: 502,
        retry_after: None,
    }]);
    second.script([
        Script::tool_calls(&[("call-1", "lookup", r#"{"word":"fallback"}"#)]),
        Script::reply(&["Looked up."]),
    ]);
    let app = app_with(&[
        Upstream::new("first", &first, 1, &["second"]),
        Upstream::new("second", &second, 1, &[]),
    ])
    .await;
    let turn = send_to(&app, "", "Look it up", "").await;
    let completed = turn.completed();
    assert_eq!(completed.finish_reason, "tool_calls");
    assert_eq!(completed.model, "second");
    let awaiting = completed.message.unwrap_or_default();

    let request = app.request(
        "alice",
        SubmitToolResultsRequest {
            conversation_id: turn.conversation_id(),
            message_id: awaiting.id.clone(),
            results: vec![ToolCallResult {
                tool_call_id: "call-1".into(),
                result_json: r#"{"meaning":"a second choice"}"#.into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let mut stream = app
        .chat()
        .submit_tool_results(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let (responses, error) = read_to_end(&mut stream).await;
    assert!(error.is_none(), "{error:?}");
    let completed = responses
        .into_iter()
        .filter_map(|response| response.event)
        .find_map(|event| match event {
            chat_service::api::proto::submit_tool_results_response::Event::Completed(done) => {
                Some(done)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no completed event"));
    assert_eq!(completed.model, "second");
    // The first model was asked once, for the first round only.
    assert_eq!(first.received().len(), 1);
    assert_eq!(second.received().len(), 2);
    assert_eq!(
        stored_models(&app, &turn.conversation_id()).await,
        vec![None, Some("second".to_owned()), Some("second".to_owned())]
    );
}

#[tokio::test]
async fn a_regenerated_reply_may_name_another_model() {
    let (fast, strong) = (FakeLlm::start().await, FakeLlm::start().await);
    fast.script([Script::reply(&["Quick answer"])]);
    strong.script([Script::reply(&["Careful answer"])]);
    let app = app_with(&[
        Upstream::new("fast", &fast, 1, &[]),
        Upstream::new("strong", &strong, 1, &[]),
    ])
    .await;
    let turn = send_to(&app, "", "Why is the sky blue?", "").await;
    assert_eq!(turn.completed().model, "fast");
    let asked = match turn.events.first() {
        Some(chat_service::api::proto::send_message_response::Event::Accepted(accepted)) => {
            accepted.user_message.clone().unwrap_or_default().id
        }
        other => panic!("the first event is not `accepted`: {other:?}"),
    };

    let request = app.request(
        "alice",
        RegenerateReplyRequest {
            message_id: asked.clone(),
            model: "strong".into(),
            ..Default::default()
        },
    );
    let mut stream = app
        .chat()
        .regenerate_reply(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let (responses, error) = read_to_end(&mut stream).await;
    assert!(error.is_none(), "{error:?}");
    let completed = responses
        .into_iter()
        .filter_map(|response| response.event)
        .find_map(|event| match event {
            regenerate_reply_response::Event::Completed(done) => Some(done),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no completed event"));
    assert_eq!(completed.model, "strong");
    assert_eq!(strong.received().len(), 1);
    // Both replies keep the model that wrote each.
    assert_eq!(
        stored_models(&app, &turn.conversation_id()).await,
        vec![None, Some("fast".to_owned()), Some("strong".to_owned())]
    );

    // An unknown model is refused before anything is written.
    let before = app.db.snapshot().await;
    let request = app.request(
        "alice",
        RegenerateReplyRequest {
            message_id: asked,
            model: "nope".into(),
            ..Default::default()
        },
    );
    let status = match app.chat().regenerate_reply(request).await {
        Ok(_) => panic!("an unknown model was accepted"),
        Err(status) => status,
    };
    assert_bad_field(&status, "model");
    assert_eq!(app.db.snapshot().await, before);
}

#[tokio::test]
async fn the_rounds_after_a_fallback_ask_the_model_that_answered() {
    let tools = FakeToolServer::start().await;
    let (first, second) = (FakeLlm::start().await, FakeLlm::start().await);
    first.script([Script::Status {
        code: 500,
        retry_after: None,
    }]);
    second.script([
        Script::tool_calls(&[("call_1", "add_task", r#"{"title":"milk"}"#)]),
        Script::reply(&["Added it."]),
    ]);
    let catalog = catalog(&[
        Upstream::new("first", &first, 1, &["second"]),
        Upstream::new("second", &second, 1, &[]),
    ]);
    // The first would answer a later round, should one go to it.
    first.script([Script::reply(&["from the first"])]);
    let app = TestApp::spawn_with(|config| {
        config.model = catalog;
        config.tools.servers = vec![tools.settings("tasks", false)];
    })
    .await;
    app.wait_for_tools(TOOLS).await;

    let turn = send_to(&app, "", "remember the milk", "").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(turn.text(), "Added it.");
    assert_eq!(turn.completed().model, "second");
    assert_eq!(first.received().len(), 1);
    assert_eq!(second.received().len(), 2);
    assert_eq!(tools.calls().len(), 1);
    // The round's reply with its call, and the last one: both the second's.
    assert_eq!(
        stored_models(&app, &turn.conversation_id()).await,
        vec![None, Some("second".to_owned()), Some("second".to_owned())]
    );
}
