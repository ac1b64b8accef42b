use std::{collections::HashSet, time::Duration};

use chat_service::{
    api::proto::{
        GetConversationRequest, MessageStatus, Role, SendMessageRequest,
        send_message_response::Event,
    },
    llm::{CatalogSettings, ModelSettings},
};
use tonic::{Code, Status};

use super::{
    assert_bad_field,
    support::{FakeLlm, Script, TestApp, app::without_user_limits, streams::read_to_end},
};

/// What a client saw of one SendMessage call.
#[derive(Debug, Default)]
pub(super) struct Turn {
    pub(super) events: Vec<Event>,
    pub(super) error: Option<Status>,
}

impl Turn {
    pub(super) fn conversation_id(&self) -> String {
        match self.events.first() {
            Some(Event::Accepted(accepted)) => accepted.conversation_id.clone(),
            other => panic!("the first event is not `accepted`: {other:?}"),
        }
    }

    pub(super) fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Delta(delta) => Some(delta.text.as_str()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn completed(&self) -> chat_service::api::proto::MessageCompleted {
        match self.events.last() {
            Some(Event::Completed(completed)) => completed.clone(),
            other => panic!(
                "the last event is not `completed`: {other:?} (error: {:?})",
                self.error
            ),
        }
    }

    /// The kinds of the events in order, with runs of deltas folded into one.
    pub(super) fn shape(&self) -> Vec<&'static str> {
        let mut shape: Vec<&'static str> = Vec::new();
        for event in &self.events {
            let kind = match event {
                Event::Accepted(_) => "accepted",
                Event::Delta(_) => "delta",
                Event::ToolCall(_) => "tool_call",
                Event::ToolResult(_) => "tool_result",
                Event::Completed(_) => "completed",
            };
            if shape.last() != Some(&kind) || kind != "delta" {
                shape.push(kind);
            }
        }
        shape
    }
}

pub(super) async fn send(
    app: &TestApp,
    user: &str,
    conversation_id: &str,
    content: &str,
) -> Result<Turn, Status> {
    let request = SendMessageRequest {
        conversation_id: conversation_id.to_owned(),
        content: content.to_owned(),
        ..Default::default()
    };
    send_request(app, user, request).await
}

/// Sends `request` as `user` and reads the whole turn.
pub(super) async fn send_request(
    app: &TestApp,
    user: &str,
    request: SendMessageRequest,
) -> Result<Turn, Status> {
    let request = app.request(user, request);
    let mut stream = app.chat().send_message(request).await?.into_inner();
    let (responses, error) = read_to_end(&mut stream).await;
    let events = responses
        .into_iter()
        .map(|response| response.event.unwrap_or_else(|| panic!("an empty event")))
        .collect();
    Ok(Turn { events, error })
}

