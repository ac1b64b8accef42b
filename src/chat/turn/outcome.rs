//! What becomes of a reply once the model's stream has ended: stored as complete or cancelled,
//! or reported as the model's failure.

use super::{
    events::{Completion, TurnEvent},
    persist::Stored,
    relay::{Ending, Relayed, tool_call},
    state::{EndState, Failure, Outcome, RecordedEnd, TurnEnd},
    task::{FirstExchange, ReplyTask},
};
use crate::{
    chat::ChatError,
    domain::{MessageStatus, ToolCall, ToolCallStatus},
    store::StoreError,
    tools::{ToolFailure, ToolOutcome},
};

impl ReplyTask {
    /// Stores the reply as its ending calls for and tells the client.
    pub(super) async fn settle(&mut self, relayed: Relayed) -> Outcome {
        let settled = match relayed.ending {
            Ending::Failed(error) => {
                let outcome = Outcome::ModelFailed(error.kind());
                self.tell(Err(ChatError::from(error))).await;
                return outcome;
            }
            Ending::Cancelled => {
                self.cut_off(relayed, Outcome::Cancelled, ChatError::Cancelled)
                    .await
            }
            Ending::Interrupted => {
                self.cut_off(relayed, Outcome::Interrupted, ChatError::ShuttingDown)
                    .await
            }
            Ending::Stalled => {
                self.cut_off(relayed, Outcome::Stalled, ChatError::NotRead)
                    .await
            }
            Ending::Finished => self.finish(relayed).await,
        };
        match settled {
            Ok(outcome) => outcome,
            Err(error) => self.storage_failed(error).await,
        }
    }

    /// Stores a reply cut off before its end as cancelled, and tells whoever follows the turn
    /// `error`. The turn ends with the reply's write, as a complete one does: a replica that
    /// took the turn over after it would otherwise store its text a second time.
    async fn cut_off(
        &mut self,
        relayed: Relayed,
        outcome: Outcome,
        error: ChatError,
    ) -> Result<Outcome, StoreError> {
        // Tool calls are only complete at the end of a reply; a cut-off reply has none.
        let reply = self.reply(
            relayed.text,
            Vec::new(),
            MessageStatus::Cancelled,
            relayed.usage,
        );
        let end = RecordedEnd::from(&TurnEnd::Failed(Failure::of(&error)));
        let stored = self
            .store_and_remember(&reply, &relayed.deltas, Some(end.ending()))
            .await?;
        let outcome = match stored {
            Stored::TakenOver => return Ok(self.taken_over().await),
            Stored::ConversationGone => Outcome::ConversationDeleted,
            Stored::At(_) | Stored::AtUnknownPlace => {
                self.end = EndState::Stored;
                outcome
            }
        };
        match error {
            // The client is not reading: it learns why when it does.
            ChatError::NotRead => self.leave_last(error),
            // Those who follow the turn learn it ended; a client that went away hears nothing.
            error => self.tell(Err(error)).await,
        }
        Ok(outcome)
    }

    /// Stores the complete reply, then sends its tool calls and `completed`: a client hears of
    /// a tool call only once it is stored. Returns the outcome's label.
    async fn finish(&mut self, relayed: Relayed) -> Result<Outcome, StoreError> {
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
        let reply = self.reply(relayed.text, calls, MessageStatus::Complete, relayed.usage);
        let finish_reason = relayed.finish_reason.unwrap_or_else(|| "stop".to_owned());
        // The turn ends with the reply's write: no statement of its own.
        let end = TurnEnd::Completed {
            finish_reason: finish_reason.clone(),
            model: self.model_name().to_owned(),
            usage: relayed.turn_usage,
        };
        let end = RecordedEnd::from(&end);
        match self
            .store_and_remember(&reply, &relayed.deltas, Some(end.ending()))
            .await?
        {
            Stored::At(_) | Stored::AtUnknownPlace => {}
            Stored::ConversationGone => {
                self.tell(Err(ChatError::NotFound("conversation"))).await;
                return Ok(Outcome::ConversationDeleted);
            }
            Stored::TakenOver => return Ok(self.taken_over().await),
        }
        self.end = EndState::Stored;
        for call in &reply.tool_calls {
            self.tell(Ok(TurnEvent::ToolCall(Box::new(call.clone()))))
                .await;
        }
        // Told first, so that the title costs the reply nothing.
        let replied = self.first_exchange.is_some().then(|| reply.content.clone());
        let completion = Completion {
            message: reply,
            finish_reason,
            model: self.model_name().to_owned(),
            usage: relayed.turn_usage,
        };
        self.tell(Ok(TurnEvent::Completed(Box::new(completion))))
            .await;
        if let (Some(first), Some(replied)) = (self.first_exchange.take(), replied) {
            let FirstExchange { titler, said } = *first;
            titler.name_after(self.user, self.conversation_id, said, replied);
        }
        Ok(Outcome::Completed)
    }
}
