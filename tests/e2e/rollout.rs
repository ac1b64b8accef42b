//! A Deployment's first rollout, or a restart of every replica after a release with new
//! migrations: processes that start at the same moment on one database all start, and the
//! migrations run exactly once.

use futures_util::future::join_all;
use secrecy::ExposeSecret;

use super::support::{TestDatabase, process::ServiceProcess};

const BINARY: &str = env!("CARGO_BIN_EXE_chat-service");
const REPLICAS: usize = 4;
const ROUNDS: usize = 5;

/// How many migrations this release has: one folder each.
fn migrations_in_release() -> i64 {
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let folders = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("{folder}: {e}"))
        .filter(|entry| entry.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count();
    i64::try_from(folders).unwrap_or_else(|e| panic!("{e}"))
}

async fn migrations_applied(database: &TestDatabase) -> i64 {
    database
        .count("SELECT count(*) AS n FROM __diesel_schema_migrations")
        .await
}

/// `chat-service migrate`, as the Kubernetes Job runs it; its exit status and what it printed.
async fn migrate_job(database: &TestDatabase) -> std::process::Output {
    tokio::process::Command::new(BINARY)
        .arg("migrate")
        .env_clear()
        .env("DATABASE_URL", database.url.expose().expose_secret())
        .env("CHAT_LOG_FORMAT", "json")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {BINARY} migrate: {e}"))
}

/// Among the pending migrations of an empty database is one that builds an index
/// concurrently, which waits for every transaction that holds a snapshot, including a replica
/// waiting for the migration lock.
#[tokio::test]
async fn replicas_started_together_on_an_empty_database_all_start() {
    for round in 1..=ROUNDS {
        let database = TestDatabase::empty().await;
        let replicas =
            join_all((0..REPLICAS).map(|_| ServiceProcess::start(BINARY, &database, &[]))).await;
        assert_eq!(replicas.len(), REPLICAS, "round {round}");
        assert_eq!(
            migrations_applied(&database).await,
            migrations_in_release(),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn the_migrate_job_racing_replicas_succeeds_and_so_do_they() {
    for round in 1..=ROUNDS {
        let database = TestDatabase::empty().await;
        let (job, replicas) = tokio::join!(
            migrate_job(&database),
            join_all((0..2).map(|_| ServiceProcess::start(BINARY, &database, &[])))
        );
        assert!(
            job.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&job.stderr)
        );
        assert_eq!(replicas.len(), 2, "round {round}");
        assert_eq!(
            migrations_applied(&database).await,
            migrations_in_release(),
            "round {round}"
        );
    }
}
