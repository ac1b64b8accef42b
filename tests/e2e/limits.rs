//! No client, signed in or not, can pin or exhaust a replica.

use std::time::Duration;

use chat_service::api::proto::{
    SendMessageRequest, SendMessageResponse, chat_service_client::ChatServiceClient,
    send_message_response::Event,
};
use tonic::{Code, Status, Streaming, transport::Channel};

use super::support::{
    FakeLlm, Script, TestApp,
    streams::error_at_end,
    wait::{PATIENCE, eventually},
};

/// A client whose HTTP/2 windows are the protocol's minimum default, so that not reading soon
/// leaves the server unable to send.
pub(super) async fn small_window_client(app: &TestApp) -> ChatServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap_or_else(|e| panic!("{e}"))
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ChatServiceClient::new(channel)
}

/// A model reply far larger than every buffer between the service and a client: about 2 MB.
fn a_long_reply_that_then_stalls() -> Script {
    let deltas = (0..2000)
        .map(|i| format!("{i:04}{}", "x".repeat(996)))
        .collect();
    Script::Stall { deltas }
}

/// Opens a SendMessage stream and reads only its `accepted` event and first delta, returning the
/// conversation and that delta's text.
async fn open_and_stop_reading(
    app: &TestApp,
    client: &mut ChatServiceClient<Channel>,
) -> (String, String, Streaming<SendMessageResponse>) {
    let request = app.request(
        "alice",
        SendMessageRequest {
            conversation_id: String::new(),
            content: "Tell me everything.".into(),
            ..Default::default()
        },
    );
    let mut stream = client
        .send_message(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let accepted = stream.message().await.unwrap_or_else(|e| panic!("{e:?}"));
    let conversation = match accepted.and_then(|response| response.event) {
        Some(Event::Accepted(accepted)) => accepted.conversation_id,
        other => panic!("expected `accepted`, got {other:?}"),
    };
    let first = stream.message().await.unwrap_or_else(|e| panic!("{e:?}"));
    let first = match first.and_then(|response| response.event) {
        Some(Event::Delta(delta)) => delta.text,
        other => panic!("expected a delta, got {other:?}"),
    };
    (conversation, first, stream)
}

/// Reads the rest of a stream: the text of its deltas and the status it ended with.
async fn read_to_the_end(stream: &mut Streaming<SendMessageResponse>) -> (String, Status) {
    let mut text = String::new();
    loop {
        match stream.message().await {
            Ok(Some(SendMessageResponse {
                event: Some(Event::Delta(delta)),
                ..
            })) => text.push_str(&delta.text),
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Ok(None) => panic!("the stream ended without saying it was cut off"),
            Err(status) => return (text, status),
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_its_partial_reply_stored() {
    let fake = FakeLlm::start().await;
    fake.script([a_long_reply_that_then_stalls()]);
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.turns.stream_stall_timeout = Duration::from_millis(300);
    })
    .await;
    let mut client = small_window_client(&app).await;
    let (conversation, first, mut stream) = open_and_stop_reading(&app, &mut client).await;

    // The service gives up on the client and closes the model's request.
    tokio::time::timeout(PATIENCE, fake.wait_for_closed_streams(1))
        .await
        .unwrap_or_else(|_| panic!("the upstream request is still open"));

    // Whatever the client reads later ends with the reason.
    let (rest, status) = read_to_the_end(&mut stream).await;
    let received = first + &rest;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("CHAT_STREAM_STALL_TIMEOUT"),
        "{status:?}"
    );
    assert!(!received.is_empty() && received.len() < 2_000_000);

    // Exactly what it was sent is stored, as cancelled.
    let stored = app.db.messages(&conversation).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(
        (stored[1].role.as_str(), stored[1].status.as_str()),
        ("assistant", "cancelled")
    );
    assert_eq!(stored[1].content, received);
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_that_stopped_reading() {
    let fake = FakeLlm::start().await;
    fake.script([a_long_reply_that_then_stalls()]);
    let mut app = TestApp::with_fake_llm(&fake, |config| {
        config.server.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    let mut client = small_window_client(&app).await;
    let (conversation, first, _stream) = open_and_stop_reading(&app, &mut client).await;

    app.begin_shutdown();
    let stopped = tokio::time::timeout(PATIENCE, app.stopped())
        .await
        .unwrap_or_else(|_| panic!("shutdown waited for the stalled client"));
    assert!(stopped.is_ok(), "{stopped:?}");
    tokio::time::timeout(PATIENCE, fake.wait_for_closed_streams(1))
        .await
        .unwrap_or_else(|_| panic!("the upstream request is still open"));
    let stored = app.db.messages(&conversation).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1].status, "cancelled");
    assert!(
        stored[1].content.starts_with(&first),
        "the partial reply is kept"
    );
}

/// Calls `path` with an empty message and no credentials, as a scanner would.
async fn call_path(channel: Channel, path: &str) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap_or_else(|e| panic!("{e}"));
    let path = http::uri::PathAndQuery::try_from(path).unwrap_or_else(|e| panic!("{e}"));
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc.unary(tonic::Request::new(()), path, codec).await {
        Ok(_) => panic!("a made-up method answered"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn made_up_methods_are_counted_under_one_label() {
    let app = TestApp::spawn().await;
    let before = app.scrape_metrics().await;
    for i in 0..50 {
        let path = format!("/made.up.Service{i}/{}", "Method".repeat(300));
        let status = call_path(app.channel(), &path).await;
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    }
    let after = app.scrape_metrics().await;
    assert!(
        after.contains(r#"chat_rpc_requests_total{method="unknown",code="UNIMPLEMENTED"} 50"#),
        "{after}"
    );
    assert!(!after.contains("made.up"), "a made-up path became a label");
    // Fifty paths cost two series (a counter and a histogram), not fifty.
    assert!(
        after.len() < before.len() + 4_000,
        "the metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
}

/// Asserts a RESOURCE_EXHAUSTED that names `limit` in its QuotaFailure, and returns its
/// RetryInfo's delay, if it has one.
#[track_caller]
pub(super) fn assert_quota(status: &Status, limit: &str) -> Option<Duration> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let violations = status
        .get_details_quota_failure()
        .map(|q| q.violations)
        .unwrap_or_default();
    assert!(
        violations.iter().any(|v| v.subject == limit),
        "no violation of {limit}: {violations:?}"
    );
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

/// A limit on what one may do at once: it says when to try again.
#[track_caller]
fn assert_limit(status: &Status, limit: &str) {
    let retry = assert_quota(status, limit).unwrap_or_else(|| panic!("no RetryInfo in {status:?}"));
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
}

/// A limit on what one may keep: waiting does not help, so there is no RetryInfo.
#[track_caller]
pub(super) fn assert_storage_limit(status: &Status, limit: &str) {
    assert_eq!(assert_quota(status, limit), None, "{status:?}");
}

fn message(conversation_id: &str, content: &str) -> SendMessageRequest {
    SendMessageRequest {
        conversation_id: conversation_id.to_owned(),
        content: content.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_user_cannot_hold_more_streams_than_allowed_and_nothing_is_written() {
    let fake = FakeLlm::start().await;
    // Replies that never end, so that the streams stay open.
    fake.script((0..3).map(|_| Script::Stall { deltas: vec![] }));
    let app = TestApp::with_fake_llm(&fake, |config| config.limits.streams_per_user = 2).await;
    let _first = app.open_stream("alice", "", "one").await;
    let _second = app.open_stream("alice", "", "two").await;
    let messages_before = app.db.count("SELECT count(*) AS n FROM messages").await;

    let refused = app
        .chat()
        .send_message(app.request("alice", message("", "three")))
        .await
        .expect_err("a third stream was accepted");
    assert_limit(&refused, "user_streams");
    assert_eq!(
        app.db.count("SELECT count(*) AS n FROM messages").await,
        messages_before,
        "a refused message is not stored"
    );
    assert_eq!(fake.received().len(), 2, "no model request for it");

    // Another user is not affected.
    let _bobs = app.open_stream("bob", "", "hello").await;
    let metrics = app.scrape_metrics().await;
    assert!(
        metrics.contains(r#"chat_limit_refusals_total{limit="user_streams"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_finished_stream_makes_room_for_the_next() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| config.limits.streams_per_user = 1).await;
    for i in 0..3 {
        let mut stream = app.open_stream("alice", "", &format!("turn {i}")).await;
        while let Some(_event) = stream.message().await.unwrap_or_else(|e| panic!("{e:?}")) {}
    }
}

#[tokio::test]
async fn a_replica_streams_no_more_replies_than_allowed() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Stall { deltas: vec![] }]);
    let app = TestApp::with_fake_llm(&fake, |config| config.limits.streams_per_replica = 1).await;
    let _alices = app.open_stream("alice", "", "one").await;
    let refused = app
        .chat()
        .send_message(app.request("bob", message("", "two")))
        .await
        .expect_err("a second stream was accepted");
    assert_limit(&refused, "replica_streams");
}

#[tokio::test]
async fn requests_beyond_a_users_rate_are_refused_and_change_nothing() {
    use chat_service::api::proto::{CreateConversationRequest, ListConversationsRequest};
    let app = TestApp::spawn_with(|config| {
        config.limits.user_requests_per_second = std::num::NonZeroU32::MIN;
        config.limits.user_request_burst = std::num::NonZeroU32::new(3).unwrap();
    })
    .await;
    let list = || ListConversationsRequest {
        page_size: 10,
        page_token: String::new(),
    };
    for _ in 0..3 {
        let listed = app
            .conversations()
            .list_conversations(app.request("alice", list()))
            .await;
        assert!(listed.is_ok(), "{listed:?}");
    }
    let create = CreateConversationRequest {
        title: "one too many".into(),
    };
    let refused = app
        .conversations()
        .create_conversation(app.request("alice", create))
        .await
        .expect_err("a request beyond the burst was served");
    assert_limit(&refused, "user_request_rate");
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM conversations")
            .await,
        0
    );
    let bobs = app
        .conversations()
        .list_conversations(app.request("bob", list()))
        .await;
    assert!(bobs.is_ok(), "bob has a rate of his own: {bobs:?}");
}

#[tokio::test]
async fn the_model_is_asked_for_at_most_the_configured_output() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| {
        if let chat_service::llm::ModelSettings::OpenAi(settings) =
            &mut config.model.models[0].settings
        {
            settings.max_output_tokens = Some(77);
        }
    })
    .await;
    let mut stream = app.open_stream("alice", "", "be brief").await;
    while let Some(_event) = stream.message().await.unwrap_or_else(|e| panic!("{e:?}")) {}
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body["max_completion_tokens"], 77);
}

/// The value of one series in the Prometheus text, or zero when it has not been written yet.
fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_exhausted_pool_leaves_the_replica_serving_and_requests_unavailable() {
    use chat_service::api::proto::ListConversationsRequest;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let app = TestApp::spawn_with(|config| {
        config.database.pool.max_connections = 1;
        config.database.pool.acquire_timeout = Duration::from_millis(300);
    })
    .await;
    let conversation = app.create_conversation("alice", "busy").await;

    // A turn on a conversation whose row the test holds waits inside the pool's only connection.
    let mut blocker = app.db.connect().await;
    super::support::database::execute(
        &mut blocker,
        &format!("BEGIN; SELECT 1 FROM conversations WHERE id = '{conversation}' FOR UPDATE"),
    )
    .await;
    let mut chat = app.chat();
    let request = app.request("alice", message(&conversation, "are you there?"));
    let turn = tokio::spawn(async move { chat.send_message(request).await });
    eventually("the turn waits for the row", || async {
        let waiting = "SELECT count(*) AS n FROM pg_stat_activity \
                       WHERE wait_event_type = 'Lock' AND datname = current_database()";
        app.db.count(waiting).await == 1
    })
    .await;

    // Every other request finds no connection...
    let list = ListConversationsRequest {
        page_size: 10,
        page_token: String::new(),
    };
    let refused = app
        .conversations()
        .list_conversations(app.request("alice", list))
        .await
        .expect_err("a request got a connection from an exhausted pool");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // ...while the health checks that follow still find the database answering.
    let serving = r#"chat_health_checks_total{result="serving"}"#;
    let checks = series(&app.scrape_metrics().await, serving);
    eventually("two more health checks", || async {
        series(&app.scrape_metrics().await, serving) >= checks + 2.0
    })
    .await;
    let metrics = app.scrape_metrics().await;
    assert_eq!(
        series(
            &metrics,
            r#"chat_health_checks_total{result="not_serving"}"#
        ),
        0.0,
        "{metrics}"
    );
    let health = HealthClient::new(app.channel())
        .check(HealthCheckRequest {
            service: "chat.v1.ChatService".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // Once the row is free, the waiting turn goes through.
    super::support::database::execute(&mut blocker, "COMMIT").await;
    let answered = turn.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(answered.is_ok(), "{answered:?}");
}

/// Starts a SendMessage whose gRPC frame announces `announced` bytes, sends only 1 KiB of them
/// and keeps the body open, as a client that means to make the server wait and buffer would.
/// Returns the response the server gives without waiting for the rest.
async fn send_message_that_never_ends(
    app: &TestApp,
    token: Option<&str>,
    announced: u32,
) -> http::Response<h2::RecvStream> {
    let tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap_or_else(|e| panic!("{e}"));
    let mut request = http::Request::post(format!(
        "http://{}/chat.v1.ChatService/SendMessage",
        app.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(()).unwrap_or_else(|e| panic!("{e}"));
    let (response, mut body) = client
        .send_request(request, false)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut frame = vec![0u8];
    frame.extend_from_slice(&announced.to_be_bytes());
    frame.extend_from_slice(&[b'x'; 1024]);
    body.send_data(frame.into(), false)
        .unwrap_or_else(|e| panic!("{e}"));
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .unwrap_or_else(|_| panic!("the server waited for the rest of the body"))
        .unwrap_or_else(|e| panic!("{e}"));
    // The body stays open until the test ends.
    std::mem::forget(body);
    response
}

fn grpc_status(response: &http::Response<h2::RecvStream>) -> Option<&str> {
    response.headers().get("grpc-status")?.to_str().ok()
}

#[tokio::test]
async fn an_unauthenticated_request_is_refused_before_its_body_is_read() {
    let app = TestApp::spawn().await;
    let response = send_message_that_never_ends(&app, None, 4 * 1024 * 1024).await;
    assert_eq!(grpc_status(&response), Some("16"), "{response:?}");
    let bad = send_message_that_never_ends(&app, Some("not.a.jwt"), 4 * 1024 * 1024).await;
    assert_eq!(grpc_status(&bad), Some("16"), "{bad:?}");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users").await, 0);
}

#[tokio::test]
async fn a_message_larger_than_any_valid_one_is_refused_from_its_length() {
    let app = TestApp::spawn().await;
    let token = app.token("alice");
    // CHAT_MAX_MESSAGE_CHARS is 10,000: no valid request comes near 1 MiB.
    let response = send_message_that_never_ends(&app, Some(&token), 1024 * 1024).await;
    assert_eq!(grpc_status(&response), Some("11"), "{response:?}");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM messages").await, 0);
}

/// Alice's conversation, as GetConversation gives it.
pub(super) async fn get_conversation(
    app: &TestApp,
    conversation: &str,
) -> chat_service::api::proto::GetConversationResponse {
    use chat_service::api::proto::GetConversationRequest;
    let request = app.request(
        "alice",
        GetConversationRequest {
            conversation_id: conversation.to_owned(),
        },
    );
    app.conversations()
        .get_conversation(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
}

fn contents(messages: &[chat_service::api::proto::Message]) -> Vec<String> {
    messages.iter().map(|m| m.content.clone()).collect()
}

#[tokio::test]
async fn get_conversation_returns_a_window_of_the_newest_messages() {
    let app = TestApp::spawn_with(|config| config.limits.conversation_window = 5).await;
    let long = app.create_conversation("alice", "long").await;
    app.db.seed_messages(&long, 12).await;
    let response = get_conversation(&app, &long).await;
    let newest: Vec<String> = (8..=12).map(|i| format!("message {i}")).collect();
    assert_eq!(
        contents(&response.messages),
        newest,
        "the newest five, oldest first"
    );
    assert!(response.has_older_messages);

    let short = app.create_conversation("alice", "short").await;
    app.db.seed_messages(&short, 5).await;
    let response = get_conversation(&app, &short).await;
    assert_eq!(response.messages.len(), 5);
    assert!(!response.has_older_messages, "five of five is all of them");
}

#[tokio::test]
async fn no_response_carries_more_than_two_mebibytes_of_text_and_paging_still_sees_everything() {
    use chat_service::api::proto::ListMessagesRequest;
    let app = TestApp::spawn().await;
    let conversation = app.create_conversation("alice", "big").await;
    // Ten messages of 400 KB each: 4 MB, more than a gRPC client accepts in one response.
    app.db
        .run_sql(&format!(
            "INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
             SELECT gen_random_uuid(), '{conversation}', 'user', g || repeat('x', 400000),
                    'complete', timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', g
             FROM generate_series(1, 10) g;
             UPDATE conversations SET revision = 10 WHERE id = '{conversation}'"
        ))
        .await;
    const BUDGET: usize = 2 * 1024 * 1024;

    let response = get_conversation(&app, &conversation).await;
    let text: usize = response.messages.iter().map(|m| m.content.len()).sum();
    assert!(text <= BUDGET, "{text} bytes of text in one response");
    assert_eq!(response.messages.len(), 5, "as many as fit");
    assert!(
        response.messages[4].content.starts_with("10x"),
        "ending with the newest"
    );
    assert!(response.has_older_messages);

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let request = app.request(
            "alice",
            ListMessagesRequest {
                conversation_id: conversation.clone(),
                page_size: 100,
                page_token: token.clone(),
            },
        );
        let page = app
            .conversations()
            .list_messages(request)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_inner();
        let text: usize = page.messages.iter().map(|m| m.content.len()).sum();
        assert!(text <= BUDGET, "{text} bytes of text in one page");
        seen.extend(page.messages.iter().map(|m| m.content[..3].to_owned()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = (1..=10).map(|i| format!("{i}xx")[..3].to_owned()).collect();
    assert_eq!(seen, expected, "every message once, in order");
}

#[tokio::test]
async fn a_user_keeps_no_more_conversations_than_allowed() {
    use chat_service::api::proto::{CreateConversationRequest, DeleteConversationRequest};
    let app = TestApp::spawn_with(|config| config.limits.storage.conversations_per_user = 2).await;
    let first = app.create_conversation("alice", "one").await;
    app.create_conversation("alice", "two").await;
    let create = CreateConversationRequest {
        title: "three".into(),
    };
    let refused = app
        .conversations()
        .create_conversation(app.request("alice", create))
        .await
        .expect_err("a third conversation was created");
    assert_storage_limit(&refused, "user_conversations");
    let refused = app
        .chat()
        .send_message(app.request("alice", message("", "start a third")))
        .await
        .expect_err("a third conversation was started");
    assert_storage_limit(&refused, "user_conversations");
    let count = |table| format!("SELECT count(*) AS n FROM {table}");
    assert_eq!(app.db.count(&count("conversations")).await, 2);
    assert_eq!(app.db.count(&count("messages")).await, 0);

    // Bob is not affected, and Alice may start another once she deleted one.
    app.create_conversation("bob", "bob's").await;
    let delete = DeleteConversationRequest {
        conversation_id: first,
    };
    app.conversations()
        .delete_conversation(app.request("alice", delete))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    app.create_conversation("alice", "three").await;
}

#[tokio::test]
async fn a_conversation_holds_no_more_messages_than_allowed_and_the_last_reply_is_kept() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.limits.storage.messages_per_conversation = 3;
    })
    .await;
    let finish = |mut stream: Streaming<SendMessageResponse>| async move {
        while let Some(_event) = stream.message().await.unwrap_or_else(|e| panic!("{e:?}")) {}
    };
    let mut first = app.open_stream("alice", "", "one").await;
    let conversation = match first.message().await {
        Ok(Some(SendMessageResponse {
            event: Some(Event::Accepted(accepted)),
            ..
        })) => accepted.conversation_id,
        other => panic!("expected `accepted`, got {other:?}"),
    };
    finish(first).await;
    // The third message; its reply is the fourth, and is kept.
    finish(app.open_stream("alice", &conversation, "two").await).await;
    let refused = app
        .chat()
        .send_message(app.request("alice", message(&conversation, "three")))
        .await
        .expect_err("a fifth message was accepted");
    assert_storage_limit(&refused, "conversation_messages");
    let stored = app.db.messages(&conversation).await;
    assert_eq!(
        stored.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(),
        ["user", "assistant", "user", "assistant"]
    );
    assert_eq!(
        fake.received().len(),
        2,
        "the model was not asked about the refused one"
    );
}

#[tokio::test]
async fn a_reply_the_database_cannot_take_in_time_ends_the_stream_unavailable() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Reply {
        deltas: vec!["one ".into(), "two ".into(), "three".into()],
        delay: Duration::from_millis(200),
        usage: None,
    }]);
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.database.pool.query_timeout = Duration::from_millis(300);
    })
    .await;
    let mut client = app.chat();
    let (conversation, _first, mut stream) = open_and_stop_reading(&app, &mut client).await;

    // The reply's write will wait for the conversation's row, which the test holds.
    let mut blocker = app.db.connect().await;
    super::support::database::execute(
        &mut blocker,
        &format!("BEGIN; SELECT 1 FROM conversations WHERE id = '{conversation}' FOR UPDATE"),
    )
    .await;
    let ended = tokio::time::timeout(PATIENCE, error_at_end(&mut stream))
        .await
        .unwrap_or_else(|_| panic!("the turn waited on the database for ever"));
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(
        ended.message().contains("could not be saved"),
        "the client is told the reply was lost: {ended:?}"
    );

    // PostgreSQL cancelled every try: once the row is free, nothing of the reply appears.
    super::support::database::execute(&mut blocker, "COMMIT").await;
    let stored = app.db.messages(&conversation).await;
    assert_eq!(
        stored.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(),
        ["user"]
    );
}
