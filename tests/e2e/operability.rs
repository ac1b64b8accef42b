use std::time::Duration;

use chat_service::api::proto::{ListConversationsRequest, send_message_response::Event};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::support::{FakeLlm, Script, TestApp, tcp_proxy::TcpProxy};

async fn next_status(
    stream: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> ServingStatus {
    let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap_or_else(|_| panic!("no health change within 10 s"))
        .unwrap_or_else(|e| panic!("{e:?}"))
        .unwrap_or_else(|| panic!("the watch ended"));
    response.status()
}

#[tokio::test]
async fn health_follows_the_database_and_goes_not_serving_on_shutdown() {
    let proxy = TcpProxy::to_postgres().await;
    let mut app = TestApp::spawn_with(|config| {
        config.database.url = proxy.through(&config.database.url);
        config.database.pool.acquire_timeout = Duration::from_millis(500);
        config.database.pool.connect_timeout = Duration::from_millis(500);
    })
    .await;

    let mut health = HealthClient::new(app.channel());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "chat.v1.ConversationService".to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);

    proxy.cut();
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    let liveness = health
        .check(HealthCheckRequest {
            service: "liveness".to_owned(),
        })
        .await;
    assert_eq!(
        liveness.map(|r| r.into_inner().status()).ok(),
        Some(ServingStatus::Serving)
    );
    let check = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(check.into_inner().status(), ServingStatus::NotServing);
    // A request meanwhile is told to come back later, without internals.
    let request = app.request("alice", ListConversationsRequest::default());
    let status = app
        .conversations()
        .list_conversations(request)
        .await
        .expect_err("served");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !status.message().contains("127.0.0.1"),
        "{}",
        status.message()
    );

    proxy.restore();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);
    let request = app.request("alice", ListConversationsRequest::default());
    app.conversations()
        .list_conversations(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));

    app.begin_shutdown();
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    drop(watch);
    app.stopped().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn shutdown_lets_a_stream_in_flight_finish_and_refuses_new_rpcs() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Reply {
        deltas: (0..5).map(|i| format!("part {i} ")).collect(),
        delay: Duration::from_millis(100),
        usage: None,
    }]);
    let mut app = TestApp::with_fake_llm(&fake, |config| {
        config.server.shutdown_grace = Duration::from_secs(20)
    })
    .await;
    let mut stream = app.open_stream("alice", "", "slowly").await;
    let mut events = Vec::new();
    // Shut down once the reply has started.
    while !matches!(events.last(), Some(Event::Delta(_))) {
        let response = stream
            .message()
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .unwrap_or_default();
        events.push(response.event.unwrap_or_else(|| panic!("empty event")));
    }
    app.begin_shutdown();

    while let Some(response) = stream
        .message()
        .await
        .unwrap_or_else(|e| panic!("the stream was cut: {e:?}"))
    {
        events.push(response.event.unwrap_or_else(|| panic!("empty event")));
    }
    let Some(Event::Completed(completed)) = events.last() else {
        panic!("no completed event: {events:?}")
    };
    let reply = completed.message.clone().unwrap_or_default();
    assert_eq!(reply.content, "part 0 part 1 part 2 part 3 part 4 ");
    app.stopped().await.unwrap_or_else(|e| panic!("{e}"));

    let stored = app
        .db
        .count(&format!(
            "SELECT count(*) AS n FROM messages WHERE id = '{}' AND status = 'complete'",
            reply.id
        ))
        .await;
    assert_eq!(stored, 1);
    let request = app.request("alice", ListConversationsRequest::default());
    let status = app
        .conversations()
        .list_conversations(request)
        .await
        .expect_err("served after shutdown");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn shutdown_cancels_streams_that_outlast_the_grace_period_and_keeps_their_text() {
    let fake = FakeLlm::start().await;
    fake.script([Script::Stall {
        deltas: vec!["This will ".into(), "never end".into()],
    }]);
    let mut app = TestApp::with_fake_llm(&fake, |config| {
        config.server.shutdown_grace = Duration::from_millis(300)
    })
    .await;
    let mut stream = app.open_stream("alice", "", "go on").await;
    let mut conversation = String::new();
    let mut text = String::new();
    while text != "This will never end" {
        match stream
            .message()
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .and_then(|r| r.event)
        {
            Some(Event::Accepted(accepted)) => conversation = accepted.conversation_id,
            Some(Event::Delta(delta)) => text.push_str(&delta.text),
            other => panic!("unexpected {other:?}"),
        }
    }
    app.begin_shutdown();

    let status = match stream.message().await {
        Ok(Some(response)) => panic!("unexpected event {:?}", response.event),
        Ok(None) => panic!("the stream ended without an error"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    // run_until returns only once the partial reply is stored.
    app.stopped().await.unwrap_or_else(|e| panic!("{e}"));
    let stored = app.db.messages(&conversation).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        (stored[1].content.as_str(), stored[1].status.as_str()),
        ("This will never end", "cancelled")
    );
    fake.wait_for_closed_streams(1).await;
}

#[tokio::test]
async fn metrics_count_rpcs_tokens_first_tokens_and_model_errors() {
    let fake = FakeLlm::start().await;
    fake.script([
        Script::Reply {
            deltas: vec!["a".into(), "b".into()],
            delay: Duration::ZERO,
            usage: Some((11, 2)),
        },
        Script::Status {
            code: 400,
            retry_after: None,
        },
    ]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let mut stream = app.open_stream("alice", "", "count me").await;
    while stream
        .message()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .is_some()
    {}
    let mut stream = app.open_stream("alice", "", "fail me").await;
    while let Ok(Some(_)) = stream.message().await {}
    let request = app.request(
        "alice",
        ListConversationsRequest {
            page_size: -1,
            page_token: String::new(),
        },
    );
    let _ = app.conversations().list_conversations(request).await;

    let text = app.scrape_metrics().await;
    for expected in [
        r#"chat_rpc_requests_total{method="/chat.v1.ChatService/SendMessage",code="OK"} 1"#,
        r#"chat_rpc_requests_total{method="/chat.v1.ChatService/SendMessage",code="UNAVAILABLE"} 1"#,
        r#"chat_rpc_requests_total{method="/chat.v1.ConversationService/ListConversations",code="INVALID_ARGUMENT"} 1"#,
        r#"chat_rpc_duration_seconds_count{method="/chat.v1.ChatService/SendMessage",code="OK"} 1"#,
        "chat_time_to_first_token_seconds_count 1",
        "chat_overhead_seconds_count 1",
        r#"chat_tokens_total{model="fake-model",kind="input"} 11"#,
        r#"chat_tokens_total{model="fake-model",kind="output"} 2"#,
        r#"chat_tokens_total{model="fake-model",kind="cached_input"} 0"#,
        r#"chat_model_errors_total{kind="http"} 1"#,
        "chat_active_streams 0",
        r#"chat_db_pool_connections{state="idle"}"#,
        r#"chat_db_pool_connections{state="in_use"}"#,
    ] {
        assert!(text.contains(expected), "missing {expected}:\n{text}");
    }
}

#[tokio::test]
async fn a_request_id_is_generated_when_the_client_sends_none() {
    let app = TestApp::spawn().await;
    let request = app.request("alice", ListConversationsRequest::default());
    let response = app
        .conversations()
        .list_conversations(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let id = response
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id:?}");
    // Errors carry it too.
    let request = app.request(
        "alice",
        ListConversationsRequest {
            page_size: -5,
            page_token: String::new(),
        },
    );
    let status = app
        .conversations()
        .list_conversations(request)
        .await
        .expect_err("accepted");
    assert!(
        status.metadata().get("x-request-id").is_some(),
        "{status:?}"
    );
}

#[tokio::test]
async fn only_a_safe_client_request_id_is_kept_and_an_unsafe_one_is_logged_apart() {
    super::support::logs::capture();
    let app = TestApp::spawn().await;
    let echoed = |sent: &'static str| {
        let app = &app;
        async move {
            let mut request = app.request(
                "alice",
                ListConversationsRequest {
                    page_size: 1,
                    page_token: String::new(),
                },
            );
            request.metadata_mut().insert(
                "x-request-id",
                sent.parse().unwrap_or_else(|e| panic!("{e}")),
            );
            let response = app
                .conversations()
                .list_conversations(request)
                .await
                .unwrap_or_else(|e| panic!("{e:?}"));
            response
                .metadata()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_default()
        }
    };
    let safe = "01J9ZK3W7Q-req.42:retry_1";
    assert_eq!(echoed(safe).await, safe);

    let forged = r#"x"level="ERROR"msg="forged"#;
    let replaced = echoed(forged).await;
    assert_ne!(replaced, forged);
    assert!(
        uuid::Uuid::parse_str(&replaced).is_ok(),
        "{replaced:?} is not a generated id"
    );
    let lines = super::support::logs::lines_containing(&replaced);
    assert!(
        lines.iter().any(|line| line["client_request_id"]
            .as_str()
            .is_some_and(|client| client.contains("forged"))),
        "the client's value was not logged apart: {lines:?}"
    );
}
