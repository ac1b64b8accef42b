//! How a turn stands and how it ended, as plain values: no I/O. The stored state is parsed here
//! once; how a turn ended decides what its record says, what a late follower is told, and the
//! label its telemetry carries.

use crate::{chat::ChatError, domain::TurnState, llm::TokenUsage};

/// How a turn ended, as its log and the database keep it: enough to tell a client who asks
/// later exactly what the client who was there was told.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnEnd {
    Completed {
        finish_reason: String,
        model: String,
        usage: Option<TokenUsage>,
    },
    Failed(Failure),
}

impl TurnEnd {
    pub fn state(&self) -> TurnState {
        match self {
            Self::Completed { .. } => TurnState::Completed,
            Self::Failed(failure) => failure.state(),
        }
    }
}

/// Why a turn ended without completing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// The model failed: how, by category.
    Model {
        summary: String,
        timeout: bool,
    },
    ShuttingDown,
    NotRead,
    ReplyNotSaved,
    ConversationGone,
    Cancelled,
    /// The replica generating it stopped.
    Lost,
    Unavailable,
    Internal,
}

impl Failure {
    pub fn of(error: &ChatError) -> Self {
        match error {
            ChatError::Model(error) => Self::Model {
                summary: error.summary(),
                timeout: error.is_timeout(),
            },
            ChatError::ModelFailed { summary, timeout } => Self::Model {
                summary: summary.clone(),
                timeout: *timeout,
            },
            ChatError::ShuttingDown => Self::ShuttingDown,
            ChatError::NotRead => Self::NotRead,
            ChatError::ReplyNotSaved(_) => Self::ReplyNotSaved,
            ChatError::NotFound(_) => Self::ConversationGone,
            ChatError::Cancelled => Self::Cancelled,
            ChatError::TurnLost => Self::Lost,
            ChatError::Unavailable(_) | ChatError::TurnUnavailable(_) => Self::Unavailable,
            _ => Self::Internal,
        }
    }

    pub fn into_error(self) -> ChatError {
        match self {
            Self::Model { summary, timeout } => ChatError::ModelFailed { summary, timeout },
            Self::ShuttingDown => ChatError::ShuttingDown,
            Self::NotRead => ChatError::NotRead,
            Self::ReplyNotSaved => ChatError::ReplyNotSaved("told before".to_owned()),
            Self::ConversationGone => ChatError::NotFound("conversation"),
            Self::Cancelled => ChatError::Cancelled,
            Self::Lost => ChatError::TurnLost,
            Self::Unavailable => ChatError::Unavailable("told before".to_owned()),
            Self::Internal => {
                ChatError::Internal("a turn that ended with an internal error".into())
            }
        }
    }

    /// What the turn's record says of a turn that ended so.
    pub fn state(&self) -> TurnState {
        match self {
            Self::Cancelled | Self::NotRead => TurnState::Cancelled,
            Self::ShuttingDown | Self::Lost => TurnState::Interrupted,
            _ => TurnState::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_what_the_client_is_told_and_what_the_record_says() {
        for (error, state) in [
            (ChatError::Cancelled, TurnState::Cancelled),
            (ChatError::NotRead, TurnState::Cancelled),
            (ChatError::ShuttingDown, TurnState::Interrupted),
            (ChatError::TurnLost, TurnState::Interrupted),
            (ChatError::NotFound("conversation"), TurnState::Failed),
        ] {
            let failure = Failure::of(&error);
            assert_eq!(failure.state(), state, "{error}");
            assert_eq!(Failure::of(&failure.into_error()).state(), state);
        }
    }
}
