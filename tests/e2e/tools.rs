//! Tools from MCP servers: a real rmcp server over HTTP, a fake model scripted to call its tools,
//! and the service between them, checked by what the client is sent, what the model is asked
//! and what is stored.

use std::time::Duration;

use chat_service::{
    Config,
    api::proto::{GetConversationRequest, Message, ToolCallStatus, send_message_response::Event},
};
use serde_json::{Value, json};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{
    send_message::{Turn, send_ok},
    support::{
        FakeLlm, FakeToolServer, Script, TestApp,
        mcp::{TOOLS, server_settings},
        wait::eventually,
    },
};

/// The service with `fake` as its model and `servers` for tools, once it offers `tools` of them.
pub(super) async fn app_with_tools(
    fake: &FakeLlm,
    servers: Vec<chat_service::tools::McpServerSettings>,
    tools: usize,
    customize: impl FnOnce(&mut Config),
) -> TestApp {
    let app = TestApp::with_fake_llm(fake, |config| {
        config.tools.servers = servers;
        customize(config);
    })
    .await;
    app.wait_for_tools(tools).await;
    app
}

/// An address where no server listens.
async fn free_address() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
}

/// A URL where no server listens.
async fn nowhere() -> String {
    format!("http://{}/mcp", free_address().await)
}

fn tool_calls(turn: &Turn) -> Vec<chat_service::api::proto::ToolCall> {
    turn.events
        .iter()
        .filter_map(|e| match e {
            Event::ToolCall(call) => Some(call.clone()),
            _ => None,
        })
        .collect()
}

fn tool_results(turn: &Turn) -> Vec<chat_service::api::proto::ToolResult> {
    turn.events
        .iter()
        .filter_map(|e| match e {
            Event::ToolResult(result) => Some(result.clone()),
            _ => None,
        })
        .collect()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON: {text}: {e}"))
}

/// The kind of error a failed call's result names.
fn error_kind(result_json: &str) -> String {
    json_of(result_json)["error"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("no error kind in {result_json}"))
        .to_owned()
}

