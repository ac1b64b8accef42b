//! The tonic server: our services, health and reflection on one port.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::server::HealthReporter;

use crate::{
    api::{
        Authenticator, Caller, ChatApi, ConversationApi,
        auth::InvalidKey,
        proto::{
            self, chat_service_server::ChatServiceServer,
            conversation_service_server::ConversationServiceServer,
        },
    },
    chat::{Conversations, Identities, TurnSettings, Turns},
    config::{Config, Environment, JwtKey, ModelConfig},
    llm::{ChatModel, DevModel, LlmError, OpenAiModel},
    store::{ConnectError, Store},
};

/// Why the service could not start. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Key(#[from] InvalidKey),
    #[error(transparent)]
    Database(#[from] ConnectError),
    #[error("cannot listen on {addr} (CHAT_LISTEN_ADDR): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the model client (CHAT_LLM_BASE_URL): {0}")]
    Model(#[from] LlmError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A service bound to its port and connected to its database, ready to serve.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    store: Store,
    authenticator: Authenticator,
    model: Arc<dyn ChatModel>,
    turns: TurnSettings,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let authenticator = Authenticator::new(&config.auth)?;
        if matches!(config.auth.key, JwtKey::Development) {
            // Unreachable in production: configuration validation refuses it there.
            debug_assert_eq!(config.environment, Environment::Development);
            tracing::warn!(
                "DEVELOPMENT MODE: tokens are verified with a publicly known key. Anyone can \
                 impersonate any user. Set CHAT_JWT_SECRET or CHAT_JWT_PUBLIC_KEY_FILE for real use"
            );
        }
        let model = build_model(&config.model)?;
        let store = Store::connect(
            &config.database.url,
            &config.database.pool,
            config.database.migrate_on_start,
        )
        .await?;
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| StartupError::Listen {
                addr: config.listen_addr,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                addr: config.listen_addr,
                source,
            })?;
        Ok(Self {
            listener,
            local_addr,
            store,
            authenticator,
            model,
            turns: config.turns,
        })
    }

    /// The address actually bound, which differs from the configured one for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartupError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        set_all_serving(&health).await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;

        let caller = Caller::new(self.authenticator, Identities::new(self.store.clone()));
        let turns = Turns::new(self.store.clone(), self.model, self.turns);
        let chat = ChatServiceServer::new(ChatApi::new(caller.clone(), turns));
        let conversations = ConversationServiceServer::new(ConversationApi::new(
            caller,
            Conversations::new(self.store),
        ));

        tracing::info!(addr = %self.local_addr, "serving gRPC");
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(chat)
            .add_service(conversations)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        tracing::info!("server stopped");
        Ok(())
    }
}

fn build_model(config: &ModelConfig) -> Result<Arc<dyn ChatModel>, LlmError> {
    match config {
        ModelConfig::Development { delay } => {
            tracing::warn!(
                "DEVELOPMENT MODEL: replies come from the built-in `dev` model, not a real one. \
                 Set CHAT_LLM_BASE_URL and CHAT_LLM_MODEL to use an OpenAI-compatible API"
            );
            Ok(Arc::new(DevModel::new(*delay)))
        }
        ModelConfig::OpenAi(settings) => {
            tracing::info!(model = %settings.model, "replies come from an OpenAI-compatible API");
            Ok(Arc::new(OpenAiModel::new(settings.clone())?))
        }
    }
}

async fn set_all_serving(health: &HealthReporter) {
    health.set_serving::<ChatServiceServer<ChatApi>>().await;
    health
        .set_serving::<ConversationServiceServer<ConversationApi>>()
        .await;
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
