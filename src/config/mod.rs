//! Settings, read once at start-up from flags and the environment (each flag has an environment
//! variable of the same name) and handed to each layer as its own settings type. One file per
//! concern, each headed by the variables it reads. Nothing reads the environment after this, and
//! nothing here does more than parse and check.

mod auth;
mod catalog;
mod database;
mod events;
mod limits;
mod model;
mod server;
mod telemetry;
mod tools;
mod turns;

use std::convert::Infallible;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

pub use self::{
    auth::AuthArgs,
    database::DatabaseArgs,
    events::EventArgs,
    limits::{LimitArgs, cost_micros, usage_period},
    model::ModelArgs,
    server::ServerArgs,
    telemetry::TelemetryArgs,
    tools::{ToolArgs, parse_mcp_config},
    turns::TurnArgs,
};
use crate::server::Config;

/// Where the service runs. Production refuses every development shortcut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    Production,
}

/// The settings as given on the command line or in the environment.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// `development` allows a built-in signing key and model; `production` refuses them. Unset:
    /// development, unless a real model is configured without a signing key, which is refused.
    #[arg(long, env = "CHAT_ENV", value_enum, global = true)]
    pub env: Option<Environment>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub turns: TurnArgs,
    #[command(flatten)]
    pub tools: ToolArgs,
    #[command(flatten)]
    pub events: EventArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
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

impl Settings {
    /// Checks the settings and splits them into each layer's part. `stderr_is_terminal` picks
    /// the default log format.
    pub fn into_config(self, stderr_is_terminal: bool) -> Result<Config, ConfigError> {
        let env = self.env.unwrap_or(Environment::Development);
        // The publicly known development key in front of a real, paid model is a mistake unless
        // someone asked for it by name.
        let development_key_allowed = match self.env {
            Some(env) => env == Environment::Development,
            None => !self.model.names_a_real_model(),
        };
        let (log, otel) = self.telemetry.into_settings(env, stderr_is_terminal)?;
        let (events, lease) = self.events.into_settings()?;
        let mut turns = self.turns.into_settings()?;
        turns.lease = lease;
        let server = self.server.into_settings(env)?;
        let database = self.database.into_settings()?;
        let auth = self.auth.into_settings(env, development_key_allowed)?;
        let model = self.model.into_catalog(env)?;
        if let Some(name) = &turns.title_model
            && !model.models.iter().any(|known| &known.name == name)
        {
            return Err(invalid(
                "CHAT_TITLE_MODEL",
                format!("{name:?} is not a model of the catalog (CHAT_MODELS)"),
            ));
        }
        Ok(Config {
            server,
            database,
            auth,
            model,
            turns,
            tools: self.tools.into_settings()?,
            events,
            limits: self.limits.into_settings()?,
            log,
            otel,
        })
    }
}

/// Reads a secret flag straight into a type that never prints it.
fn secret(text: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(text))
}

/// `Some` for a value that is set and not blank.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|text| !text.is_empty())
}

fn is_http_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

#[cfg(test)]
mod tests;
