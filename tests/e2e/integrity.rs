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
