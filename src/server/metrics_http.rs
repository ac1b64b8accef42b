//! The Prometheus scrape endpoint, on a port of its own.

use std::sync::Arc;

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use tokio_util::sync::CancellationToken;

use crate::{store::Store, telemetry::metrics::Metrics};

#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    store: Store,
}

async fn render(State(scrape): State<Scrape>) -> impl IntoResponse {
    let (in_use, idle) = scrape.store.pool_usage();
    (
        [
            (
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            // One request per connection: the request-head deadline then bounds every request,
            // and a scraper reconnecting every few seconds costs nothing.
            (header::CONNECTION, "close"),
        ],
        scrape.metrics.render(in_use, idle),
    )
}

/// Serves `GET /metrics` until `stop` is cancelled.
pub async fn serve(
    listener: super::request_head::DeadlineListener,
    metrics: Arc<Metrics>,
    store: Store,
    stop: CancellationToken,
) {
    let router = Router::new()
        .route("/metrics", get(render))
        .with_state(Scrape { metrics, store });
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(%error, "the metrics endpoint failed");
    }
}
