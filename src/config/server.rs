//! CHAT_LISTEN_ADDR, CHAT_METRICS_ADDR, CHAT_SHUTDOWN_GRACE, CHAT_HEALTH_CHECK_INTERVAL,
//! CHAT_CORS_ALLOWED_ORIGINS

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use super::{ConfigError, Environment, invalid, is_http_url};
use crate::server::{CorsOrigins, ServerSettings};

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
}

impl ServerArgs {
    pub fn into_settings(self, env: Environment) -> Result<ServerSettings, ConfigError> {
        if self.health_check_interval.is_zero() {
            return Err(invalid(
                "CHAT_HEALTH_CHECK_INTERVAL",
                "must be longer than zero",
            ));
        }
        Ok(ServerSettings {
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