/// Reads a turn's `accepted` and its deltas until they make `text`; the conversation's id.
pub(super) async fn read_until_text(
    stream: &mut tonic::Streaming<chat_service::api::proto::SendMessageResponse>,
    text: &str,
) -> String {
    let (mut conversation, mut read) = (String::new(), String::new());
    while read != text {
        match stream.message().await {
            Ok(Some(response)) => match response.event {
                Some(Event::Accepted(accepted)) => conversation = accepted.conversation_id,
                Some(Event::Delta(delta)) => read.push_str(&delta.text),
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("the stream ended early: {other:?}"),
        }
    }
    conversation
}

pub(super) async fn send_ok(
    app: &TestApp,
    user: &str,
    conversation_id: &str,
    content: &str,
) -> Turn {
    send(app, user, conversation_id, content)
        .await
        .unwrap_or_else(|e| panic!("refused: {e:?}"))
}

#[tokio::test]
async fn a_first_message_starts_a_conversation_and_streams_the_stored_reply() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Reply {
        deltas: vec!["Hel".into(), "lo, ".into(), "Alice".into(), "!".into()],
        delay: Duration::ZERO,
        usage: Some((12, 4)),
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;

    let turn = send_ok(
        &app,
        "alice",
        "",
        "  Hello there, how are you doing today?  ",
    )
    .await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(turn.shape(), ["accepted", "delta", "completed"]);
    assert_eq!(
        turn.events.len(),
        6,
        "one event per upstream chunk: {:?}",
        turn.events
    );
    assert_eq!(turn.text(), "Hello, Alice!");

    let Some(Event::Accepted(accepted)) = turn.events.first() else {
        unreachable!()
    };
    let user_message = accepted.user_message.clone().unwrap_or_default();
    assert_eq!(user_message.role(), Role::User);
    assert_eq!(
        user_message.content,
        "  Hello there, how are you doing today?  "
    );
    assert_eq!(user_message.status(), MessageStatus::Complete);

    let completed = turn.completed();
    let reply = completed.message.clone().unwrap_or_default();
    assert_eq!(reply.content, "Hello, Alice!");
    assert_eq!(reply.role(), Role::Assistant);
    assert_eq!(reply.status(), MessageStatus::Complete);
    assert_eq!(completed.finish_reason, "stop");
    assert_eq!(completed.model, "fake-model");
    let usage = completed.usage.unwrap_or_default();
    assert_eq!((usage.input_tokens, usage.output_tokens), (12, 4));

    let conversation = turn.conversation_id();
    let stored = app.db.messages(&conversation).await;
    let rows: Vec<_> = stored
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str(), m.status.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "user",
                "  Hello there, how are you doing today?  ",
                "complete"
            ),
            ("assistant", "Hello, Alice!", "complete")
        ]
    );
    assert_eq!(stored[0].id, user_message.id);
    assert_eq!(stored[1].id, reply.id);
    // The conversation is named after its first message and moved to the reply's time.
    let named = app
        .db
        .count(&format!(
            "SELECT count(*) AS n FROM conversations c JOIN messages m ON m.id = '{}'
             WHERE c.id = '{conversation}' AND c.title = 'Hello there, how are you doing today?' AND c.updated_at = m.created_at",
            reply.id
        ))
        .await;
    assert_eq!(named, 1);

    let request = &fake.received()[0];
    assert_eq!(
        request.messages(),
        [(
            "user".to_owned(),
            "  Hello there, how are you doing today?  ".to_owned()
        )]
    );
    assert_eq!(request.body["model"], "fake-model");
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["stream_options"]["include_usage"], true);
    assert_eq!(request.body["max_completion_tokens"], 512);
    assert_eq!(
        request.authorization.as_deref(),
        Some("Bearer test-api-key")
    );
}

#[tokio::test]
async fn a_second_turn_sends_the_first_to_the_model() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.turns.system_prompt = Some("Be brief.".to_owned())
    })
    .await;
    let first = send_ok(&app, "alice", "", "What is the capital of Portugal?").await;
    let conversation = first.conversation_id();
    let second = send_ok(&app, "alice", &conversation, "And of Spain?").await;
    assert_eq!(second.conversation_id(), conversation);
    assert_eq!(second.text(), "You said: And of Spain?.");

    let received = fake.received();
    assert_eq!(received.len(), 2);
    let expected: Vec<(String, String)> = [
        ("system", "Be brief."),
        ("user", "What is the capital of Portugal?"),
        ("assistant", "You said: What is the capital of Portugal?."),
        ("user", "And of Spain?"),
    ]
    .iter()
    .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(received[1].messages(), expected);
    assert_eq!(app.db.messages(&conversation).await.len(), 4);
}

#[tokio::test]
async fn the_model_sees_the_system_prompt_and_exactly_the_last_20_messages() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.turns.system_prompt = Some("You are terse.".to_owned())
    })
    .await;
    let conversation = app.create_conversation("alice", "long").await;
    app.db.seed_messages(&conversation, 29).await;

    send_ok(&app, "alice", &conversation, "message 30").await;

    let messages = fake.received()[0].messages();
    assert_eq!(messages.len(), 21);
    assert_eq!(
        messages[0],
        ("system".to_owned(), "You are terse.".to_owned())
    );
    let history: Vec<_> = messages[1..]
        .iter()
        .map(|(_, content)| content.clone())
        .collect();
    let expected: Vec<_> = (11..=30).map(|i| format!("message {i}")).collect();
    assert_eq!(history, expected);
    assert_eq!(messages[1].0, "user", "message 11 is a user message");
    assert_eq!(messages[2].0, "assistant");
}

