//! A built application, serving: the turn runtime and the services are assembled, served until
//! shutdown begins, then drained: health turns NOT_SERVING, new RPCs are refused, streams in
//! flight get the grace period, and what is left is cut short with its partial reply stored.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::StreamExt;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tonic_web::GrpcWebLayer;

use super::{
    Application, Config, StartupError, authenticate,
    cors::cors,
    health, metrics_http,
    request_head::{self, RequestHeadDeadline},
    rpc,
};
use crate::{
    api::{
        self, Authenticator, Caller, ChatApi, ConversationApi,
        proto::{
            self, chat_service_server::ChatServiceServer,
            conversation_service_server::ConversationServiceServer,
        },
    },
    chat::{
        Admission, Conversations, Identities, RecentContexts, TurnRuntime, Turns, UsageReports,
    },
    events::TurnEvents,
    llm::ModelCatalog,
    store::Store,
    telemetry::metrics::Metrics,
    tools::Toolbox,
};

/// The services the gRPC port offers besides reflection.
struct Services {
    health: HealthServer<HealthService>,
    chat: ChatServiceServer<ChatApi>,
    conversations: ConversationServiceServer<ConversationApi>,
}

/// What the chat and conversation services are built on.
struct ServiceParts {
    store: Store,
    models: Arc<ModelCatalog>,
    admission: Arc<Admission>,
    identities: Identities,
}

/// What runs beside the server until it has stopped, and the means to stop it.
struct Background {
    /// Tool servers' connections and the event engine: up until every reply is over.
    tools_stop: CancellationToken,
    metrics_stop: CancellationToken,
    metrics_server: JoinHandle<()>,
    lease_stop: CancellationToken,
    leases: JoinHandle<()>,
}

impl Application {
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
            models,
        } = self;
        let metrics = Metrics::new();
        let stopping = CancellationToken::new();
        let tools_stop = CancellationToken::new();
        let parts = ServiceParts {
            admission: Admission::new(config.limits.clone(), metrics.clone()),
            identities: Identities::new(store.clone()),
            store,
            models,
        };
        let runtime = turn_runtime(&config, &parts, &metrics, &tools_stop).await?;
        let (reporter, health_monitor) =
            watch_health(&config, &parts.store, &runtime, &metrics, &stopping).await;
        let metrics_stop = CancellationToken::new();
        let metrics_server = serve_metrics(
            &config,
            metrics_listener,
            &metrics,
            &parts.store,
            &metrics_stop,
        );
        let health = HealthServer::new(HealthService::from_health_reporter(reporter));
        let (services, turns) = services(&config, parts, &runtime, health);
        let lease_stop = CancellationToken::new();
        let background = Background {
            leases: tokio::spawn(turns.keep_alive(lease_stop.clone())),
            lease_stop,
            tools_stop,
            metrics_stop,
            metrics_server,
        };
        let grace = config.server.shutdown_grace;
        let drain = drain(shutdown, stopping.clone(), &runtime, health_monitor, grace);
        tracing::info!(addr = %local_addr, metrics = %metrics_addr, "serving gRPC and grpc-web");
        let served = serve(
            &config,
            listener,
            services,
            metrics,
            authenticator,
            drain,
            past_the_grace(stopping, grace),
        )
        .await;
        wind_down(&runtime, background).await;
        served
    }
}

/// Health, as the health service reports it: checked in the background until `stopping`.
async fn watch_health(
    config: &Config,
    store: &Store,
    runtime: &TurnRuntime,
    metrics: &Arc<Metrics>,
    stopping: &CancellationToken,
) -> (HealthReporter, JoinHandle<()>) {
    let reporter = HealthReporter::new();
    let readiness_events = config
        .events
        .gates_readiness
        .then(|| runtime.events.clone());
    let monitor = health::start(
        reporter.clone(),
        store,
        readiness_events,
        metrics.clone(),
        config.server.health_check_interval,
        stopping.clone(),
    )
    .await;
    (reporter, monitor)
}

/// The metrics endpoint, until `stop`: it stays up through the grace period, so that the drain
/// can be watched.
fn serve_metrics(
    config: &Config,
    listener: TcpListener,
    metrics: &Arc<Metrics>,
    store: &Store,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let listener = request_head::DeadlineListener {
        listener,
        timeout: config.server.transport.request_head_timeout,
    };
    tokio::spawn(metrics_http::serve(
        listener,
        metrics.clone(),
        store.clone(),
        stop.clone(),
    ))
}

