//! PostgreSQL persistence through diesel-async. Every function that reads or writes user data
//! takes the owner's [`UserId`](crate::domain::UserId) and filters by it, so that a row belonging
//! to someone else looks exactly like a missing one.

mod branches;
#[macro_use]
mod budgets;
mod connect;
mod context;
mod conversations;
mod error;
mod leases;
mod message_reads;
mod migrations;
mod models;
mod regenerations;
mod replies;
mod reply_batches;
mod schema;
mod search;
mod statement;
mod transfer;
mod tool_results;
mod turn_records;
mod turns;
mod url;
mod usage;
mod user_messages;
mod users;

use std::sync::Arc;

use diesel_async::{
    AsyncPgConnection, RunQueryDsl,
    pooled_connection::deadpool::{Object, Pool},
};
use tokio::sync::Notify;
use tracing::Instrument;

pub use connect::{ConnectError, DatabaseSettings, PoolSettings, quote_identifier};
pub use conversations::{MessagesPage, WholeConversation};
pub use error::StoreError;
pub use leases::LapsedTurn;
pub use migrations::{MigrationError, run_migrations};
pub use regenerations::{NewRegeneration, RegenerateLimits, RegenerateRefused, Regenerating};
pub use replies::{Awaiting, ReplyOf, ReplyStored, TurnEnding};
pub use search::{
    InvalidSearchConfig, SEARCH_FROM_THE_INDEX, SEARCH_FROM_THE_USER, SearchConfig, Tsvector,
};
pub use tool_results::{GivenResult, Submitted};
pub use turn_records::{StoredReply, TurnRecord};
pub use turns::ConversationState;
pub use url::{DatabaseUrl, InvalidDatabaseUrl};
pub use user_messages::{AppendLimits, NewTurn, PlaceRefused, Placed, UserMessageStored};

/// The server the service and its tools use when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/chat";

type Conn = AsyncPgConnection;

/// How much longer than the server's statement timeout the service waits for an answer.
const QUERY_TIMEOUT_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The service's database: a pool of connections and the secrets kept in it.
#[derive(Clone)]
pub struct Store {
    pool: Pool<AsyncPgConnection>,
    page_token_key: Vec<u8>,
    /// Woken whenever a connection cannot be had, so that health is re-checked at once.
    unavailable: Arc<Notify>,
    /// For probes, which connect on their own.
    url: DatabaseUrl,
    connect_timeout: std::time::Duration,
    /// How long one store function may take on its connection.
    query_timeout: std::time::Duration,
    /// Where replies wait to be written together; `None` in the store that writes them.
    replies: Option<reply_batches::ReplyQueue>,
    /// Who has a budget of their own, as far as this replica has seen.
    own_budgets: Arc<budgets::OwnBudgets>,
}

/// Whether PostgreSQL answers, asked on a connection outside the pool: a pool that load has
/// exhausted is not a database that is down, and must not take a replica out of service.
pub struct DatabaseProbe {
    url: DatabaseUrl,
    connect_timeout: std::time::Duration,
    /// Kept between checks; dropped after a failure and opened again by the next check.
    conn: Option<AsyncPgConnection>,
}

impl DatabaseProbe {
    /// Whether the database answers within `timeout`. A connection that did not answer in time
    /// is dropped, so that the next check opens a fresh one rather than wait on it again.
    pub async fn check(&mut self, timeout: std::time::Duration) -> Result<(), StoreError> {
        let answered = tokio::time::timeout(timeout, self.query()).await;
        let outcome = answered.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "no answer within {timeout:?}"
            )))
        });
        if outcome.is_err() {
            self.conn = None;
        }
        outcome
    }

    async fn query(&mut self) -> Result<(), StoreError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let opened = connect::establish(&self.url, self.connect_timeout)
                    .await
                    .map_err(StoreError::Unavailable)?;
                self.conn.insert(opened)
            }
        };
        diesel::sql_query("SELECT 1")
            .execute(conn)
            .await
            .map(|_| ())
            .map_err(|error| StoreError::Unavailable(error.to_string()))
    }
}

