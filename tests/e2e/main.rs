//! End-to-end tests: the real server over real gRPC, on a fresh PostgreSQL database per test.

// A failed expectation is a failed test, reported by panicking like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The 60-line limit (clippy.toml) is for the service's own code: a test, or a fake that
// plays a protocol, reads best whole.
#![allow(clippy::too_many_lines)]

use chat_service_test_support as support;

mod auth;
mod branches;
mod budgets;
mod client_tools;
mod conversations;
mod durable_turns;
mod integrity;
mod isolation;
mod jwks;
mod limits;
mod migrations;
mod models;
mod operability;
mod ordering;
mod regenerate;
mod reply_batches;
mod rollout;
mod schema;
mod search;
mod send_message;
mod startup;
mod titles;
mod transfer;
mod tools;
mod transport;
mod tree_migration;
mod usage;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Asserts an INVALID_ARGUMENT whose BadRequest details name `field`.
#[track_caller]
fn assert_bad_field(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violations = status
        .get_details_bad_request()
        .map(|b| b.field_violations)
        .unwrap_or_default();
    assert!(
        violations.iter().any(|v| v.field == field),
        "no violation for {field}: {violations:?}"
    );
    assert!(
        status.message().contains(field),
        "message should name {field}: {}",
        status.message()
    );
}

/// Waits until `check` returns something, for effects no event announces (such as a row written
/// after the client went away). Gives up after ten seconds.
async fn eventually<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expected state was never reached"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
