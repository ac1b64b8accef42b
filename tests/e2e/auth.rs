use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chat_service::{
    api::JwtKey,
    api::proto::{
        CreateConversationRequest, DeleteConversationRequest, GetConversationRequest,
        ListConversationsRequest, ListMessagesRequest, SendMessageRequest,
    },
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::{Code, Request, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::support::{TestApp, app::SECRET, app::with_token};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Calls every RPC of both services, each request built by `request`, and returns the statuses
/// (None where a call succeeded).
async fn call_every_rpc(
    app: &TestApp,
    authorize: impl Fn(&mut tonic::metadata::MetadataMap),
) -> Vec<Option<Status>> {
    fn build<T>(message: T, authorize: &impl Fn(&mut tonic::metadata::MetadataMap)) -> Request<T> {
        let mut request = Request::new(message);
        authorize(request.metadata_mut());
        request
    }
    let id = uuid::Uuid::now_v7().to_string();
    let mut conversations = app.conversations();
    let mut chat = app.chat();
    vec![
        conversations
            .create_conversation(build(CreateConversationRequest::default(), &authorize))
            .await
            .err(),
        conversations
            .list_conversations(build(ListConversationsRequest::default(), &authorize))
            .await
            .err(),
        conversations
            .get_conversation(build(
                GetConversationRequest {
                    conversation_id: id.clone(),
                },
                &authorize,
            ))
            .await
            .err(),
        conversations
            .list_messages(build(
                ListMessagesRequest {
                    conversation_id: id.clone(),
                    page_size: 0,
                    page_token: String::new(),
                },
                &authorize,
            ))
            .await
            .err(),
        conversations
            .delete_conversation(build(
                DeleteConversationRequest {
                    conversation_id: id.clone(),
                },
                &authorize,
            ))
            .await
            .err(),
        chat.send_message(build(
            SendMessageRequest {
                conversation_id: id,
                content: "hi".to_owned(),
                ..Default::default()
            },
            &authorize,
        ))
        .await
        .err(),
    ]
}

async fn assert_unauthenticated(
    app: &TestApp,
    authorization: Option<&str>,
    expected_message: &str,
) {
    let statuses = call_every_rpc(app, |metadata| {
        if let Some(value) = authorization {
            metadata.insert(
                "authorization",
                value.parse().unwrap_or_else(|e| panic!("{e}")),
            );
        }
    })
    .await;
    for status in statuses {
        let status = status.unwrap_or_else(|| panic!("{authorization:?} was accepted"));
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{authorization:?}: {status:?}"
        );
        assert!(
            status.message().contains(expected_message),
            "{authorization:?}: {:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthenticated_and_change_nothing() {
    let app = TestApp::spawn().await;
    let expired = hs256(
        &json!({"sub": "alice", "exp": now() - 3600}),
        SECRET.as_bytes(),
    );
    let wrong_key = hs256(
        &json!({"sub": "alice", "exp": now() + 3600}),
        b"some-other-secret-of-at-least-32-bytes",
    );
    let no_expiry = hs256(&json!({"sub": "alice"}), SECRET.as_bytes());
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(json!({"sub": "alice", "exp": now() + 3600}).to_string());
    let unsigned = format!("{header}.{claims}.");

    assert_unauthenticated(&app, None, "missing credentials").await;
    assert_unauthenticated(&app, Some("Basic YWxpY2U6cGFzcw=="), "Bearer").await;
    assert_unauthenticated(&app, Some("Bearer garbage"), "not a well-formed JWT").await;
    assert_unauthenticated(&app, Some(&format!("Bearer {expired}")), "expired").await;
    assert_unauthenticated(&app, Some(&format!("Bearer {wrong_key}")), "signature").await;
    assert_unauthenticated(&app, Some(&format!("Bearer {no_expiry}")), "`exp`").await;
    assert_unauthenticated(&app, Some(&format!("Bearer {unsigned}")), "alg: none").await;

    assert_eq!(app.db.count("SELECT count(*) AS n FROM users").await, 0);
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM conversations")
            .await,
        0
    );
}

#[tokio::test]
async fn a_valid_token_creates_its_user_once() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        let request = app.request("alice", ListConversationsRequest::default());
        app.conversations()
            .list_conversations(request)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM users WHERE subject = 'alice'")
            .await,
        1
    );
}

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A server that verifies tokens with the public key in the fixture `name`.
async fn with_public_key_file(
    name: &str,
    customize: impl FnOnce(&mut chat_service::Config),
) -> TestApp {
    let (path, pem) = (fixture_path(name), fixture(name));
    TestApp::spawn_with(|config| {
        config.auth.key = JwtKey::PublicKeyPem { path, pem };
        customize(config);
    })
    .await
}

