//! The real server, in-process on an ephemeral port, and clients that talk to it over TCP.

use std::{net::SocketAddr, time::Duration};

use chat_service::{
    Application, Config,
    api::{
        auth::mint_token,
        proto::{
            chat_service_client::ChatServiceClient,
            conversation_service_client::ConversationServiceClient,
        },
    },
    chat::TurnSettings,
    config::{AuthConfig, DatabaseConfig, Environment, JwtKey, LogConfig, LogFormat, ModelConfig},
    llm::OpenAiSettings,
    store::PoolSettings,
};
use tonic::{Request, transport::Channel};

use super::{FakeLlm, TestDatabase};

/// The HS256 secret the test servers verify tokens with.
pub const SECRET: &[u8] = b"integration-test-secret-with-32-bytes-or-more";

pub fn test_config(database: &TestDatabase) -> Config {
    Config {
        environment: Environment::Development,
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        database: DatabaseConfig {
            url: database.url.clone(),
            pool: PoolSettings {
                max_connections: 8,
                connect_timeout: Duration::from_secs(5),
                acquire_timeout: Duration::from_secs(5),
            },
            migrate_on_start: true,
        },
        auth: AuthConfig {
            key: JwtKey::Hs256Secret(SECRET.to_vec()),
            issuer: None,
            audience: None,
        },
        model: ModelConfig::Development {
            delay: Duration::ZERO,
        },
        turns: TurnSettings {
            max_message_chars: 10_000,
            history_messages: 20,
            history_chars: 48_000,
            system_prompt: None,
        },
        log: LogConfig {
            format: LogFormat::Pretty,
            filter: "info".to_owned(),
        },
    }
}

/// Settings that point the service at `fake`, with short delays so that failures are quick.
pub fn fake_llm_settings(fake: &FakeLlm) -> OpenAiSettings {
    OpenAiSettings {
        base_url: fake.base_url(),
        api_key: Some("test-api-key".to_owned()),
        model: "fake-model".to_owned(),
        connect_timeout: Duration::from_secs(2),
        first_token_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        total_timeout: Duration::from_secs(30),
        max_retries: 2,
        retry_base_delay: Duration::from_millis(10),
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub config: Config,
    channel: Channel,
    // Last, so that the server's connections are the ones cut when the database is dropped.
    pub db: TestDatabase,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(customize: impl FnOnce(&mut Config)) -> Self {
        let db = TestDatabase::new().await;
        let mut config = test_config(&db);
        customize(&mut config);
        let app = Application::build(config.clone())
            .await
            .unwrap_or_else(|e| panic!("server did not start: {e}"));
        let addr = app.local_addr();
        tokio::spawn(app.run_until(std::future::pending()));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
        Self {
            addr,
            config,
            channel,
            db,
        }
    }

    /// A server whose model is `fake`, with settings adjusted by `customize`.
    pub async fn with_fake_llm(fake: &FakeLlm, customize: impl FnOnce(&mut Config)) -> Self {
        let settings = fake_llm_settings(fake);
        Self::spawn_with(|config| {
            config.model = ModelConfig::OpenAi(settings);
            customize(config);
        })
        .await
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn conversations(&self) -> ConversationServiceClient<Channel> {
        ConversationServiceClient::new(self.channel())
    }

    pub fn chat(&self) -> ChatServiceClient<Channel> {
        ChatServiceClient::new(self.channel())
    }

    /// A token the server accepts for `user`.
    pub fn token(&self, user: &str) -> String {
        mint_token(&self.config.auth, user, Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `message` as `user` sends it.
    pub fn request<T>(&self, user: &str, message: T) -> Request<T> {
        with_token(message, &self.token(user))
    }
}

/// `message` with `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    request.metadata_mut().insert("authorization", value);
    request
}
