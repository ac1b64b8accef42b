//! What the end-to-end tests share: a fresh database per test, the real server on an ephemeral
//! port, authenticated clients, and direct SQL access for checking what was stored.
// A failed expectation here is a failed test, reported by panicking like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The 60-line limit (clippy.toml) is for the service's own code: a test, or a fake that
// plays a protocol, reads best whole.
#![allow(clippy::too_many_lines)]

pub mod app;
pub mod database;
pub mod fake_llm;
pub mod logs;
pub mod mcp;
pub mod otlp;
pub mod process;
pub mod redis;
pub mod streams;
pub mod tcp_proxy;
pub mod wait;

pub use app::TestApp;
pub use database::TestDatabase;
pub use fake_llm::{FakeLlm, Script};
pub use mcp::FakeToolServer;
