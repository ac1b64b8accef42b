//! How a storage operation fails: unavailable (worth retrying) or otherwise.

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
    /// The user a row was written for no longer exists.
    #[error("the user no longer exists")]
    UnknownUser,
    /// A row with that key exists already.
    #[error("already stored: {0}")]
    Duplicate(String),
    /// A stored value the code cannot understand: a bug or a manual edit.
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
}

impl From<DieselError> for StoreError {
    fn from(error: DieselError) -> Self {
        match error {
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                info,
            ) => Self::Unavailable(info.message().to_owned()),
            // The server ended the session or is going away (SQLSTATE class 57: an operator's
            // pg_terminate_backend, a shutdown or restart, a failover), which diesel does not
            // name: the same request works on another connection.
            DieselError::DatabaseError(_, info) if is_operator_intervention(info.message()) => {
                Self::Unavailable(info.message().to_owned())
            }
            // Every write names its conversation through a statement that finds it first, so
            // only a user, deleted meanwhile, can be missing.
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                Self::UnknownUser
            }
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                Self::Duplicate(info.message().to_owned())
            }
            DieselError::BrokenTransactionManager => {
                Self::Unavailable("connection left in an unknown transaction state".to_owned())
            }
            DieselError::DeserializationError(error) => Self::Corrupt(error.to_string()),
            other => Self::Query(other),
        }
    }
}

/// PostgreSQL's messages for SQLSTATE class 57, "operator intervention".
fn is_operator_intervention(message: &str) -> bool {
    message.starts_with("terminating connection")
        || message.starts_with("the database system is")
        || message.starts_with("canceling statement due to")
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        Self::Unavailable(error.to_string())
    }
}
