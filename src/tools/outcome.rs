//! What a tool call came to, as it is stored and as the model reads it.

use std::time::Duration;

use serde_json::{Value, json};

/// What a tool call came to.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolOutcome {
    /// The tool's result: its structured content when it gives one, else its text.
    Succeeded(Value),
    Failed(ToolFailure),
}

/// Why a tool call has no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolFailure {
    #[error("no tool named {0:?} is available")]
    UnknownTool(String),
    #[error("the arguments must be a JSON object")]
    InvalidArguments,
    /// The tool ran and reported an error, in its own words.
    #[error("{0}")]
    ToolError(String),
    #[error("the tool server could not be reached: {0}")]
    Unreachable(String),
    #[error("the tool did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the tool's result is larger than the {0} bytes allowed")]
    TooLarge(usize),
    #[error("the call was cancelled: {0}")]
    Cancelled(&'static str),
    #[error("not run: the reply has used all {0} of its rounds of tool calls")]
    RoundLimit(u32),
    #[error("not run: one round runs at most {0} calls")]
    TooManyCalls(usize),
}

impl ToolFailure {
    /// A stable name for the kind of failure, for metrics, spans and the stored error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownTool(_) => "unknown_tool",
            Self::InvalidArguments => "invalid_arguments",
            Self::ToolError(_) => "tool_error",
            Self::Unreachable(_) => "unreachable",
            Self::Timeout(_) => "timeout",
            Self::TooLarge(_) => "too_large",
            Self::Cancelled(_) => "cancelled",
            Self::RoundLimit(_) => "round_limit",
            Self::TooManyCalls(_) => "too_many_calls",
        }
    }
}

impl ToolOutcome {
    pub fn succeeded(&self) -> bool {
        matches!(self, Self::Succeeded(_))
    }

    /// The label of the outcome in metrics: `succeeded`, or the kind of failure.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Succeeded(_) => "succeeded",
            Self::Failed(failure) => failure.kind(),
        }
    }

    /// The result as stored and sent to clients: the tool's result, or `{"error": {"kind",
    /// "message"}}`.
    pub fn into_result(self) -> Value {
        match self {
            Self::Succeeded(value) => value,
            Self::Failed(failure) => json!({
                "error": { "kind": failure.kind(), "message": failure.to_string() }
            }),
        }
    }
}
