//! Settings, read once at start-up from flags and the environment (each flag has an environment
//! variable of the same name) and validated into one typed [`Config`]. Nothing reads the
//! environment after this.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::store::{DatabaseUrl, PoolSettings};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/chat";

/// Where the service runs. Production refuses every development shortcut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The settings as given on the command line or in the environment.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// `development` allows a built-in signing key; `production` refuses it.
    #[arg(
        long,
        env = "CHAT_ENV",
        value_enum,
        default_value = "development",
        global = true
    )]
    pub env: Environment,

    /// Address the gRPC server listens on.
    #[arg(
        long,
        env = "CHAT_LISTEN_ADDR",
        default_value = "0.0.0.0:50051",
        global = true
    )]
    pub listen_addr: SocketAddr,

    /// PostgreSQL URL. The database is created if it does not exist and the role may create it.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,

    /// Most connections the service opens to PostgreSQL.
    #[arg(
        long,
        env = "CHAT_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: usize,

    /// How long opening a database connection may take (e.g. 5s, 500ms).
    #[arg(long, env = "CHAT_DB_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    pub db_connect_timeout: Duration,

    /// How long a request may wait for a free database connection.
    #[arg(long, env = "CHAT_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    pub db_acquire_timeout: Duration,

    /// Do not apply migrations at start-up (run `chat-service migrate` separately).
    #[arg(long, env = "CHAT_SKIP_MIGRATIONS", global = true)]
    pub skip_migrations: bool,

    /// HS256 shared secret that signs access tokens.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,

    /// PEM file with the RS256 or ES256 public key that verifies access tokens.
    #[arg(long, env = "CHAT_JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "CHAT_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "CHAT_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Log format; JSON lines when not attached to a terminal, or in production.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,

    /// Log filter in RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,
}

/// The validated configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub environment: Environment,
    pub listen_addr: SocketAddr,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
    pub pool: PoolSettings,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub key: JwtKey,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// What verifies access tokens.
#[derive(Clone)]
pub enum JwtKey {
    /// A fixed, publicly known secret, for trying the service out. Refused in production.
    Development,
    Hs256Secret(Vec<u8>),
    /// An RS256 or ES256 public key in PEM, as read from the file at start-up.
    PublicKeyPem {
        path: PathBuf,
        pem: Vec<u8>,
    },
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Development => f.write_str("Development"),
            Self::Hs256Secret(_) => f.write_str("Hs256Secret(..)"),
            Self::PublicKeyPem { path, .. } => write!(f, "PublicKeyPem({})", path.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

/// A setting with an unusable value. The message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        message: message.into(),
    }
}

/// HS256 secrets shorter than this are brute-forceable.
const MIN_SECRET_BYTES: usize = 32;

impl Settings {
    pub fn into_config(self, stderr_is_terminal: bool) -> Result<Config, ConfigError> {
        let url = DatabaseUrl::parse(&self.database_url)
            .map_err(|e| invalid("DATABASE_URL", e.to_string()))?;
        if self.db_max_connections == 0 {
            return Err(invalid("CHAT_DB_MAX_CONNECTIONS", "must be at least 1"));
        }
        let key = match (self.jwt_secret, self.jwt_public_key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "CHAT_JWT_SECRET",
                    "set either CHAT_JWT_SECRET or CHAT_JWT_PUBLIC_KEY_FILE, not both",
                ));
            }
            (Some(secret), None) if secret.len() < MIN_SECRET_BYTES => {
                return Err(invalid(
                    "CHAT_JWT_SECRET",
                    format!("must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
            (Some(secret), None) => JwtKey::Hs256Secret(secret.into_bytes()),
            (None, Some(path)) => {
                let pem = std::fs::read(&path).map_err(|e| {
                    invalid(
                        "CHAT_JWT_PUBLIC_KEY_FILE",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                JwtKey::PublicKeyPem { path, pem }
            }
            (None, None) if self.env == Environment::Production => {
                return Err(invalid(
                    "CHAT_ENV",
                    "production needs CHAT_JWT_SECRET or CHAT_JWT_PUBLIC_KEY_FILE; the development key is refused",
                ));
            }
            (None, None) => JwtKey::Development,
        };
        let format = self.log_format.unwrap_or(
            if stderr_is_terminal && self.env == Environment::Development {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            },
        );
        Ok(Config {
            environment: self.env,
            listen_addr: self.listen_addr,
            database: DatabaseConfig {
                url,
                pool: PoolSettings {
                    max_connections: self.db_max_connections,
                    connect_timeout: self.db_connect_timeout,
                    acquire_timeout: self.db_acquire_timeout,
                },
                migrate_on_start: !self.skip_migrations,
            },
            auth: AuthConfig {
                key,
                issuer: self.jwt_issuer.filter(|s| !s.is_empty()),
                audience: self.jwt_audience.filter(|s| !s.is_empty()),
            },
            log: LogConfig {
                format,
                filter: self.log_filter,
            },
        })
    }
}

/// Parses `250ms`, `5s`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 5s, 2m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!("{text:?} needs a unit: ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn settings(args: &[&str]) -> Settings {
        let argv = std::iter::once("chat-service").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{e}"))
            .settings
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn production_refuses_the_development_key() {
        let error = settings(&["--env", "production"]).into_config(false).err();
        assert_eq!(error.map(|e| e.setting), Some("CHAT_ENV"));
    }

    #[test]
    fn short_secrets_and_bad_urls_name_their_setting() {
        let error = settings(&["--jwt-secret", "short"])
            .into_config(false)
            .err();
        assert_eq!(error.map(|e| e.setting), Some("CHAT_JWT_SECRET"));
        let error = settings(&["--database-url", "postgres://localhost"])
            .into_config(false)
            .err();
        assert_eq!(error.map(|e| e.setting), Some("DATABASE_URL"));
        let error = settings(&["--jwt-public-key-file", "/nonexistent/key.pem"])
            .into_config(false)
            .err();
        assert_eq!(error.map(|e| e.setting), Some("CHAT_JWT_PUBLIC_KEY_FILE"));
    }

    #[test]
    fn logs_are_json_unless_a_person_is_watching() {
        let config = settings(&[])
            .into_config(false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.log.format, LogFormat::Json);
        let config = settings(&[])
            .into_config(true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.log.format, LogFormat::Pretty);
    }
}
