//! A gRPC chat service: streams a model's replies and keeps every conversation in PostgreSQL.
//!
//! Layers, outermost first: [`api`] (gRPC) → [`chat`] (use cases) → [`store`] (PostgreSQL) and
//! [`llm`] (the model),
//! all speaking the vocabulary of [`domain`].

pub mod api;
pub mod chat;
pub mod config;
pub mod domain;
pub mod llm;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use server::{Application, StartupError};

/// Builds the service from `config` and serves until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), StartupError> {
    Application::build(config)
        .await?
        .run_until(server::shutdown_signal())
        .await
}
