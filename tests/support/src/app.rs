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
    config::Settings,
    llm::{CatalogSettings, ModelSettings, OpenAiSettings},
};
use clap::FromArgMatches;
use secrecy::{ExposeSecret, SecretString};
use tonic::{Request, transport::Channel};

use super::{FakeLlm, TestDatabase};

/// The HS256 secret the test servers verify tokens with.
pub const SECRET: &str = "integration-test-secret-with-32-bytes-or-more";

/// The service's own defaults, read from the same definitions that parse its flags (so the tests
/// run what users run), with what a test server needs instead: ephemeral ports, the test's
/// database, a known secret, quick health checks and shutdowns, an instant development model.
/// The environment is ignored, so that a developer's settings cannot change a test.
pub fn test_config(database: &TestDatabase) -> Config {
    let url = database.url.expose();
    let args = [
        "chat-service",
        "--listen-addr=127.0.0.1:0",
        "--metrics-addr=127.0.0.1:0",
        "--database-url",
        url.expose_secret(),
        "--db-max-connections=8",
        "--jwt-secret",
        SECRET,
        "--dev-model-delay=0s",
        "--shutdown-grace=5s",
        "--health-check-interval=100ms",
        "--log-format=pretty",
        // A title is a model call of its own, in the background: tests that script the model
        // turn by turn would see it take their next script. tests/e2e/titles.rs turns it on.
        "--titles=false",
    ];
    let command = <Settings as clap::Args>::augment_args(clap::Command::new("chat-service"))
        .mut_args(|arg| arg.env(None::<&str>));
    let matches = command
        .try_get_matches_from(args)
        .unwrap_or_else(|e| panic!("{e}"));
    Settings::from_arg_matches(&matches)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_config(false)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Lifts the per-user limits, for tests in which one user deliberately does more at once than a
/// real client is allowed to.
pub fn without_user_limits(config: &mut Config) {
    let plenty = std::num::NonZeroU32::new(1_000_000).unwrap_or(std::num::NonZeroU32::MAX);
    config.limits.user_requests_per_second = plenty;
    config.limits.user_request_burst = plenty;
    config.limits.streams_per_user = 1_000_000;
}

/// Settings that point the service at `fake`, with short delays so that failures are quick.
pub fn fake_llm_settings(fake: &FakeLlm) -> OpenAiSettings {
    llm_settings(fake.base_url())
}

/// Settings for a model at `base_url`, with short delays so that failures are quick.
pub fn llm_settings(base_url: String) -> OpenAiSettings {
    OpenAiSettings {
        base_url,
        api_key: Some(SecretString::from("test-api-key")),
        model: "fake-model".to_owned(),
        max_output_tokens: Some(512),
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
    pub metrics_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), chat_service::StartupError>>>,
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
        let metrics_addr = app.metrics_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
        Self {
            addr,
            metrics_addr,
            config,
            channel,
            stop: Some(stop),
            server: Some(server),
            db,
        }
    }

    /// Starts a graceful shutdown, as SIGTERM would.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server to stop, returning what `run_until` returned.
    pub async fn stopped(&mut self) -> Result<(), chat_service::StartupError> {
        let server = self
            .server
            .take()
            .unwrap_or_else(|| panic!("already awaited"));
        server
            .await
            .unwrap_or_else(|e| panic!("the server task failed: {e}"))
    }

    /// The Prometheus text the metrics endpoint serves.
    pub async fn scrape_metrics(&self) -> String {
        scrape_metrics(self.metrics_addr).await
    }

    /// Waits until the service offers `count` tools from its MCP servers, as its metrics say.
    pub async fn wait_for_tools(&self, count: usize) {
        let expected = format!("chat_tools_offered {count}\n");
        super::wait::eventually(&format!("{count} tools are offered"), || async {
            self.scrape_metrics().await.contains(&expected)
        })
        .await;
    }

    /// A server whose model is `fake`, with settings adjusted by `customize`.
    pub async fn with_fake_llm(fake: &FakeLlm, customize: impl FnOnce(&mut Config)) -> Self {
        let settings = fake_llm_settings(fake);
        Self::spawn_with(|config| {
            config.model = CatalogSettings::of_one(ModelSettings::OpenAi(settings), 0);
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

    /// Creates a conversation for `user` through the API, returning its id.
    pub async fn create_conversation(&self, user: &str, title: &str) -> String {
        let request = self.request(
            user,
            chat_service::api::proto::CreateConversationRequest {
                title: title.to_owned(),
            },
        );
        let response = self
            .conversations()
            .create_conversation(request)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        response
            .into_inner()
            .conversation
            .map(|c| c.id)
            .unwrap_or_default()
    }

    /// Opens a SendMessage stream for `user`; an empty `conversation_id` starts a conversation.
    pub async fn open_stream(
        &self,
        user: &str,
        conversation_id: &str,
        content: &str,
    ) -> tonic::Streaming<chat_service::api::proto::SendMessageResponse> {
        let message = chat_service::api::proto::SendMessageRequest {
            conversation_id: conversation_id.to_owned(),
            content: content.to_owned(),
            ..Default::default()
        };
        let response = self.chat().send_message(self.request(user, message)).await;
        response
            .unwrap_or_else(|e| panic!("SendMessage refused: {e:?}"))
            .into_inner()
    }

    /// `message` as `user` sends it.
    pub fn request<T>(&self, user: &str, message: T) -> Request<T> {
        with_token(message, &self.token(user))
    }
}

/// The Prometheus text a metrics endpoint at `addr` serves.
pub async fn scrape_metrics(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
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
