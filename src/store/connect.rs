//! Start-up: make sure the database exists and is migrated, then open the pool.

use std::{sync::Arc, time::Duration};

use diesel::prelude::*;
use diesel_async::{
    AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
        deadpool::{Pool, PoolError},
    },
};

use secrecy::ExposeSecret;

use super::{
    DatabaseUrl, SearchConfig, Store, migrations::run_migrations, reply_batches::ReplyQueue,
    schema::service_secrets,
};

/// Which database the service keeps its data in, and how it connects.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: DatabaseUrl,
    pub pool: PoolSettings,
    /// Apply pending migrations at start-up, rather than leaving it to `chat-service migrate`.
    pub migrate_on_start: bool,
    /// How messages are split into words for search.
    pub search_config: SearchConfig,
}

/// How the pool behaves.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: usize,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
    /// How long a request may wait for a free connection.
    pub acquire_timeout: Duration,
    /// How long one store operation may take once it has a connection.
    pub query_timeout: Duration,
}

/// Why the service could not start on its database. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot reach PostgreSQL at {url}: {reason}. Start PostgreSQL or set DATABASE_URL \
         (or --database-url) to a server that is running"
    )]
    Unreachable { url: DatabaseUrl, reason: String },
    #[error(
        "database {database:?} does not exist at {url} and could not be created: {reason}. \
         Create it (CREATE DATABASE) or give the role the CREATEDB privilege"
    )]
    CreateDatabase {
        url: DatabaseUrl,
        database: String,
        reason: String,
    },
    #[error(
        "CHAT_SEARCH_CONFIG names {config:?}, which {url} has no text search configuration of \
         ({reason}). Name one the database has (psql's \\dF lists them), such as simple or english"
    )]
    SearchConfig {
        url: DatabaseUrl,
        config: String,
        reason: String,
    },
    #[error("applying migrations to {url} failed: {reason}")]
    Migrate { url: DatabaseUrl, reason: String },
    #[error(
        "the schema of {url} is missing or out of date ({reason}). Run `chat-service migrate`, \
         or start without --skip-migrations"
    )]
    NotMigrated { url: DatabaseUrl, reason: String },
}

