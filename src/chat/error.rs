//! What a use case fails with, in domain terms; the API maps it to a status in one place.

use std::time::Duration;

use super::limit::Limit;
use crate::{llm::LlmError, store::StoreError};

/// One invalid field of a request, named as the client spelled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &'static str, description: impl ToString) -> Self {
        Self {
            field,
            description: description.to_string(),
        }
    }
}

/// Why a use case did not succeed, classified by what the client can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("invalid argument: {0:?}")]
    InvalidArgument(Vec<FieldViolation>),
    /// The thing does not exist or belongs to someone else: the two are never told apart.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A dependency is down; the same request may succeed later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The model failed to answer; the message says how, without internal addresses.
    #[error("the model failed: {0}")]
    Model(LlmError),
    /// The model failed to answer, as told when the turn ended: by category, for a client that
    /// follows the turn later.
    #[error("the model failed: {summary}")]
    ModelFailed { summary: String, timeout: bool },
    /// The turn was cancelled; what was streamed so far is stored as cancelled.
    #[error("the turn was cancelled")]
    Cancelled,
    /// Following or cancelling a turn cannot be done now; the text, written for clients, says
    /// why and what to do.
    #[error("turn unavailable: {0}")]
    TurnUnavailable(String),
    /// The client of a turn that goes on without it read too slowly and was let go at this
    /// sequence.
    #[error("the client fell behind its turn at {0}")]
    FellBehind(u64),
    /// The replica generating the turn stopped; what it had streamed is stored as interrupted.
    #[error("the replica generating the turn stopped")]
    TurnLost,
    /// The server is shutting down; what was generated so far is stored.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A limit on what a user or this replica may do or keep; nothing was done. Worth retrying
    /// after `retry_after`, when there is one.
    #[error("limit reached: {}", .limit.label())]
    LimitReached {
        limit: Limit,
        retry_after: Option<Duration>,
    },
    /// The user's budget refuses the turn; nothing was written.
    #[error("budget refused the turn: {0:?}")]
    BudgetRefused(crate::domain::BudgetRefusal),
    /// The reply was streamed but could not be stored, even after a few tries.
    #[error("the reply could not be stored: {0}")]
    ReplyNotSaved(String),
    /// The request does not fit the conversation's state now: the text says why and what to do.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The client read nothing of its reply for too long; what it was sent is stored.
    #[error("the reply was not read")]
    NotRead,
    /// The request's id was taken by the same request, let in first elsewhere. Never reaches a
    /// client: the use case follows the turn that request started instead.
    #[error("the request was let in first elsewhere")]
    Duplicate,
    /// A bug or corrupted state. The text is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ChatError {
    pub fn invalid(field: &'static str, description: impl ToString) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<StoreError> for ChatError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(reason) => Self::Unavailable(reason),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<LlmError> for ChatError {
    fn from(error: LlmError) -> Self {
        Self::Model(error)
    }
}
