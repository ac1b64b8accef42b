//! Tools the client runs itself: defined with SendMessage, called by the model, awaited by the
//! reply, and given back with SubmitToolResults, which streams the rest of the reply.

use std::time::Duration;

use chat_service::api::proto::{
    Message, MessageStatus, SendMessageRequest, SubmitToolResultsRequest,
    SubmitToolResultsResponse, ToolCallResult, ToolCallStatus, ToolDefinition,
    send_message_response::Event,
};
use serde_json::{Value, json};
use tonic::{Code, Status};

use super::{
    assert_bad_field,
    send_message::Turn,
    support::{
        FakeLlm, FakeToolServer, Script, TestApp, TestDatabase, mcp, process::ServiceProcess,
        streams::read_to_end, wait::eventually,
    },
    tools::stored_messages,
};

fn location_tool() -> ToolDefinition {
    ToolDefinition {
        name: "get_location".to_owned(),
        description: "Where the user is, from the device".to_owned(),
        parameters_json: String::new(),
    }
}

/// The events of either stream, as `SendMessage`'s.
trait AsEvent {
    fn into_event(self) -> Option<Event>;
}

impl AsEvent for chat_service::api::proto::SendMessageResponse {
    fn into_event(self) -> Option<Event> {
        self.event
    }
}

impl AsEvent for SubmitToolResultsResponse {
    fn into_event(self) -> Option<Event> {
        use chat_service::api::proto::submit_tool_results_response::Event as Continued;
        Some(match self.event? {
            Continued::Delta(delta) => Event::Delta(delta),
            Continued::ToolCall(call) => Event::ToolCall(call),
            Continued::ToolResult(result) => Event::ToolResult(result),
            Continued::Completed(completed) => Event::Completed(completed),
        })
    }
}

/// Reads a response stream to its end.
async fn read<T: AsEvent>(
    stream: Result<tonic::Response<tonic::Streaming<T>>, Status>,
) -> Result<Turn, Status> {
    let (responses, error) = read_to_end(&mut stream?.into_inner()).await;
    let events = responses
        .into_iter()
        .map(|response| {
            response
                .into_event()
                .unwrap_or_else(|| panic!("an empty event"))
        })
        .collect();
    Ok(Turn { events, error })
}

async fn send(
    app: &TestApp,
    user: &str,
    conversation_id: &str,
    tools: Vec<ToolDefinition>,
) -> Result<Turn, Status> {
    let request = app.request(
        user,
        SendMessageRequest {
            conversation_id: conversation_id.to_owned(),
            content: "Where am I?".to_owned(),
            tools,
            ..Default::default()
        },
    );
    read(app.chat().send_message(request).await).await
}

fn results(results: &[(&str, &str)]) -> Vec<ToolCallResult> {
    results
        .iter()
        .map(|(id, json)| ToolCallResult {
            tool_call_id: (*id).to_owned(),
            result_json: (*json).to_owned(),
            failed: false,
        })
        .collect()
}

async fn submit(
    app: &TestApp,
    user: &str,
    conversation_id: &str,
    message_id: &str,
    given: Vec<ToolCallResult>,
) -> Result<Turn, Status> {
    let request = app.request(
        user,
        SubmitToolResultsRequest {
            conversation_id: conversation_id.to_owned(),
            message_id: message_id.to_owned(),
            results: given,
            tools: vec![location_tool()],
        },
    );
    read(app.chat().submit_tool_results(request).await).await
}

/// A submission that must be refused: its status.
async fn refused_submit(
    app: &TestApp,
    user: &str,
    conversation_id: &str,
    message_id: &str,
    given: Vec<ToolCallResult>,
) -> Status {
    match submit(app, user, conversation_id, message_id, given).await {
        Err(status) => status,
        Ok(turn) => panic!("accepted: {:?}", turn.events),
    }
}

