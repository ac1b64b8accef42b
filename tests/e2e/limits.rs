//! No client, signed in or not, can pin or exhaust a replica.

use std::time::Duration;

use chat_service::api::proto::{
    SendMessageRequest, SendMessageResponse, chat_service_client::ChatServiceClient,
    send_message_response::Event,
};
use tonic::{Code, Status, Streaming, transport::Channel};

use super::support::{FakeLlm, Script, TestApp};

/// Long enough for anything that is going to happen; a test that waits longer has failed.
const PATIENCE: Duration = Duration::from_secs(20);

/// A client whose HTTP/2 windows are the protocol's minimum default, so that not reading soon
/// leaves the server unable to send.
async fn small_window_client(app: &TestApp) -> ChatServiceClient<Channel> {
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
