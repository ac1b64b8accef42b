//! The schema's migrations, embedded in the binary and applied once however many processes
//! start together.

use std::time::Duration;

use diesel::{
    QueryableByName, RunQueryDsl, connection::Connection as _, sql_query, sql_types::Bool,
};
use diesel_async::{AsyncPgConnection, async_connection_wrapper::AsyncConnectionWrapper};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use secrecy::ExposeSecret;

use super::{DatabaseUrl, SearchConfig};

/// What diesel_migrations runs on: the async connection, driven synchronously.
type Connection = AsyncConnectionWrapper<AsyncPgConnection>;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Serialises migrations across replicas that start at the same time. An arbitrary constant
/// that names this service's lock ("chatmigr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6368_6174_6d69_6772;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MigrationError(String);

/// Applies every migration not yet applied, returning the versions it applied. Messages they
/// index for search are indexed in `search`'s configuration.
pub async fn run_migrations(
    url: &DatabaseUrl,
    search: &SearchConfig,
) -> Result<Vec<String>, MigrationError> {
    let url = url.clone();
    let search = search.clone();
    // diesel_migrations is synchronous; the wrapper drives the async connection on a runtime of
    // its own, which must not be the caller's.
    tokio::task::spawn_blocking(move || migrate_blocking(&url, &search))
        .await
        .map_err(|e| MigrationError(format!("migration task failed: {e}")))?
}

fn migrate_blocking(
    url: &DatabaseUrl,
    search: &SearchConfig,
) -> Result<Vec<String>, MigrationError> {
    let mut conn = Connection::establish(url.expose().expose_secret())
        .map_err(|e| MigrationError(e.to_string()))?;
    sql_query(search.set_statement())
        .execute(&mut conn)
        .map_err(|e| MigrationError(e.to_string()))?;
    wait_for_migration_lock(&mut conn)?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| MigrationError(e.to_string()));
    // Closing the connection releases the lock too; unlocking explicitly just makes it prompt.
    let _ = sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).execute(&mut conn);
    applied
}

#[derive(QueryableByName)]
struct LockAttempt {
    #[diesel(sql_type = Bool)]
    taken: bool,
}

/// The longest pause between two attempts at the lock.
const MOST_PATIENT_POLL: Duration = Duration::from_millis(500);

/// Takes the migration lock, waiting for whoever holds it.
///
/// It polls instead of waiting inside `pg_advisory_lock`: a statement that waits holds a
/// snapshot, and `CREATE INDEX CONCURRENTLY` in the holder's migrations waits for every
/// snapshot to go away, which would be a deadlock. Between attempts this connection is idle,
/// in no transaction.
fn wait_for_migration_lock(conn: &mut Connection) -> Result<(), MigrationError> {
    let mut pause = Duration::from_millis(10);
    let mut told = false;
    loop {
        let attempt = sql_query(format!(
            "SELECT pg_try_advisory_lock({MIGRATION_LOCK}) AS taken"
        ))
        .get_result::<LockAttempt>(conn)
        .map_err(|e| MigrationError(e.to_string()))?;
        if attempt.taken {
            return Ok(());
        }
        if !told {
            tracing::info!("waiting for another process to finish applying migrations");
            told = true;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MOST_PATIENT_POLL);
    }
}
