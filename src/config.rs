//! Settings, read once at start-up from flags and the environment (each flag has an environment
//! variable of the same name) and validated into one typed [`Config`]. Nothing reads the
//! environment after this.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::{
    chat::TurnSettings,
    llm::OpenAiSettings,
    store::{DatabaseUrl, PoolSettings},
};

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

    /// Root of an OpenAI-compatible API, e.g. http://localhost:11434/v1. Unset: the built-in
    /// development model answers.
    #[arg(long, env = "CHAT_LLM_BASE_URL", global = true)]
    pub llm_base_url: Option<String>,

    /// Fallback for CHAT_LLM_BASE_URL.
    #[arg(long, env = "OPENAI_BASE_URL", hide = true, global = true)]
    pub openai_base_url: Option<String>,

    /// API key sent as a bearer token to the model.
    #[arg(long, env = "CHAT_LLM_API_KEY", hide_env_values = true, global = true)]
    pub llm_api_key: Option<String>,

    /// Fallback for CHAT_LLM_API_KEY.
    #[arg(
        long,
        env = "OPENAI_API_KEY",
        hide = true,
        hide_env_values = true,
        global = true
    )]
    pub openai_api_key: Option<String>,

    /// Model name, e.g. gpt-4o-mini or llama3.2. Required with CHAT_LLM_BASE_URL.
    #[arg(long, env = "CHAT_LLM_MODEL", global = true)]
    pub llm_model: Option<String>,

    /// How long connecting to the model may take.
    #[arg(long, env = "CHAT_LLM_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    pub llm_connect_timeout: Duration,

    /// How long the model may take to send the first chunk of a reply.
    #[arg(long, env = "CHAT_LLM_FIRST_TOKEN_TIMEOUT", default_value = "60s", value_parser = parse_duration, global = true)]
    pub llm_first_token_timeout: Duration,

    /// The longest pause allowed between two chunks of a reply.
    #[arg(long, env = "CHAT_LLM_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub llm_idle_timeout: Duration,

    /// The longest a whole reply may take.
    #[arg(long, env = "CHAT_LLM_TOTAL_TIMEOUT", default_value = "10m", value_parser = parse_duration, global = true)]
    pub llm_total_timeout: Duration,

    /// Retries on connection errors, 429 and 5xx, before the first token.
    #[arg(long, env = "CHAT_LLM_MAX_RETRIES", default_value_t = 2, global = true)]
    pub llm_max_retries: u32,

    /// Backoff before the first retry; doubled for each further one, with jitter.
    #[arg(long, env = "CHAT_LLM_RETRY_BASE_DELAY", default_value = "250ms", value_parser = parse_duration, global = true)]
    pub llm_retry_base_delay: Duration,

    /// Pause before each word of the development model's reply.
    #[arg(long, env = "CHAT_DEV_MODEL_DELAY", default_value = "40ms", value_parser = parse_duration, global = true)]
    pub dev_model_delay: Duration,

    /// System prompt sent before the conversation.
    #[arg(long, env = "CHAT_SYSTEM_PROMPT", global = true)]
    pub system_prompt: Option<String>,

    /// How many of the newest messages are sent to the model.
    #[arg(
        long,
        env = "CHAT_HISTORY_MESSAGES",
        default_value_t = 20,
        global = true
    )]
    pub history_messages: usize,

    /// How many characters of history are sent to the model at most.
    #[arg(
        long,
        env = "CHAT_HISTORY_MAX_CHARS",
        default_value_t = 48_000,
        global = true
    )]
    pub history_max_chars: usize,

    /// The longest user message, in characters.
    #[arg(
        long,
        env = "CHAT_MAX_MESSAGE_CHARS",
        default_value_t = 10_000,
        global = true
    )]
    pub max_message_chars: usize,

    /// Address of the Prometheus endpoint (`GET /metrics`).
    #[arg(
        long,
        env = "CHAT_METRICS_ADDR",
        default_value = "0.0.0.0:9464",
        global = true
    )]
    pub metrics_addr: SocketAddr,

    /// How long streams in flight may run on after SIGTERM before they are cut short.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// How often the database is checked for the health service.
    #[arg(long, env = "CHAT_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub health_check_interval: Duration,

    /// Origins allowed to call from a browser (grpc-web), comma-separated, or `*`. Unset: any
    /// origin in development, none in production.
    #[arg(long, env = "CHAT_CORS_ALLOWED_ORIGINS", global = true)]
    pub cors_allowed_origins: Option<String>,

    /// OTLP collector to export traces to, e.g. http://otel-collector:4317. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// `grpc` or `http/protobuf`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf", value_parser = parse_protocol, global = true)]
    pub otel_exporter_otlp_protocol: OtlpProtocol,

    /// The service name traces are reported under.
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "chat-service",
        global = true
    )]
    pub otel_service_name: String,

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
    pub model: ModelConfig,
    pub turns: TurnSettings,
    pub server: ServerConfig,
    pub log: LogConfig,
    /// Where traces go; `None` exports none.
    pub otel: Option<OtelConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, Clone)]
