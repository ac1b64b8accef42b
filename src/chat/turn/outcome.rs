//! What becomes of a reply once the model's stream has ended: stored as complete or cancelled,
//! or reported as the model's failure.

use tokio::sync::mpsc::error::TrySendError;

use super::{
    Completion, TurnEvent, recent_message,
    relay::{Delivery, Ending, EventSender, Relayed, deliver},
    reply::ReplyTask,
};
use crate::{
    chat::ChatError,
    domain::{
        Message, MessageId, MessageStatus, Revision, Role, ToolCall, ToolCallId, ToolCallStatus,
        now,
    },
    llm::ModelToolCall,
    store::StoreError,
};

impl ReplyTask {
    /// Stores the reply as its ending calls for and tells the client. Returns the outcome's
    /// label for logs.
    pub(super) async fn settle(&self, relayed: Relayed, sender: &EventSender) -> &'static str {
        let (result, label) = match relayed.ending {
            Ending::Failed(error) => {
                let label = error.kind();
                self.tell(sender, Err(ChatError::from(error))).await;
                return label;
            }
            Ending::Cancelled | Ending::Interrupted | Ending::Stalled => {
                let label = match relayed.ending {
                    Ending::Interrupted => "interrupted",
                    Ending::Stalled => "stalled",
                    _ => "cancelled",
                };
                // Tool calls are only complete at the end of a reply; a cut-off reply has none.
                let reply = self.reply(relayed.text, Vec::new(), MessageStatus::Cancelled);
                let stored = self.store_reply(&reply).await.map(|_| ());
                if label == "interrupted" && stored.is_ok() {
                    self.tell(sender, Err(ChatError::ShuttingDown)).await;
                }
                (stored, label)
            }
            Ending::Finished => (self.finish(relayed, sender).await, "completed"),
        };
        match result {
            Ok(()) => label,
            Err(error) => {
                tracing::error!(error = %error, "storing the reply failed");
                self.tell(sender, Err(ChatError::from(error))).await;
                "storage_failed"
            }
        }
    }

    /// Tells the client, unless it has stopped reading: then it learns at the end of its stream
    /// that the reply was cut off. Past the shutdown grace period nothing waits for a client.
    async fn tell(&self, sender: &EventSender, event: Result<TurnEvent, ChatError>) -> Delivery {
        if !self.shutdown.is_cancelled() {
            return deliver(sender, event, self.stall_timeout).await;
        }
        match sender.try_send(event) {
            Ok(()) => Delivery::Delivered,
            Err(TrySendError::Full(_)) => Delivery::Stalled,
            Err(TrySendError::Closed(_)) => Delivery::Gone,
        }
    }

    /// Sends the tool calls, stores the complete reply, then sends `completed`.
    async fn finish(&self, relayed: Relayed, sender: &EventSender) -> Result<(), StoreError> {
        let calls = relayed.calls.into_iter().map(tool_call).collect();
        let reply = self.reply(relayed.text, calls, MessageStatus::Complete);
        for call in &reply.tool_calls {
            let event = Ok(TurnEvent::ToolCall(call.clone()));
            if !matches!(self.tell(sender, event).await, Delivery::Delivered) {
                break;
            }
        }
        if self.store_reply(&reply).await?.is_none() {
            self.tell(sender, Err(ChatError::NotFound("conversation")))
                .await;
            return Ok(());
        }
        let completion = Completion {
            message: reply,
            finish_reason: relayed.finish_reason.unwrap_or_else(|| "stop".to_owned()),
            model: self.model_name.clone(),
            usage: relayed.usage,
        };
        self.tell(sender, Ok(TurnEvent::Completed(completion)))
            .await;
        Ok(())
    }

    /// Stores the reply and adds it to what this replica remembers of the conversation.
    async fn store_reply(&self, reply: &Message) -> Result<Option<Revision>, StoreError> {
        let stored = self.store.store_reply(self.user, reply).await;
        match &stored {
            Ok(Some(revision)) => {
                self.recent.record(
                    self.user,
                    self.conversation_id,
                    *revision,
                    recent_message(reply),
                );
            }
            // Whether it was written is unknown, so what is remembered may be wrong.
            Err(_) => self.recent.forget(self.conversation_id),
            Ok(None) => {}
        }
        stored
    }

    fn reply(&self, content: String, calls: Vec<ToolCall>, status: MessageStatus) -> Message {
        // Strictly after the user's message, even if the clock stepped back meanwhile.
        let create_time = now().max(self.after + chrono::Duration::microseconds(1));
        Message {
            id: MessageId::generate(),
            conversation_id: self.conversation_id,
            role: Role::Assistant,
            content,
            status,
            create_time,
            tool_calls: calls,
        }
    }
}

fn tool_call(call: ModelToolCall) -> ToolCall {
    // Arguments are stored as JSON; text the model got wrong is kept as a JSON string.
    let arguments =
        serde_json::from_str(&call.arguments).unwrap_or(serde_json::Value::String(call.arguments));
    ToolCall {
        id: ToolCallId::generate(),
        provider_call_id: call.id,
        name: call.name,
        arguments,
        status: ToolCallStatus::Requested,
    }
}
