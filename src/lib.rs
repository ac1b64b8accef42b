//! A gRPC chat service: streams a model's replies and keeps every conversation in PostgreSQL.
//!
//! Layers, outermost first; each uses only those below it:
//! - [`config`] parses flags and the environment into each layer's settings, and [`server`]
//!   assembles the layers, serves gRPC, grpc-web, health and metrics, and shuts down;
//! - [`api`] is the gRPC edge: authentication, protobuf ↔ domain, statuses;
//! - [`chat`] holds the use cases: a turn, and reading and deleting conversations;
//! - [`store`] (PostgreSQL), [`llm`] (the model), [`tools`] (MCP servers) and [`events`] (a
//!   turn's live events, in process or through Redis Streams) are the ports the use cases drive;
//! - [`transfer`] writes a user's conversations out and reads them back in (`chat-service
//!   export` and `import`), on the store alone;
//! - [`domain`] is the shared vocabulary and depends on nothing else in the crate.
//!
//! [`telemetry`] (logs, traces, metrics) is used by every layer and depends on none of them.

pub mod api;
pub mod chat;
pub mod config;
pub mod domain;
pub mod events;
pub mod llm;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod transfer;

pub use server::{Application, Config, StartupError};

/// Builds the service from `config` and serves until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), StartupError> {
    Application::build(config)
        .await?
        .run_until(server::shutdown_signal())
        .await
}
