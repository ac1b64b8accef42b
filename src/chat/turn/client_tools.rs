//! The results of tools the client runs itself, which continue the reply that awaited them.

use std::time::Instant;

use secrecy::SecretString;

use super::{
    events::ToolResult,
    service::{ClientTool, TurnStream, Turns},
    spawn::ReplyOrigin,
};
use crate::{
    chat::ChatError,
    domain::{ConversationId, MessageId, ToolCall, ToolCallStatus, UserId, now},
    store::{GivenResult, Submitted},
};

/// The results of one submission, all together.
pub const MAX_RESULTS_BYTES: usize = 512 * 1024;

/// A result the client gives for a call of one of its tools.
#[derive(Debug, Clone)]
pub struct GivenToolResult {
    pub tool_call_id: String,
    /// JSON as text; text that is not JSON is kept as a JSON string.
    pub result_json: String,
    pub failed: bool,
}

/// Results for the calls a reply awaits.
#[derive(Debug)]
pub struct ToolResultsRequest {
    pub user: UserId,
    pub conversation: ConversationId,
    /// The message whose calls await the results.
    pub message: MessageId,
    pub results: Vec<GivenToolResult>,
    /// The client's tools for the rest of the reply.
    pub tools: Vec<ClientTool>,
    pub request_id: String,
    pub received_at: Instant,
    pub bearer: Option<SecretString>,
}

/// A reply that goes on once the client's results are stored.
pub struct Continuation {
    /// The results as stored, in the order of the message's calls.
    pub results: Vec<ToolResult>,
    /// The rest of the reply, as a turn's stream gives it.
    pub events: TurnStream,
}

/// A few of `ids`, each cut short, for an error message that stays small whatever a client
/// sends.
fn some_ids(ids: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut shown: Vec<String> = ids
        .iter()
        .take(SHOWN)
        .map(|id| {
            let cut: String = id.chars().take(64).collect();
            format!("{cut:?}")
        })
        .collect();
    if ids.len() > SHOWN {
        shown.push(format!("and {} more", ids.len() - SHOWN));
    }
    shown.join(", ")
}

/// The stored calls of a submission that was taken, with the model that wrote them, or what its
/// client is told.
fn accepted_submission(submitted: Submitted) -> Result<(Vec<ToolCall>, Option<String>), ChatError> {
    match submitted {
        Submitted::Stored { calls, model, .. } => Ok((calls, model)),
        Submitted::NoConversation => Err(ChatError::NotFound("conversation")),
        Submitted::NotAwaited => Err(ChatError::FailedPrecondition(
            "the message awaits no tool results: they were given already, or it called \
                 none of your tools"
                .to_owned(),
        )),
        Submitted::StillRunning => Err(ChatError::FailedPrecondition(
            "the reply is still running the service's own tools of that round: give the \
                 results once its stream has ended with completed"
                .to_owned(),
        )),
        Submitted::Overdue => Err(ChatError::FailedPrecondition(
            "the wait for these tool results is over (CHAT_TOOL_RESULTS_TIMEOUT): send a \
                 new message instead"
                .to_owned(),
        )),
        Submitted::Mismatch {
            unexpected,
            missing,
        } => {
            let mut problems = Vec::new();
            if !unexpected.is_empty() {
                problems.push(format!(
                    "no call that awaits your result has the id {}, or it was given twice",
                    some_ids(&unexpected)
                ));
            }
            if !missing.is_empty() {
                problems.push(format!("no result for {}", some_ids(&missing)));
            }
            Err(ChatError::invalid("results", problems.join("; ")))
        }
    }
}

/// The results as they were stored, of the calls `given` answered, in the message's order.
fn results_given(calls: &[ToolCall], given: &[GivenResult]) -> Vec<ToolResult> {
    calls
        .iter()
        .filter(|call| {
            given
                .iter()
                .any(|g| g.provider_call_id == call.provider_call_id)
        })
        .map(|call| ToolResult {
            provider_call_id: call.provider_call_id.clone(),
            status: call.status,
            result: call.result.clone().unwrap_or(serde_json::Value::Null),
        })
        .collect()
}

impl Turns {
    /// Stores the client's results for the calls a reply awaits and goes on with the reply.
    pub async fn submit_tool_results(
        &self,
        mut request: ToolResultsRequest,
    ) -> Result<Continuation, ChatError> {
        let given = self.given_results(std::mem::take(&mut request.results))?;
        let offer = self.offer(std::mem::take(&mut request.tools))?;
        let permit = self.runtime.admission.open_stream(request.user)?;
        let submitted = self
            .store
            .submit_tool_results(
                request.user,
                request.conversation,
                request.message,
                &given,
                now(),
            )
            .await?;
        let (calls, model) = accepted_submission(submitted)?;
        // The reply goes on with the model that wrote it; one no longer in the catalog (or not
        // recorded) is replaced by the default.
        let model = self
            .models
            .choose(model.as_deref())
            .unwrap_or(self.models.default_choice());
        // What this replica remembers of the conversation lacks the results.
        self.recent.forget(request.conversation);
        let results = results_given(&calls, &given);
        // The reply's branch, up to the reply and its calls with their results now.
        let context = self
            .store
            .branch_up_to(
                request.user,
                request.conversation,
                request.message,
                self.settings.history_messages,
            )
            .await?;
        let origin = ReplyOrigin {
            user: request.user,
            conversation_id: request.conversation,
            after: now(),
            request_id: &request.request_id,
            received_at: request.received_at,
            bearer: request.bearer.as_ref(),
            // A continuation is not a turn of its own: it is neither resumed nor retried.
            turn: None,
            cancel: None,
            model,
        };
        // Everything it answers is stored already.
        let events = self.spawn_reply(origin, context, offer, permit).go_on();
        tracing::info!(
            request_id = %request.request_id,
            conversation_id = %request.conversation,
            user_id = %request.user,
            "turn continued with the client's tool results"
        );
        Ok(Continuation { results, events })
    }

    /// The client's results as they are stored: JSON, within the size allowed for a result.
    fn given_results(&self, results: Vec<GivenToolResult>) -> Result<Vec<GivenResult>, ChatError> {
        let max_bytes = self.runtime.toolbox.max_result_bytes();
        let total: usize = results.iter().map(|r| r.result_json.len()).sum();
        if total > MAX_RESULTS_BYTES {
            return Err(ChatError::invalid(
                "results",
                format!(
                    "the results take {total} bytes together; at most {MAX_RESULTS_BYTES} are allowed"
                ),
            ));
        }
        results
            .into_iter()
            .enumerate()
            .map(|(index, given)| {
                if given.result_json.len() > max_bytes {
                    return Err(ChatError::invalid(
                        "results",
                        format!("results[{index}].result_json is larger than {max_bytes} bytes"),
                    ));
                }
                // PostgreSQL stores no NUL, raw or escaped in JSON.
                let text = given
                    .result_json
                    .replace('\0', "\u{FFFD}")
                    .replace("\\u0000", "\\ufffd");
                let result = serde_json::from_str(&text)
                    .unwrap_or_else(|_| serde_json::Value::String(text.clone()));
                let result = if given.failed && !result.is_object() {
                    serde_json::json!({"error": {"kind": "client_tool_error", "message": result}})
                } else {
                    result
                };
                Ok(GivenResult {
                    provider_call_id: given.tool_call_id,
                    status: if given.failed {
                        ToolCallStatus::Failed
                    } else {
                        ToolCallStatus::Succeeded
                    },
                    result,
                })
            })
            .collect()
    }
}
