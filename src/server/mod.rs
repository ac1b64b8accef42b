//! The tonic server: our services, health and reflection on one port that speaks gRPC and
//! grpc-web, the metrics endpoint on another, and a graceful shutdown.

mod authenticate;
mod cors;
mod health;
mod metrics_http;
mod request_head;
pub mod rpc;
mod run;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;

use crate::{
    api::{AuthSettings, Authenticator, JwtKey, auth::InvalidKey},
    chat::{LimitSettings, TurnSettings},
    events::{EventSettings, EventsError},
    llm::{CatalogSettings, LlmError, ModelCatalog},
    store::{ConnectError, DatabaseSettings, Store},
    telemetry::{LogSettings, OtelSettings},
    tools::ToolSettings,
};

/// Everything the service runs with, one part per layer.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    /// The models clients choose among.
    pub model: CatalogSettings,
    pub turns: TurnSettings,
    pub tools: ToolSettings,
    pub events: EventSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    /// Where traces go; `None` exports none.
    pub otel: Option<OtelSettings>,
}

/// How the server listens, reports and stops.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// gRPC and grpc-web.
    pub listen_addr: SocketAddr,
    /// Prometheus (`GET /metrics`).
    pub metrics_addr: SocketAddr,
    /// How long streams in flight may run on after SIGTERM before they are cut short.
    pub shutdown_grace: Duration,
    /// How often the database is checked for the health service.
    pub health_check_interval: Duration,
    pub cors: CorsOrigins,
    pub transport: TransportSettings,
}

/// What one connection may cost, on the gRPC port (and, for its request head, the metrics port).
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// A connection that has not sent the HTTP/2 preface, or its first HTTP/1.1 request's
    /// headers, this long after connecting is closed (on both ports).
    pub request_head_timeout: Duration,
    /// Requests one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// How often an idle HTTP/2 connection is pinged...
    pub http2_keepalive_interval: Duration,
    /// ...and how long the answer may take before the connection is closed.
    pub http2_keepalive_timeout: Duration,
    /// Idle time before TCP keepalive probes start.
    pub tcp_keepalive: Duration,
    /// The largest header block a request may send.
    pub max_header_bytes: u32,
    /// Streams the server may reset for a client's errors before it closes the connection
    /// (the guard against "MadeYouReset", CVE-2025-8671).
    pub max_local_resets: usize,
}

/// Which browser origins may call the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

/// Why the service could not start. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Key(#[from] InvalidKey),
    #[error(transparent)]
    Database(Box<ConnectError>),
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Listen {
        addr: SocketAddr,
        setting: &'static str,
        source: std::io::Error,
    },
    #[error("cannot set up the model client (CHAT_LLM_BASE_URL): {0}")]
    Model(#[from] LlmError),
    #[error("invalid setting CHAT_CORS_ALLOWED_ORIGINS: {0}")]
    Cors(String),
    #[error("cannot set up turn events (CHAT_REDIS_URL): {0}")]
    Events(#[from] EventsError),
    #[error("cannot read the services' descriptors: {0}")]
    Reflection(String),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl From<ConnectError> for StartupError {
    fn from(error: ConnectError) -> Self {
        Self::Database(Box::new(error))
    }
}

/// A service bound to its ports and connected to its database, ready to serve.
pub struct Application {
    config: Config,
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics_listener: TcpListener,
    metrics_addr: SocketAddr,
    store: Store,
    authenticator: Authenticator,
    models: Arc<ModelCatalog>,
}

async fn bind(
    addr: SocketAddr,
    setting: &'static str,
) -> Result<(TcpListener, SocketAddr), StartupError> {
    let failed = |source| StartupError::Listen {
        addr,
        setting,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let authenticator = Authenticator::new(&config.auth)?;
        // The identity provider's keys, if any, are fetched meanwhile; a provider that is down
        // does not keep the service from starting.
        tokio::spawn({
            let authenticator = authenticator.clone();
            async move { authenticator.prefetch().await }
        });
        if matches!(config.auth.key, JwtKey::Development) {
            tracing::warn!(
                "DEVELOPMENT MODE: tokens are verified with a publicly known key. Anyone can \
                 impersonate any user. Set CHAT_JWT_SECRET or CHAT_JWT_PUBLIC_KEY_FILE for real use"
            );
        }
        let models = Arc::new(ModelCatalog::connect(&config.model)?);
        let store = Store::connect(&config.database).await?;
        let (listener, local_addr) = bind(config.server.listen_addr, "CHAT_LISTEN_ADDR").await?;
        let (metrics_listener, metrics_addr) =
            bind(config.server.metrics_addr, "CHAT_METRICS_ADDR").await?;
        Ok(Self {
            config,
            listener,
            local_addr,
            metrics_listener,
            metrics_addr,
            store,
            authenticator,
            models,
        })
    }

    /// The gRPC address actually bound, which differs from the configured one for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The metrics address actually bound.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