#[tokio::test]
async fn retries_before_the_first_token_end_in_one_stored_reply() {
    let fake = FakeLlm::start().await;
    fake.script([
        Script::Status {
            code: 429,
            retry_after: Some(0),
        },
        Script::Status {
            code: 503,
            retry_after: None,
        },
        Script::reply(&["third ", "time lucky"]),
    ]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let turn = send_ok(&app, "alice", "", "Try hard").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(turn.text(), "third time lucky");
    assert_eq!(fake.received().len(), 3);
    let stored = app.db.messages(&turn.conversation_id()).await;
    let rows: Vec<_> = stored
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        rows,
        [("user", "Try hard"), ("assistant", "third time lucky")]
    );
}

#[tokio::test]
async fn retry_after_is_respected() {
    let fake = FakeLlm::start().await;
    fake.script([
        Script::Status {
            code: 429,
            retry_after: Some(1),
        },
        Script::reply(&["ok"]),
    ]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let turn = send_ok(&app, "alice", "", "Busy?").await;
    assert_eq!(turn.text(), "ok");
    let received = fake.received();
    assert_eq!(received.len(), 2);
    // The retry waited the second the server asked for, not the 10 ms backoff.
    assert!(received[1].at - received[0].at >= Duration::from_secs(1));
}

/// Runs a turn against a failing model and checks what a client and the database see: the
/// error, the user message kept, nothing of a reply; then that the next turn works.
async fn assert_model_failure(
    fake: &FakeLlm,
    app: &TestApp,
    expected: Code,
    expected_message: &str,
) {
    let turn = send_ok(app, "alice", "", "Will this work?").await;
    let status = turn
        .error
        .clone()
        .unwrap_or_else(|| panic!("no error: {:?}", turn.events));
    assert_eq!(status.code(), expected, "{status:?}");
    assert!(
        status.message().contains("the model failed"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(expected_message),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("127.0.0.1"),
        "leaks the upstream address: {}",
        status.message()
    );
    assert!(!turn.events.iter().any(|e| matches!(e, Event::Completed(_))));

    let conversation = turn.conversation_id();
    let stored = app.db.messages(&conversation).await;
    let rows: Vec<_> = stored
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(rows, [("user", "Will this work?")]);
    assert_eq!(
        app.db.count("SELECT count(*) AS n FROM tool_calls").await,
        0
    );

    fake.script([Script::reply(&["Yes ", "now."])]);
    let next = send_ok(app, "alice", &conversation, "Again?").await;
    assert!(next.error.is_none(), "{:?}", next.error);
    assert_eq!(
        next.completed().message.map(|m| m.content),
        Some("Yes now.".to_owned())
    );
    assert_eq!(app.db.messages(&conversation).await.len(), 3);
}

#[tokio::test]
async fn an_http_error_is_unavailable() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Status {
        code: 400,
        retry_after: None,
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    assert_model_failure(&fake, &app, Code::Unavailable, "HTTP 400").await;
    assert_eq!(fake.received().len(), 2, "a 400 is not retried");
}

#[tokio::test]
async fn server_errors_that_outlast_the_retries_are_unavailable() {
    let fake = FakeLlm::start().await;
    fake.script(vec![
        Script::Status {
            code: 500,
            retry_after: None
        };
        3
    ]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    assert_model_failure(&fake, &app, Code::Unavailable, "HTTP 500").await;
    assert_eq!(
        fake.received().len(),
        4,
        "three attempts, then the next turn"
    );
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_is_unavailable() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Drop {
        deltas: vec!["Half an ".into(), "ans".into()],
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    assert_model_failure(&fake, &app, Code::Unavailable, "broke off").await;
}

#[tokio::test]
async fn a_malformed_stream_is_unavailable() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Malformed]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    assert_model_failure(&fake, &app, Code::Unavailable, "malformed").await;
}

#[tokio::test]
async fn a_stalled_stream_is_deadline_exceeded() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Stall {
        deltas: vec!["I am thinking".into()],
    }]);
    let app = TestApp::with_fake_llm(&fake, |config| {
        if let ModelSettings::OpenAi(settings) = &mut config.model.models[0].settings {
            settings.idle_timeout = Duration::from_millis(300);
        }
    })
    .await;
    assert_model_failure(&fake, &app, Code::DeadlineExceeded, "stalled").await;
}

#[tokio::test]
async fn a_model_that_never_starts_answering_is_deadline_exceeded() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Stall { deltas: vec![] }]);
    let app = TestApp::with_fake_llm(&fake, |config| {
        if let ModelSettings::OpenAi(settings) = &mut config.model.models[0].settings {
            settings.first_token_timeout = Duration::from_millis(300);
        }
    })
    .await;
    assert_model_failure(&fake, &app, Code::DeadlineExceeded, "no first token").await;
}

