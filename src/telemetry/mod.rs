//! Logs, traces and metrics.

pub mod metrics;

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. An invalid filter falls back to `info` with a warning rather
/// than stopping the service.
pub fn init(config: &LogConfig) {
    let (filter, filter_error) = match EnvFilter::try_new(&config.filter) {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if installed.is_err() {
        return;
    }
    if let Some(error) = filter_error {
        tracing::warn!(filter = %config.filter, error = %error, "invalid RUST_LOG filter; logging at info");
    }
}