impl Store {
    /// Connects to the configured database, creating it if it is missing and applying
    /// migrations if asked to.
    pub async fn connect(database: &DatabaseSettings) -> Result<Self, ConnectError> {
        let (url, settings) = (&database.url, &database.pool);
        ensure_database_exists(url, settings.connect_timeout).await?;
        if database.migrate_on_start {
            let applied = run_migrations(url, &database.search_config)
                .await
                .map_err(|e| ConnectError::Migrate {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            if !applied.is_empty() {
                tracing::info!(versions = ?applied, "applied database migrations");
            }
        }
        let pool = open_pool(url, settings, &database.search_config);
        let page_token_key = load_page_token_key(&pool, url).await?;
        check_search_config(&pool, url, &database.search_config).await?;
        let mut store = Self {
            pool,
            page_token_key,
            unavailable: Arc::default(),
            url: url.clone(),
            connect_timeout: settings.connect_timeout,
            query_timeout: settings.query_timeout,
            replies: None,
            own_budgets: Arc::default(),
        };
        // A quarter of the pool at most writes replies, so that turns that are starting always
        // find connections for their users' messages.
        let transactions = settings.max_connections / 4;
        store.replies = Some(ReplyQueue::start(store.clone(), transactions));
        Ok(store)
    }
}

fn open_pool(
    url: &DatabaseUrl,
    settings: &PoolSettings,
    search: &SearchConfig,
) -> Pool<AsyncPgConnection> {
    let mut config = ManagerConfig::default();
    // A checkout costs no round trip; a broken connection shows up as an error on first use
    // and is then discarded by the pool.
    config.recycling_method = RecyclingMethod::Fast;
    // PostgreSQL itself cancels a statement that runs past the query timeout, so that one that
    // timed out has certainly not happened.
    // The messages a connection writes are indexed for search in the configuration its
    // searches use (`chat_search_vector` reads `chat.search_config`). Both are sent in one
    // round trip.
    let session = format!(
        "SET statement_timeout = {}; {}",
        settings.query_timeout.as_millis(),
        search.set_statement()
    );
    config.custom_setup = Box::new(move |url| {
        let session = session.clone();
        Box::pin(async move {
            let mut conn = AsyncPgConnection::establish(url).await?;
            conn.batch_execute(&session)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            // The statement that creates a conversation is prepared last: the statement
            // counter of `tests/statements.rs` takes it for the end of the set-up.
            super::replies::prepare_reply_statement(&conn)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            super::regenerations::prepare_regenerate_statement(&conn)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            super::user_messages::prepare_turn_statements(&conn)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        url.expose().expose_secret(),
        config,
    );
    // Only fails without a runtime for the timeouts, which is set here.
    Pool::builder(manager)
        .max_size(settings.max_connections)
        // The connection used last is the one handed out next: its PostgreSQL backend has the
        // statements and rows in its caches, and connections a quiet moment does not need stay
        // idle instead of being cycled through.
        .queue_mode(deadpool::managed::QueueMode::Lifo)
        .runtime(deadpool::Runtime::Tokio1)
        .create_timeout(Some(settings.connect_timeout))
        .wait_timeout(Some(settings.acquire_timeout))
        .build()
        .unwrap_or_else(|e| unreachable!("pool configuration is static and valid: {e}"))
}

async fn load_page_token_key(
    pool: &Pool<AsyncPgConnection>,
    url: &DatabaseUrl,
) -> Result<Vec<u8>, ConnectError> {
    let mut conn = pool.get().await.map_err(|e| match e {
        // A connection prepares the turn's statements as it opens, which fails on a schema
        // that lacks their tables.
        PoolError::Backend(diesel_async::pooled_connection::PoolError::ConnectionError(
            diesel::ConnectionError::CouldntSetupConfiguration(reason),
        )) => ConnectError::NotMigrated {
            url: url.clone(),
            reason: reason.to_string(),
        },
        PoolError::Timeout(_) => ConnectError::Unreachable {
            url: url.clone(),
            reason: "timed out".to_owned(),
        },
        other => ConnectError::Unreachable {
            url: url.clone(),
            reason: other.to_string(),
        },
    })?;
    service_secrets::table
        .filter(service_secrets::name.eq("page_token"))
        .select(service_secrets::secret)
        .first::<Vec<u8>>(&mut conn)
        .await
        .map_err(|e| ConnectError::NotMigrated {
            url: url.clone(),
            reason: e.to_string(),
        })
}

/// Fails unless the database has the text search configuration the service indexes and searches
/// with: a name it lacks would otherwise fail every message's write.
async fn check_search_config(
    pool: &Pool<AsyncPgConnection>,
    url: &DatabaseUrl,
    search: &SearchConfig,
) -> Result<(), ConnectError> {
    let failed = |reason: String| ConnectError::SearchConfig {
        url: url.clone(),
        config: search.as_str().to_owned(),
        reason,
    };
    let mut conn = pool.get().await.map_err(|e| failed(e.to_string()))?;
    diesel::sql_query("SELECT chat_search_config()")
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| failed(e.to_string()))
}

async fn ensure_database_exists(url: &DatabaseUrl, timeout: Duration) -> Result<(), ConnectError> {
    match establish(url, timeout).await {
        Ok(_) => Ok(()),
        // PostgreSQL reports SQLSTATE 3D000 only in this text over the startup handshake.
        Err(reason) if reason.contains("does not exist") => create_database(url, timeout).await,
        Err(reason) => Err(ConnectError::Unreachable {
            url: url.clone(),
            reason,
        }),
    }
}

async fn create_database(url: &DatabaseUrl, timeout: Duration) -> Result<(), ConnectError> {
    let database = url.database_name().to_owned();
    let failed = |reason: String| ConnectError::CreateDatabase {
        url: url.clone(),
        database: database.clone(),
        reason,
    };
    let mut conn = establish(&url.with_database("postgres"), timeout)
        .await
        .map_err(failed)?;
    let statement = format!("CREATE DATABASE {}", quote_identifier(&database));
    match diesel::sql_query(statement).execute(&mut conn).await {
        Ok(_) => {
            tracing::info!(database = %database, "created database");
            Ok(())
        }
        // Another replica created it at the same moment.
        Err(e) if e.to_string().contains("already exists") => Ok(()),
        Err(e) => Err(failed(e.to_string())),
    }
}

pub(super) async fn establish(
    url: &DatabaseUrl,
    timeout: Duration,
) -> Result<AsyncPgConnection, String> {
    match tokio::time::timeout(
        timeout,
        AsyncPgConnection::establish(url.expose().expose_secret()),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Quotes a name for use as an SQL identifier.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::quote_identifier;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("chat"), "\"chat\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