/// What a store function does, as its client span names it.
#[derive(Clone, Copy)]
struct Operation {
    /// The span's name: the operation and the tables, e.g. `SELECT messages`.
    name: &'static str,
    /// `db.operation.name`: the SQL verb.
    verb: &'static str,
}

impl Operation {
    const fn new(verb: &'static str, name: &'static str) -> Self {
        Self { name, verb }
    }
}

impl Store {
    /// The key that signs page tokens, shared by every replica through the database.
    pub fn page_token_key(&self) -> &[u8] {
        &self.page_token_key
    }

    /// Notified when the database has just been found unavailable.
    pub fn unavailable_signal(&self) -> Arc<Notify> {
        self.unavailable.clone()
    }

    /// Connections in use and idle, for metrics.
    pub fn pool_usage(&self) -> (usize, usize) {
        let status = self.pool.status();
        (
            status.size.saturating_sub(status.available),
            status.available,
        )
    }

    /// A probe for health checks, on a connection of its own.
    pub fn probe(&self) -> DatabaseProbe {
        DatabaseProbe {
            url: self.url.clone(),
            connect_timeout: self.connect_timeout,
            conn: None,
        }
    }

    /// Runs `work` on a pooled connection inside a client span that follows the OpenTelemetry
    /// database conventions, so that every store function is traced the same way. Work that takes
    /// longer than the query timeout is abandoned, and so is its connection, whose state is then
    /// unknown: no request waits on a stuck database for ever.
    async fn run<T>(
        &self,
        operation: Operation,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run_on_connection(operation, false, work).await
    }

    /// [`Store::run`] for work that begins and ends a transaction itself, without diesel's
    /// transaction manager, so that its BEGIN and COMMIT can travel with its statements. Unless the
    /// work succeeds, which means it committed, its connection is closed: one given up on
    /// half-way (an error, a cancelled request, a timeout) may be inside the transaction still,
    /// and must never serve anyone else.
    async fn run_transaction_by_hand<T>(
        &self,
        operation: Operation,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run_on_connection(operation, true, work).await
    }

    async fn run_on_connection<T>(
        &self,
        operation: Operation,
        close_unless_successful: bool,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.on_connection(close_unless_successful, work)
            .instrument(client_span(operation))
            .await
    }

    /// [`Store::run_on_connection`] without a span of its own: for work done on behalf of
    /// callers who each have theirs.
    async fn on_connection<T>(
        &self,
        close_unless_successful: bool,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = Borrowed {
            conn: Some(self.connection().await?),
            close: close_unless_successful,
        };
        // PostgreSQL cancels a statement at the query timeout; this is for a server that does
        // not answer at all.
        let limit = self.query_timeout + QUERY_TIMEOUT_MARGIN;
        let Some(pooled) = conn.conn.as_mut() else {
            return Err(StoreError::Unavailable("no connection".to_owned()));
        };
        match tokio::time::timeout(limit, work(pooled)).await {
            Ok(Ok(value)) => {
                conn.close = false;
                Ok(value)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => {
                conn.close = true;
                Err(StoreError::Unavailable(format!(
                    "no answer within {limit:?}"
                )))
            }
        }
    }

    async fn connection(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        self.pool.get().await.map_err(|error| {
            self.unavailable.notify_one();
            StoreError::from(error)
        })
    }
}

/// A client span that follows the OpenTelemetry database conventions, so that every store
/// function is traced the same way.
fn client_span(operation: Operation) -> tracing::Span {
    tracing::info_span!(
        "db",
        otel.name = operation.name,
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = operation.verb,
    )
}

/// A pooled connection that goes back to the pool when dropped, or, with `close`, is closed
/// instead: its state is unknown.
struct Borrowed {
    conn: Option<Object<AsyncPgConnection>>,
    close: bool,
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.close {
            // Detached from the pool, the connection closes as it drops.
            drop(Object::take(conn));
        }
        // Otherwise dropping it hands it back to the pool.
    }
}