#[tokio::test]
async fn es256_public_keys_verify_tokens_and_check_issuer_and_audience() {
    let app = with_public_key_file("es256-public.pem", |config| {
        config.auth.issuer = Some("https://idp.example".to_owned());
        config.auth.audience = Some("chat".to_owned());
    })
    .await;
    let key =
        EncodingKey::from_ec_pem(&fixture("es256-private.pem")).unwrap_or_else(|e| panic!("{e}"));
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let exp = now() + 3600;
    let good =
        sign(json!({"sub": "carol", "exp": exp, "iss": "https://idp.example", "aud": "chat"}));
    let wrong_issuer =
        sign(json!({"sub": "carol", "exp": exp, "iss": "https://evil.example", "aud": "chat"}));
    let wrong_audience =
        sign(json!({"sub": "carol", "exp": exp, "iss": "https://idp.example", "aud": "other"}));
    // An HS256 token "signed" with the public key as secret: the classic key-confusion attack.
    let confused = hs256(
        &json!({"sub": "carol", "exp": exp, "iss": "https://idp.example", "aud": "chat"}),
        &fixture("es256-public.pem"),
    );

    let list = |token: String| list_with_token(&app, token);
    assert!(list(good).await.is_ok());
    for (token, expected) in [
        (wrong_issuer, "issuer"),
        (wrong_audience, "aud"),
        (confused, "HS256"),
    ] {
        let status = list(token).await.expect_err("accepted");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains(expected), "{}", status.message());
    }
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel());
    for service in ["", "chat.v1.ChatService", "chat.v1.ConversationService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service}: {e:?}"));
        assert_eq!(
            response.into_inner().status(),
            ServingStatus::Serving,
            "{service}"
        );
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(app.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let response = responses
        .message()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .unwrap_or_default();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "chat.v1.ChatService",
        "chat.v1.ConversationService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

/// Whether a ListConversations with `claims` signed by the test secret is served.
/// ListConversations with `token`: whether the server accepted it.
async fn list_with_token(app: &TestApp, token: String) -> Result<(), Status> {
    app.conversations()
        .list_conversations(with_token(ListConversationsRequest::default(), &token))
        .await
        .map(|_| ())
}

async fn accepted(app: &TestApp, claims: serde_json::Value) -> Result<(), Status> {
    list_with_token(app, hs256(&claims, SECRET.as_bytes())).await
}

#[tokio::test]
async fn an_audience_may_be_a_string_or_an_array() {
    let app = TestApp::spawn_with(|config| config.auth.audience = Some("chat".into())).await;
    let exp = now() + 3600;
    for aud in [
        json!("chat"),
        json!(["chat", "other"]),
        json!(["other", "chat"]),
    ] {
        let served = accepted(&app, json!({"sub": "alice", "exp": exp, "aud": aud})).await;
        assert!(served.is_ok(), "aud {aud}: {served:?}");
    }
    for aud in [json!("other"), json!(["other", "another"]), json!([])] {
        let refused = accepted(&app, json!({"sub": "alice", "exp": exp, "aud": aud}))
            .await
            .expect_err("a foreign audience was accepted");
        assert_eq!(refused.code(), Code::Unauthenticated, "aud {aud}");
        assert!(refused.message().contains("aud"), "{refused:?}");
    }
}

#[tokio::test]
async fn not_before_and_expiry_are_checked_with_a_small_leeway() {
    let app = TestApp::spawn_with(|config| {
        config.auth.leeway = std::time::Duration::from_secs(60);
    })
    .await;
    let (now, later) = (now(), now() + 3600);
    // Clocks a few seconds apart: accepted.
    for claims in [
        json!({"sub": "alice", "exp": later, "nbf": now + 30}),
        json!({"sub": "alice", "exp": now - 30}),
    ] {
        let served = accepted(&app, claims.clone()).await;
        assert!(served.is_ok(), "{claims}: {served:?}");
    }
    let early = accepted(
        &app,
        json!({"sub": "alice", "exp": later, "nbf": now + 600}),
    )
    .await
    .expect_err("a token not valid yet was accepted");
    assert_eq!(early.code(), Code::Unauthenticated);
    assert!(early.message().contains("not valid yet"), "{early:?}");
    let late = accepted(&app, json!({"sub": "alice", "exp": now - 600}))
        .await
        .expect_err("an expired token was accepted");
    assert!(late.message().contains("expired"), "{late:?}");
}

#[tokio::test]
async fn an_ed25519_public_key_file_verifies_eddsa_tokens() {
    let app = with_public_key_file("ed25519-public.pem", |_| {}).await;
    let key =
        EncodingKey::from_ed_pem(&fixture("ed25519-private.pem")).unwrap_or_else(|e| panic!("{e}"));
    let token = |sub: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &json!({"sub": sub, "exp": now() + 3600}),
            &key,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let list = |token: String| list_with_token(&app, token);
    assert!(list(token("dora")).await.is_ok());
    // Signed by another Ed25519 key.
    let other = EncodingKey::from_ed_pem(
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBQwbzOaxLBmjQqrRNn1SfJgRfW4v0SlfHtobHBxXvDy\n-----END PRIVATE KEY-----\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &json!({"sub": "dora", "exp": now() + 3600}),
        &other,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let status = list(forged).await.expect_err("accepted");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("signature"),
        "{}",
        status.message()
    );
}
