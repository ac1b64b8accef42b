use diesel::{RunQueryDsl, connection::Connection, sql_query};
use diesel_async::{AsyncPgConnection, async_connection_wrapper::AsyncConnectionWrapper};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use secrecy::ExposeSecret;

use super::DatabaseUrl;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Serialises migrations across replicas that start at the same time. An arbitrary constant
/// that names this service's lock ("chatmigr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6368_6174_6d69_6772;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MigrationError(String);

/// Applies every migration not yet applied, returning the versions it applied.
pub async fn run_migrations(url: &DatabaseUrl) -> Result<Vec<String>, MigrationError> {
    let url = url.clone();
    // diesel_migrations is synchronous; the wrapper drives the async connection on a runtime of
    // its own, which must not be the caller's.
    tokio::task::spawn_blocking(move || migrate_blocking(&url))
        .await
        .map_err(|e| MigrationError(format!("migration task failed: {e}")))?
}

fn migrate_blocking(url: &DatabaseUrl) -> Result<Vec<String>, MigrationError> {
    let mut conn =
        AsyncConnectionWrapper::<AsyncPgConnection>::establish(url.expose().expose_secret())
            .map_err(|e| MigrationError(e.to_string()))?;
    sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .execute(&mut conn)
        .map_err(|e| MigrationError(e.to_string()))?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| MigrationError(e.to_string()));
    // Closing the connection releases the lock too; unlocking explicitly just makes it prompt.
    let _ = sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).execute(&mut conn);
    applied
}
