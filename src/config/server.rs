//! CHAT_LISTEN_ADDR, CHAT_METRICS_ADDR, CHAT_SHUTDOWN_GRACE, CHAT_HEALTH_CHECK_INTERVAL,
//! CHAT_CORS_ALLOWED_ORIGINS, CHAT_REQUEST_HEAD_TIMEOUT, CHAT_HTTP2_MAX_CONCURRENT_STREAMS,
//! CHAT_HTTP2_KEEPALIVE_INTERVAL, CHAT_HTTP2_KEEPALIVE_TIMEOUT, CHAT_TCP_KEEPALIVE,
//! CHAT_MAX_HEADER_BYTES, CHAT_HTTP2_MAX_LOCAL_RESETS

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use super::{ConfigError, Environment, invalid, is_http_url};
use crate::server::{CorsOrigins, ServerSettings, TransportSettings};

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address the gRPC server listens on.
    #[arg(
        long,
        env = "CHAT_LISTEN_ADDR",
        default_value = "0.0.0.0:50051",
        global = true
    )]
    pub listen_addr: SocketAddr,

    /// Address of the Prometheus endpoint (`GET /metrics`).
    #[arg(
        long,
        env = "CHAT_METRICS_ADDR",
        default_value = "0.0.0.0:9464",
        global = true
    )]
    pub metrics_addr: SocketAddr,

    /// How long streams in flight may run on after SIGTERM before they are cut short.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// How often the database is checked for the health service.
    #[arg(long, env = "CHAT_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub health_check_interval: Duration,

    /// Origins allowed to call from a browser (grpc-web), comma-separated, or `*`. Unset: any
    /// origin in development, none in production.
    #[arg(long, env = "CHAT_CORS_ALLOWED_ORIGINS", global = true)]
    pub cors_allowed_origins: Option<String>,

    /// A connection that has not sent the HTTP/2 preface, or its first HTTP/1.1 request's headers,
    /// this long after connecting is closed (both ports).
    #[arg(long, env = "CHAT_REQUEST_HEAD_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub request_head_timeout: Duration,

    /// Requests one HTTP/2 connection may have open at once.
    #[arg(
        long,
        env = "CHAT_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 256,
        global = true
    )]
    pub http2_max_concurrent_streams: u32,

    /// How often an idle HTTP/2 connection is pinged.
    #[arg(long, env = "CHAT_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub http2_keepalive_interval: Duration,

    /// How long a ping's answer may take before the connection is closed.
    #[arg(long, env = "CHAT_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub http2_keepalive_timeout: Duration,

    /// Idle time before TCP keepalive probes start.
    #[arg(long, env = "CHAT_TCP_KEEPALIVE", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub tcp_keepalive: Duration,

    /// The largest header block a request may send, in bytes.
    #[arg(
        long,
        env = "CHAT_MAX_HEADER_BYTES",
        default_value_t = 16 * 1024,
        global = true
    )]
    pub max_header_bytes: u32,

    /// Streams the server may reset for a client's errors before it closes the connection.
    #[arg(
        long,
        env = "CHAT_HTTP2_MAX_LOCAL_RESETS",
        default_value_t = 1024,
        global = true
    )]
    pub http2_max_local_resets: usize,
}

impl ServerArgs {
    pub fn into_settings(self, env: Environment) -> Result<ServerSettings, ConfigError> {
        if self.health_check_interval.is_zero() {
            return Err(invalid(
                "CHAT_HEALTH_CHECK_INTERVAL",
                "must be longer than zero",
            ));
        }
        for (setting, duration) in [
            ("CHAT_REQUEST_HEAD_TIMEOUT", self.request_head_timeout),
            (
                "CHAT_HTTP2_KEEPALIVE_INTERVAL",
                self.http2_keepalive_interval,
            ),
            ("CHAT_HTTP2_KEEPALIVE_TIMEOUT", self.http2_keepalive_timeout),
            ("CHAT_TCP_KEEPALIVE", self.tcp_keepalive),
        ] {
            if duration.is_zero() {
                return Err(invalid(setting, "must be longer than zero"));
            }
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err(invalid(
                "CHAT_HTTP2_MAX_CONCURRENT_STREAMS",
                "must be at least 1",
            ));
        }
        if self.http2_max_local_resets == 0 {
            return Err(invalid("CHAT_HTTP2_MAX_LOCAL_RESETS", "must be at least 1"));
        }
        if self.max_header_bytes < 1024 {
            return Err(invalid("CHAT_MAX_HEADER_BYTES", "must be at least 1024"));
        }
        let transport = TransportSettings {
            request_head_timeout: self.request_head_timeout,
            max_concurrent_streams: self.http2_max_concurrent_streams,
            http2_keepalive_interval: self.http2_keepalive_interval,
            http2_keepalive_timeout: self.http2_keepalive_timeout,
            tcp_keepalive: self.tcp_keepalive,
            max_header_bytes: self.max_header_bytes,
            max_local_resets: self.http2_max_local_resets,
        };
        Ok(ServerSettings {
            transport,
            listen_addr: self.listen_addr,
            metrics_addr: self.metrics_addr,
            shutdown_grace: self.shutdown_grace,
            health_check_interval: self.health_check_interval,
            cors: cors_origins(self.cors_allowed_origins.as_deref(), env)?,
        })
    }
}

fn cors_origins(setting: Option<&str>, env: Environment) -> Result<CorsOrigins, ConfigError> {
    match setting.map(str::trim) {
        Some("*") => Ok(CorsOrigins::Any),
        Some(list) => {
            let origins: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect();
            if let Some(bad) = origins.iter().find(|o| !is_http_url(o) || o.ends_with('/')) {
                return Err(invalid(
                    "CHAT_CORS_ALLOWED_ORIGINS",
                    format!("{bad:?} is not an origin such as https://app.example.com"),
                ));
            }
            Ok(CorsOrigins::List(origins))
        }
        None if env == Environment::Development => Ok(CorsOrigins::Any),
        None => Ok(CorsOrigins::List(Vec::new())),
    }
}
