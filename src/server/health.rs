//! `grpc.health.v1` follows the database: SERVING while PostgreSQL answers (and Redis, when it is
//! configured to count), NOT_SERVING while it does not, and NOT_SERVING for good once shutdown
//! begins.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use std::sync::Arc;

use crate::{
    events::TurnEvents,
    store::{DatabaseProbe, Store},
    telemetry::metrics::Metrics,
};

/// The services whose health is reported, besides the whole server ("").
pub const SERVICES: [&str; 2] = ["chat.v1.ChatService", "chat.v1.ConversationService"];

/// A service name that is SERVING for as long as the process runs, for liveness probes.
pub const LIVENESS: &str = "liveness";

/// How long one database check may take before it counts as a failure.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Reports the database's health at once, then keeps it up to date in the background (see
/// [`monitor`]), so that no client ever finds the services unregistered.
pub async fn start(
    reporter: HealthReporter,
    store: &Store,
    events: Option<TurnEvents>,
    metrics: Arc<Metrics>,
    interval: Duration,
    stopping: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    // Answers as long as the process does: a liveness probe must not restart replicas because
    // the database is down.
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    let mut checker = Checker {
        probe: store.probe(),
        events,
        metrics,
    };
    let healthy = checker.check().await;
    report(&reporter, healthy).await;
    let unavailable = store.unavailable_signal();
    tokio::spawn(monitor(
        reporter,
        checker,
        unavailable,
        interval,
        stopping,
        healthy,
    ))
}

/// Asks the database whether it answers, on a connection of its own: readiness is about the
/// database, not about how busy the pool is.
struct Checker {
    probe: DatabaseProbe,
    /// Redis too, when readiness waits for it.
    events: Option<TurnEvents>,
    metrics: Arc<Metrics>,
}

impl Checker {
    async fn check(&mut self) -> bool {
        let mut healthy = self.probe.check(CHECK_TIMEOUT).await.is_ok();
        if let (true, Some(events)) = (healthy, &self.events) {
            healthy = tokio::time::timeout(CHECK_TIMEOUT, events.answers())
                .await
                .unwrap_or(false);
        }
        self.metrics.record_health_check(healthy);
        healthy
    }
}

async fn report(reporter: &HealthReporter, healthy: bool) {
    if healthy {
        tracing::info!("database answers: SERVING");
    } else {
        tracing::warn!(
            "database (or Redis, which readiness waits for) does not answer: NOT_SERVING"
        );
    }
    let status = if healthy {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    set_all(reporter, status).await;
}

/// Checks the database every `interval`, and at once when a request found no connection, until
/// `stopping` is cancelled; then reports NOT_SERVING and returns.
async fn monitor(
    reporter: HealthReporter,
    mut checker: Checker,
    unavailable: Arc<tokio::sync::Notify>,
    interval: Duration,
    stopping: CancellationToken,
    mut serving: bool,
) {
    loop {
        tokio::select! {
            () = stopping.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
            () = unavailable.notified() => {}
        }
        let healthy = checker.check().await;
        if healthy != serving {
            report(&reporter, healthy).await;
            serving = healthy;
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}
