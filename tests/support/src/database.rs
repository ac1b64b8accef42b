//! One PostgreSQL database per test, cloned from a template that was migrated once. Cloning a
//! template is much faster than migrating, and every test starts from the same schema.

use std::path::Path;

use chat_service::store::{DatabaseUrl, SearchConfig, quote_identifier, run_migrations};
use diesel::{QueryableByName, sql_query, sql_types::BigInt};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// Arbitrary lock id that serialises template creation across test processes.
const TEMPLATE_LOCK: i64 = 0x6368_6174_7465_7374;

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// The server the tests use, from DATABASE_URL like the service itself.
pub fn server_url() -> DatabaseUrl {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| chat_service::store::DEFAULT_DATABASE_URL.to_owned());
    DatabaseUrl::parse(&url).unwrap_or_else(|e| panic!("DATABASE_URL: {e}"))
}

fn admin_url() -> DatabaseUrl {
    server_url().with_database("postgres")
}

pub async fn connect(url: &DatabaseUrl) -> AsyncPgConnection {
    AsyncPgConnection::establish(url.expose().expose_secret())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}. Is PostgreSQL running?"))
}

/// Runs one or more `;`-separated statements.
pub async fn execute(conn: &mut AsyncPgConnection, statements: &str) {
    conn.batch_execute(statements)
        .await
        .unwrap_or_else(|e| panic!("{statements}: {e}"));
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct RowDigest {
    #[diesel(sql_type = diesel::sql_types::Text)]
    digest: String,
}

/// A stored message as the tests inspect it.
#[derive(QueryableByName, Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub role: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub content: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: String,
    /// Microseconds since the epoch, for exact comparisons.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub created_micros: i64,
    /// Its place in the conversation.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub sequence: i64,
}

/// Runs a `SELECT count(*) AS n ...` statement.
pub async fn count(conn: &mut AsyncPgConnection, statement: &str) -> i64 {
    sql_query(statement)
        .get_result::<Count>(conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
        .n
}

/// A hash of the migrations, so that changing them yields a new template.
fn migrations_fingerprint() -> String {
    let mut files = Vec::new();
    collect_files(
        // The service's migrations, two levels above this crate.
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations"),
        &mut files,
    );
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())));
    }
    hasher
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn collect_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, files)
        } else {
            files.push(path)
        }
    }
}

async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("chat_test_template_{}", migrations_fingerprint());
            let mut admin = connect(&admin_url()).await;
            execute(
                &mut admin,
                &format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"),
            )
            .await;
            let exists = count(
                &mut admin,
                &format!("SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'"),
            )
            .await;
            if exists == 0 {
                // Built under another name and renamed when complete, so that a run that dies
                // half-way never leaves a broken template behind.
                let building = format!("{name}_building");
                execute(
                    &mut admin,
                    &format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_identifier(&building)
                    ),
                )
                .await;
                execute(
                    &mut admin,
                    &format!("CREATE DATABASE {}", quote_identifier(&building)),
                )
                .await;
                run_migrations(
                    &server_url().with_database(&building),
                    &SearchConfig::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("migrating the template database: {e}"));
                execute(
                    &mut admin,
                    &format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        quote_identifier(&building),
                        quote_identifier(&name)
                    ),
                )
                .await;
            }
            execute(
                &mut admin,
                &format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"),
            )
            .await;
            name
        })
        .await
}

/// A migrated database of its own, dropped when the test ends.
pub struct TestDatabase {
    pub url: DatabaseUrl,
}

impl TestDatabase {
    pub async fn new() -> Self {
        let template = template().await;
        let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = connect(&admin_url()).await;
        execute(
            &mut admin,
            &format!(
                "CREATE DATABASE {} TEMPLATE {}",
                quote_identifier(&name),
                quote_identifier(template)
            ),
        )
        .await;
        Self {
            url: server_url().with_database(&name),
        }
    }

    /// A database of its own with nothing in it, not even the schema; dropped at the end.
    pub async fn empty() -> Self {
        let database = Self::unused();
        let statement = format!(
            "CREATE DATABASE {}",
            quote_identifier(database.url.database_name())
        );
        execute(&mut connect(&admin_url()).await, &statement).await;
        database
    }

    /// A name for a database that does not exist yet; dropped, if it was created, at the end.
    pub fn unused() -> Self {
        let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        Self {
            url: server_url().with_database(&name),
        }
    }

    pub async fn connect(&self) -> AsyncPgConnection {
        connect(&self.url).await
    }

    pub async fn count(&self, statement: &str) -> i64 {
        count(&mut self.connect().await, statement).await
    }

    pub async fn run_sql(&self, statement: &str) {
        execute(&mut self.connect().await, statement).await;
    }

    /// Inserts `count` complete messages into an empty `conversation`, alternating user and
    /// assistant, with contents `message 1`, `message 2`... one second apart from 2026-01-01,
    /// numbered 1, 2... as the service would have.
    pub async fn seed_messages(&self, conversation: &str, count: u32) {
        self.run_sql(&format!(
            "INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
             SELECT gen_random_uuid(), '{conversation}',
                    CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END, 'message ' || g, 'complete',
                    timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', g
             FROM generate_series(1, {count}) g;
             UPDATE conversations SET revision = {count} WHERE id = '{conversation}'"
        ))
        .await;
    }

    /// A digest of every row of every table, to show that a request changed nothing.
    pub async fn snapshot(&self) -> String {
        let mut digests = String::new();
        for table in ["users", "conversations", "messages", "tool_calls", "turns"] {
            let statement = format!(
                "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') AS digest FROM {table} t"
            );
            let digest = sql_query(&statement)
                .get_result::<RowDigest>(&mut self.connect().await)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
            digests.push_str(&format!("{table}:{} ", digest.digest));
        }
        digests
    }

    /// The conversation's messages in the order the service defines: (created_at, id).
    pub async fn messages(&self, conversation: &str) -> Vec<StoredMessage> {
        let statement = format!(
            "SELECT id::text AS id, role, content, status,
                    (extract(epoch FROM created_at) * 1000000)::bigint AS created_micros, sequence
             FROM messages WHERE conversation_id = '{conversation}' ORDER BY sequence"
        );
        sql_query(&statement)
            .load::<StoredMessage>(&mut self.connect().await)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"))
    }

    pub async fn exists(&self) -> bool {
        let name = self.url.database_name().to_owned();
        count(
            &mut connect(&admin_url()).await,
            &format!("SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'"),
        )
        .await
            == 1
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let statement = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_identifier(self.url.database_name())
        );
        // Drop cannot await, and the test's runtime may be shutting down: use a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = AsyncPgConnection::establish(admin_url().expose().expose_secret())
                    .await
                    .map_err(std::io::Error::other)?;
                sql_query(statement)
                    .execute(&mut admin)
                    .await
                    .map_err(std::io::Error::other)
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database: {e}");
        }
    }
}
