//! `grpc.health.v1` follows the database: SERVING while PostgreSQL answers, NOT_SERVING while it
//! does not, and NOT_SERVING for good once shutdown begins.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::store::Store;

/// The services whose health is reported, besides the whole server ("").
pub const SERVICES: [&str; 2] = ["chat.v1.ChatService", "chat.v1.ConversationService"];

/// How long one database check may take before it counts as a failure.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Checks the database every `interval`, and at once when a request found it unavailable, until
/// `stopping` is cancelled; then reports NOT_SERVING and returns.
pub async fn monitor(
    reporter: HealthReporter,
    store: Store,
    interval: Duration,
    stopping: CancellationToken,
) {
    let unavailable = store.unavailable_signal();
    let mut serving = None;
    loop {
        let healthy = matches!(
            tokio::time::timeout(CHECK_TIMEOUT, store.ping()).await,
            Ok(Ok(()))
        );
        if serving != Some(healthy) {
            if healthy {
                tracing::info!("database answers: SERVING");
            } else {
                tracing::warn!("database does not answer: NOT_SERVING");
            }
            let status = if healthy {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_all(&reporter, status).await;
            serving = Some(healthy);
        }
        tokio::select! {
            () = stopping.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
            () = unavailable.notified() => {}
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}
