//! What becomes of a reply once the model's stream has ended: stored as complete or cancelled,
//! or reported as the model's failure.

use super::{
    Completion, TurnEvent, recent_message,
    relay::{Ending, EventSender, Relayed, storable},
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
    tools::{ToolFailure, ToolOutcome},
};

impl ReplyTask {
    /// Stores the reply as its ending calls for and tells the client. Returns the outcome's
    /// label for logs.
    pub(super) async fn settle(&mut self, relayed: Relayed, sender: &EventSender) -> &'static str {
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
                let stored = self.store_and_remember(&reply).await.map(|_| ());
                if stored.is_ok() {
                    match label {
                        "interrupted" => self.tell(sender, Err(ChatError::ShuttingDown)).await,
                        // The client is not reading: it learns why when it does.
                        "stalled" => self.leave(Err(ChatError::NotRead)),
                        _ => {}
                    }
                }
                (stored, label)
            }
            Ending::Finished => (self.finish(relayed, sender).await, "completed"),
        };
        match result {
            Ok(()) => label,
            Err(error) => self.storage_failed(error, sender).await,
        }
    }

    /// Tells the client that what the turn made could not be stored. Returns the outcome's label.
    pub(super) async fn storage_failed(
        &mut self,
        error: StoreError,
        sender: &EventSender,
    ) -> &'static str {
        tracing::error!(error = %error, "storing the reply failed");
        let told = match error {
            StoreError::Unavailable(reason) => ChatError::ReplyNotSaved(reason),
            other => ChatError::from(other),
        };
        self.tell(sender, Err(told)).await;
        "storage_failed"
    }

    /// Tells the client, waiting for room in its stream for no longer than the stall timeout,
    /// and not at all once the client has stalled or the shutdown grace period is over. The last
    /// event of a reply that finds no room is left for the end of the stream, where the client
    /// finds it when it reads again; a tool call or result that finds none is dropped (the
    /// stored conversation has it).
    pub(super) async fn tell(&mut self, sender: &EventSender, event: Result<TurnEvent, ChatError>) {
        let room = if self.stalled || self.shutdown.is_cancelled() {
            sender.try_reserve().ok()
        } else {
            tokio::select! {
                biased;
                reserved = tokio::time::timeout(self.stall_timeout, sender.reserve()) => {
                    match reserved {
                        Ok(Ok(permit)) => Some(permit),
                        // The client went away: there is no one to tell.
                        Ok(Err(_)) => return,
                        Err(_) => {
                            self.stalled = true;
                            None
                        }
                    }
                }
                () = self.shutdown.cancelled() => sender.try_reserve().ok(),
            }
        };
        match room {
            Some(permit) => permit.send(event),
            None if !matches!(event, Ok(TurnEvent::ToolCall(_) | TurnEvent::ToolResult(_))) => {
                self.leave(event);
            }
            None => {}
        }
    }

    /// Leaves the reply's last event for the end of the client's stream.
    fn leave(&mut self, event: Result<TurnEvent, ChatError>) {
        if let Some(last_word) = self.last_word.take() {
            let _ = last_word.send(event);
        }
    }

    /// Stores the complete reply, then sends its tool calls and `completed`: a client hears of
    /// a tool call only once it is stored.
    async fn finish(&mut self, relayed: Relayed, sender: &EventSender) -> Result<(), StoreError> {
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
        if !self.store_and_remember(&reply).await? {
            self.tell(sender, Err(ChatError::NotFound("conversation")))
                .await;
            return Ok(());
        }
        for call in &reply.tool_calls {
            self.tell(sender, Ok(TurnEvent::ToolCall(call.clone())))
                .await;
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

    /// Stores the reply and adds it to what this replica remembers of the conversation. `false`
    /// if the conversation is gone.
    async fn store_and_remember(&self, reply: &Message) -> Result<bool, StoreError> {
        match self.store_reply(reply, None).await? {
            Stored::At(revision) => {
                self.recent.record(
                    self.user,
                    self.conversation_id,
                    revision,
                    recent_message(reply),
                );
                Ok(true)
            }
            Stored::AtUnknownPlace => Ok(true),
            Stored::ConversationGone => Ok(false),
        }
    }

    /// Stores the reply. A store that fails for the database's sake (a lost connection, a
    /// failover, a timeout) is tried again on a fresh connection, a few times within a couple of
    /// seconds: the reply has been streamed and paid for.
    pub(super) async fn store_reply(
        &self,
        reply: &Message,
        awaiting: Option<&crate::store::Awaiting>,
    ) -> Result<Stored, StoreError> {
        // Made on the first failure: the common case needs none.
        let mut delays = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.store.store_reply(self.user, reply, awaiting).await {
                Ok(Some(revision)) => return Ok(Stored::At(revision)),
                Ok(None) => return Ok(Stored::ConversationGone),
                Err(error) => error,
            };
            // Whether it was written is unknown, so what is remembered may be wrong.
            self.recent.forget(self.conversation_id);
            match error {
                // An earlier attempt did commit, though its answer was lost.
                StoreError::Duplicate(_) if attempt > 1 => return Ok(Stored::AtUnknownPlace),
                StoreError::Unavailable(_) => {}
                other => return Err(other),
            }
            let Some(delay) = delays.get_or_insert_with(reply_store_backoff).next() else {
                return Err(error);
            };
            tracing::warn!(attempt, error = %error, "storing the reply failed; trying again");
            tokio::time::sleep(delay).await;
        }
    }

    pub(super) fn reply(
        &self,
        content: String,
        calls: Vec<ToolCall>,
        status: MessageStatus,
    ) -> Message {
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

/// What became of a write of the reply.
pub(super) enum Stored {
    /// Stored, taking the conversation to this revision: the reply's sequence.
    At(Revision),
    /// Stored by an attempt whose answer was lost, so its place is not known here.
    AtUnknownPlace,
    /// Not stored: the conversation was deleted meanwhile.
    ConversationGone,
}

/// The pauses between tries to store a reply: three more tries within about two seconds.
fn reply_store_backoff() -> impl Iterator<Item = std::time::Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(std::time::Duration::from_millis(100))
        .with_max_delay(std::time::Duration::from_secs(1))
        .with_max_times(3)
        .with_jitter()
        .build()
}

pub(super) fn tool_call(call: ModelToolCall) -> ToolCall {
    // Arguments are stored as JSON; text the model got wrong is kept as a JSON string. NUL is
    // replaced first: PostgreSQL refuses it in text and JSON alike.
    // Both a raw NUL and JSON's escape for it, which would decode to one.
    let raw = storable(call.arguments).replace("\\u0000", "\\ufffd");
    let arguments = serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw));
    ToolCall {
        id: ToolCallId::generate(),
        provider_call_id: storable(call.id),
        name: storable(call.name),
        arguments,
        status: ToolCallStatus::Requested,
        result: None,
    }
}
