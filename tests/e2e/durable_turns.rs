//! Turns that outlive their stream: numbered events, resuming from any replica, retries that
//! never make a second turn, turns that go on without their client, cancelling from anywhere,
//! and what happens when a replica dies or Redis goes away.

use std::{sync::Arc, time::Duration};

use chat_service::api::proto::{
    CancelTurnRequest, Disconnect, RegenerateReplyRequest, RegenerateReplyResponse,
    ResumeTurnRequest, ResumeTurnResponse, SendMessageRequest, SendMessageResponse, ToolDefinition,
    regenerate_reply_response, resume_turn_response, send_message_response::Event,
};
use secrecy::ExposeSecret;
use tokio::sync::Notify;
use tonic::{Code, Status, Streaming};

use super::{
    assert_bad_field,
    limits::small_window_client,
    support::{
        FakeLlm, FakeToolServer, Script, TestApp, TestDatabase,
        database::execute,
        mcp,
        process::ServiceProcess,
        redis::{RedisServer, shared_url},
        streams::read_to_end,
        tcp_proxy::TcpProxy,
        wait::eventually,
    },
    tools::app_with_tools,
};

/// The events of a turn as a client saw them, with their sequences, and how the stream ended.
#[derive(Debug, Default)]
struct Seen {
    events: Vec<(u64, Event)>,
    error: Option<Status>,
}

impl Seen {
    fn sequences(&self) -> Vec<u64> {
        self.events.iter().map(|(sequence, _)| *sequence).collect()
    }

    fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|(_, event)| match event {
                Event::Delta(delta) => Some(delta.text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn user_message_id(&self) -> String {
        match self.events.first() {
            Some((1, Event::Accepted(accepted))) => accepted
                .user_message
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_default(),
            other => panic!("the turn did not start with accepted: {other:?}"),
        }
    }

    fn completed(&self) -> chat_service::api::proto::MessageCompleted {
        match self.events.last() {
            Some((_, Event::Completed(completed))) => completed.clone(),
            other => panic!("the turn did not complete: {other:?}, {:?}", self.error),
        }
    }
}

/// A stream of either RPC, as SendMessage's events with their sequences.
trait Numbered {
    fn numbered(self) -> (u64, Event);
}

impl Numbered for SendMessageResponse {
    fn numbered(self) -> (u64, Event) {
        let event = self.event.unwrap_or_else(|| panic!("an empty event"));
        (self.sequence, event)
    }
}

impl Numbered for ResumeTurnResponse {
    fn numbered(self) -> (u64, Event) {
        use resume_turn_response::Event as Resumed;
        let event = match self.event.unwrap_or_else(|| panic!("an empty event")) {
            Resumed::Accepted(accepted) => Event::Accepted(accepted),
            Resumed::Delta(delta) => Event::Delta(delta),
            Resumed::ToolCall(call) => Event::ToolCall(call),
            Resumed::ToolResult(result) => Event::ToolResult(result),
            Resumed::Completed(completed) => Event::Completed(completed),
        };
        (self.sequence, event)
    }
}

impl Numbered for RegenerateReplyResponse {
    fn numbered(self) -> (u64, Event) {
        use regenerate_reply_response::Event as Regenerated;
        let event = match self.event.unwrap_or_else(|| panic!("an empty event")) {
            Regenerated::Accepted(accepted) => Event::Accepted(accepted),
            Regenerated::Delta(delta) => Event::Delta(delta),
            Regenerated::ToolCall(call) => Event::ToolCall(call),
            Regenerated::ToolResult(result) => Event::ToolResult(result),
            Regenerated::Completed(completed) => Event::Completed(completed),
        };
        (self.sequence, event)
    }
}

/// Reads `count` events, leaving the stream open.
async fn read_some<T: Numbered>(stream: &mut Streaming<T>, count: usize) -> Seen {
    let mut seen = Seen::default();
    while seen.events.len() < count {
        match stream.message().await {
            Ok(Some(response)) => seen.events.push(response.numbered()),
            Ok(None) => panic!("the stream ended after {:?}", seen.events),
            Err(status) => panic!("the stream failed after {:?}: {status:?}", seen.events),
        }
    }
    seen
}

/// Reads the rest of the stream.
async fn read_rest<T: Numbered>(stream: &mut Streaming<T>) -> Seen {
    let (responses, error) = read_to_end(stream).await;
    Seen {
        events: responses.into_iter().map(Numbered::numbered).collect(),
        error,
    }
}

/// Sends `request` as alice and reads the whole stream.
async fn send_all(app: &TestApp, request: SendMessageRequest) -> Result<Seen, Status> {
    let request = app.request("alice", request);
    let mut stream = app.chat().send_message(request).await?.into_inner();
    Ok(read_rest(&mut stream).await)
}

fn message(content: &str, request_id: &str, on_disconnect: Disconnect) -> SendMessageRequest {
    SendMessageRequest {
        content: content.to_owned(),
        request_id: request_id.to_owned(),
        on_disconnect: on_disconnect.into(),
        ..Default::default()
    }
}

fn resume(message_id: &str, after_sequence: u64) -> ResumeTurnRequest {
    ResumeTurnRequest {
        message_id: message_id.to_owned(),
        after_sequence,
    }
}

/// The turn's state and attempt, as stored.
async fn turn_state(db: &TestDatabase, turn: &str) -> (String, i32) {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        state: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        attempt: i32,
    }
    use diesel_async::RunQueryDsl;
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT state, attempt FROM turns WHERE id = '{turn}'"
    ))
    .load(&mut db.connect().await)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    rows.into_iter()
        .next()
        .map(|row| (row.state, row.attempt))
        .unwrap_or_else(|| panic!("no turn {turn}"))
}

/// The replies of the conversation, as (status, content), in order.
async fn replies(db: &TestDatabase, conversation: &str) -> Vec<(String, String)> {
    db.messages(conversation)
        .await
        .into_iter()
        .filter(|m| m.role == "assistant")
        .map(|m| (m.status, m.content))
        .collect()
}

fn conversation_of(seen: &Seen) -> String {
    match seen.events.first() {
        Some((_, Event::Accepted(accepted))) => accepted.conversation_id.clone(),
        other => panic!("no accepted: {other:?}"),
    }
}

