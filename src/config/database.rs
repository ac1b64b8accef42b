//! DATABASE_URL, CHAT_DB_MAX_CONNECTIONS, CHAT_DB_CONNECT_TIMEOUT, CHAT_DB_ACQUIRE_TIMEOUT,
//! CHAT_DB_QUERY_TIMEOUT, CHAT_SKIP_MIGRATIONS, CHAT_SEARCH_CONFIG

use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, invalid, secret};
use crate::store::{
    DEFAULT_DATABASE_URL, DatabaseSettings, DatabaseUrl, PoolSettings, SearchConfig,
};

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL. The database is created if it does not exist and the role may create it.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, value_parser = secret, hide_env_values = true, global = true)]
    pub database_url: SecretString,

    /// Most connections the service opens to PostgreSQL.
    #[arg(
        long,
        env = "CHAT_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: usize,

    /// How long opening a database connection may take (e.g. 5s, 500ms).
    #[arg(long, env = "CHAT_DB_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub db_connect_timeout: Duration,

    /// How long a request may wait for a free database connection.
    #[arg(long, env = "CHAT_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub db_acquire_timeout: Duration,

    /// How long one database operation may take once it has a connection.
    #[arg(long, env = "CHAT_DB_QUERY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub db_query_timeout: Duration,

    /// Do not apply migrations at start-up (run `chat-service migrate` separately).
    #[arg(long, env = "CHAT_SKIP_MIGRATIONS", global = true)]
    pub skip_migrations: bool,

    /// PostgreSQL text search configuration that messages are indexed and searched with:
    /// `simple` matches words as written in any language; `english`, `german`… also match
    /// other forms of a word. Applies to messages written from then on.
    #[arg(
        long,
        env = "CHAT_SEARCH_CONFIG",
        default_value = "simple",
        global = true
    )]
    pub search_config: String,
}

impl DatabaseArgs {
    pub fn into_settings(self) -> Result<DatabaseSettings, ConfigError> {
        let url = DatabaseUrl::parse(self.database_url.expose_secret())
            .map_err(|e| invalid("DATABASE_URL", e.to_string()))?;
        if self.db_query_timeout.is_zero() {
            return Err(invalid("CHAT_DB_QUERY_TIMEOUT", "must be longer than zero"));
        }
        if self.db_max_connections == 0 {
            return Err(invalid("CHAT_DB_MAX_CONNECTIONS", "must be at least 1"));
        }
        Ok(DatabaseSettings {
            url,
            pool: PoolSettings {
                max_connections: self.db_max_connections,
                connect_timeout: self.db_connect_timeout,
                acquire_timeout: self.db_acquire_timeout,
                query_timeout: self.db_query_timeout,
            },
            migrate_on_start: !self.skip_migrations,
            search_config: SearchConfig::parse(&self.search_config)
                .map_err(|e| invalid("CHAT_SEARCH_CONFIG", e.to_string()))?,
        })
    }
}
