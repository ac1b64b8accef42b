//! The tonic server: our services, health and reflection on one port that speaks gRPC and
//! grpc-web, the metrics endpoint on another, and a graceful shutdown.

mod authenticate;
mod health;
mod metrics_http;
mod request_head;
pub mod rpc;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use self::request_head::RequestHeadDeadline;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_web::GrpcWebLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    api::{
        self, AuthSettings, Authenticator, Caller, ChatApi, ConversationApi, JwtKey,
        auth::InvalidKey,
        proto::{
            self, chat_service_server::ChatServiceServer,
            conversation_service_server::ConversationServiceServer,
        },
    },
    chat::{
        Admission, Conversations, Identities, LimitSettings, RecentContexts, TurnRuntime,
        TurnSettings, Turns,
    },
    events::{EventSettings, EventsError, TurnEvents},
    llm::{self, ChatModel, LlmError, ModelSettings},
    store::{ConnectError, DatabaseSettings, Store},
    telemetry::{LogSettings, OtelSettings, metrics::Metrics},
    tools::{ToolSettings, Toolbox},
};

/// Everything the service runs with, one part per layer.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub model: ModelSettings,
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
    model: Arc<dyn ChatModel>,
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
        let model = llm::connect(&config.model)?;
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
            model,
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

    /// Serves until `shutdown` completes, then shuts down gracefully: health turns NOT_SERVING,
    /// new RPCs are refused, streams in flight get the grace period to finish, what is left is
    /// cancelled (partial replies stored), and this returns once every reply is stored.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            config,
            listener,
            local_addr,
            metrics_listener,
            metrics_addr,
            store,
            authenticator,
            model,
        } = self;
        let grace = config.server.shutdown_grace;
        let metrics = Metrics::new();
        let stopping = CancellationToken::new();
        let conversation_window = config.limits.conversation_window;
        let admission = Admission::new(config.limits, metrics.clone());
        let identities = Identities::new(store.clone());
        // Tool servers are reached in the background: one that is down delays nothing. Their
        // connections stay up until every reply, and so every tool call, is over.
        let tools_stop = CancellationToken::new();
        let toolbox = Toolbox::start(config.tools.clone(), metrics.clone(), &tools_stop);
        // Redis need not be up: events reach it once it is.
        let events = TurnEvents::start(&config.events, metrics.clone(), tools_stop.clone())?;
        let replica = uuid::Uuid::now_v7();
        let lease = config.turns.lease;
        let turns_runtime = TurnRuntime {
            metrics: metrics.clone(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            admission: admission.clone(),
            identities: identities.clone(),
            toolbox,
            events,
            replica,
        };
        // The lease is held before the first turn starts, so that no turn looks lost.
        if let Err(error) = store.renew_lease(replica, lease).await {
            tracing::warn!(error = %error, "taking this replica's lease failed; trying again");
        }

        let (health, health_service) = tonic_health::server::health_reporter();
        let health_monitor = health::start(
            health,
            &store,
            config
                .events
                .gates_readiness
                .then(|| turns_runtime.events.clone()),
            metrics.clone(),
            config.server.health_check_interval,
            stopping.clone(),
        )
        .await;
        // Metrics stay up through the grace period, so that the drain can be watched.
        let metrics_stop = CancellationToken::new();
        let metrics_server = tokio::spawn(metrics_http::serve(
            request_head::DeadlineListener {
                listener: metrics_listener,
                timeout: config.server.transport.request_head_timeout,
            },
            metrics.clone(),
            store.clone(),
            metrics_stop.clone(),
        ));

        let known = rpc::KnownMethods::from_descriptor_sets(&[
            proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])
        .map(Arc::new)
        .map_err(|e| StartupError::Reflection(e.to_string()))?;
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;

        let caller = Caller::new(identities.clone(), admission.clone());
        let recent = Arc::new(RecentContexts::new(config.turns.history_messages));
        let send_message_limit = api::max_send_message_bytes(config.turns.max_message_chars);
        let turns = Turns::new(
            store.clone(),
            recent.clone(),
            model,
            config.turns,
            turns_runtime.clone(),
        );
        let lease_stop = CancellationToken::new();
        let leases = tokio::spawn(turns.clone().keep_alive(lease_stop.clone()));
        let chat = ChatServiceServer::new(ChatApi::new(caller.clone(), turns))
            .max_decoding_message_size(send_message_limit)
            .max_encoding_message_size(api::MAX_RESPONSE_BYTES);
        let conversations = ConversationServiceServer::new(ConversationApi::new(
            caller,
            Conversations::new(
                store,
                recent,
                conversation_window,
                admission.clone(),
                identities,
            ),
        ))
        .max_decoding_message_size(api::MAX_CONVERSATION_REQUEST_BYTES)
        .max_encoding_message_size(api::MAX_RESPONSE_BYTES);

        // When shutdown begins: health goes NOT_SERVING, the server stops taking RPCs, and a
        // timer cuts whatever is still streaming when the grace period is over.
        let drain = {
            let stopping = stopping.clone();
            let cut = turns_runtime.shutdown.clone();
            async move {
                shutdown.await;
                tracing::info!(
                    grace_seconds = grace.as_secs_f64(),
                    "shutting down: refusing new RPCs, letting streams finish"
                );
                stopping.cancel();
                let _ = health_monitor.await;
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    cut.cancel();
                });
            }
        };
        // Streams that are not turns (a health Watch, say) do not end by themselves: a moment
        // after the cut, the server stops waiting for them.
        let deadline = {
            let stopping = stopping.clone();
            async move {
                stopping.cancelled().await;
                tokio::time::sleep(grace + Duration::from_secs(2)).await;
            }
        };

        tracing::info!(addr = %local_addr, metrics = %metrics_addr, "serving gRPC and grpc-web");
        let transport = &config.server.transport;
        let request_head_timeout = transport.request_head_timeout;
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(transport.tcp_keepalive))
            .map(move |accepted| {
                accepted.map(|stream| RequestHeadDeadline::new(stream, request_head_timeout))
            });
        let server = Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(Some(transport.max_concurrent_streams))
            .http2_keepalive_interval(Some(transport.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(transport.http2_keepalive_timeout))
            .http2_max_header_list_size(Some(transport.max_header_bytes))
            .http2_max_local_error_reset_streams(Some(transport.max_local_resets))
            .layer(cors(&config.server.cors)?)
            .layer(GrpcWebLayer::new())
            .layer(rpc::RpcLayer::new(metrics, known))
            .layer(authenticate::AuthenticateLayer::new(authenticator))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(chat)
            .add_service(conversations)
            .serve_with_incoming_shutdown(incoming, drain);
        let served = tokio::select! {
            served = server => served,
            () = deadline => {
                tracing::warn!("streams still open after the grace period were closed");
                Ok(())
            }
        };
        // Whatever was cut short still gets its partial reply stored.
        turns_runtime.tasks.close();
        turns_runtime.tasks.wait().await;
        // Every turn here has ended: none is left for the others to take over.
        lease_stop.cancel();
        let _ = leases.await;
        tools_stop.cancel();
        metrics_stop.cancel();
        let _ = metrics_server.await;
        tracing::info!("server stopped");
        Ok(served?)
    }
}

/// Reflection over our services and health, so that tools like grpcurl need no proto files.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// CORS for browsers calling through grpc-web.
fn cors(origins: &CorsOrigins) -> Result<CorsLayer, StartupError> {
    let allow_origin = match origins {
        CorsOrigins::Any => AllowOrigin::mirror_request(),
        CorsOrigins::List(list) => {
            let values = list
                .iter()
                .map(|origin| {
                    HeaderValue::from_str(origin)
                        .map_err(|e| StartupError::Cors(format!("{origin:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            AllowOrigin::list(values)
        }
    };
    let header = HeaderName::from_static;
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header("authorization"),
            header("content-type"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            header("x-request-id"),
            header("x-correlation-id"),
            header("traceparent"),
            header("tracestate"),
            header("connect-protocol-version"),
            header("connect-timeout-ms"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
            header("x-request-id"),
        ])
        .max_age(Duration::from_secs(3600)))
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