fn paused(gate: &Arc<Notify>) -> Script {
    Script::paused(&["Hel", "lo"], gate, &[" wor", "ld."])
}

#[tokio::test]
async fn a_client_resumes_mid_stream_with_exactly_the_events_it_missed() {
    let fake = FakeLlm::start().await;
    let gate = Arc::new(Notify::new());
    fake.script([paused(&gate)]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;

    let request = app.request("alice", message("Hi", "", Disconnect::Continue));
    let mut stream = app.chat().send_message(request).await.unwrap().into_inner();
    let first = read_some(&mut stream, 2).await;
    assert_eq!(first.sequences(), [1, 2]);
    // The stream breaks: the turn goes on, as asked.
    drop(stream);

    let turn = first.user_message_id();
    let request = app.request("alice", resume(&turn, 2));
    let mut resumed = app.chat().resume_turn(request).await.unwrap().into_inner();
    let caught_up = read_some(&mut resumed, 1).await;
    gate.notify_one();
    let rest = read_rest(&mut resumed).await;

    assert_eq!(
        caught_up.sequences(),
        [3],
        "the event after the last one seen"
    );
    assert_eq!(rest.sequences(), [4, 5, 6]);
    assert!(rest.error.is_none(), "{:?}", rest.error);
    let whole = format!("{}{}{}", first.text(), caught_up.text(), rest.text());
    assert_eq!(whole, "Hello world.");
    let completed = rest.completed();
    let stored = replies(&app.db, &conversation_of(&first)).await;
    assert_eq!(stored, [("complete".to_owned(), whole.clone())]);
    assert_eq!(completed.message.unwrap().content, whole);
    assert_eq!(
        turn_state(&app.db, &turn).await,
        ("completed".to_owned(), 1)
    );
}

#[tokio::test]
async fn a_finished_turn_replays_from_storage_exactly_as_it_was_streamed() {
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    fake.script([
        Script::ToolCalls {
            deltas: vec!["Let me ".into(), "check. ".into()],
            fragments: vec![(
                0,
                Some("call_1".into()),
                Some("echo".into()),
                r#"{"text":"é"}"#.into(),
            )],
        },
        Script::reply(&["It said ", "é", "."]),
    ]);
    let app = app_with_tools(
        &fake,
        vec![tools.settings("tasks", false)],
        mcp::TOOLS,
        |_| {},
    )
    .await;

    let request = app.request("alice", message("Echo é", "", Disconnect::Cancel));
    let mut stream = app.chat().send_message(request).await.unwrap().into_inner();
    let live = read_rest(&mut stream).await;
    assert!(live.error.is_none(), "{:?}", live.error);
    assert_eq!(live.sequences(), (1..=9).collect::<Vec<u64>>());
    let turn = live.user_message_id();

    for after in [0, 3, 5] {
        let request = app.request("alice", resume(&turn, after));
        let mut replayed = app.chat().resume_turn(request).await.unwrap().into_inner();
        let replayed = read_rest(&mut replayed).await;
        let expected: Vec<String> = live
            .events
            .iter()
            .filter(|(sequence, _)| *sequence > after)
            .map(|event| format!("{event:?}"))
            .collect();
        let got: Vec<String> = replayed.events.iter().map(|e| format!("{e:?}")).collect();
        assert_eq!(got, expected, "replayed after {after}");
        assert!(replayed.error.is_none());
    }
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_gets_the_same_turn_and_no_second_reply() {
    let fake = FakeLlm::start().await;
    fake.script([Script::reply(&["Once", "."])]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;

    let send = |content: &str| send_all(&app, message(content, "retry-1", Disconnect::Cancel));
    let first = send("Hello").await.unwrap();
    let retry = send("Hello").await.unwrap();
    assert_eq!(retry.sequences(), first.sequences());
    assert_eq!(retry.user_message_id(), first.user_message_id());
    assert_eq!(
        retry.completed().message.unwrap().id,
        first.completed().message.unwrap().id
    );
    assert_eq!(retry.text(), "Once.");
    assert_eq!(fake.received().len(), 1, "the model was asked once");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM messages").await, 2);

    // The same id for another request is refused, and changes nothing.
    let before = app.db.snapshot().await;
    let status = send("Hello?").await.unwrap_err();
    assert_bad_field(&status, "request_id");
    assert_eq!(app.db.snapshot().await, before);
    let request = app.request(
        "alice",
        message("Hi", "not printable ☃", Disconnect::Cancel),
    );
    let status = app.chat().send_message(request).await.unwrap_err();
    assert_bad_field(&status, "request_id");
}

#[tokio::test]
async fn a_retry_while_the_turn_is_generating_joins_it_from_the_start() {
    let fake = FakeLlm::start().await;
    let gate = Arc::new(Notify::new());
    fake.script([paused(&gate)]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;

    let request = app.request("alice", message("Hi", "join-1", Disconnect::Cancel));
    let mut first = app.chat().send_message(request).await.unwrap().into_inner();
    let seen = read_some(&mut first, 2).await;
    let request = app.request("alice", message("Hi", "join-1", Disconnect::Cancel));
    let mut retry = app.chat().send_message(request).await.unwrap().into_inner();
    let joined = read_some(&mut retry, 3).await;
    gate.notify_one();
    let rest = read_rest(&mut retry).await;
    let first_rest = read_rest(&mut first).await;

    assert_eq!(joined.sequences(), [1, 2, 3], "from the start");
    assert_eq!(joined.user_message_id(), seen.user_message_id());
    assert_eq!(format!("{}{}", joined.text(), rest.text()), "Hello world.");
    assert_eq!(
        format!("{}{}", seen.text(), first_rest.text()),
        "Hello world."
    );
    assert_eq!(rest.completed().message, first_rest.completed().message);
    assert_eq!(fake.received().len(), 1, "the model was asked once");
}

/// Sends `request`, whose model answers with an error, and waits until its turn's failure is
/// stored; then sends it again, as its retry. The failed turn's user message id and the retry.
async fn fail_then_retry(
    app: &TestApp,
    request: impl Fn() -> SendMessageRequest,
) -> (String, Seen) {
    let first = app.request("alice", request());
    let failed = read_rest(&mut app.chat().send_message(first).await.unwrap().into_inner()).await;
    assert_eq!(
        failed.error.as_ref().map(Status::code),
        Some(Code::Unavailable)
    );
    let turn = failed.user_message_id();
    // Stored once the client has heard of it.
    let db = &app.db;
    eventually("the failed turn's end is stored", || async {
        turn_state(db, &turn).await == ("failed".to_owned(), 1)
    })
    .await;
    let again = app.request("alice", request());
    let retry = read_rest(&mut app.chat().send_message(again).await.unwrap().into_inner()).await;
    (turn, retry)
}

#[tokio::test]
async fn a_retry_after_a_failure_generates_again_for_the_same_stored_message() {
    let fake = FakeLlm::start().await;
    fake.script([
        Script::Status {
            code: 400,
            retry_after: None,
        },
        Script::reply(&["Second ", "time."]),
    ]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;

    let (turn, retry) =
        fail_then_retry(&app, || message("Hi", "again-1", Disconnect::Cancel)).await;
    assert_eq!(retry.user_message_id(), turn, "the same stored message");
    assert_eq!(retry.text(), "Second time.");
    retry.completed();
    let conversation = conversation_of(&retry);
    let stored = app.db.messages(&conversation).await;
    assert_eq!(
        stored.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(),
        ["user", "assistant"]
    );
    assert_eq!(
        turn_state(&app.db, &turn).await,
        ("completed".to_owned(), 2)
    );
    assert_eq!(fake.received().len(), 2);
}

#[tokio::test]
async fn a_retry_after_a_failure_offers_the_clients_tools_again() {
    let fake = FakeLlm::start().await;
    fake.script([
        Script::Status {
            code: 400,
            retry_after: None,
        },
        Script::reply(&["Here."]),
    ]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let with_tool = || SendMessageRequest {
        tools: vec![ToolDefinition {
            name: "get_location".to_owned(),
            description: "Where the user is".to_owned(),
            parameters_json: String::new(),
        }],
        ..message("Where am I?", "tools-again-1", Disconnect::Cancel)
    };

    let (turn, retry) = fail_then_retry(&app, with_tool).await;
    assert_eq!(retry.user_message_id(), turn, "the same stored message");
    retry.completed();
    let offered = |index: usize| -> Vec<String> {
        fake.received()[index].body["tools"]
            .as_array()
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|tool| tool["function"]["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        offered(0),
        ["get_location"],
        "the first try offered the tool"
    );
    assert_eq!(
        offered(1),
        ["get_location"],
        "so does the retry that generates again"
    );
}

#[tokio::test]
async fn a_failed_turn_is_not_generated_again_once_its_conversation_moved_on() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Status {
        code: 400,
        retry_after: None,
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let request = app.request("alice", message("Hi", "moved-1", Disconnect::Cancel));
    let failed = read_rest(&mut app.chat().send_message(request).await.unwrap().into_inner()).await;
    let conversation = conversation_of(&failed);
    let later = SendMessageRequest {
        conversation_id: conversation.clone(),
        content: "Something else".to_owned(),
        ..Default::default()
    };
    send_all(&app, later).await.unwrap().completed();

    let before = app.db.snapshot().await;
    let status = send_all(&app, message("Hi", "moved-1", Disconnect::Cancel))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("new request_id"), "{status:?}");
    assert_eq!(app.db.snapshot().await, before, "nothing changed");
    assert_eq!(fake.received().len(), 2);
}

#[tokio::test]
async fn a_turn_that_goes_on_without_its_client_completes_and_is_stored() {
    let fake = FakeLlm::start().await;
    let gate = Arc::new(Notify::new());
    fake.script([paused(&gate)]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;

    let request = app.request("alice", message("Hi", "", Disconnect::Continue));
    let mut stream = app.chat().send_message(request).await.unwrap().into_inner();
    let seen = read_some(&mut stream, 2).await;
    drop(stream);
    gate.notify_one();

    let turn = seen.user_message_id();
    let db = &app.db;
    eventually("the detached turn completes", || async {
        turn_state(db, &turn).await.0 == "completed"
    })
    .await;
    let stored = replies(db, &conversation_of(&seen)).await;
    assert_eq!(stored, [("complete".to_owned(), "Hello world.".to_owned())]);
}

#[tokio::test]
async fn a_client_that_stops_reading_a_turn_that_goes_on_is_let_go_and_resumes_the_rest() {
    let fake = FakeLlm::start().await;
    // Far more than every buffer between the service and a client that does not read.
    let deltas = (0..2000)
        .map(|i| format!("{i:04}{}", "x".repeat(996)))
        .collect();
    fake.script([Script::Reply {
        deltas,
        delay: Duration::ZERO,
        usage: None,
    }]);
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.turns.stream_stall_timeout = Duration::from_millis(300);
    })
    .await;
    let mut client = small_window_client(&app).await;
    let request = app.request(
        "alice",
        message("Tell me everything.", "", Disconnect::Continue),
    );
    let mut stream = client.send_message(request).await.unwrap().into_inner();
    let first = read_some(&mut stream, 2).await;
    let turn = first.user_message_id();

    // The turn completes without the stream that stopped reading...
    let db = &app.db;
    eventually("the turn completes without its client", || async {
        turn_state(db, &turn).await.0 == "completed"
    })
    .await;
    // ...which, read again, gives what it had been sent, then where to resume from.
    let rest = read_rest(&mut stream).await;
    let read = rest.sequences().last().copied().unwrap_or(2);
    let status = rest
        .error
        .clone()
        .unwrap_or_else(|| panic!("the client was not told"));
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .ends_with(&format!("after sequence {read}")),
        "{status:?}"
    );
    let request = app.request("alice", resume(&turn, read));
    let resumed = read_rest(&mut app.chat().resume_turn(request).await.unwrap().into_inner()).await;
    assert_eq!(resumed.sequences().first(), Some(&(read + 1)));
    let text = format!("{}{}{}", first.text(), rest.text(), resumed.text());
    assert_eq!(
        resumed.completed().message.map(|m| m.content),
        Some(text.clone())
    );
    assert!(text.len() == 2_000_000 && text.starts_with("0000x") && text.contains("1999x"));
    let stored = replies(db, &conversation_of(&first)).await;
    assert_eq!(stored, [("complete".to_owned(), text)]);
}

/// Alice's turn, its model stalled after "Partial", with her stream open and what she saw of it.
async fn a_stalled_turn() -> (FakeLlm, TestApp, Streaming<SendMessageResponse>, Seen) {
    let fake = FakeLlm::start().await;
    fake.script([Script::Stall {
        deltas: vec!["Partial".into()],
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let request = app.request("alice", message("Hi", "", Disconnect::Continue));
    let mut stream = app.chat().send_message(request).await.unwrap().into_inner();
    let seen = read_some(&mut stream, 2).await;
    (fake, app, stream, seen)
}

#[tokio::test]
async fn cancel_turn_stops_the_turn_and_stores_what_was_streamed() {
    let (fake, app, mut stream, seen) = a_stalled_turn().await;
    let turn = seen.user_message_id();
    let request = app.request(
        "alice",
        CancelTurnRequest {
            message_id: turn.clone(),
        },
    );
    app.chat().cancel_turn(request).await.unwrap();

    // Once CancelTurn has answered, the turn has ended and its text is stored.
    assert_eq!(turn_state(&app.db, &turn).await.0, "cancelled");
    let stored = replies(&app.db, &conversation_of(&seen)).await;
    assert_eq!(stored, [("cancelled".to_owned(), "Partial".to_owned())]);
    let rest = read_rest(&mut stream).await;
    assert_eq!(rest.error.map(|s| s.code()), Some(Code::Cancelled));
    fake.wait_for_closed_streams(1).await;
    // Cancelling a turn that has ended changes nothing.
    let request = app.request("alice", CancelTurnRequest { message_id: turn });
    app.chat().cancel_turn(request).await.unwrap();
}

#[tokio::test]
async fn cancel_turn_answers_only_once_the_turn_s_end_is_stored() {
    let (_fake, app, _stream, seen) = a_stalled_turn().await;
    let turn = seen.user_message_id();
    // The cut-off reply's write waits for the conversation's row, which the test holds.
    let mut blocker = app.db.connect().await;
    let conversation = conversation_of(&seen);
    execute(
        &mut blocker,
        &format!("BEGIN; SELECT 1 FROM conversations WHERE id = '{conversation}' FOR UPDATE"),
    )
    .await;
    let request = app.request(
        "alice",
        CancelTurnRequest {
            message_id: turn.clone(),
        },
    );
    let mut chat = app.chat();
    let cancel = tokio::spawn(async move { chat.cancel_turn(request).await });
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND datname = current_database()";
    eventually("the cut-off reply's write waits for the row", || async {
        app.db.count(waiting).await == 1
    })
    .await;
    // Stopped, but its end is not stored: CancelTurn has not answered...
    assert_eq!(turn_state(&app.db, &turn).await.0, "generating");
    assert!(
        !cancel.is_finished(),
        "CancelTurn answered before the end was stored"
    );
    execute(&mut blocker, "COMMIT").await;
    // ...and once it has, the end is stored.
    cancel.await.unwrap().unwrap();
    assert_eq!(turn_state(&app.db, &turn).await.0, "cancelled");
    let stored = replies(&app.db, &conversation).await;
    assert_eq!(stored, [("cancelled".to_owned(), "Partial".to_owned())]);
}

#[tokio::test]
async fn only_the_users_own_turns_can_be_resumed_or_cancelled() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let request = app.request("alice", message("Hi", "", Disconnect::Cancel));
    let seen = read_rest(&mut app.chat().send_message(request).await.unwrap().into_inner()).await;
    let turn = seen.user_message_id();

    let request = app.request("bob", resume(&turn, 0));
    let status = app.chat().resume_turn(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let request = app.request("bob", CancelTurnRequest { message_id: turn });
    let status = app.chat().cancel_turn(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let request = app.request("alice", resume("not-an-id", 0));
    let status = app.chat().resume_turn(request).await.unwrap_err();
    assert_bad_field(&status, "message_id");
}

/// Settings for replica processes sharing `database`, the fake model and `redis`.
fn replica_settings(fake: &FakeLlm, redis: &str, lease: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CHAT_LLM_BASE_URL", fake.base_url()),
        ("CHAT_LLM_API_KEY", "test-api-key".to_owned()),
        ("CHAT_LLM_MODEL", "fake-model".to_owned()),
        ("CHAT_REDIS_URL", redis.to_owned()),
        ("CHAT_TURN_LEASE", lease.to_owned()),
    ]
}

/// How long the stream of the turn's first attempt has to live in the shared Redis, in ms.
async fn stream_ttl(turn: &str) -> i64 {
    let client = redis::Client::open(shared_url()).unwrap_or_else(|e| panic!("{e}"));
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    redis::cmd("PTTL")
        .arg(format!("chat:turn:{turn}:1"))
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends, as `request_id`, a turn that goes on without its client to replica `a`, and follows it
/// from replica `b` until `b` has read its first two deltas, "Hello": what `a` streamed has
/// reached Redis. The events `a` sent, `a`'s stream, and `b`'s.
async fn followed_on_b(
    a: &ServiceProcess,
    b: &ServiceProcess,
    request_id: &str,
) -> (
    Seen,
    Streaming<SendMessageResponse>,
    Streaming<ResumeTurnResponse>,
) {
    let request = a.request("alice", message("Hi", request_id, Disconnect::Continue));
    let mut stream = a.chat().send_message(request).await.unwrap().into_inner();
    let seen = read_some(&mut stream, 3).await;
    let request = b.request("alice", resume(&seen.user_message_id(), 1));
    let mut watching = b.chat().resume_turn(request).await.unwrap().into_inner();
    assert_eq!(read_some(&mut watching, 2).await.text(), "Hello");
    (seen, stream, watching)
}

/// Sends "Hi" again as `request_id` to `replica`, and checks that the model's next reply,
/// "Again.", is generated for the same stored message `turn`, as its second attempt.
async fn assert_a_retry_generates_again(
    replica: &ServiceProcess,
    database: &TestDatabase,
    request_id: &str,
    turn: &str,
) {
    let request = replica.request("alice", message("Hi", request_id, Disconnect::Cancel));
    let mut stream = replica
        .chat()
        .send_message(request)
        .await
        .unwrap()
        .into_inner();
    let retry = read_rest(&mut stream).await;
    assert_eq!(retry.user_message_id(), turn);
    assert_eq!(retry.text(), "Again.");
    retry.completed();
    assert_eq!(
        turn_state(database, turn).await,
        ("completed".to_owned(), 2)
    );
}

async fn replica(database: &TestDatabase, settings: &[(&'static str, String)]) -> ServiceProcess {
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServiceProcess::start(env!("CARGO_BIN_EXE_chat-service"), database, &settings).await
}

#[tokio::test]
async fn a_turn_resumes_on_another_replica_mid_stream_and_after_it_completed() {
    let database = TestDatabase::new().await;
    let fake = FakeLlm::start().await;
    let gate = Arc::new(Notify::new());
    fake.script([paused(&gate)]);
    let settings = replica_settings(&fake, &shared_url(), "10s");
    let (a, b) = tokio::join!(replica(&database, &settings), replica(&database, &settings));

    let request = a.request("alice", message("Hi", "", Disconnect::Continue));
    let mut stream = a.chat().send_message(request).await.unwrap().into_inner();
    let first = read_some(&mut stream, 2).await;
    drop(stream);
    let turn = first.user_message_id();
    let request = b.request("alice", resume(&turn, 2));
    let mut resumed = b.chat().resume_turn(request).await.unwrap().into_inner();
    let caught_up = read_some(&mut resumed, 1).await;
    let live = stream_ttl(&turn).await;
    assert!(live > 60_000 && live <= 3_600_000, "{live} ms to live");
    gate.notify_one();
    let rest = read_rest(&mut resumed).await;
    let ended = stream_ttl(&turn).await;
    assert!(ended > 0 && ended <= 60_000, "{ended} ms to live");
    assert_eq!(caught_up.sequences(), [3]);
    assert_eq!(rest.sequences(), [4, 5, 6]);
    let whole = format!("{}{}{}", first.text(), caught_up.text(), rest.text());
    assert_eq!(whole, "Hello world.");

    let db = &database;
    eventually("the turn's end is stored", || async {
        turn_state(db, &turn).await.0 == "completed"
    })
    .await;
    let request = b.request("alice", resume(&turn, 0));
    let replayed = read_rest(&mut b.chat().resume_turn(request).await.unwrap().into_inner()).await;
    assert_eq!(replayed.sequences(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(replayed.text(), whole);
    assert_eq!(replayed.completed().message, rest.completed().message);
}

#[tokio::test]
async fn identical_retries_on_two_replicas_at_once_make_one_turn() {
    let database = TestDatabase::new().await;
    let fake = FakeLlm::start().await;
    let gate = Arc::new(Notify::new());
    fake.script([paused(&gate)]);
    let settings = replica_settings(&fake, &shared_url(), "10s");
    let (a, b) = tokio::join!(replica(&database, &settings), replica(&database, &settings));

    let send = |replica: &ServiceProcess| {
        let request = replica.request("alice", message("Hi", "twice-1", Disconnect::Cancel));
        let mut chat = replica.chat();
        async move { chat.send_message(request).await.unwrap().into_inner() }
    };
    let (mut on_a, mut on_b) = tokio::join!(send(&a), send(&b));
    let (seen_a, seen_b) = tokio::join!(read_some(&mut on_a, 1), read_some(&mut on_b, 1));
    gate.notify_one();
    let (rest_a, rest_b) = tokio::join!(read_rest(&mut on_a), read_rest(&mut on_b));

    assert_eq!(seen_a.user_message_id(), seen_b.user_message_id());
    assert_eq!(
        format!("{}{}", seen_a.text(), rest_a.text()),
        "Hello world."
    );
    assert_eq!(
        format!("{}{}", seen_b.text(), rest_b.text()),
        "Hello world."
    );
    assert_eq!(rest_a.completed().message, rest_b.completed().message);
    assert_eq!(fake.received().len(), 1, "the model was asked once");
    let conversation = conversation_of(&seen_a);
    assert_eq!(database.messages(&conversation).await.len(), 2);
}

/// The same, in a conversation that exists, while the test holds its row: both requests' writes
/// begin, then wait for the row. The one let in first claims the id; the other, which began before
/// that claim was committed, finds it through the unique index on request ids rather than
/// through its own lookup, and is the same turn all the same.
#[tokio::test]
async fn identical_retries_that_wait_for_their_conversation_make_one_turn() {
    let database = TestDatabase::new().await;
    let fake = FakeLlm::start().await;
    let gate = Arc::new(Notify::new());
    fake.script([Script::reply(&["First."]), paused(&gate)]);
    let settings = replica_settings(&fake, &shared_url(), "10s");
    let (a, b) = tokio::join!(replica(&database, &settings), replica(&database, &settings));
    let request = a.request("alice", message("Hi", "", Disconnect::Cancel));
    let first = read_rest(&mut a.chat().send_message(request).await.unwrap().into_inner()).await;
    let conversation = conversation_of(&first);

    let mut blocker = database.connect().await;
    execute(
        &mut blocker,
        &format!("BEGIN; SELECT 1 FROM conversations WHERE id = '{conversation}' FOR UPDATE"),
    )
    .await;
    let send = |replica: &ServiceProcess| {
        let request = SendMessageRequest {
            conversation_id: conversation.clone(),
            ..message("Again", "twice-2", Disconnect::Cancel)
        };
        let request = replica.request("alice", request);
        let mut chat = replica.chat();
        tokio::spawn(async move { chat.send_message(request).await.unwrap().into_inner() })
    };
    let (on_a, on_b) = (send(&a), send(&b));
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND datname = current_database()";
    eventually("both writes wait for the conversation's row", || async {
        database.count(waiting).await == 2
    })
    .await;
    execute(&mut blocker, "COMMIT").await;
    let (mut on_a, mut on_b) = (on_a.await.unwrap(), on_b.await.unwrap());
    let (seen_a, seen_b) = tokio::join!(read_some(&mut on_a, 1), read_some(&mut on_b, 1));
    gate.notify_one();
    let (rest_a, rest_b) = tokio::join!(read_rest(&mut on_a), read_rest(&mut on_b));

    assert_eq!(seen_a.user_message_id(), seen_b.user_message_id());
    for (seen, rest) in [(&seen_a, &rest_a), (&seen_b, &rest_b)] {
        assert_eq!(format!("{}{}", seen.text(), rest.text()), "Hello world.");
    }
    assert_eq!(rest_a.completed().message, rest_b.completed().message);
    assert_eq!(
        fake.received().len(),
        2,
        "the model was asked once for the turn"
    );
    assert_eq!(database.messages(&conversation).await.len(), 4);
    assert_eq!(
        database
            .count("SELECT count(*) AS n FROM turns WHERE request_key = 'twice-2'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_turn_is_cancelled_from_another_replica() {
    let database = TestDatabase::new().await;
    let fake = FakeLlm::start().await;
    fake.script([Script::Stall {
        deltas: vec!["Partial".into()],
    }]);
    let settings = replica_settings(&fake, &shared_url(), "10s");
    let (a, b) = tokio::join!(replica(&database, &settings), replica(&database, &settings));

    let request = a.request("alice", message("Hi", "", Disconnect::Cancel));
    let mut stream = a.chat().send_message(request).await.unwrap().into_inner();
    let seen = read_some(&mut stream, 2).await;
    let turn = seen.user_message_id();
    let request = b.request(
        "alice",
        CancelTurnRequest {
            message_id: turn.clone(),
        },
    );
    b.chat().cancel_turn(request).await.unwrap();

    assert_eq!(turn_state(&database, &turn).await.0, "cancelled");
    let stored = replies(&database, &conversation_of(&seen)).await;
    assert_eq!(stored, [("cancelled".to_owned(), "Partial".to_owned())]);
    let rest = read_rest(&mut stream).await;
    assert_eq!(rest.error.map(|s| s.code()), Some(Code::Cancelled));
    fake.wait_for_closed_streams(1).await;
}

#[tokio::test]
async fn a_killed_replica_s_turn_is_ended_by_the_others_and_a_retry_generates_it_again() {
    let database = TestDatabase::new().await;
    let fake = FakeLlm::start().await;
    fake.script([Script::Stall {
        deltas: vec!["Hel".into(), "lo".into()],
    }]);
    let settings = replica_settings(&fake, &shared_url(), "1s");
    let (a, b) = tokio::join!(replica(&database, &settings), replica(&database, &settings));

    let (seen, _stream, mut watching) = followed_on_b(&a, &b, "lost-1").await;
    let turn = seen.user_message_id();
    // Then SIGKILL: no chance to store anything or say goodbye.
    drop(a);

    let ended = read_rest(&mut watching).await;
    assert!(ended.events.is_empty(), "{:?}", ended.events);
    let status = ended
        .error
        .unwrap_or_else(|| panic!("the watcher was not told"));
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("request_id"), "{status:?}");
    assert_eq!(
        turn_state(&database, &turn).await,
        ("interrupted".to_owned(), 1)
    );
    let conversation = conversation_of(&seen);
    assert_eq!(
        replies(&database, &conversation).await,
        [("interrupted".to_owned(), "Hello".to_owned())]
    );
    let request = b.request("alice", resume(&turn, 0));
    let replayed = read_rest(&mut b.chat().resume_turn(request).await.unwrap().into_inner()).await;
    assert_eq!(
        replayed.sequences(),
        [1, 2, 3],
        "what was streamed, then how it ended"
    );
    assert_eq!(replayed.error.map(|s| s.code()), Some(Code::Unavailable));

    fake.script([Script::reply(&["Again."])]);
    assert_a_retry_generates_again(&b, &database, "lost-1", &turn).await;
}

/// The state and attempt of the newest turn that regenerated `message`'s reply, as stored.
async fn regeneration_state(db: &TestDatabase, message: &str) -> (String, i32) {
    let id = db
        .count(&format!(
            "SELECT count(*) AS n FROM turns WHERE message_id = '{message}'"
        ))
        .await;
    assert_eq!(id, 1, "one regeneration of {message}");
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    use diesel_async::RunQueryDsl;
    let row: Row = diesel::sql_query(format!(
        "SELECT id::text AS id FROM turns WHERE message_id = '{message}'"
    ))
    .get_result(&mut db.connect().await)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    turn_state(db, &row.id).await
}

#[tokio::test]
async fn a_killed_replica_s_regeneration_is_ended_by_the_others_and_its_retry_generates_it_again() {
    let database = TestDatabase::new().await;
    let fake = FakeLlm::start().await;
    fake.script([
        Script::reply(&["Hello."]),
        Script::Stall {
            deltas: vec!["Hel".into(), "lo".into()],
        },
    ]);
    let settings = replica_settings(&fake, &shared_url(), "1s");
    let (a, b) = tokio::join!(replica(&database, &settings), replica(&database, &settings));
    let request = a.request("alice", message("Hi", "", Disconnect::Cancel));
    let first = read_rest(&mut a.chat().send_message(request).await.unwrap().into_inner()).await;
    first.completed();
    let asked = first.user_message_id();
    let conversation = conversation_of(&first);

    // Regenerated on A, which goes on without its client; followed on B through Redis.
    let regenerate = |request_id: &str| RegenerateReplyRequest {
        message_id: asked.clone(),
        request_id: request_id.to_owned(),
        on_disconnect: Disconnect::Continue.into(),
        ..Default::default()
    };
    let request = a.request("alice", regenerate("again-lost-1"));
    let mut stream = a
        .chat()
        .regenerate_reply(request)
        .await
        .unwrap()
        .into_inner();
    let seen = read_some(&mut stream, 3).await;
    assert_eq!(seen.user_message_id(), asked);
    let request = b.request("alice", resume(&asked, 1));
    let mut watching = b.chat().resume_turn(request).await.unwrap().into_inner();
    assert_eq!(read_some(&mut watching, 2).await.text(), "Hello");
    // Then SIGKILL.
    drop(a);

    let ended = read_rest(&mut watching).await;
    assert_eq!(ended.error.map(|s| s.code()), Some(Code::Unavailable));
    assert_eq!(
        regeneration_state(&database, &asked).await,
        ("interrupted".to_owned(), 1)
    );
    // What was streamed is stored beside the first reply.
    assert_eq!(
        replies(&database, &conversation).await,
        [
            ("complete".to_owned(), "Hello.".to_owned()),
            ("interrupted".to_owned(), "Hello".to_owned())
        ]
    );

    // The retry, on B, generates it again as its second attempt, beside the others.
    fake.script([Script::reply(&["Again."])]);
    let request = b.request("alice", regenerate("again-lost-1"));
    let retry = read_rest(
        &mut b
            .chat()
            .regenerate_reply(request)
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(retry.user_message_id(), asked);
    assert_eq!(retry.text(), "Again.");
    retry.completed();
    assert_eq!(
        regeneration_state(&database, &asked).await,
        ("completed".to_owned(), 2)
    );
    assert_eq!(
        replies(&database, &conversation).await.last(),
        Some(&("complete".to_owned(), "Again.".to_owned()))
    );
}

#[tokio::test]
async fn a_replica_back_from_a_pause_longer_than_its_lease_stores_nothing_over_the_takeover() {
    let database = TestDatabase::new().await;
    let fake = FakeLlm::start().await;
    let gate = Arc::new(Notify::new());
    fake.script([paused(&gate)]);
    let settings = replica_settings(&fake, &shared_url(), "1s");
    let (a, b) = tokio::join!(replica(&database, &settings), replica(&database, &settings));

    let (seen, mut stream, mut watching) = followed_on_b(&a, &b, "paused-1").await;
    let turn = seen.user_message_id();
    // Frozen for longer than its lease: the other replica takes the turn over...
    a.freeze().await;
    let told = read_rest(&mut watching).await;
    assert_eq!(told.error.map(|s| s.code()), Some(Code::Unavailable));
    let conversation = conversation_of(&seen);
    let taken_over = [("interrupted".to_owned(), "Hello".to_owned())];
    assert_eq!(replies(&database, &conversation).await, taken_over);

    // ...and when it runs again, the rest of the reply reaches its client, but what the other
    // replica stored stands: no second reply, the turn still interrupted.
    a.thaw().await;
    gate.notify_one();
    let rest = read_rest(&mut stream).await;
    assert_eq!(rest.text(), " world.");
    assert_eq!(rest.sequences(), [4, 5]);
    let status = rest
        .error
        .unwrap_or_else(|| panic!("the client was not told"));
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("request_id"), "{status:?}");
    assert_eq!(replies(&database, &conversation).await, taken_over);
    assert_eq!(
        turn_state(&database, &turn).await,
        ("interrupted".to_owned(), 1)
    );
}

#[tokio::test]
async fn a_turn_its_own_replica_no_longer_generates_is_ended_as_failed_and_generated_again() {
    let database = TestDatabase::new().await;
    let fake = FakeLlm::start().await;
    fake.script([Script::reply(&["Hello."]), Script::reply(&["Again."])]);
    let a = replica(&database, &replica_settings(&fake, &shared_url(), "1s")).await;
    let request = a.request("alice", message("Hi", "orphan-1", Disconnect::Cancel));
    let seen = read_rest(&mut a.chat().send_message(request).await.unwrap().into_inner()).await;
    seen.completed();
    let turn = seen.user_message_id();
    // As if the replica could not store the turn's end (the database was away as it ended),
    // and nothing generates it any more.
    database
        .run_sql(&format!(
            "DELETE FROM messages WHERE turn_id = '{turn}';
             UPDATE turns SET state = 'generating', outcome = NULL, ended_at = NULL,
                 created_at = now() - interval '1 minute'
             WHERE id = '{turn}'"
        ))
        .await;

    let db = &database;
    eventually("the replica ends the turn nothing generates", || async {
        turn_state(db, &turn).await.0 == "failed"
    })
    .await;
    assert_a_retry_generates_again(&a, db, "orphan-1", &turn).await;
}

#[tokio::test]
async fn turns_complete_while_redis_is_down_and_resume_works_again_once_it_is_back() {
    let database = TestDatabase::new().await;
    let fake = FakeLlm::start().await;
    let mut redis = RedisServer::start().await;
    let gate = Arc::new(Notify::new());
    fake.script([paused(&gate)]);
    let settings = replica_settings(&fake, &redis.url(), "10s");
    let (a, b) = tokio::join!(replica(&database, &settings), replica(&database, &settings));

    let request = a.request("alice", message("Hi", "", Disconnect::Cancel));
    let mut stream = a.chat().send_message(request).await.unwrap().into_inner();
    let first = read_some(&mut stream, 2).await;
    let turn = first.user_message_id();
    redis.stop().await;

    // Another replica cannot follow a live turn without Redis...
    let request = b.request("alice", resume(&turn, 1));
    let failed = match b.chat().resume_turn(request).await {
        Ok(response) => read_rest(&mut response.into_inner()).await.error,
        Err(status) => Some(status),
    };
    assert_eq!(failed.map(|s| s.code()), Some(Code::Unavailable));
    // ...but the turn completes and is stored all the same.
    gate.notify_one();
    let rest = read_rest(&mut stream).await;
    assert_eq!(format!("{}{}", first.text(), rest.text()), "Hello world.");
    rest.completed();
    assert!(
        a.scrape_metrics()
            .await
            .contains("chat_event_engine_errors_total{operation=")
    );
    // A finished turn replays from the database, Redis or not.
    let request = b.request("alice", resume(&turn, 0));
    let replayed = read_rest(&mut b.chat().resume_turn(request).await.unwrap().into_inner()).await;
    assert_eq!(replayed.text(), "Hello world.");

    redis.restart().await;
    let gate = Arc::new(Notify::new());
    fake.script([paused(&gate)]);
    let request = a.request("alice", message("Again", "", Disconnect::Cancel));
    let mut stream = a.chat().send_message(request).await.unwrap().into_inner();
    let first = read_some(&mut stream, 2).await;
    let request = b.request("alice", resume(&first.user_message_id(), 2));
    let mut resumed = b.chat().resume_turn(request).await.unwrap().into_inner();
    let caught_up = read_some(&mut resumed, 1).await;
    gate.notify_one();
    let rest = read_rest(&mut resumed).await;
    assert_eq!(
        format!("{}{}{}", first.text(), caught_up.text(), rest.text()),
        "Hello world."
    );
    rest.completed();
}

#[tokio::test]
async fn readiness_waits_for_redis_only_when_told_to() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let gated = TestApp::spawn_with(|config| {
        config.events.redis_url = Some(url.clone().into());
        config.events.gates_readiness = true;
    })
    .await;
    let url = redis.url();
    let ungated = TestApp::spawn_with(|config| config.events.redis_url = Some(url.into())).await;
    let status = |app: &TestApp| {
        let mut health = HealthClient::new(app.channel());
        async move {
            let request = HealthCheckRequest {
                service: "chat.v1.ChatService".to_owned(),
            };
            health.check(request).await.unwrap().into_inner().status()
        }
    };
    assert_eq!(status(&gated).await, ServingStatus::Serving);

    redis.stop().await;
    eventually("the gated replica goes NOT_SERVING", || async {
        status(&gated).await == ServingStatus::NotServing
    })
    .await;
    assert_eq!(status(&ungated).await, ServingStatus::Serving);
    redis.restart().await;
    eventually("the gated replica serves again", || async {
        status(&gated).await == ServingStatus::Serving
    })
    .await;
}

/// PostgreSQL and Redis go away at once and come back, under 20 streaming clients with request
/// ids on two replicas. Whatever a client saw completed is stored once, every accepted message is
/// stored, every failure is a status a client retries, and every request completes once both
/// are back.
#[tokio::test]
async fn postgresql_and_redis_restarting_together_lose_and_double_nothing() {
    const CLIENTS: usize = 20;
    let database = TestDatabase::new().await;
    let proxy = TcpProxy::to_postgres().await;
    let mut redis = RedisServer::start().await;
    let fake = FakeLlm::start().await;
    // A gate of its own for each reply: one released before its stream waits keeps its permit.
    let gates: Vec<Arc<Notify>> = (0..CLIENTS).map(|_| Arc::new(Notify::new())).collect();
    fake.script(
        gates
            .iter()
            .map(|gate| Script::paused(&["Hello"], gate, &[" world."])),
    );
    let mut settings = replica_settings(&fake, &redis.url(), "2s");
    settings.extend([
        (
            "DATABASE_URL",
            proxy
                .through(&database.url)
                .expose()
                .expose_secret()
                .to_owned(),
        ),
        ("CHAT_DB_ACQUIRE_TIMEOUT", "1s".to_owned()),
        ("CHAT_DB_CONNECT_TIMEOUT", "1s".to_owned()),
    ]);
    let (a, b) = tokio::join!(replica(&database, &settings), replica(&database, &settings));
    let replicas = [&a, &b];
    let user = |i: usize| format!("user-{i}");
    let request_id = |i: usize| format!("turn-of-{i}");

    // Every client's turn is accepted and streaming.
    let mut streams = Vec::new();
    for i in 0..CLIENTS {
        let replica = replicas[i % 2];
        let request = replica.request(
            &user(i),
            message("Hi", &request_id(i), Disconnect::Continue),
        );
        let mut stream = replica
            .chat()
            .send_message(request)
            .await
            .unwrap()
            .into_inner();
        let seen = read_some(&mut stream, 2).await;
        streams.push((seen.user_message_id(), stream));
    }

    // Both engines go away at once, and meanwhile the model finishes every reply.
    proxy.cut();
    redis.stop().await;
    for gate in &gates {
        gate.notify_one();
    }
    let mut completed = vec![None; CLIENTS];
    for (i, (_, stream)) in streams.iter_mut().enumerate() {
        let rest = read_rest(stream).await;
        completed[i] = told(i, "while both engines were away", &rest);
    }
    redis.restart().await;
    proxy.restore();

    // Each client retries its request on the other replica, as a client told UNAVAILABLE does,
    // until its turn completes; every try ends, with the turn or a status to retry.
    for i in 0..CLIENTS {
        let replica = replicas[(i + 1) % 2];
        let reply = tokio::time::timeout(super::support::wait::PATIENCE, async {
            loop {
                let request = replica.request(
                    &user(i),
                    message("Hi", &request_id(i), Disconnect::Continue),
                );
                let retried = match replica.chat().send_message(request).await {
                    Ok(response) => read_rest(&mut response.into_inner()).await,
                    Err(status) => Seen {
                        events: Vec::new(),
                        error: Some(status),
                    },
                };
                if let Some(reply) = told(i, "retried", &retried) {
                    break reply;
                }
                // A client's pause before it tries again.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("request {i} never completed once both engines were back"));
        if let Some(earlier) = &completed[i] {
            assert_eq!(&reply, earlier, "request {i}: a second reply to one turn");
        }
        completed[i] = Some(reply);
    }

    for (i, (accepted, _)) in streams.iter().enumerate() {
        let id = request_id(i);
        let stored_turns = database
            .count(&format!(
                "SELECT count(*) AS n FROM turns WHERE request_key = '{id}'"
            ))
            .await;
        assert_eq!(stored_turns, 1, "request {i}: one turn per request id");
        let user_messages = database
            .count(&format!(
                "SELECT count(*) AS n FROM messages WHERE id = '{accepted}' AND role = 'user'"
            ))
            .await;
        assert_eq!(
            user_messages, 1,
            "request {i}: the accepted message is stored"
        );
        let replies = database
            .count(&format!(
                "SELECT count(*) AS n FROM messages WHERE turn_id = '{accepted}' \
                 AND role = 'assistant' AND status = 'complete'"
            ))
            .await;
        assert_eq!(replies, 1, "request {i}: one complete reply stored");
        if let Some((message_id, text)) = &completed[i] {
            let stored = database
                .count(&format!(
                    "SELECT count(*) AS n FROM messages WHERE id = '{message_id}' \
                     AND content = '{}'",
                    text.replace('\'', "''")
                ))
                .await;
            assert_eq!(
                stored, 1,
                "request {i}: the reply stored is the one it was shown"
            );
        }
    }
}

/// The reply a client saw completed (its id and text), or `None` after checking that its stream
/// failed with a status a client retries.
fn told(client: usize, when: &str, seen: &Seen) -> Option<(String, String)> {
    match &seen.error {
        None => {
            let completed = seen.completed();
            let message = completed.message.unwrap_or_else(|| panic!("no message"));
            Some((message.id, message.content))
        }
        Some(status) => {
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Aborted | Code::Cancelled
                ),
                "client {client}, {when}: {status:?}"
            );
            None
        }
    }
}
