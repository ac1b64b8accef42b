//! PostgreSQL persistence through diesel-async. Every function that reads or writes user data
//! takes the owner's [`UserId`](crate::domain::UserId) and filters by it, so that a row belonging
//! to someone else looks exactly like a missing one.

mod connect;
mod conversations;
mod error;
mod migrations;
mod models;
mod schema;
mod turns;
mod url;
mod users;

use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncPgConnection, pooled_connection::deadpool::Object};

pub use connect::{ConnectError, PoolSettings, quote_identifier};
pub use error::StoreError;
pub use migrations::{MigrationError, run_migrations};
pub use url::{DatabaseUrl, InvalidDatabaseUrl};

/// The service's database: a pool of connections and the secrets kept in it.
#[derive(Clone)]
pub struct Store {
    pool: Pool<AsyncPgConnection>,
    page_token_key: Vec<u8>,
}

impl Store {
    /// The key that signs page tokens, shared by every replica through the database.
    pub fn page_token_key(&self) -> &[u8] {
        &self.page_token_key
    }

    async fn connection(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        Ok(self.pool.get().await?)
    }
}
