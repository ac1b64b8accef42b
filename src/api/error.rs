//! The one place where failures become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation as ProtoFieldViolation, StatusExt};

use super::auth::AuthError;
use crate::{
    chat::{ChatError, FieldViolation, Limit},
    domain::{BudgetKind, BudgetRefusal},
};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    #[error(transparent)]
    Chat(#[from] ChatError),
}

impl ApiError {
    pub fn invalid(field: &'static str, description: impl ToString) -> Self {
        Self::Chat(ChatError::invalid(field, description))
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Unauthenticated(e @ AuthError::KeysUnavailable) => {
                Status::unavailable(e.to_string())
            }
            ApiError::Unauthenticated(e) => Status::unauthenticated(e.to_string()),
            ApiError::Chat(error) => chat_status(error),
        }
    }
}

/// What a client is told of a use case's error.
fn chat_status(error: ChatError) -> Status {
    match error {
        ChatError::InvalidArgument(violations) => bad_request(&violations),
        ChatError::NotFound(what) => Status::not_found(format!("{what} not found")),
        ChatError::Unavailable(reason) => {
            tracing::warn!(error = %reason, "dependency unavailable");
            Status::unavailable("the service is temporarily unavailable; retry with backoff")
        }
        ChatError::Model(error) => {
            // The detail stays in the log: upstream text can name internal hosts.
            tracing::warn!(error = %error, "the model failed");
            model_failed(&error.summary(), error.is_timeout())
        }
        ChatError::ModelFailed { summary, timeout } => model_failed(&summary, timeout),
        ChatError::Cancelled => Status::cancelled(
            "the turn was cancelled (its stream closed, or CancelTurn); the reply so far is \
             saved as CANCELLED: send the message with a new request_id for a new reply, or \
             with on_disconnect CONTINUE for turns that survive a broken stream",
        ),
        ChatError::TurnLost => Status::unavailable(
            "the replica generating this turn stopped; the reply so far is saved as \
             INTERRUPTED: send the message again (with the same request_id, if it had one) \
             for a new reply",
        ),
        ChatError::TurnUnavailable(reason) => Status::unavailable(reason),
        ChatError::FellBehind(sequence) => Status::unavailable(format!(
            "this stream fell behind its turn, which goes on: resume it with ResumeTurn \
             after sequence {sequence}"
        )),
        ChatError::ShuttingDown => Status::unavailable(
            "the server is shutting down; the reply so far was saved as cancelled, retry on another replica",
        ),
        ChatError::LimitReached { limit, retry_after } => limit_reached(limit, retry_after),
        ChatError::BudgetRefused(refusal) => budget_refused(refusal),
        ChatError::ReplyNotSaved(reason) => {
            tracing::error!(error = %reason, "a streamed reply was not saved");
            Status::unavailable(
                "the reply could not be saved because the database is unavailable; your \
                 message was saved: send it again for a new reply",
            )
        }
        ChatError::FailedPrecondition(reason) => failed_precondition(reason),
        ChatError::NotRead => Status::deadline_exceeded(
            "the reply was cut off because the client read none of it for the stall timeout \
             (CHAT_STREAM_STALL_TIMEOUT); what was sent before is saved as cancelled",
        ),
        ChatError::Duplicate => {
            tracing::error!("a duplicate request reached the edge");
            Status::internal("internal error; the details are in the service's log")
        }
        ChatError::Internal(reason) => {
            tracing::error!(error = %reason, "internal error");
            Status::internal("internal error; the details are in the service's log")
        }
    }
}

/// RESOURCE_EXHAUSTED, naming the limit, and when to retry if waiting helps.
fn limit_reached(limit: Limit, retry_after: Option<std::time::Duration>) -> Status {
    let mut details =
        ErrorDetails::with_quota_failure_violation(limit.label(), limit.description());
    let message = match retry_after {
        Some(wait) => {
            details.set_retry_info(Some(wait));
            let millis = wait.as_millis().max(1);
            format!("{}; retry in {millis} ms", limit.description())
        }
        None => limit.description().to_owned(),
    };
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// RESOURCE_EXHAUSTED for a turn the user's budget refused: when the budget renews, or, while
/// another of the user's replies holds it, soon.
fn budget_refused(refusal: BudgetRefusal) -> Status {
    let limit = Limit::of_budget(&refusal);
    let BudgetRefusal::Spent {
        kind,
        limit: amount,
        period,
        resets_at,
    } = refusal
    else {
        return limit_reached(limit, Some(BUDGET_TURN_RETRY));
    };
    let amount = match kind {
        BudgetKind::Tokens => format!("{amount} tokens"),
        BudgetKind::Cost => format!("{amount} millionths of the prices' unit"),
    };
    let period: &str = period.into();
    let renews = resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let description = format!(
        "{}: {amount} a {period}; it renews at {renews}",
        limit.description()
    );
    let mut details = ErrorDetails::with_quota_failure_violation(limit.label(), &description);
    let wait = (resets_at - chrono::Utc::now())
        .to_std()
        .unwrap_or(std::time::Duration::ZERO);
    details.set_retry_info(Some(wait));
    Status::with_error_details(Code::ResourceExhausted, description, details)
}

/// When a turn refused because another reply holds the user's budget is worth trying again:
/// replies take seconds.
const BUDGET_TURN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

fn failed_precondition(reason: String) -> Status {
    let details =
        ErrorDetails::with_precondition_failure_violation("STATE", "conversation", reason.as_str());
    Status::with_error_details(Code::FailedPrecondition, reason, details)
}

fn model_failed(summary: &str, timeout: bool) -> Status {
    let message = format!("the model failed to answer: {summary}; your message was saved");
    if timeout {
        Status::deadline_exceeded(message)
    } else {
        Status::unavailable(message)
    }
}

fn bad_request(violations: &[FieldViolation]) -> Status {
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let details = ErrorDetails::with_bad_request(
        violations
            .iter()
            .map(|v| ProtoFieldViolation::new(v.field, &v.description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}
