//! The reply's writes: each is one store call, tried again on a fresh connection when the
//! database fails for its own sake, and what the client is told when one cannot be made.

use super::{
    context::recent_message,
    state::{Outcome, RecordedEnd, TurnEnd},
    task::ReplyTask,
};
use crate::{
    chat::ChatError,
    domain::{Message, Revision, TurnState},
    events::TurnKey,
    store::{Awaiting, ReplyOf, ReplyStored, Store, StoreError, TurnEnding},
};

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

impl ReplyTask {
    /// Stores the reply. A store that fails for the database's sake (a lost connection, a
    /// failover, a timeout) is tried again on a fresh connection, a few times within a couple of
    /// seconds: the reply has been streamed and paid for.
    pub(super) async fn store_reply(
        &self,
        reply: &Message,
        awaiting: Option<&Awaiting>,
        deltas: &[i32],
        ends: Option<TurnEnding<'_>>,
    ) -> Result<Stored, StoreError> {
        let turn = self.turn.map(|key| ReplyOf {
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

    /// Stores the reply and, once stored, adds it to what this replica remembers of the
    /// conversation.
    pub(super) async fn store_and_remember(
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

    /// Stores how the turn ended, so that whoever follows it from now on replays it from the
    /// database; then closes its log. Tried a few times: a turn left generating would be taken
    /// for lost only once this replica stops.
    pub(super) async fn end_turn(&mut self) {
        let (Some(key), Some(end)) = (self.turn, self.end.to_store()) else {
            self.outlet.close_log();
            return;
        };
        let mut delays = reply_store_backoff();
        loop {
            match record_end(&self.store, key, TurnState::Generating, &end).await {
                Ok(()) => break,
                Err(error) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(error = %error, "storing the turn's end failed; trying again");
                        tokio::time::sleep(delay).await;
                    }
                    None => {
                        tracing::error!(error = %error, "storing the turn's end failed");
                        break;
                    }
                },
            }
        }
        self.outlet.close_log();
    }

    /// Tells the client that the turn was taken from this replica, as those following it on
    /// other replicas were told. Returns the outcome's label.
    pub(super) async fn taken_over(&mut self) -> Outcome {
        tracing::warn!(
            "another replica ended the turn while this one was away; its reply is not stored"
        );
        self.tell(Err(ChatError::TurnLost)).await;
        Outcome::Lost
    }

    /// Tells the client that what the turn made could not be stored. Returns the outcome's label.
    pub(super) async fn storage_failed(&mut self, error: StoreError) -> Outcome {
        tracing::error!(error = %error, "storing the reply failed");
        let told = match error {
            StoreError::Unavailable(reason) => ChatError::ReplyNotSaved(reason),
            other => ChatError::from(other),
        };
        self.tell(Err(told)).await;
        Outcome::StorageFailed
    }
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

/// Records how the turn's attempt `key` ended, if it is still in state `from`.
pub(super) async fn record_end(
    store: &Store,
    key: TurnKey,
    from: TurnState,
    end: &TurnEnd,
) -> Result<(), StoreError> {
    let end = RecordedEnd::from(end);
    store
        .end_turn(key.turn, key.attempt, from, end.ending())
        .await
}