/// What a turn needs besides the store and the model, with this replica's lease taken. Tool
/// servers are reached in the background, so one that is down delays nothing; Redis need not
/// be up either: events reach it once it is.
async fn turn_runtime(
    config: &Config,
    parts: &ServiceParts,
    metrics: &Arc<Metrics>,
    tools_stop: &CancellationToken,
) -> Result<TurnRuntime, StartupError> {
    let toolbox = Toolbox::start(config.tools.clone(), metrics.clone(), tools_stop);
    let events = TurnEvents::start(&config.events, metrics.clone(), tools_stop.clone())?;
    let replica = uuid::Uuid::now_v7();
    // The lease is held before the first turn starts, so that no turn looks lost.
    if let Err(error) = parts.store.renew_lease(replica, config.turns.lease).await {
        tracing::warn!(error = %error, "taking this replica's lease failed; trying again");
    }
    Ok(TurnRuntime {
        metrics: metrics.clone(),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        admission: parts.admission.clone(),
        identities: parts.identities.clone(),
        toolbox,
        events,
        replica,
    })
}

/// The chat and conversation services, with the limits of what they decode and encode, beside
/// `health`; and the turns behind them.
fn services(
    config: &Config,
    parts: ServiceParts,
    runtime: &TurnRuntime,
    health: HealthServer<HealthService>,
) -> (Services, Turns) {
    let ServiceParts {
        store,
        models,
        admission,
        identities,
    } = parts;
    let caller = Caller::new(identities.clone(), admission.clone());
    let recent = Arc::new(RecentContexts::new(config.turns.history_messages));
    let send_message_limit = api::max_send_message_bytes(config.turns.max_message_chars);
    let turns = Turns::new(
        store.clone(),
        recent.clone(),
        models,
        config.turns.clone(),
        runtime.clone(),
    );
    let usage = UsageReports::new(store.clone(), config.limits.usage_period);
    let chat = ChatServiceServer::new(ChatApi::new(caller.clone(), turns.clone(), usage))
        .max_decoding_message_size(send_message_limit)
        .max_encoding_message_size(api::MAX_RESPONSE_BYTES);
    let window = config.limits.conversation_window;
    let conversations = Conversations::new(store, recent, window, admission, identities);
    let conversations = ConversationServiceServer::new(ConversationApi::new(caller, conversations))
        .max_decoding_message_size(api::MAX_CONVERSATION_REQUEST_BYTES)
        .max_encoding_message_size(api::MAX_RESPONSE_BYTES);
    let services = Services {
        health,
        chat,
        conversations,
    };
    (services, turns)
}

/// Completes once the server should stop taking RPCs: when `shutdown` does. Then health goes
/// NOT_SERVING, and a timer cuts whatever is still streaming when the grace period is over.
async fn drain(
    shutdown: impl Future<Output = ()>,
    stopping: CancellationToken,
    runtime: &TurnRuntime,
    health_monitor: JoinHandle<()>,
    grace: Duration,
) {
    let cut = runtime.shutdown.clone();
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

/// Streams that are not turns (a health Watch, say) do not end by themselves: a moment after
/// the cut, the server stops waiting for them.
async fn past_the_grace(stopping: CancellationToken, grace: Duration) {
    stopping.cancelled().await;
    tokio::time::sleep(grace + Duration::from_secs(2)).await;
}

/// Serves gRPC and grpc-web on `listener` until `drain` completes and the streams in flight
/// end, or `deadline` passes.
async fn serve(
    config: &Config,
    listener: TcpListener,
    services: Services,
    metrics: Arc<Metrics>,
    authenticator: Authenticator,
    drain: impl Future<Output = ()>,
    deadline: impl Future<Output = ()>,
) -> Result<(), StartupError> {
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
        .add_service(services.health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(services.chat)
        .add_service(services.conversations)
        .serve_with_incoming_shutdown(incoming, drain);
    tokio::select! {
        served = server => Ok(served?),
        () = deadline => {
            tracing::warn!("streams still open after the grace period were closed");
            Ok(())
        }
    }
}

/// Once the server has stopped: waits until every reply that was cut short is stored, gives
/// the lease up (no turn is left here for others to take over), then stops what ran beside.
async fn wind_down(runtime: &TurnRuntime, background: Background) {
    runtime.tasks.close();
    runtime.tasks.wait().await;
    background.lease_stop.cancel();
    let _ = background.leases.await;
    background.tools_stop.cancel();
    background.metrics_stop.cancel();
    let _ = background.metrics_server.await;
    tracing::info!("server stopped");
}

/// Reflection over our services and health, so that tools like grpcurl need no proto files.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
