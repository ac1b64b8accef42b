//! Tokens from an identity provider that publishes its keys as a JSON Web Key Set: every kind of
//! key it may publish, keys that rotate, and a provider that goes away. The provider here is a
//! real HTTP server whose key set the tests change.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use chat_service::api::{JwtKey, jwks::JwksSettings, proto::ListConversationsRequest};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::json;
use tonic::Code;

use super::support::{TestApp, app::with_token, wait::eventually};

#[derive(Default)]
struct Published {
    keys: Vec<Jwk>,
    /// `Cache-Control: max-age`, when set.
    max_age: Option<u64>,
    /// Answer 503 instead, as a provider in an outage does.
    down: bool,
    fetches: usize,
}

/// The identity provider's key endpoint.
struct KeyServer {
    addr: SocketAddr,
    published: Arc<Mutex<Published>>,
}

async fn serve_keys(State(published): State<Arc<Mutex<Published>>>) -> Response {
    let mut published = published.lock().unwrap();
    published.fetches += 1;
    if published.down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let mut response = Response::builder().header("content-type", "application/json");
    if let Some(age) = published.max_age {
        response = response.header("cache-control", format!("max-age={age}"));
    }
    response
        .body(Body::from(json!({ "keys": published.keys }).to_string()))
        .unwrap()
}

impl KeyServer {
    async fn start(keys: Vec<Jwk>) -> Self {
        let published = Arc::new(Mutex::new(Published {
            keys,
            ..Published::default()
        }));
        let router = Router::new()
            .route("/.well-known/jwks.json", get(serve_keys))
            .with_state(published.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, published }
    }

    fn settings(&self, min_refresh_interval: Duration) -> JwksSettings {
        JwksSettings {
            url: format!("http://{}/.well-known/jwks.json", self.addr)
                .parse()
                .unwrap(),
            min_refresh_interval,
        }
    }

    fn change(&self, change: impl FnOnce(&mut Published)) {
        change(&mut self.published.lock().unwrap());
    }

    fn fetches(&self) -> usize {
        self.published.lock().unwrap().fetches
    }
}

/// A private key of the provider's, and what it publishes of it.
struct ProviderKey {
    kid: &'static str,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl ProviderKey {
    fn load(kid: &'static str, algorithm: Algorithm, fixture: &str) -> Self {
        let pem = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(fixture),
        )
        .unwrap();
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap();
        Self {
            kid,
            algorithm,
            key,
        }
    }

    fn rsa_a() -> Self {
        Self::load("rsa-a", Algorithm::RS256, "rs256-a-private.pem")
    }

    fn rsa_b() -> Self {
        Self::load("rsa-b", Algorithm::RS256, "rs256-b-private.pem")
    }

    fn ec() -> Self {
        Self::load("ec", Algorithm::ES256, "es256-private.pem")
    }

    fn ed() -> Self {
        Self::load("ed", Algorithm::EdDSA, "ed25519-private.pem")
    }

    /// The public half, as a JWKS holds it.
    fn public(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm).unwrap();
        jwk.common.key_id = Some(self.kid.to_owned());
        jwk
    }

    /// A token for `subject`, with this key's `kid` and algorithm.
    fn token(&self, subject: &str) -> String {
        self.token_as(subject, self.kid, self.algorithm)
    }

    fn token_as(&self, subject: &str, kid: &str, algorithm: Algorithm) -> String {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_owned());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        jsonwebtoken::encode(&header, &json!({"sub": subject, "exp": exp}), &self.key).unwrap()
    }
}

async fn service(keys: &KeyServer, min_refresh_interval: Duration) -> TestApp {
    let settings = keys.settings(min_refresh_interval);
    TestApp::spawn_with(move |config| config.auth.key = JwtKey::Jwks(settings)).await
}

async fn call(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    app.conversations()
        .list_conversations(with_token(ListConversationsRequest::default(), token))
        .await
        .map(|_| ())
}

#[track_caller]
fn assert_refused(result: Result<(), tonic::Status>, code: Code, says: &str) {
    let status = result.expect_err("accepted");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{}", status.message());
}

