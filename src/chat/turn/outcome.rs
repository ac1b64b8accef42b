//! What becomes of a reply once the model's stream has ended: stored as complete or cancelled,
//! or reported as the model's failure.

use super::{
    Completion, TurnEvent,
    journal::{Failure, TurnEnd},
    recent_message,
    relay::{Ending, Relayed, storable},
    reply::ReplyTask,
};
use crate::{
    chat::ChatError,
    domain::{
        Message, MessageId, MessageStatus, Revision, Role, ToolCall, ToolCallId, ToolCallStatus,
        TurnState, now,
    },
    llm::ModelToolCall,
    store::{ReplyStored, StoreError, TurnEnding},
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

    /// Tells the client that the turn was taken from this replica, as those following it on
    /// other replicas were told. Returns the outcome's label.
    pub(super) async fn taken_over(&mut self) -> &'static str {
        tracing::warn!(
            "another replica ended the turn while this one was away; its reply is not stored"
        );
        self.tell(Err(ChatError::TurnLost)).await;
        "lost"
    }

    /// Tells the client that what the turn made could not be stored. Returns the outcome's label.
    pub(super) async fn storage_failed(&mut self, error: StoreError) -> &'static str {
        tracing::error!(error = %error, "storing the reply failed");
        let told = match error {
            StoreError::Unavailable(reason) => ChatError::ReplyNotSaved(reason),
            other => ChatError::from(other),
        };
        self.tell(Err(told)).await;
        "storage_failed"
    }

    /// Logs the event and tells the client (see [`Outlet::tell`](super::journal::Outlet)).
    pub(super) async fn tell(&mut self, event: Result<TurnEvent, ChatError>) {
        self.outlet
            .tell(event, self.stall_timeout, &self.shutdown)
            .await;
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

    /// Stores the reply and, once stored, adds it to what this replica remembers of the
    /// conversation.
    async fn store_and_remember(
        &self,
        reply: &Message,
        deltas: &[i32],
        ends: Option<TurnEnding<'_>>,
    ) -> Result<Stored, StoreError> {
        let stored = self.store_reply(reply, None, deltas, ends).await?;
        if let Stored::At(revision) = stored {
            self.recent.record(
                self.user,
                self.conversation_id,
                revision,
                recent_message(reply),
            );
        }
        Ok(stored)
    }

    /// Stores the reply. A store that fails for the database's sake (a lost connection, a
    /// failover, a timeout) is tried again on a fresh connection, a few times within a couple of
    /// seconds: the reply has been streamed and paid for.
    pub(super) async fn store_reply(
        &self,
        reply: &Message,
        awaiting: Option<&crate::store::Awaiting>,
        deltas: &[i32],
        ends: Option<TurnEnding<'_>>,
    ) -> Result<Stored, StoreError> {
        let turn = self.turn.map(|key| crate::store::ReplyOf {
            turn: key.turn,
            attempt: key.attempt,
            deltas,
            ends,
            while_state: TurnState::Generating,
        });
        // Made on the first failure: the common case needs none.
        let mut delays = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let stored = self
                .store
                .store_reply(self.user, reply, awaiting, turn.as_ref())
                .await;
            let error = match stored {
                Ok(ReplyStored::At(revision)) => return Ok(Stored::At(revision)),
                Ok(ReplyStored::ConversationGone) => return Ok(Stored::ConversationGone),
                Ok(ReplyStored::TurnTakenOver) => return Ok(Stored::TakenOver),
                // An earlier try did commit, though its answer was lost.
                Ok(ReplyStored::StoredBefore) => return Ok(Stored::AtUnknownPlace),
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
    /// Not stored: this replica's lease ran out (it was paused, or cut off from the database)
    /// and another replica ended the turn as interrupted meanwhile. What that replica stored
    /// stands; this one must not add to it.
    TakenOver,
}

/// The pauses between tries to store a reply: three more tries within about two seconds.
pub(super) fn reply_store_backoff() -> impl Iterator<Item = std::time::Duration> {
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
