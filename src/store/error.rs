use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;

/// A storage operation that did not succeed. Details are for the log, never for the client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL could not be reached, or a connection broke: worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database query failed: {0}")]
    Query(DieselError),
    /// A stored value the code cannot understand: a bug or a manual edit.
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
}

impl From<DieselError> for StoreError {
    fn from(error: DieselError) -> Self {
        match error {
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                Self::Unavailable(info.message().to_owned())
            }
            // The statement ran into the query timeout (SQLSTATE 57014, which diesel does not
            // name): the database is too slow or stuck, and the same request may work later.
            DieselError::DatabaseError(_, info) if info.message().contains("statement timeout") => {
                Self::Unavailable(info.message().to_owned())
            }
            DieselError::BrokenTransactionManager => {
                Self::Unavailable("connection left in an unknown transaction state".to_owned())
            }
            DieselError::DeserializationError(error) => Self::Corrupt(error.to_string()),
            other => Self::Query(other),
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        Self::Unavailable(error.to_string())
    }
}