#[tokio::test]
async fn tokens_signed_with_rsa_ec_and_ed25519_keys_are_accepted_by_kid() {
    super::support::logs::capture();
    let (rsa, ec, ed) = (ProviderKey::rsa_a(), ProviderKey::ec(), ProviderKey::ed());
    let keys = KeyServer::start(vec![rsa.public(), ec.public(), ed.public()]).await;
    let app = service(&keys, Duration::from_secs(30)).await;

    for key in [&rsa, &ec, &ed] {
        call(&app, &key.token("alice"))
            .await
            .unwrap_or_else(|e| panic!("{:?} refused: {e:?}", key.algorithm));
    }
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM users WHERE subject = 'alice'")
            .await,
        1
    );

    // Signed by a key the provider does not publish, under a kid it does.
    let impostor = ProviderKey::rsa_b().token_as("mallory", "rsa-a", Algorithm::RS256);
    assert_refused(
        call(&app, &impostor).await,
        Code::Unauthenticated,
        "signature",
    );
    // A key used with another algorithm than its own.
    let confused = ec.token_as("mallory", "rsa-a", Algorithm::ES256);
    assert_refused(call(&app, &confused).await, Code::Unauthenticated, "ES256");
    // An HMAC token keyed with the RSA key's public modulus: the classic confusion.
    let modulus = match &rsa.public().algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::RSA(params) => params.n.clone(),
        other => panic!("{other:?}"),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-a".to_owned());
    let hmac = jsonwebtoken::encode(
        &header,
        &json!({"sub": "mallory", "exp": 4_000_000_000u64}),
        &EncodingKey::from_secret(modulus.as_bytes()),
    )
    .unwrap();
    assert_refused(call(&app, &hmac).await, Code::Unauthenticated, "HS256");
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM users WHERE subject = 'mallory'")
            .await,
        0
    );
    // No token, good or bad, reaches the log.
    for token in [rsa.token("alice"), impostor, confused, hmac] {
        let signature = token.rsplit('.').next().unwrap().to_owned();
        assert!(!super::support::logs::any_line_contains(&signature));
    }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it_and_the_retired_one_stops_working() {
    let (old, new) = (ProviderKey::rsa_a(), ProviderKey::rsa_b());
    let keys = KeyServer::start(vec![old.public()]).await;
    let app = service(&keys, Duration::ZERO).await;
    call(&app, &old.token("alice")).await.unwrap();
    assert_eq!(
        keys.fetches(),
        1,
        "one fetch serves every token of a known key"
    );
    call(&app, &old.token("alice")).await.unwrap();
    assert_eq!(keys.fetches(), 1);

    // The provider rotates: the new key only.
    keys.change(|published| published.keys = vec![new.public()]);
    call(&app, &new.token("alice")).await.unwrap();
    assert_eq!(keys.fetches(), 2);
    assert_refused(
        call(&app, &old.token("alice")).await,
        Code::Unauthenticated,
        "kid",
    );
}

#[tokio::test]
async fn unknown_keys_make_at_most_one_fetch_per_interval() {
    let (old, new) = (ProviderKey::rsa_a(), ProviderKey::rsa_b());
    let keys = KeyServer::start(vec![old.public()]).await;
    let app = service(&keys, Duration::from_secs(3600)).await;
    call(&app, &old.token("alice")).await.unwrap();
    assert_eq!(keys.fetches(), 1);

    keys.change(|published| published.keys = vec![old.public(), new.public()]);
    for _ in 0..3 {
        assert_refused(
            call(&app, &new.token("alice")).await,
            Code::Unauthenticated,
            "kid",
        );
    }
    assert_eq!(keys.fetches(), 1, "a flood of unknown kids fetched nothing");
    call(&app, &old.token("alice")).await.unwrap();
}

#[tokio::test]
async fn a_provider_outage_leaves_the_known_keys_working() {
    let key = ProviderKey::rsa_a();
    let keys = KeyServer::start(vec![key.public()]).await;
    // Fetched again whenever used: every request finds the set out of date.
    keys.change(|published| published.max_age = Some(0));
    let app = service(&keys, Duration::ZERO).await;
    call(&app, &key.token("alice")).await.unwrap();

    keys.change(|published| published.down = true);
    let before = keys.fetches();
    call(&app, &key.token("alice")).await.unwrap();
    eventually("the set was fetched again, and failed", || async {
        keys.fetches() > before
    })
    .await;
    call(&app, &key.token("alice")).await.unwrap();
    assert_refused(
        call(&app, &ProviderKey::rsa_b().token("alice")).await,
        Code::Unauthenticated,
        "kid",
    );
}

#[tokio::test]
async fn with_no_key_known_an_unreachable_provider_is_unavailable() {
    let key = ProviderKey::rsa_a();
    let keys = KeyServer::start(vec![key.public()]).await;
    keys.change(|published| published.down = true);
    let app = service(&keys, Duration::ZERO).await;
    assert_refused(
        call(&app, &key.token("alice")).await,
        Code::Unavailable,
        "identity provider",
    );

    // Once it is back, the next token fetches the keys.
    keys.change(|published| published.down = false);
    call(&app, &key.token("alice")).await.unwrap();
}
