//! The stored transcript is what the client was shown, whatever the model sends.

use chat_service::api::proto::{SendMessageResponse, send_message_response::Event};

use super::support::{FakeLlm, Script, TestApp};

/// Reads a stream to its end: the concatenated deltas, and whether it completed.
async fn read_all(
    mut stream: tonic::Streaming<SendMessageResponse>,
) -> (String, Option<String>, bool) {
    let (mut text, mut conversation, mut completed) = (String::new(), None, false);
    while let Some(response) = stream.message().await.unwrap_or_else(|e| panic!("{e:?}")) {
        match response.event {
            Some(Event::Accepted(accepted)) => conversation = Some(accepted.conversation_id),
            Some(Event::Delta(delta)) => text.push_str(&delta.text),
            Some(Event::Completed(_)) => completed = true,
            _ => {}
        }
    }
    (text, conversation, completed)
}

#[tokio::test]
async fn nul_in_the_models_output_is_replaced_and_the_reply_stored_as_shown() {
    let fake = FakeLlm::start().await;
    fake.script([Script::ToolCalls {
        deltas: vec!["before\u{0}".into(), "after".into()],
        fragments: vec![(
            0,
            Some("call\u{0}id".into()),
            Some("look\u{0}up".into()),
            r#"{"q":"a\u0000b"}"#.into(),
        )],
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (text, conversation, completed) = read_all(app.open_stream("alice", "", "hi").await).await;
    assert!(completed, "the reply did not complete");
    assert_eq!(text, "before\u{FFFD}after");
    let conversation = conversation.unwrap_or_else(|| panic!("no conversation"));
    let stored = app.db.messages(&conversation).await;
    assert_eq!(stored[1].content, text, "stored exactly as shown");
    let calls = app
        .db
        .count(
            "SELECT count(*) AS n FROM tool_calls WHERE name = 'look\u{FFFD}up' \
             AND provider_call_id = 'call\u{FFFD}id' AND arguments->>'q' = 'a\u{FFFD}b'",
        )
        .await;
    assert_eq!(calls, 1, "the tool call is stored with NUL replaced");
}

/// What a client is told when the model fails mid-reply.
async fn failed_turn(script: Script) -> tonic::Status {
    let fake = FakeLlm::start().await;
    fake.script([script]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let mut stream = app.open_stream("alice", "", "hello").await;
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => return status,
        }
    }
}

#[tokio::test]
async fn the_upstreams_own_words_stay_in_the_log() {
    super::support::logs::capture();
    let secret = "deployment gpt-4o-internal at 10.20.30.40:8443 is overloaded";
    let status = failed_turn(Script::ErrorChunk {
        deltas: vec!["partial ".into()],
        message: secret.into(),
    })
    .await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("broke off"), "{status:?}");
    for leaked in ["10.20.30.40", "gpt-4o-internal", "overloaded"] {
        assert!(!status.message().contains(leaked), "{status:?}");
    }
    assert!(
        super::support::logs::any_line_contains("10.20.30.40"),
        "the log lost the detail"
    );
}

#[tokio::test]
async fn a_tool_call_index_beyond_any_real_reply_is_a_malformed_reply() {
    let status = failed_turn(Script::ToolCalls {
        deltas: vec![],
        fragments: vec![(100_000, Some("call".into()), Some("f".into()), "{}".into())],
    })
    .await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("malformed"), "{status:?}");
}
