//! Logs, traces and metrics.

mod json_lines;
pub mod metrics;
pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource, runtime::Tokio, trace::SdkTracerProvider,
    trace::span_processor_with_async_runtime::BatchSpanProcessor,
};
use tracing::Subscriber;
use tracing_subscriber::{
    EnvFilter, Layer, fmt, fmt::MakeWriter, layer::SubscriberExt, registry::LookupSpan,
    util::SubscriberInitExt,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// In `RUST_LOG` syntax.
    pub filter: String,
}

/// The OTLP transports an exporter can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Where spans are exported to.
#[derive(Debug, Clone)]
pub struct OtelSettings {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
}

/// What must outlive the service for its telemetry to be delivered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OpenTelemetry export to {endpoint} (OTEL_EXPORTER_OTLP_ENDPOINT): {reason}")]
pub struct TelemetryError {
    endpoint: String,
    reason: String,
}

impl Telemetry {
    /// Sends the spans still buffered.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }

    /// Flushes and stops the exporter. Blocks: call it off the async threads.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: logs to stderr and, when configured, spans to an OTLP
/// collector. Must run inside a Tokio runtime when `otel` is set. An invalid log filter falls
/// back to `info` with a warning rather than stopping the service.
pub fn init(log: &LogSettings, otel: Option<&OtelSettings>) -> Result<Telemetry, TelemetryError> {
    let (filter, filter_error) = match EnvFilter::try_new(&log.filter) {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let logs = match log.format {
        LogFormat::Json => json_logs(std::io::stderr).boxed(),
        LogFormat::Pretty => fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let provider = otel.map(tracer_provider).transpose()?;
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(env!("CARGO_PKG_NAME")))
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
    if installed.is_ok() {
        if let Some(error) = filter_error {
            tracing::warn!(filter = %log.filter, error = %error, "invalid RUST_LOG filter; logging at info");
        }
        if let Some(otel) = otel {
            tracing::info!(endpoint = %otel.endpoint, protocol = ?otel.protocol, "exporting traces over OTLP");
        }
    }
    Ok(Telemetry { provider })
}

/// The name of the span each RPC runs in: the span that log lines logged during a request show.
pub const RPC_SPAN: &str = "rpc";

/// JSON log lines written to `writer` ([`json_lines`]): each event's fields at the top level,
/// and under `span` its request's span, which carries the request id and the method, even for
/// a line logged inside the span of a database or model call.
pub fn json_logs<S, W>(writer: W) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    json_lines::JsonLines::new(writer)
}

fn tracer_provider(otel: &OtelSettings) -> Result<SdkTracerProvider, TelemetryError> {
    let failed = |e: &dyn std::fmt::Display| TelemetryError {
        endpoint: otel.endpoint.clone(),
        reason: e.to_string(),
    };
    let exporter = match otel.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&otel.endpoint)
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url(&otel.endpoint))
            .build(),
    }
    .map_err(|e| failed(&e))?;
    // Exports on the service's own runtime, so that both transports find their reactor.
    let processor = BatchSpanProcessor::builder(exporter, Tokio).build();
    let resource = Resource::builder()
        .with_service_name(otel.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

/// The traces URL for a base OTLP/HTTP endpoint, as the OpenTelemetry specification derives it.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }
}
