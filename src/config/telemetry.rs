//! CHAT_LOG_FORMAT, RUST_LOG, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL,
//! OTEL_SERVICE_NAME

use clap::{Args, ValueEnum};

use super::{ConfigError, Environment, invalid, is_http_url, non_empty};
use crate::telemetry::{LogFormat, LogSettings, OtelSettings, OtlpProtocol};

/// [`LogFormat`] as a flag spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Json,
    Pretty,
}

/// [`OtlpProtocol`] as the OpenTelemetry specification spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocolArg {
    #[value(name = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log format; JSON lines when not attached to a terminal, or in production.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormatArg>,

    /// Log filter in RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,

    /// OTLP collector to export traces to, e.g. http://otel-collector:4317. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// `grpc` or `http/protobuf`.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "http/protobuf",
        global = true
    )]
    pub otel_exporter_otlp_protocol: OtlpProtocolArg,

    /// The service name traces are reported under.
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "chat-service",
        global = true
    )]
    pub otel_service_name: String,
}

impl TelemetryArgs {
    pub fn into_settings(
        self,
        env: Environment,
        stderr_is_terminal: bool,
    ) -> Result<(LogSettings, Option<OtelSettings>), ConfigError> {
        let format = match self.log_format {
            Some(LogFormatArg::Json) => LogFormat::Json,
            Some(LogFormatArg::Pretty) => LogFormat::Pretty,
            None if stderr_is_terminal && env == Environment::Development => LogFormat::Pretty,
            None => LogFormat::Json,
        };
        let otel = match non_empty(self.otel_exporter_otlp_endpoint) {
            Some(endpoint) if !is_http_url(&endpoint) => {
                return Err(invalid(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "must be an http:// or https:// URL",
                ));
            }
            Some(endpoint) => Some(OtelSettings {
                endpoint,
                protocol: match self.otel_exporter_otlp_protocol {
                    OtlpProtocolArg::Grpc => OtlpProtocol::Grpc,
                    OtlpProtocolArg::HttpProtobuf => OtlpProtocol::HttpProtobuf,
                },
                service_name: self.otel_service_name,
            }),
            None => None,
        };
        let log = LogSettings {
            format,
            filter: self.log_filter,
        };
        Ok((log, otel))
    }
}