#[tokio::test]
async fn an_unreachable_model_is_unavailable() {
    let fake = FakeLlm::start().await;
    // Nothing listens on port 1.
    let settings = chat_service::llm::OpenAiSettings {
        base_url: "http://127.0.0.1:1/v1".to_owned(),
        max_retries: 1,
        ..super::support::app::fake_llm_settings(&fake)
    };
    let app = TestApp::spawn_with(|config| {
        config.model = CatalogSettings::of_one(ModelSettings::OpenAi(settings), 0)
    })
    .await;
    let turn = send_ok(&app, "alice", "", "Anyone there?").await;
    let status = turn.error.unwrap_or_else(|| panic!("no error"));
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("cannot connect"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("127.0.0.1"),
        "{}",
        status.message()
    );
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM messages WHERE role = 'user'")
            .await,
        1
    );
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM messages WHERE role = 'assistant'")
            .await,
        0
    );
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn cancelling_aborts_the_upstream_request_and_keeps_the_partial_reply() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Stall {
        deltas: vec!["Once ".into(), "upon ".into(), "a time".into()],
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;

    let mut stream = app.open_stream("alice", "", "Tell me a story").await;
    let conversation = read_until_text(&mut stream, "Once upon a time").await;
    drop(stream);

    // The fake sees its response stream closed because the service hung up.
    tokio::time::timeout(Duration::from_secs(1), fake.wait_for_closed_streams(1))
        .await
        .unwrap_or_else(|_| panic!("the upstream request was not aborted within a second"));

    let stored = super::eventually(|| {
        let db = &app.db;
        let conversation = conversation.clone();
        async move {
            let stored = db.messages(&conversation).await;
            (stored.len() == 2).then_some(stored)
        }
    })
    .await;
    assert_eq!(stored[1].role, "assistant");
    assert_eq!(stored[1].content, "Once upon a time");
    assert_eq!(stored[1].status, "cancelled");

    let request = app.request(
        "alice",
        GetConversationRequest {
            conversation_id: conversation,
        },
    );
    let fetched = app
        .conversations()
        .get_conversation(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    assert_eq!(fetched.messages[1].status(), MessageStatus::Cancelled);

    // No generation is left running once the partial reply is stored.
    super::eventually(|| async {
        let metrics = app.scrape_metrics().await;
        metrics.contains("chat_active_streams 0").then_some(())
    })
    .await;
}

#[tokio::test]
async fn streamed_tool_call_fragments_become_whole_calls() {
    let fake = FakeLlm::start().await;
    fake.script([Script::ToolCalls {
        deltas: vec!["Let me check.".into()],
        fragments: vec![
            (
                0,
                Some("call_weather".into()),
                Some("get_weather".into()),
                String::new(),
            ),
            (0, None, None, "{\"city\":".into()),
            (
                1,
                Some("call_time".into()),
                Some("get_time".into()),
                "{\"tz\":\"Europe/Lisbon\"}".into(),
            ),
            (0, None, None, " \"Lisbon\"}".into()),
        ],
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let turn = send_ok(&app, "alice", "", "Weather and time in Lisbon?").await;
    assert_eq!(
        turn.shape(),
        ["accepted", "delta", "tool_call", "tool_call", "completed"]
    );

    let calls: Vec<_> = turn
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ToolCall(call) => Some((
                call.id.clone(),
                call.name.clone(),
                serde_json::from_str::<serde_json::Value>(&call.arguments_json).ok(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        calls,
        [
            (
                "call_weather".to_owned(),
                "get_weather".to_owned(),
                Some(serde_json::json!({"city": "Lisbon"}))
            ),
            (
                "call_time".to_owned(),
                "get_time".to_owned(),
                Some(serde_json::json!({"tz": "Europe/Lisbon"}))
            ),
        ]
    );
    let completed = turn.completed();
    assert_eq!(completed.finish_reason, "tool_calls");
    let reply = completed.message.unwrap_or_default();
    assert_eq!(reply.tool_calls.len(), 2);

    let stored = app
        .db
        .count(&format!(
            "SELECT count(*) AS n FROM tool_calls
             WHERE message_id = '{}' AND ((position = 0 AND provider_call_id = 'call_weather' AND name = 'get_weather'
                    AND arguments = '{{\"city\": \"Lisbon\"}}'::jsonb)
               OR (position = 1 AND provider_call_id = 'call_time' AND arguments ->> 'tz' = 'Europe/Lisbon'))
               AND status = 'requested'",
            reply.id
        ))
        .await;
    assert_eq!(stored, 2);
}

#[tokio::test]
async fn twenty_concurrent_turns_on_one_conversation_are_all_stored_in_a_stable_order() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, without_user_limits).await;
    let conversation = send_ok(&app, "alice", "", "Let us begin")
        .await
        .conversation_id();

    let turns = futures_util::future::join_all((0..20).map(|i| {
        let app = &app;
        let conversation = conversation.clone();
        async move { send_ok(app, "alice", &conversation, &format!("question {i}")).await }
    }))
    .await;

    let stored = app.db.messages(&conversation).await;
    assert_eq!(stored.len(), 42);
    let position = |id: &str| {
        stored
            .iter()
            .position(|m| m.id == id)
            .unwrap_or_else(|| panic!("{id} not stored"))
    };
    for turn in &turns {
        assert!(turn.error.is_none(), "{:?}", turn.error);
        let Some(Event::Accepted(accepted)) = turn.events.first() else {
            panic!("no accepted event")
        };
        let user = accepted.user_message.clone().unwrap_or_default();
        let reply = turn.completed().message.unwrap_or_default();
        assert!(
            position(&user.id) < position(&reply.id),
            "a reply is stored before its question"
        );
        assert!(
            stored[position(&user.id)].created_micros < stored[position(&reply.id)].created_micros
        );
        assert_eq!(stored[position(&reply.id)].content, turn.text());
    }
    // The order is total: no two messages share a position, and reading again gives the same.
    let keys: HashSet<_> = stored
        .iter()
        .map(|m| (m.created_micros, m.id.clone()))
        .collect();
    assert_eq!(keys.len(), 42);
    assert_eq!(app.db.messages(&conversation).await, stored);
}

#[tokio::test]
async fn concurrent_turns_in_different_conversations_never_mix() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let turns = futures_util::future::join_all((0..10).map(|i| {
        let app = &app;
        async move { send_ok(app, &format!("user{i}"), "", &format!("secret number {i}")).await }
    }))
    .await;
    let mut conversations = HashSet::new();
    for (i, turn) in turns.iter().enumerate() {
        assert_eq!(turn.text(), format!("You said: secret number {i}."));
        let conversation = turn.conversation_id();
        let contents: Vec<_> = app
            .db
            .messages(&conversation)
            .await
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(
            contents,
            [
                format!("secret number {i}"),
                format!("You said: secret number {i}.")
            ]
        );
        conversations.insert(conversation);
    }
    assert_eq!(conversations.len(), 10);
}

#[tokio::test]
async fn message_length_is_counted_in_characters() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let longest = "😀".repeat(10_000);
    let turn = send_ok(&app, "alice", "", &longest).await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    let stored = app.db.messages(&turn.conversation_id()).await;
    assert_eq!(stored[0].content, longest);

    let status = send(&app, "alice", "", &"😀".repeat(10_001))
        .await
        .expect_err("accepted");
    assert_bad_field(&status, "content");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM messages").await, 2);
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM conversations")
            .await,
        1
    );
}

#[tokio::test]
async fn blank_or_nul_messages_are_refused_and_nothing_is_written() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    for content in ["", "   \n\t", "nul\0inside"] {
        let status = send(&app, "alice", "", content)
            .await
            .err()
            .unwrap_or_else(|| panic!("{content:?} accepted"));
        assert_bad_field(&status, "content");
    }
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM conversations")
            .await,
        0
    );
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn someone_elses_or_a_malformed_conversation_id_is_refused_and_nothing_is_written() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let alices = send_ok(&app, "alice", "", "mine").await.conversation_id();
    let before = app.db.snapshot().await;

    let status = send(&app, "bob", &alices, "let me in")
        .await
        .expect_err("accepted");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "conversation not found");
    let missing = uuid::Uuid::now_v7().to_string();
    let status = send(&app, "alice", &missing, "hello?")
        .await
        .expect_err("accepted");
    assert_eq!(status.code(), Code::NotFound);
    let status = send(&app, "alice", "not-an-id", "hello?")
        .await
        .expect_err("accepted");
    assert_bad_field(&status, "conversation_id");

    // Bob's first request created his user row; nothing else changed.
    app.db
        .run_sql("DELETE FROM users WHERE subject = 'bob'")
        .await;
    assert_eq!(app.db.snapshot().await, before);
    assert_eq!(fake.received().len(), 1);
}

