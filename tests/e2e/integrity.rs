//! The stored transcript is what the client was shown, whatever the model sends.

use chat_service::api::proto::{SendMessageResponse, send_message_response::Event};

use super::support::{
    FakeLlm, Script, TestApp,
    streams::{error_at_end, read_to_end},
};

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
    error_at_end(&mut stream).await
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

/// A model that writes on and on is cut off at the reply limit: the client is told, what it was
/// shown is not stored as a reply, and its message stays.
#[tokio::test]
async fn a_reply_beyond_the_size_limit_fails_and_stores_no_reply() {
    let fake = FakeLlm::start().await;
    let delta = "x".repeat(chat_service::llm::MAX_REPLY_BYTES / 4);
    fake.script([Script::Reply {
        deltas: vec![delta.clone(); 5],
        delay: std::time::Duration::ZERO,
        usage: None,
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let mut stream = app.open_stream("alice", "", "write forever").await;
    let (events, status) = read_to_end(&mut stream).await;
    let status = status.unwrap_or_else(|| panic!("the reply completed"));
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("larger than the service accepts"),
        "{status:?}"
    );
    let shown: usize = events
        .iter()
        .filter_map(|response| match &response.event {
            Some(Event::Delta(delta)) => Some(delta.text.len()),
            _ => None,
        })
        .sum();
    assert!(
        shown <= chat_service::llm::MAX_REPLY_BYTES,
        "{shown} bytes shown"
    );
    let conversation = events
        .iter()
        .find_map(|response| match &response.event {
            Some(Event::Accepted(accepted)) => Some(accepted.conversation_id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("never accepted"));
    let stored = app.db.messages(&conversation).await;
    assert_eq!(
        stored.len(),
        1,
        "only the user's message is stored: {stored:?}"
    );
    assert_eq!(stored[0].content, "write forever");
}

#[tokio::test]
async fn a_reply_whose_connection_was_cut_is_stored_on_another() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Reply {
        deltas: vec!["one ".into(), "two ".into(), "three".into()],
        delay: std::time::Duration::from_millis(150),
        usage: None,
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let mut stream = app.open_stream("alice", "", "hello").await;
    let mut conversation = None;
    while conversation.is_none() {
        match stream.message().await.unwrap_or_else(|e| panic!("{e:?}")) {
            Some(SendMessageResponse {
                event: Some(Event::Accepted(accepted)),
                ..
            }) => conversation = Some(accepted.conversation_id),
            other => panic!("expected `accepted`, got {other:?}"),
        }
    }
    // What a failover or an operator does to every connection the service holds.
    app.db
        .run_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
    let (text, _, completed) = read_all(stream).await;
    assert!(completed, "the reply was not completed");
    let conversation = conversation.unwrap_or_else(|| panic!("no conversation"));
    let stored = app.db.messages(&conversation).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(
        (stored[1].content.as_str(), stored[1].status.as_str()),
        (text.as_str(), "complete")
    );
}

#[tokio::test]
async fn a_reply_whose_write_is_cut_off_is_stored_by_another_try() {
    use super::support::{database::execute, wait::eventually};
    let fake = FakeLlm::start().await;
    fake.script([Script::Reply {
        deltas: vec!["one ".into(), "two".into()],
        delay: std::time::Duration::from_millis(100),
        usage: None,
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let mut stream = app.open_stream("alice", "", "hello").await;
    let conversation = match stream.message().await.unwrap_or_else(|e| panic!("{e:?}")) {
        Some(SendMessageResponse {
            event: Some(Event::Accepted(accepted)),
            ..
        }) => accepted.conversation_id,
        other => panic!("expected `accepted`, got {other:?}"),
    };
    // The reply's write waits for the conversation's row, which the test holds...
    let mut blocker = app.db.connect().await;
    execute(
        &mut blocker,
        &format!("BEGIN; SELECT 1 FROM conversations WHERE id = '{conversation}' FOR UPDATE"),
    )
    .await;
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND datname = current_database()";
    eventually("the reply's write waits for the row", || async {
        app.db.count(waiting).await == 1
    })
    .await;
    // ...until an operator terminates the session it waits in (SQLSTATE 57P01, as in a
    // failover). The service tries again on another connection, which waits in turn.
    let terminated = "SELECT count(*) AS n FROM (SELECT pg_terminate_backend(pid) \
                      FROM pg_stat_activity \
                      WHERE wait_event_type = 'Lock' AND datname = current_database()) t";
    assert_eq!(app.db.count(terminated).await, 1);
    eventually("another try waits for the row", || async {
        app.db.count(waiting).await == 1
    })
    .await;
    execute(&mut blocker, "COMMIT").await;

    let (text, _, completed) = read_all(stream).await;
    assert!(completed, "the reply was not completed");
    let stored = app.db.messages(&conversation).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1].content, text);
    assert_eq!(stored[1].status, "complete");
}

/// Deletes alice's conversation, or alice herself, behind the replicas' backs.
async fn after_deleting(statement: &str) {
    let fake = FakeLlm::start().await;
    let a = TestApp::with_fake_llm(&fake, |_| {}).await;
    let b = super::send_message::replica_of(&a, &fake).await;
    // Both replicas take a turn, so both remember the conversation and alice.
    let conversation = super::send_message::send_ok(&a, "alice", "", "private history")
        .await
        .conversation_id();
    super::send_message::send_ok(&b, "alice", &conversation, "more of it").await;
    let asked = fake.received().len();

    a.db.run_sql(&statement.replace("{conversation}", &conversation))
        .await;

    for replica in [&a, &b] {
        let status = super::send_message::send(replica, "alice", &conversation, "Still there?")
            .await
            .expect_err("the conversation is gone");
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    }
    assert_eq!(fake.received().len(), asked, "no replica asked the model");
    for table in ["messages", "turns"] {
        assert_eq!(
            a.db.count(&format!(
                "SELECT count(*) AS n FROM {table} WHERE conversation_id = '{conversation}'"
            ))
            .await,
            0,
            "{table} of the deleted conversation are left"
        );
    }
}

#[tokio::test]
async fn a_deleted_conversation_reaches_no_model_from_any_replica() {
    after_deleting("DELETE FROM conversations WHERE id = '{conversation}'").await;
}

#[tokio::test]
async fn a_deleted_users_conversations_reach_no_model_from_any_replica() {
    after_deleting("DELETE FROM users WHERE subject = 'alice'").await;
}

#[tokio::test]
async fn a_user_deleted_behind_the_services_back_starts_afresh_on_retry() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let old = super::send_message::send_ok(&app, "alice", "", "before")
        .await
        .conversation_id();
    app.db
        .run_sql("DELETE FROM users WHERE subject = 'alice'")
        .await;
    let asked = fake.received().len();

    // The replica still believes in alice: her write finds her gone, and nothing is written.
    let status = super::send_message::send(&app, "alice", "", "after")
        .await
        .expect_err("alice was deleted");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(fake.received().len(), asked, "the model was not asked");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users").await, 0);

    // Trying again makes her a new user, who sees nothing of the old one.
    let new = super::send_message::send_ok(&app, "alice", "", "after")
        .await
        .conversation_id();
    assert_ne!(new, old);
    let contents: Vec<String> = app
        .db
        .messages(&new)
        .await
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(contents, ["after", "You said: after."]);
    assert_eq!(
        fake.received().last().map(|r| r.messages().len()),
        Some(1),
        "only the new message went to the model"
    );
}

#[tokio::test]
async fn a_tool_call_is_announced_only_once_stored() {
    use super::support::{database::execute, wait::eventually};
    super::support::logs::capture();
    let fake = FakeLlm::start().await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    fake.script([Script::Gated {
        gate: gate.clone(),
        then: Box::new(Script::ToolCalls {
            deltas: vec!["Let me look.".into()],
            fragments: vec![(
                0,
                Some("call_1".into()),
                Some("lookup".into()),
                r#"{"q":"x"}"#.into(),
            )],
        }),
    }]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let conversation = app.create_conversation("alice", "tools").await;
    // The test holds the conversation's row, so the reply's write waits...
    let mut blocker = app.db.connect().await;
    execute(
        &mut blocker,
        &format!("BEGIN; SELECT 1 FROM conversations WHERE id = '{conversation}' FOR UPDATE"),
    )
    .await;
    let turn = tokio::spawn({
        let app_addr = app.addr;
        let request = app.request(
            "alice",
            chat_service::api::proto::SendMessageRequest {
                conversation_id: conversation.clone(),
                content: "look it up".into(),
                ..Default::default()
            },
        );
        async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{app_addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client =
                chat_service::api::proto::chat_service_client::ChatServiceClient::new(channel);
            let mut stream = client.send_message(request).await?.into_inner();
            let (responses, error) = read_to_end(&mut stream).await;
            let events: Vec<Event> = responses.into_iter().filter_map(|r| r.event).collect();
            Ok::<_, tonic::Status>((events, error))
        }
    });
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND datname = current_database()";
    // ...first the user message's, which the test lets through; the model answers only then...
    eventually("the user message's write waits for the row", || async {
        app.db.count(waiting).await == 1
    })
    .await;
    execute(&mut blocker, "COMMIT").await;
    eventually("the user message is stored", || async {
        app.db.messages(&conversation).await.len() == 1
    })
    .await;
    execute(
        &mut blocker,
        &format!("BEGIN; SELECT 1 FROM conversations WHERE id = '{conversation}' FOR UPDATE"),
    )
    .await;
    gate.notify_one();
    eventually("the reply's write waits for the row", || async {
        app.db.count(waiting).await == 1
    })
    .await;
    // ...and the conversation is deleted before the reply could be stored.
    execute(
        &mut blocker,
        &format!("DELETE FROM conversations WHERE id = '{conversation}'; COMMIT"),
    )
    .await;

    let (events, error) = turn.await.unwrap().unwrap();
    let error = error.expect("the reply could not be stored");
    assert_eq!(error.code(), tonic::Code::NotFound, "{error:?}");
    assert!(
        !events.iter().any(|e| matches!(e, Event::ToolCall(_))),
        "a tool call that was never stored was announced: {events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Delta(_))));
    // Operators see what became of it: not a completed turn.
    let turn_ended = || {
        super::support::logs::lines_containing(&conversation)
            .into_iter()
            .find(|line| line["message"] == "turn ended")
    };
    eventually("the turn's end is logged", || async {
        turn_ended().is_some()
    })
    .await;
    assert_eq!(turn_ended().unwrap()["outcome"], "conversation_deleted");
}

/// A model whose port refuses connections for a moment (it restarts, say) is tried again: its
/// port comes up 300 ms after the first attempt was refused, and the turn completes as if
/// nothing had happened.
#[tokio::test]
async fn a_model_that_refuses_connections_for_a_moment_is_tried_again() {
    use chat_service::{
        api::proto::SendMessageRequest,
        llm::{CatalogSettings, ModelSettings, OpenAiSettings},
    };

    use super::support::{app::llm_settings, logs, wait::eventually};
    logs::capture();
    // A port that nothing listens on, until the model comes up there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap();
    let app = TestApp::spawn_with(|config| {
        let settings = OpenAiSettings {
            max_retries: 6,
            retry_base_delay: std::time::Duration::from_millis(100),
            ..llm_settings(format!("http://{addr}/v1"))
        };
        config.model = CatalogSettings::of_one(ModelSettings::OpenAi(settings), 0);
    })
    .await;
    let request_id = format!("refused-{}", uuid::Uuid::new_v4());
    let mut request = app.request(
        "alice",
        SendMessageRequest {
            content: "Hello".into(),
            ..Default::default()
        },
    );
    request
        .metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    let mut chat = app.chat();
    let turn = tokio::spawn(async move {
        let mut stream = chat.send_message(request).await?.into_inner();
        Ok::<_, tonic::Status>(read_to_end(&mut stream).await)
    });

    let refused = || {
        logs::lines_containing(&request_id)
            .into_iter()
            .filter(|line| line["message"] == "the model request failed; trying again")
            .count()
    };
    eventually("the first attempt is refused", || async { refused() > 0 }).await;
    // The model is down for 300 ms more: the length of the outage, not a wait for an event.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _model = FakeLlm::start_on(addr).await;

    let (responses, error) = turn.await.unwrap().unwrap();
    assert!(error.is_none(), "the turn failed: {error:?}");
    let completed = responses.iter().find_map(|response| match &response.event {
        Some(Event::Completed(completed)) => completed.message.clone(),
        _ => None,
    });
    let reply = completed.expect("the turn completed");
    assert!(refused() >= 1);
    // Logged inside the model call's span, the line still shows the request's span, and so
    // its id where a log collector looks for it.
    let retried = logs::lines_containing(&request_id)
        .into_iter()
        .filter(|line| line["message"] == "the model request failed; trying again")
        .collect::<Vec<_>>();
    assert!(
        retried
            .iter()
            .all(|line| line["span"]["request_id"] == request_id.as_str()
                && line["span"]["rpc.method"] == "SendMessage"),
        "{retried:?}"
    );
    let stored = app.db.messages(&reply.conversation_id).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1].status, "complete");
    assert_eq!(stored[1].content, reply.content);
    assert!(!reply.content.is_empty());
}
