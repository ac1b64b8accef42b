//! The service's own binary, started as a process of its own with settings from its environment,
//! as a deployment runs it: for tests in which several replicas share one database.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use chat_service::api::{
    AuthSettings, JwtKey,
    auth::mint_token,
    proto::{
        chat_service_client::ChatServiceClient,
        conversation_service_client::ConversationServiceClient,
    },
};
use secrecy::{ExposeSecret, SecretSlice};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::{Request, transport::Channel};

use super::{TestDatabase, app::SECRET, wait::PATIENCE};

/// A running replica, killed when dropped.
pub struct ServiceProcess {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    channel: Channel,
    child: tokio::process::Child,
}

impl ServiceProcess {
    /// Starts `binary` on `database`, with the test secret, ephemeral ports, JSON logs, no
    /// model-written titles, and `settings` (environment variables) on top.
    pub async fn start(binary: &str, database: &TestDatabase, settings: &[(&str, &str)]) -> Self {
        let url = database.url.expose();
        let mut command = tokio::process::Command::new(binary);
        command
            .env_clear()
            .env("DATABASE_URL", url.expose_secret())
            .env("CHAT_JWT_SECRET", SECRET)
            .env("CHAT_LISTEN_ADDR", "127.0.0.1:0")
            .env("CHAT_METRICS_ADDR", "127.0.0.1:0")
            .env("CHAT_LOG_FORMAT", "json")
            .env("CHAT_SHUTDOWN_GRACE", "1s")
            // As in `test_config`: a title would be a model call the test did not script.
            .env("CHAT_TITLES", "false")
            .envs(settings.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let stderr = child
            .stderr
            .take()
            .unwrap_or_else(|| panic!("no stderr to read"));
        let mut lines = BufReader::new(stderr).lines();
        let mut last_line = String::new();
        let serving = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap_or(None) {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    last_line = line;
                    continue;
                };
                if entry["message"] == "serving gRPC and grpc-web" {
                    return Some(entry);
                }
                last_line = line;
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{binary} never said it was serving; it last said: {last_line}"));
        // The rest of its log is read and dropped, so that a full pipe never stalls it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let address = |field: &str| -> SocketAddr {
            serving[field]
                .as_str()
                .and_then(|text| text.parse().ok())
                .unwrap_or_else(|| panic!("no {field} in {serving}"))
        };
        let (addr, metrics_addr) = (address("addr"), address("metrics"));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the replica: {e}"));
        Self {
            addr,
            metrics_addr,
            channel,
            child,
        }
    }

    pub fn chat(&self) -> ChatServiceClient<Channel> {
        ChatServiceClient::new(self.channel.clone())
    }

    pub fn conversations(&self) -> ConversationServiceClient<Channel> {
        ConversationServiceClient::new(self.channel.clone())
    }

    /// `message` as `user` sends it, with a token the replica accepts.
    pub fn request<T>(&self, user: &str, message: T) -> Request<T> {
        let settings = AuthSettings {
            key: JwtKey::Hs256Secret(SecretSlice::from(SECRET.as_bytes().to_vec())),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(60),
        };
        let token =
            mint_token(&settings, user, Duration::from_secs(600)).unwrap_or_else(|e| panic!("{e}"));
        super::app::with_token(message, &token)
    }

    /// Freezes the process (SIGSTOP), as a long pause of its host or its runtime would: it
    /// neither runs nor closes anything until [`ServiceProcess::thaw`].
    pub async fn freeze(&self) {
        self.signal("-STOP").await;
    }

    /// Lets a frozen process run again (SIGCONT), from where it stopped.
    pub async fn thaw(&self) {
        self.signal("-CONT").await;
    }

    async fn signal(&self, signal: &str) {
        let pid = self
            .child
            .id()
            .unwrap_or_else(|| panic!("the replica has exited"));
        let status = tokio::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .await
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// The Prometheus text the replica's metrics endpoint serves.
    pub async fn scrape_metrics(&self) -> String {
        super::app::scrape_metrics(self.metrics_addr).await
    }
}