#[tokio::test]
async fn without_a_model_configured_the_development_model_answers() {
    let app = TestApp::spawn().await;
    let turn = send_ok(&app, "alice", "", "Hello dev").await;
    let completed = turn.completed();
    assert_eq!(completed.model, "dev");
    assert!(turn.text().contains("development model"));
    assert!(turn.text().contains("\"Hello dev\""));
    assert_eq!(completed.message.map(|m| m.content), Some(turn.text()));
    assert_eq!(app.db.messages(&turn.conversation_id()).await.len(), 2);
}

#[tokio::test]
async fn a_turn_logs_one_line_when_it_starts_and_one_when_it_ends_without_its_content() {
    super::support::logs::capture();
    let fake = FakeLlm::start().await;
    fake.script([Script::Reply {
        deltas: vec!["Con".into(), "fidential".into()],
        delay: Duration::ZERO,
        usage: Some((9, 2)),
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;

    let request_id = format!("req-{}", uuid::Uuid::new_v4());
    let content = format!("my secret {}", uuid::Uuid::new_v4());
    let mut request = app.request(
        "alice",
        SendMessageRequest {
            conversation_id: String::new(),
            content: content.clone(),
            ..Default::default()
        },
    );
    request.metadata_mut().insert(
        "x-request-id",
        request_id.parse().unwrap_or_else(|e| panic!("{e}")),
    );
    let response = app
        .chat()
        .send_message(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    // The correlation id comes back in the response headers.
    let echoed = response
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(echoed.as_deref(), Some(request_id.as_str()));
    let mut stream = response.into_inner();
    let mut conversation = String::new();
    while let Some(response) = stream.message().await.unwrap_or_else(|e| panic!("{e:?}")) {
        if let Some(Event::Accepted(accepted)) = response.event {
            conversation = accepted.conversation_id;
        }
    }

    let lines = super::support::logs::lines_containing(&request_id);
    let messages: Vec<_> = lines
        .iter()
        .map(|line| line["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        messages,
        ["turn started", "turn ended", "rpc finished"],
        "{lines:?}"
    );
    // Every line of the request carries its id, through the request's span.
    assert!(
        lines
            .iter()
            .all(|line| line["span"]["request_id"] == request_id.as_str()),
        "{lines:?}"
    );
    let rpc = &lines[2];
    assert_eq!(rpc["method"], "/chat.v1.ChatService/SendMessage");
    assert_eq!(rpc["code"], "OK");
    assert!(rpc["duration_ms"].as_f64().is_some());
    let user_id = app
        .db
        .count("SELECT count(*) AS n FROM users WHERE subject = 'alice'")
        .await;
    assert_eq!(user_id, 1);
    let ended = &lines[1];
    assert_eq!(ended["conversation_id"], conversation.as_str());
    assert_eq!(ended["outcome"], "completed");
    assert_eq!(ended["input_tokens"], 9);
    assert_eq!(ended["output_tokens"], 2);
    assert!(ended["duration_ms"].as_f64().is_some());
    assert!(ended["time_to_first_token_ms"].as_f64().is_some());
    // From the model's end to the stored outcome: part of the turn, so no longer than it.
    let after_model = ended["after_model_ms"].as_f64();
    assert!(
        after_model.is_some_and(|after| ended["duration_ms"].as_f64() >= Some(after)),
        "{ended}"
    );
    // The internal user id, a UUID, not the token's subject.
    let logged_user = ended["user_id"].as_str().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(logged_user).is_ok(), "{logged_user}");
    assert_eq!(lines[0]["user_id"], logged_user);
    // Neither the message nor the reply is ever logged.
    assert!(!super::support::logs::any_line_contains(&content));
    assert!(!super::support::logs::any_line_contains("Confidential"));
}

/// A second replica of the service, on the same database and model as `app`.
pub(super) async fn replica_of(app: &TestApp, fake: &FakeLlm) -> TestApp {
    let url = app.config.database.url.clone();
    TestApp::with_fake_llm(fake, |config| config.database.url = url).await
}

/// Alice deletes her conversation through `deleting`, then writes to it through `sending`.
async fn send_after_delete(deleting: &TestApp, sending: &TestApp, conversation: &str) -> Status {
    deleting
        .conversations()
        .delete_conversation(deleting.request(
            "alice",
            chat_service::api::proto::DeleteConversationRequest {
                conversation_id: conversation.to_owned(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("delete: {e:?}"));
    send(sending, "alice", conversation, "Still there?")
        .await
        .expect_err("the conversation is gone")
}

#[tokio::test]
async fn a_turn_taken_on_another_replica_is_in_the_next_context() {
    let fake = FakeLlm::start().await;
    let a = TestApp::with_fake_llm(&fake, |_| {}).await;
    let b = replica_of(&a, &fake).await;

    let conversation = send_ok(&a, "alice", "", "first, on A")
        .await
        .conversation_id();
    send_ok(&b, "alice", &conversation, "second, on B").await;
    let third = send_ok(&a, "alice", &conversation, "third, on A").await;
    assert!(third.error.is_none(), "{:?}", third.error);
    assert_eq!(third.text(), "You said: third, on A.");

    // Whatever A remembered, the request whose reply was relayed carried B's turn.
    let last = fake
        .received()
        .pop()
        .unwrap_or_else(|| panic!("no request"));
    let contents: Vec<String> = last.messages().into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        contents,
        [
            "first, on A",
            "You said: first, on A.",
            "second, on B",
            "You said: second, on B.",
            "third, on A",
        ]
    );
    // A remembered the conversation, learned from its message's sequence that B had written
    // since, and read the history afresh.
    let metrics = a.scrape_metrics().await;
    assert!(
        metrics.contains(r#"chat_turn_history_total{source="stale_memory"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"source="memory""#), "{metrics}");
    assert!(!metrics.contains(r#"source="database""#), "{metrics}");
    // And the user message was stored once.
    let stored: Vec<String> =
        a.db.messages(&conversation)
            .await
            .into_iter()
            .map(|m| m.content)
            .collect();
    assert_eq!(
        stored,
        [
            "first, on A",
            "You said: first, on A.",
            "second, on B",
            "You said: second, on B.",
            "third, on A",
            "You said: third, on A.",
        ]
    );
}

#[tokio::test]
async fn a_conversation_deleted_on_another_replica_is_not_found() {
    let fake = FakeLlm::start().await;
    let a = TestApp::with_fake_llm(&fake, |_| {}).await;
    let b = replica_of(&a, &fake).await;
    let conversation = send_ok(&a, "alice", "", "Remember me")
        .await
        .conversation_id();

    let status = send_after_delete(&b, &a, &conversation).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // A still remembered the conversation, yet asked the model nothing.
    assert_eq!(fake.received().len(), 1, "the model was not asked again");
    assert_eq!(
        a.db.count("SELECT count(*) AS n FROM messages").await,
        0,
        "nothing was written"
    );
}

#[tokio::test]
async fn turns_on_one_replica_send_the_same_newest_messages_as_the_database_holds() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| config.turns.history_messages = 4).await;
    let conversation = send_ok(&app, "alice", "", "turn 1").await.conversation_id();
    for turn in 2..=5 {
        send_ok(&app, "alice", &conversation, &format!("turn {turn}")).await;
    }
    send_ok(&app, "alice", &conversation, "turn 6").await;

    let stored: Vec<(String, String)> = app
        .db
        .messages(&conversation)
        .await
        .into_iter()
        .map(|m| (m.role, m.content))
        .collect();
    assert_eq!(stored.len(), 12);
    // The last turn's context: the three newest messages before it, then its own.
    let expected = stored[7..11].to_vec();
    assert_eq!(expected[3], ("user".to_owned(), "turn 6".to_owned()));
    assert_eq!(fake.received()[5].messages(), expected);
    let metrics = app.scrape_metrics().await;
    assert!(
        metrics.contains(r#"chat_turn_history_total{source="memory"} 5"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"source="database""#), "{metrics}");
}

#[tokio::test]
async fn a_conversation_deleted_here_is_not_found_afterwards() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let conversation = send_ok(&app, "alice", "", "Remember me")
        .await
        .conversation_id();
    let status = send_after_delete(&app, &app, &conversation).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(fake.received().len(), 1, "the model was not asked again");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM messages").await, 0);
}
