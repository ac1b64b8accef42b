//! What becomes of a reply once the model's stream has ended: stored as complete or cancelled,
//! or reported as the model's failure.

use super::{
    events::{Completion, TurnEvent},
    persist::Stored,
    relay::{Ending, Relayed, tool_call},
    state::{Failure, TurnEnd},
    task::ReplyTask,
};
use crate::{
    chat::ChatError,
    domain::{MessageStatus, ToolCall, ToolCallStatus},
    store::{StoreError, TurnEnding},
    tools::{ToolFailure, ToolOutcome},
};

impl ReplyTask {
    /// Stores the reply as its ending calls for and tells the client. Returns the outcome's
    /// label for logs.
    pub(super) async fn settle(&mut self, relayed: Relayed) -> &'static str {
        let result = match relayed.ending {
            Ending::Failed(error) => {
                let label = error.kind();
                self.tell(Err(ChatError::from(error))).await;
                return label;
            }
            Ending::Cancelled | Ending::Interrupted | Ending::Stalled => {
                let (label, error) = match relayed.ending {
                    Ending::Interrupted => ("interrupted", ChatError::ShuttingDown),
                    Ending::Stalled => ("stalled", ChatError::NotRead),
                    _ => ("cancelled", ChatError::Cancelled),
                };
                // Tool calls are only complete at the end of a reply; a cut-off reply has none.
                let reply = self.reply(relayed.text, Vec::new(), MessageStatus::Cancelled);
                // The turn ends with the reply's write, as a complete one does: a replica that
                // took the turn over after it would otherwise store its text a second time.
                let end = TurnEnd::Failed(Failure::of(&error));
                let outcome = serde_json::to_value(&end).unwrap_or_default();
                let ends = TurnEnding {
                    state: end.state(),
                    outcome: &outcome,
                };
                match self
                    .store_and_remember(&reply, &relayed.deltas, Some(ends))
                    .await
                {
                    Ok(Stored::TakenOver) => Ok(self.taken_over().await),
                    Ok(stored) => {
                        self.ended_in_store =
                            self.turn.is_some() && !matches!(stored, Stored::ConversationGone);
                        match error {
                            // The client is not reading: it learns why when it does.
                            ChatError::NotRead => self.outlet.leave_last(error),
                            // Those who follow the turn learn it ended; a client that went
                            // away hears nothing.
                            error => self.tell(Err(error)).await,
                        }
                        Ok(label)
                    }
                    Err(error) => Err(error),
                }
            }
            Ending::Finished => self.finish(relayed).await,
        };
        match result {
            Ok(label) => label,
            Err(error) => self.storage_failed(error).await,
        }
    }

    /// Stores the complete reply, then sends its tool calls and `completed`: a client hears of
    /// a tool call only once it is stored. Returns the outcome's label.
    async fn finish(&mut self, relayed: Relayed) -> Result<&'static str, StoreError> {
        let mut calls: Vec<ToolCall> = relayed.calls.into_iter().map(tool_call).collect();
        if let Some(tools) = &self.tools {
            // The service runs this reply's tools, and it has run as many rounds as it may:
            // the calls are kept, and say why they were not run.
            let unrun = ToolOutcome::Failed(ToolFailure::RoundLimit(tools.max_rounds));
            for call in &mut calls {
                call.status = ToolCallStatus::Failed;
                call.result = Some(unrun.clone().into_result());
            }
        }
        let reply = self.reply(relayed.text, calls, MessageStatus::Complete);
        let finish_reason = relayed.finish_reason.unwrap_or_else(|| "stop".to_owned());
        // The turn ends with the reply's write: no statement of its own.
        let end = TurnEnd::Completed {
            finish_reason: finish_reason.clone(),
            model: self.model_name.clone(),
            usage: relayed.usage,
        };
        let outcome = serde_json::to_value(&end).unwrap_or_default();
        let ends = TurnEnding {
            state: end.state(),
            outcome: &outcome,
        };
        match self
            .store_and_remember(&reply, &relayed.deltas, Some(ends))
            .await?
        {
            Stored::At(_) | Stored::AtUnknownPlace => {}
            Stored::ConversationGone => {
                self.tell(Err(ChatError::NotFound("conversation"))).await;
                return Ok("completed");
            }
            Stored::TakenOver => return Ok(self.taken_over().await),
        }
        self.ended_in_store = self.turn.is_some();
        for call in &reply.tool_calls {
            self.tell(Ok(TurnEvent::ToolCall(call.clone()))).await;
        }
        let completion = Completion {
            message: reply,
            finish_reason,
            model: self.model_name.clone(),
            usage: relayed.usage,
        };
        self.tell(Ok(TurnEvent::Completed(completion))).await;
        Ok("completed")
    }
}
