//! How a model call fails, by kind: what the turn tells its client and what the metrics count.

use std::fmt;

/// Which time limit a model call exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    FirstToken,
    Idle,
    Total,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FirstToken => "no first token in time",
            Self::Idle => "the stream stalled between chunks",
            Self::Total => "the reply took longer than allowed",
        })
    }
}

/// A model call that failed. The messages hold what the upstream said, for the log; what a
/// client may read is [`LlmError::summary`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    #[error("cannot connect to the model: {0}")]
    Connect(String),
    #[error("the model answered HTTP {status}")]
    Http { status: u16 },
    #[error("the model sent a malformed stream: {0}")]
    Malformed(String),
    #[error("the model's stream broke off: {0}")]
    Interrupted(String),
    /// The reply, or one event of it, is larger than the service accepts.
    #[error("the model's reply is too large: {0}")]
    Oversized(String),
    #[error("the model timed out: {0}")]
    Timeout(TimeoutKind),
}

impl LlmError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }

    /// What went wrong, by category only: no upstream body, host, deployment name or stream
    /// fragment, which gateways put in their error messages.
    pub fn summary(&self) -> String {
        match self {
            Self::Connect(_) => "cannot connect to the model".to_owned(),
            Self::Http { status } => format!("the model refused the request (HTTP {status})"),
            Self::Malformed(_) => "the model sent a malformed stream".to_owned(),
            Self::Interrupted(_) => "the model's stream broke off".to_owned(),
            Self::Oversized(_) => "the model's reply is larger than the service accepts".to_owned(),
            Self::Timeout(kind) => format!("the model timed out: {kind}"),
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Http { .. } => "http",
            Self::Malformed(_) => "malformed",
            Self::Interrupted(_) => "interrupted",
            Self::Oversized(_) => "oversized",
            Self::Timeout(_) => "timeout",
        }
    }
}