pub struct OtelConfig {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
}

fn parse_protocol(text: &str) -> Result<OtlpProtocol, String> {
    match text {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        other => Err(format!(
            "{other:?} is not supported; use grpc or http/protobuf"
        )),
    }
}

/// How the server runs, besides its gRPC address.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub metrics_addr: SocketAddr,
    pub shutdown_grace: Duration,
    pub health_check_interval: Duration,
    pub cors: CorsOrigins,
}

/// Which browser origins may call the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

/// Which model answers.
#[derive(Debug, Clone)]
pub enum ModelConfig {
    /// The built-in development model, pausing this long before each word. Refused in production.
    Development {
        delay: Duration,
    },
    OpenAi(OpenAiSettings),
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
        let model = match self
            .llm_base_url
            .or(self.openai_base_url)
            .filter(|url| !url.is_empty())
        {
            Some(base_url) => {
                if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                    return Err(invalid(
                        "CHAT_LLM_BASE_URL",
                        "must start with http:// or https://",
                    ));
                }
                let model = self.llm_model.filter(|m| !m.is_empty()).ok_or_else(|| {
                    invalid(
                        "CHAT_LLM_MODEL",
                        "must name the model when CHAT_LLM_BASE_URL is set",
                    )
                })?;
                ModelConfig::OpenAi(OpenAiSettings {
                    base_url,
                    api_key: self
                        .llm_api_key
                        .or(self.openai_api_key)
                        .filter(|k| !k.is_empty()),
                    model,
                    connect_timeout: self.llm_connect_timeout,
                    first_token_timeout: self.llm_first_token_timeout,
                    idle_timeout: self.llm_idle_timeout,
                    total_timeout: self.llm_total_timeout,
                    max_retries: self.llm_max_retries,
                    retry_base_delay: self.llm_retry_base_delay,
                })
            }
            None if self.env == Environment::Production => {
                return Err(invalid(
                    "CHAT_LLM_BASE_URL",
                    "production needs a real model; the built-in development model is refused",
                ));
            }
            None => ModelConfig::Development {
                delay: self.dev_model_delay,
            },
        };
        if self.history_messages == 0 {
            return Err(invalid("CHAT_HISTORY_MESSAGES", "must be at least 1"));
        }
        if self.max_message_chars == 0 {
            return Err(invalid("CHAT_MAX_MESSAGE_CHARS", "must be at least 1"));
        }
        let cors = match self.cors_allowed_origins.as_deref().map(str::trim) {
            Some("*") => CorsOrigins::Any,
            Some(list) => {
                let origins: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = origins.iter().find(|o| {
                    !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/')
                }) {
                    return Err(invalid(
                        "CHAT_CORS_ALLOWED_ORIGINS",
                        format!("{bad:?} is not an origin such as https://app.example.com"),
                    ));
                }
                CorsOrigins::List(origins)
            }
            None if self.env == Environment::Development => CorsOrigins::Any,
            None => CorsOrigins::List(Vec::new()),
        };
        if self.health_check_interval.is_zero() {
            return Err(invalid(
                "CHAT_HEALTH_CHECK_INTERVAL",
                "must be longer than zero",
            ));
        }
        let server = ServerConfig {
            metrics_addr: self.metrics_addr,
            shutdown_grace: self.shutdown_grace,
            health_check_interval: self.health_check_interval,
            cors,
        };
        let otel = match self.otel_exporter_otlp_endpoint.filter(|e| !e.is_empty()) {
            Some(endpoint)
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) =>
            {
                return Err(invalid(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "must be an http:// or https:// URL",
                ));
            }
            Some(endpoint) => Some(OtelConfig {
                endpoint,
                protocol: self.otel_exporter_otlp_protocol,
                service_name: self.otel_service_name,
            }),
            None => None,
        };
        let turns = TurnSettings {
            max_message_chars: self.max_message_chars,
            history_messages: self.history_messages,
            history_chars: self.history_max_chars,
            system_prompt: self.system_prompt.filter(|p| !p.trim().is_empty()),
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
            model,
            turns,
            server,
            otel,
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

    /// Settings that production accepts: a real key and a real model.
    fn production() -> Settings {
        let secret = "s".repeat(32);
        settings(&[
            "--env",
            "production",
            "--jwt-secret",
            &secret,
            "--llm-base-url",
            "http://vllm:8000/v1",
            "--llm-model",
            "qwen",
        ])
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
    fn production_refuses_the_development_key_and_model() {
        let error = settings(&["--env", "production"]).into_config(false).err();
        assert_eq!(error.map(|e| e.setting), Some("CHAT_ENV"));
        let secret = "s".repeat(32);
        let error = settings(&["--env", "production", "--jwt-secret", &secret])
            .into_config(false)
            .err();
        assert_eq!(error.map(|e| e.setting), Some("CHAT_LLM_BASE_URL"));
        let config = production().into_config(false);
        assert!(config.is_ok_and(|c| matches!(c.model, ModelConfig::OpenAi(_))));
    }

    #[test]
    fn a_model_url_needs_a_model_name() {
        let error = settings(&["--llm-base-url", "http://localhost:11434/v1"])
            .into_config(false)
            .err();
        assert_eq!(error.map(|e| e.setting), Some("CHAT_LLM_MODEL"));
        let error = settings(&["--llm-base-url", "localhost:11434", "--llm-model", "m"])
            .into_config(false)
            .err();
        assert_eq!(error.map(|e| e.setting), Some("CHAT_LLM_BASE_URL"));
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
        let production = production()
            .into_config(true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            production.log.format,
            LogFormat::Json,
            "production logs JSON even on a terminal"
        );
    }

    /// Environment variables that `deploy/` sets for other containers, not for this service.
    const FOREIGN_VARIABLES: [&str; 3] = ["POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"];

    /// The variable names a deploy file sets: YAML keys, `- name:` entries and Dockerfile
    /// `ENV` assignments, including commented-out examples.
    fn variables_in(text: &str) -> Vec<String> {
        let is_name = |s: &str| {
            s.len() > 1
                && s.starts_with(|c: char| c.is_ascii_uppercase())
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        };
        let mut names = Vec::new();
        for line in text.lines() {
            let line = line.trim().trim_start_matches('#').trim();
            let line = line.strip_prefix("ENV ").unwrap_or(line);
            let candidate = if let Some(rest) = line.strip_prefix("- name:") {
                rest.trim()
            } else if let Some((key, _)) = line.split_once(':') {
                key.trim()
            } else if let Some((key, _)) = line.split_once('=') {
                key.trim()
            } else {
                continue;
            };
            if is_name(candidate) {
                names.push(candidate.to_owned());
            }
        }
        names
    }

    #[test]
    fn deploy_files_set_only_variables_the_service_reads() {
        let command = <Settings as clap::Args>::augment_args(clap::Command::new("chat-service"));
        let known: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .collect();
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let mut files = vec![deploy.join("Dockerfile"), deploy.join("docker-compose.yml")];
        let k8s = std::fs::read_dir(deploy.join("k8s")).unwrap_or_else(|e| panic!("{e}"));
        files.extend(k8s.flatten().map(|entry| entry.path()));
        let mut checked = 0;
        for file in files {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for name in variables_in(&text) {
                assert!(
                    known.contains(&name) || FOREIGN_VARIABLES.contains(&name.as_str()),
                    "{} sets {name}, which the service does not read",
                    file.display()
                );
                checked += 1;
            }
        }
        assert!(
            checked > 20,
            "too few variables found ({checked}): is the scan broken?"
        );
        assert!(variables_in("  - name: CHAT_TYPO\n  CHAT_OTHER: x\nENV A_B=1").len() == 3);
    }

    #[test]
    fn the_kustomization_lists_every_manifest() {
        let k8s = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
        let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let listed: Vec<&str> = kustomization
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- "))
            .filter(|item| item.ends_with(".yaml"))
            .collect();
        let mut manifests: Vec<String> = std::fs::read_dir(&k8s)
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
            .collect();
        manifests.sort();
        let mut listed_sorted: Vec<String> = listed.iter().map(|s| (*s).to_owned()).collect();
        listed_sorted.sort();
        assert_eq!(listed_sorted, manifests);
    }
}