fn completed_message(turn: &Turn) -> (Message, String) {
    match turn.events.last() {
        Some(Event::Completed(completed)) => (
            completed.message.clone().unwrap_or_default(),
            completed.finish_reason.clone(),
        ),
        other => panic!(
            "the last event is not completed: {other:?} ({:?})",
            turn.error
        ),
    }
}

/// A turn whose model calls the client's `get_location`: the awaiting message and its
/// conversation's id.
async fn awaiting_turn(app: &TestApp, fake: &FakeLlm) -> (String, String) {
    fake.script([Script::tool_calls(&[("call_1", "get_location", "{}")])]);
    let turn = send(app, "alice", "", vec![location_tool()])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(turn.error.is_none(), "{:?}", turn.error);
    let (message, _) = completed_message(&turn);
    (turn.conversation_id(), message.id)
}

#[tokio::test]
async fn a_client_tool_call_ends_the_reply_and_its_result_continues_it() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    fake.script([Script::tool_calls(&[("call_1", "get_location", "{}")])]);

    let turn = send(&app, "alice", "", vec![location_tool()])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(turn.shape(), ["accepted", "tool_call", "completed"]);
    let (message, finish) = completed_message(&turn);
    assert_eq!(finish, "tool_calls");
    assert_eq!(message.status(), MessageStatus::AwaitingToolResults);
    assert_eq!(message.tool_calls.len(), 1);
    assert_eq!(message.tool_calls[0].status(), ToolCallStatus::Requested);
    let offered = &fake.received()[0].body["tools"];
    assert_eq!(offered[0]["function"]["name"], "get_location");
    assert_eq!(offered[0]["function"]["parameters"]["type"], "object");
    let id = turn.conversation_id();

    // Nothing else goes into the conversation while it waits.
    let refused = send(&app, "alice", &id, Vec::new())
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted while waiting"));
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("SubmitToolResults"),
        "{refused:?}"
    );
    assert_eq!(stored_messages(&app, "alice", &id).await.len(), 2);

    // The result continues the reply.
    fake.script([Script::reply(&["You are in ", "Lisbon."])]);
    let rest = submit(
        &app,
        "alice",
        &id,
        &message.id,
        results(&[("call_1", r#"{"city":"Lisbon"}"#)]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(rest.error.is_none(), "{:?}", rest.error);
    assert_eq!(rest.shape(), ["tool_result", "delta", "completed"]);
    let Some(Event::ToolResult(result)) = rest.events.first() else {
        panic!("no tool_result first");
    };
    assert_eq!(result.tool_call_id, "call_1");
    assert_eq!(result.status(), ToolCallStatus::Succeeded);
    assert_eq!(
        serde_json::from_str::<Value>(&result.result_json).ok(),
        Some(json!({"city": "Lisbon"}))
    );
    assert_eq!(rest.text(), "You are in Lisbon.");

    // The model was shown the call and its result.
    let second = &fake.received()[1].body["messages"];
    let tail: Vec<&Value> = second
        .as_array()
        .map(|m| m.iter().rev().take(2).rev().collect())
        .unwrap_or_default();
    assert_eq!(tail[0]["tool_calls"][0]["id"], "call_1");
    assert_eq!(tail[1]["role"], "tool");
    assert_eq!(tail[1]["content"], r#"{"city":"Lisbon"}"#);
    assert_eq!(
        fake.received()[1].body["tools"][0]["function"]["name"],
        "get_location"
    );

    let messages = stored_messages(&app, "alice", &id).await;
    let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["Where am I?", "", "You are in Lisbon."]);
    assert_eq!(messages[1].status(), MessageStatus::Complete);
    assert_eq!(
        messages[1].tool_calls[0].status(),
        ToolCallStatus::Succeeded
    );

    // The same results again: the message awaits nothing any more.
    let again = refused_submit(
        &app,
        "alice",
        &id,
        &message.id,
        results(&[("call_1", "{}")]),
    )
    .await;
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    // And the conversation takes messages again.
    let next = send(&app, "alice", &id, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(next.error.is_none(), "{:?}", next.error);
}

#[tokio::test]
async fn results_that_do_not_answer_exactly_the_awaiting_calls_are_refused_and_change_nothing() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    fake.script([Script::tool_calls(&[
        ("call_1", "get_location", "{}"),
        ("call_2", "get_location", "{}"),
    ])]);
    let turn = send(&app, "alice", "", vec![location_tool()])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let (message, _) = completed_message(&turn);
    let id = turn.conversation_id();
    let unchanged = "SELECT count(*) AS n FROM tool_calls WHERE status = 'requested'";

    let missing = refused_submit(
        &app,
        "alice",
        &id,
        &message.id,
        results(&[("call_1", "{}")]),
    )
    .await;
    assert_bad_field(&missing, "results");
    assert!(missing.message().contains("call_2"), "{missing:?}");
    let unknown = refused_submit(
        &app,
        "alice",
        &id,
        &message.id,
        results(&[("call_1", "{}"), ("call_2", "{}"), ("call_9", "{}")]),
    )
    .await;
    assert_bad_field(&unknown, "results");
    assert!(unknown.message().contains("call_9"), "{unknown:?}");
    let twice = refused_submit(
        &app,
        "alice",
        &id,
        &message.id,
        results(&[("call_1", "{}"), ("call_1", "{}")]),
    )
    .await;
    assert_bad_field(&twice, "results");
    let none = refused_submit(&app, "alice", &id, &message.id, Vec::new()).await;
    assert_bad_field(&none, "results");
    let malformed = refused_submit(
        &app,
        "alice",
        &id,
        "not-an-id",
        results(&[("call_1", "{}")]),
    )
    .await;
    assert_bad_field(&malformed, "message_id");
    assert_eq!(app.db.count(unchanged).await, 2);

    // Another user's message is not theirs to answer, and looks like no message at all.
    let foreign = refused_submit(
        &app,
        "bob",
        &id,
        &message.id,
        results(&[("call_1", "{}"), ("call_2", "{}")]),
    )
    .await;
    assert_eq!(foreign.code(), Code::NotFound, "{foreign:?}");
    assert_eq!(app.db.count(unchanged).await, 2);
    assert_eq!(fake.received().len(), 1, "the model was not asked again");
}

#[tokio::test]
async fn tool_definitions_are_checked_before_anything_is_written() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    let server = tools.settings("tasks", false);
    let app = TestApp::with_fake_llm(&fake, |config| config.tools.servers = vec![server]).await;
    app.wait_for_tools(mcp::TOOLS).await;
    let definition = |name: &str, parameters: &str| ToolDefinition {
        name: name.to_owned(),
        description: String::new(),
        parameters_json: parameters.to_owned(),
    };
    for (tools, why) in [
        (vec![definition("two words", "")], "a name"),
        (vec![definition("x", "[1]")], "parameters_json"),
        (vec![location_tool(), location_tool()], "defined twice"),
        (vec![definition("echo", "")], "the service offers"),
        (
            (0..65).map(|i| definition(&format!("t{i}"), "")).collect(),
            "at most 64",
        ),
    ] {
        let refused = send(&app, "alice", "", tools)
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted: {why}"));
        assert_bad_field(&refused, "tools");
        assert!(refused.message().contains(why), "{why}: {refused:?}");
    }
    assert_eq!(app.db.count("SELECT count(*) AS n FROM messages").await, 0);
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn service_and_client_tools_mix_in_one_round() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    let server = tools.settings("tasks", false);
    let app = TestApp::with_fake_llm(&fake, |config| config.tools.servers = vec![server]).await;
    app.wait_for_tools(mcp::TOOLS).await;
    fake.script([Script::tool_calls(&[
        ("call_s", "echo", r#"{"text":"hi"}"#),
        ("call_c", "get_location", "{}"),
    ])]);
    let turn = send(&app, "alice", "", vec![location_tool()])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(
        turn.shape(),
        [
            "accepted",
            "tool_call",
            "tool_call",
            "tool_result",
            "completed"
        ]
    );
    let (message, _) = completed_message(&turn);
    assert_eq!(message.status(), MessageStatus::AwaitingToolResults);
    let statuses: Vec<ToolCallStatus> = message.tool_calls.iter().map(|c| c.status()).collect();
    assert_eq!(
        statuses,
        [ToolCallStatus::Succeeded, ToolCallStatus::Requested]
    );
    assert_eq!(
        tools.calls().len(),
        1,
        "only the service's tool ran on the server"
    );

    fake.script([Script::reply(&["Done."])]);
    let rest = submit(
        &app,
        "alice",
        &turn.conversation_id(),
        &message.id,
        results(&[("call_c", r#""Lisbon""#)]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(rest.error.is_none(), "{:?}", rest.error);
    assert_eq!(rest.shape(), ["tool_result", "delta", "completed"]);
    let shown: Vec<String> = fake.received()[1].body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["tool_call_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(shown, ["call_s", "call_c"]);
}

#[tokio::test]
async fn a_wait_that_is_over_lets_the_conversation_go_on_and_refuses_late_results() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.turns.tool_results_timeout = Duration::from_nanos(1);
    })
    .await;
    let (id, message) = awaiting_turn(&app, &fake).await;

    let late = refused_submit(&app, "alice", &id, &message, results(&[("call_1", "{}")])).await;
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("over"), "{late:?}");

    let next = send(&app, "alice", &id, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(next.error.is_none(), "{:?}", next.error);
    // The unanswered call is shown to the model as failed, never without an answer.
    let shown = &fake.received()[1].body["messages"];
    let result = shown
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "tool"))
        .unwrap_or_else(|| panic!("no tool message: {shown}"));
    assert_eq!(result["tool_call_id"], "call_1");
    assert!(
        result["content"]
            .as_str()
            .unwrap_or_default()
            .contains("no_result")
    );
}

#[tokio::test]
async fn results_given_to_another_replica_after_a_restart_continue_the_reply() {
    let fake = FakeLlm::start().await;
    let database = TestDatabase::new().await;
    let base_url = fake.base_url();
    let settings = [
        ("CHAT_LLM_BASE_URL", base_url.as_str()),
        ("CHAT_LLM_MODEL", "fake-model"),
    ];
    let binary = env!("CARGO_BIN_EXE_chat-service");

    fake.script([Script::tool_calls(&[("call_1", "get_location", "{}")])]);
    let first = ServiceProcess::start(binary, &database, &settings).await;
    let request = first.request(
        "alice",
        SendMessageRequest {
            conversation_id: String::new(),
            content: "Where am I?".to_owned(),
            tools: vec![location_tool()],
            ..Default::default()
        },
    );
    let turn = read(first.chat().send_message(request).await)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let (message, _) = completed_message(&turn);
    let id = turn.conversation_id();
    drop(first);

    let second = ServiceProcess::start(binary, &database, &settings).await;
    fake.script([Script::reply(&["Lisbon, still."])]);
    let request = second.request(
        "alice",
        SubmitToolResultsRequest {
            conversation_id: id.clone(),
            message_id: message.id.clone(),
            results: results(&[("call_1", r#""Lisbon""#)]),
            tools: vec![location_tool()],
        },
    );
    let rest = read(second.chat().submit_tool_results(request).await)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(rest.error.is_none(), "{:?}", rest.error);
    assert_eq!(rest.text(), "Lisbon, still.");
    let count = |sql: &'static str| async { database.count(sql).await };
    assert_eq!(count("SELECT count(*) AS n FROM messages").await, 3);
    assert_eq!(
        count("SELECT count(*) AS n FROM tool_calls WHERE status = 'succeeded'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) AS n FROM conversations WHERE awaiting_message IS NOT NULL").await,
        0
    );
}

#[tokio::test]
async fn results_wait_for_the_services_own_calls_and_a_cut_round_frees_the_conversation() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    let server = tools.settings("tasks", false);
    let app = TestApp::with_fake_llm(&fake, |config| config.tools.servers = vec![server]).await;
    app.wait_for_tools(mcp::TOOLS).await;
    fake.script([Script::tool_calls(&[
        ("call_s", "hang", "{}"),
        ("call_c", "get_location", "{}"),
    ])]);
    let request = app.request(
        "alice",
        SendMessageRequest {
            conversation_id: String::new(),
            content: "Where am I?".to_owned(),
            tools: vec![location_tool()],
            ..Default::default()
        },
    );
    let mut stream = app
        .chat()
        .send_message(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let mut id = String::new();
    let mut calls = 0;
    while calls < 2 {
        match stream
            .message()
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .and_then(|r| r.event)
        {
            Some(Event::Accepted(accepted)) => id = accepted.conversation_id,
            Some(Event::ToolCall(_)) => calls += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    tools.wait_for_hung_calls(1).await;
    let message = stored_messages(&app, "alice", &id).await[1].id.clone();

    // The service's own call is not the client's to answer...
    let theirs = refused_submit(
        &app,
        "alice",
        &id,
        &message,
        results(&[("call_s", "{}"), ("call_c", "{}")]),
    )
    .await;
    assert_bad_field(&theirs, "results");
    assert!(theirs.message().contains("call_s"), "{theirs:?}");
    // ...and the client's own waits until the service's are done.
    let early = refused_submit(&app, "alice", &id, &message, results(&[("call_c", "{}")])).await;
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    assert!(early.message().contains("still running"), "{early:?}");

    // Cut short before `completed`, the round waits for nothing: the client never got the
    // message to answer.
    drop(stream);
    tools.wait_for_cancelled_calls(1).await;
    let waiting = "SELECT count(*) AS n FROM conversations WHERE awaiting_message IS NOT NULL";
    eventually("the wait ends with the round", || async {
        app.db.count(waiting).await == 0
    })
    .await;
    let stored = stored_messages(&app, "alice", &id).await;
    assert_eq!(stored[1].status(), MessageStatus::Cancelled);
    let next = send(&app, "alice", &id, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(next.error.is_none(), "{:?}", next.error);
}

#[tokio::test]
async fn results_continue_a_reply_on_its_branch_alone() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let first = send(&app, "alice", "", Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let id = first.conversation_id();

    // The first message edited: another root, whose reply calls the client's tool.
    fake.script([Script::tool_calls(&[("call_1", "get_location", "{}")])]);
    let edit = SendMessageRequest {
        conversation_id: id.clone(),
        content: "Where am I, really?".to_owned(),
        tools: vec![location_tool()],
        parent_message_id: super::branches::ROOT.to_owned(),
        ..Default::default()
    };
    let edited = read(app.chat().send_message(app.request("alice", edit)).await)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let (awaiting, _) = completed_message(&edited);

    fake.script([Script::reply(&["Lisbon."])]);
    let rest = submit(
        &app,
        "alice",
        &id,
        &awaiting.id,
        results(&[("call_1", r#"{"city":"Lisbon"}"#)]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(rest.error.is_none(), "{:?}", rest.error);
    let continued = fake
        .received()
        .pop()
        .unwrap_or_else(|| panic!("the model was not asked"));
    let roles: Vec<String> = continued
        .messages()
        .into_iter()
        .map(|(role, _)| role)
        .collect();
    assert_eq!(
        roles,
        ["user", "assistant", "tool"],
        "the edit, its call and the result, without the first branch"
    );
    assert_eq!(continued.messages()[0].1, "Where am I, really?");
}