pub(super) async fn stored_messages(
    app: &TestApp,
    user: &str,
    conversation_id: &str,
) -> Vec<Message> {
    app.conversations()
        .get_conversation(app.request(
            user,
            GetConversationRequest {
                conversation_id: conversation_id.to_owned(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .messages
}

#[tokio::test]
async fn a_tool_runs_the_model_answers_with_its_result_and_later_turns_replay_both() {
    super::support::logs::capture();
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    let marker = "milk-7f3a9c";
    fake.script([
        Script::tool_calls(&[("call_1", "add_task", &format!(r#"{{"title":"{marker}"}}"#))]),
        Script::reply(&["Added ", "it."]),
    ]);
    let app = app_with_tools(&fake, vec![tools.settings("tasks", false)], TOOLS, |_| {}).await;

    let turn = send_ok(&app, "alice", "", "remember the milk").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(
        turn.shape(),
        ["accepted", "tool_call", "tool_result", "delta", "completed"]
    );
    let [call] = tool_calls(&turn)
        .try_into()
        .unwrap_or_else(|c| panic!("{c:?}"));
    assert_eq!(
        (call.id.as_str(), call.name.as_str()),
        ("call_1", "add_task")
    );
    assert_eq!(json_of(&call.arguments_json), json!({"title": marker}));
    assert_eq!(call.status(), ToolCallStatus::Requested);
    let [result] = tool_results(&turn)
        .try_into()
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(result.tool_call_id, "call_1");
    assert_eq!(result.status(), ToolCallStatus::Succeeded);
    let task = json!({"id": 1, "title": marker, "done": false});
    assert_eq!(json_of(&result.result_json), task);
    assert_eq!(turn.text(), "Added it.");

    // The tool server got the call as the model wrote it, and no caller's token.
    let seen = tools.calls();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].tool, "add_task");
    assert_eq!(seen[0].arguments, json!({"title": marker}));
    assert_eq!(seen[0].authorization, None);

    // The model was offered the tools, then shown the call and its result.
    let received = fake.received();
    assert_eq!(received.len(), 2);
    let offered: Vec<&str> = received[0].body["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools offered: {}", received[0].body))
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        offered,
        [
            "add_task",
            "list_tasks",
            "echo",
            "fail",
            "hang",
            "big",
            "together"
        ]
    );
    assert_eq!(
        received[0].body["tools"][0]["function"]["parameters"]["required"],
        json!(["title"])
    );
    let replayed = |body: &Value| -> Vec<Value> {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        messages
            .into_iter()
            .filter(|m| m["role"] == "tool" || m.get("tool_calls").is_some())
            .collect()
    };
    let expected_call = json!({
        "id": "call_1",
        "type": "function",
        "function": {"name": "add_task", "arguments": format!(r#"{{"title":"{marker}"}}"#)}
    });
    let second = replayed(&received[1].body);
    assert_eq!(second.len(), 2, "{second:?}");
    assert_eq!(second[0]["role"], "assistant");
    assert_eq!(second[0]["tool_calls"], json!([expected_call]));
    assert_eq!(second[1]["tool_call_id"], "call_1");
    assert_eq!(
        json_of(second[1]["content"].as_str().unwrap_or_default()),
        task
    );

    // Stored in order: the question, the call with its result, the answer.
    let id = turn.conversation_id();
    let stored = stored_messages(&app, "alice", &id).await;
    let contents: Vec<&str> = stored.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["remember the milk", "", "Added it."]);
    let stored_call = &stored[1].tool_calls[0];
    assert_eq!(stored_call.status(), ToolCallStatus::Succeeded);
    assert_eq!(json_of(&stored_call.result_json), task);
    assert!(stored[2].tool_calls.is_empty());

    // A later turn replays the call and its result before what came after.
    let later = send_ok(&app, "alice", &id, "thanks").await;
    assert!(later.error.is_none(), "{:?}", later.error);
    let received = fake.received();
    let third = &received[2].body["messages"];
    let roles: Vec<&str> = third
        .as_array()
        .unwrap_or_else(|| panic!("{third}"))
        .iter()
        .map(|m| m["role"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant", "user"]);
    assert_eq!(third[1]["tool_calls"], json!([expected_call]));
    assert_eq!(third[2]["tool_call_id"], "call_1");

    let metrics = app.scrape_metrics().await;
    assert!(
        metrics.contains(r#"chat_tool_calls_total{tool="add_task",outcome="succeeded"} 1"#),
        "{metrics}"
    );
    // Arguments and results are the user's business, never the logs'.
    assert!(!super::support::logs::any_line_contains(marker));
}

#[tokio::test]
async fn the_calls_of_one_round_run_at_the_same_time() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    // Each `together` call answers only once the other one is running too.
    fake.script([
        Script::tool_calls(&[("call_a", "together", "{}"), ("call_b", "together", "{}")]),
        Script::reply(&["Both done."]),
    ]);
    let app = app_with_tools(&fake, vec![tools.settings("tasks", false)], TOOLS, |_| {}).await;

    let turn = send_ok(&app, "alice", "", "do both").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(
        turn.shape(),
        [
            "accepted",
            "tool_call",
            "tool_call",
            "tool_result",
            "tool_result",
            "delta",
            "completed"
        ]
    );
    let mut answered: Vec<(String, ToolCallStatus)> = tool_results(&turn)
        .into_iter()
        .map(|r| (r.tool_call_id.clone(), r.status()))
        .collect();
    answered.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        answered,
        [
            ("call_a".to_owned(), ToolCallStatus::Succeeded),
            ("call_b".to_owned(), ToolCallStatus::Succeeded)
        ]
    );
    let stored = stored_messages(&app, "alice", &turn.conversation_id()).await;
    let ids: Vec<&str> = stored[1].tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["call_a", "call_b"], "stored in the model's order");
}

#[tokio::test]
async fn failing_slow_unknown_and_oversized_tools_become_failed_results_the_model_answers() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    fake.script([
        Script::tool_calls(&[
            ("call_fail", "fail", "{}"),
            ("call_slow", "hang", "{}"),
            ("call_big", "big", "{}"),
            ("call_gone", "forecast", "{}"),
            ("call_bad", "echo", "[1, 2]"),
        ]),
        Script::reply(&["Nothing worked."]),
    ]);
    // A second server that is down: the service starts anyway and offers the first one's tools.
    let servers = vec![
        tools.settings("tasks", false),
        server_settings("weather", nowhere().await, false),
    ];
    let app = app_with_tools(&fake, servers, TOOLS, |config| {
        config.tools.call_timeout = Duration::from_millis(300);
        config.tools.max_result_bytes = 1000;
    })
    .await;
    let health = HealthClient::new(app.channel())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let turn = send_ok(&app, "alice", "", "try everything").await;
    assert!(
        turn.error.is_none(),
        "a tool failure never fails the turn: {:?}",
        turn.error
    );
    assert_eq!(turn.text(), "Nothing worked.");
    let mut failures: Vec<(String, String)> = tool_results(&turn)
        .into_iter()
        .map(|r| {
            assert_eq!(r.status(), ToolCallStatus::Failed, "{r:?}");
            (r.tool_call_id.clone(), error_kind(&r.result_json))
        })
        .collect();
    failures.sort();
    assert_eq!(
        failures,
        [
            ("call_bad".to_owned(), "invalid_arguments".to_owned()),
            ("call_big".to_owned(), "too_large".to_owned()),
            ("call_fail".to_owned(), "tool_error".to_owned()),
            ("call_gone".to_owned(), "unknown_tool".to_owned()),
            ("call_slow".to_owned(), "timeout".to_owned()),
        ]
    );
    // The timed-out call was cancelled on the tool server.
    tools.wait_for_cancelled_calls(1).await;
    // A name the model made up is counted as `unknown`, never as a label of its own.
    let metrics = app.scrape_metrics().await;
    assert!(
        metrics.contains(r#"chat_tool_calls_total{tool="unknown",outcome="unknown_tool"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("forecast"), "{metrics}");

    // The model saw every failure, in the order it made the calls, with the tool's own words.
    let received = fake.received();
    let messages = received[1].body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let results: Vec<(String, String)> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            let content = m["content"].as_str().unwrap_or_default();
            (
                m["tool_call_id"].as_str().unwrap_or_default().to_owned(),
                error_kind(content),
            )
        })
        .collect();
    let order: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        order,
        [
            "call_fail",
            "call_slow",
            "call_big",
            "call_gone",
            "call_bad"
        ]
    );
    let fail = messages
        .iter()
        .find(|m| m["tool_call_id"] == "call_fail")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    assert!(fail.contains("the task store is read-only"), "{fail}");

    let stored = stored_messages(&app, "alice", &turn.conversation_id()).await;
    assert!(
        stored[1]
            .tool_calls
            .iter()
            .all(|c| c.status() == ToolCallStatus::Failed)
    );
}

#[tokio::test]
async fn after_the_last_round_the_model_must_answer_and_further_calls_are_not_run() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    // A model that never stops calling tools.
    fake.script([
        Script::tool_calls(&[("call_1", "echo", r#"{"text":"one"}"#)]),
        Script::tool_calls(&[("call_2", "echo", r#"{"text":"two"}"#)]),
        Script::tool_calls(&[("call_3", "echo", r#"{"text":"three"}"#)]),
    ]);
    let app = app_with_tools(
        &fake,
        vec![tools.settings("tasks", false)],
        TOOLS,
        |config| {
            config.turns.max_tool_rounds = 2;
        },
    )
    .await;

    let turn = send_ok(&app, "alice", "", "loop").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(
        turn.shape(),
        [
            "accepted",
            "tool_call",
            "tool_result",
            "tool_call",
            "tool_result",
            "tool_call",
            "completed"
        ]
    );
    assert_eq!(tools.calls().len(), 2, "only two rounds ran");
    let received = fake.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[0].body.get("tool_choice"), None);
    assert_eq!(received[1].body.get("tool_choice"), None);
    assert_eq!(received[2].body["tool_choice"], "none");
    let Some(Event::Completed(completed)) = turn.events.last() else {
        panic!("no completed event");
    };
    let message = completed.message.clone().unwrap_or_default();
    let [unrun] = message
        .tool_calls
        .try_into()
        .unwrap_or_else(|c| panic!("{c:?}"));
    assert_eq!(unrun.id, "call_3");
    assert_eq!(unrun.status(), ToolCallStatus::Failed);
    assert_eq!(error_kind(&unrun.result_json), "round_limit");
    let stored = stored_messages(&app, "alice", &turn.conversation_id()).await;
    assert_eq!(stored.len(), 4, "the question and three rounds");
}

#[tokio::test]
async fn cancelling_during_a_tool_call_cancels_it_on_the_server_and_stores_it_failed() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    fake.script([Script::tool_calls(&[("call_1", "hang", "{}")])]);
    let app = app_with_tools(&fake, vec![tools.settings("tasks", false)], TOOLS, |_| {}).await;

    let request = app.request(
        "alice",
        chat_service::api::proto::SendMessageRequest {
            conversation_id: String::new(),
            content: "wait for it".to_owned(),
            ..Default::default()
        },
    );
    let mut stream = app
        .chat()
        .send_message(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    loop {
        let event = stream
            .message()
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .and_then(|r| r.event)
            .unwrap_or_else(|| panic!("the stream ended before the tool call"));
        if matches!(event, Event::ToolCall(_)) {
            break;
        }
    }
    tools.wait_for_hung_calls(1).await;
    drop(stream);
    tools.wait_for_cancelled_calls(1).await;

    let failed = "SELECT count(*) AS n FROM tool_calls
                  WHERE status = 'failed' AND result->'error'->>'kind' = 'cancelled'";
    eventually("the cancelled call is stored as failed", || async {
        app.db.count(failed).await == 1
    })
    .await;
    assert_eq!(
        app.db.count("SELECT count(*) AS n FROM tool_calls").await,
        1
    );
    assert_eq!(
        app.db.count("SELECT count(*) AS n FROM messages").await,
        2,
        "the question and the call; no answer was made"
    );
    assert_eq!(fake.received().len(), 1, "the model was not asked again");
}

#[tokio::test]
async fn tools_a_server_adds_or_removes_are_offered_or_withdrawn() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    let app = app_with_tools(&fake, vec![tools.settings("tasks", false)], TOOLS, |_| {}).await;

    tools.offer_weather(true).await;
    app.wait_for_tools(TOOLS + 1).await;
    let turn = send_ok(&app, "alice", "", "weather?").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    let offered = |index: usize| -> Vec<String> {
        fake.received()[index].body["tools"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                t["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    assert!(offered(0).contains(&"weather".to_owned()));

    tools.offer_weather(false).await;
    app.wait_for_tools(TOOLS).await;
    send_ok(&app, "alice", "", "and now?").await;
    assert!(!offered(1).contains(&"weather".to_owned()));
}

#[tokio::test]
async fn a_server_that_was_down_at_start_up_is_offered_once_it_answers() {
    let fake = FakeLlm::start().await;
    let addr = free_address().await;
    let servers = vec![server_settings(
        "tasks",
        format!("http://{addr}/mcp"),
        false,
    )];
    let app = app_with_tools(&fake, servers, 0, |_| {}).await;
    let turn = send_ok(&app, "alice", "", "anything?").await;
    assert!(
        turn.error.is_none(),
        "the service works without its tools: {:?}",
        turn.error
    );
    assert_eq!(fake.received()[0].body.get("tools"), None);

    let _tools = FakeToolServer::start_at(addr).await;
    app.wait_for_tools(TOOLS).await;
    send_ok(&app, "alice", "", "now?").await;
    let offered = fake.received()[1].body["tools"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(offered, 7);
}

#[tokio::test]
async fn a_server_that_is_told_who_calls_keeps_each_users_tasks_apart() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    fake.script([
        Script::tool_calls(&[("call_1", "add_task", r#"{"title":"alice's secret"}"#)]),
        Script::reply(&["Added."]),
        Script::tool_calls(&[("call_2", "list_tasks", "{}")]),
        Script::reply(&["Listed."]),
    ]);
    let app = app_with_tools(&fake, vec![tools.settings("tasks", true)], TOOLS, |_| {}).await;

    let alice = send_ok(&app, "alice", "", "add my secret").await;
    assert!(alice.error.is_none(), "{:?}", alice.error);
    let bob = send_ok(&app, "bob", "", "what are my tasks?").await;
    assert!(bob.error.is_none(), "{:?}", bob.error);

    let [listed] = tool_results(&bob)
        .try_into()
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(listed.status(), ToolCallStatus::Succeeded);
    assert_eq!(json_of(&listed.result_json), json!({"tasks": []}));
    // Each call carries the caller's own token: the one its request was sent with (tokens
    // minted a second apart differ, so the subject is compared).
    let seen = tools.calls();
    assert_eq!(bearer_subject(seen[0].authorization.as_deref()), "alice");
    assert_eq!(bearer_subject(seen[1].authorization.as_deref()), "bob");
}

#[tokio::test]
async fn the_development_model_calls_a_tool_on_request_and_reports_its_result() {
    let tools = FakeToolServer::start().await;
    let servers = vec![tools.settings("tasks", false)];
    let app = TestApp::spawn_with(|config| config.tools.servers = servers).await;
    app.wait_for_tools(TOOLS).await;

    let turn = send_ok(&app, "alice", "", r#"/tool add_task {"title":"buy milk"}"#).await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(
        turn.shape(),
        ["accepted", "tool_call", "tool_result", "delta", "completed"]
    );
    let [result] = tool_results(&turn)
        .try_into()
        .unwrap_or_else(|r| panic!("{r:?}"));
    let returned = json_of(&result.result_json);
    assert_eq!(
        returned,
        json!({"id": 1, "title": "buy milk", "done": false})
    );
    assert_eq!(turn.text(), format!("add_task returned: {returned}"));
}

/// The subject of the JWT in an `Authorization: Bearer` header.
fn bearer_subject(authorization: Option<&str>) -> String {
    use base64::Engine;
    let token = authorization
        .and_then(|header| header.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer token: {authorization:?}"));
    let payload = token.split('.').nth(1).unwrap_or_default();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_else(|e| panic!("{token}: {e}"));
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    claims["sub"].as_str().unwrap_or_default().to_owned()
}
