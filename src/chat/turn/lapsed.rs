//! Turns whose replica stopped. Each replica renews a lease while it runs; the turns of one
//! whose lease ran out are taken over by another, which stores what they had streamed as
//! interrupted and tells those who follow them, so that no turn stays generating for ever.

use tokio_util::sync::CancellationToken;

use super::{
    events::{ACCEPTED, TurnEvent, decode, encode},
    persist::record_end,
    service::Turns,
    state::{Failure, TurnEnd},
};
use crate::{
    domain::{Message, MessageId, MessageStatus, Role, TurnState},
    events::{Entry, TurnKey},
    store::{LapsedTurn, ReplyOf},
};

/// How many lapsed turns one sweep takes over at most.
const SWEEP_BATCH: i64 = 32;

impl Turns {
    /// Renews this replica's lease, and, beside it, ends the turns of replicas whose lease ran
    /// out and those of this one that nothing generates, until `stop`; then gives the lease up.
    pub async fn keep_alive(self, stop: CancellationToken) {
        let lease = self.settings.lease;
        let replica = self.runtime.replica;
        // A sweep that takes long (a dead replica's many turns, Redis away) must not delay a
        // renewal: it runs on its own.
        let sweeper = tokio::spawn({
            let turns = self.clone();
            let stop = stop.clone();
            async move {
                let mut sweep = tokio::time::interval(lease / 2);
                sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = sweep.tick() => {}
                        () = stop.cancelled() => return,
                    }
                    let swept = tokio::time::timeout(lease, turns.sweep()).await;
                    if let Ok(Err(error)) = swept {
                        tracing::warn!(error = %error, "ending turns that nothing generates failed");
                    }
                }
            }
        });
        // Three renewals per lease: one lost to a database blip costs nothing.
        let mut renew = tokio::time::interval(lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = renew.tick() => {}
                () = stop.cancelled() => break,
            }
            if let Err(error) = self.store.renew_lease(replica, lease).await {
                tracing::warn!(error = %error, "renewing this replica's lease failed");
            }
        }
        let _ = sweeper.await;
        if let Err(error) = self.store.release_lease(replica).await {
            tracing::warn!(error = %error, "giving up this replica's lease failed");
        }
    }

    async fn sweep(&self) -> Result<(), crate::store::StoreError> {
        self.end_orphans().await?;
        self.take_over_lapsed().await
    }

    /// Ends, as failed, the turns this replica has had generating for a whole lease without a
    /// reply task behind them (the task could not store the end): a retry generates them.
    async fn end_orphans(&self) -> Result<(), crate::store::StoreError> {
        let replica = self.runtime.replica;
        let turns = self
            .store
            .generating_on(replica, self.settings.lease)
            .await?;
        for (turn, attempt) in turns {
            let key = TurnKey { turn, attempt };
            if self.runtime.events.generates(key) {
                continue;
            }
            tracing::warn!(turn = %turn, "a turn nothing generates is ended as failed");
            self.end_unstarted(key).await;
        }
        Ok(())
    }

    /// Ends the turns of replicas whose lease ran out.
    async fn take_over_lapsed(&self) -> Result<(), crate::store::StoreError> {
        loop {
            let replica = self.runtime.replica;
            let lapsed = self.store.take_lapsed_turns(replica, SWEEP_BATCH).await?;
            let full = lapsed.len() as i64 == SWEEP_BATCH;
            for turn in lapsed {
                self.end_lapsed(turn).await;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Stores the text the turn's current round had streamed as an interrupted reply, and tells
    /// those who follow the turn that its replica stopped. What its events no longer hold (no
    /// Redis, or Redis lost them) is lost with the replica. A turn whose last event was sent
    /// keeps the end it was told.
    async fn end_lapsed(&self, turn: LapsedTurn) {
        let key = TurnKey {
            turn: turn.turn,
            attempt: turn.attempt,
        };
        let written = match self.runtime.events.written(key).await {
            Ok(written) => written,
            Err(error) => {
                tracing::warn!(turn = %turn.turn, error = %error, "the events of a lost turn cannot be read");
                Vec::new()
            }
        };
        let streamed = streamed_round(&written);
        if let Some(end) = streamed.end {
            self.settle_lapsed(key, &end).await;
            return;
        }
        tracing::warn!(
            turn = %turn.turn,
            attempt = turn.attempt.get(),
            "a turn's replica stopped; the turn is ended as interrupted"
        );
        if !streamed.text.is_empty() {
            let reply = interrupted_reply(&turn, streamed.text);
            let of = ReplyOf {
                turn: turn.turn,
                attempt: turn.attempt,
                deltas: &streamed.deltas,
                ends: None,
                while_state: TurnState::Interrupted,
            };
            if let Err(error) = self
                .store
                .store_reply(turn.user, &reply, None, Some(&of))
                .await
            {
                tracing::warn!(turn = %turn.turn, error = %error, "storing a lost turn's text failed");
            }
            self.recent.forget(turn.conversation_id);
        }
        let last = Entry {
            sequence: streamed.last_sequence + 1,
            payload: encode(Err(&Failure::Lost)),
            last: true,
        };
        if let Err(error) = self.runtime.events.close_for_lost(key, last).await {
            tracing::warn!(turn = %turn.turn, error = %error, "telling a lost turn's followers failed");
        }
        // Last: until the outcome is stored, followers wait for the log to say how it ended.
        self.settle_lapsed(key, &TurnEnd::Failed(Failure::Lost))
            .await;
    }

    /// Stores how a turn taken over as interrupted ended.
    async fn settle_lapsed(&self, key: TurnKey, end: &TurnEnd) {
        if let Err(error) = record_end(&self.store, key, TurnState::Interrupted, end).await {
            tracing::warn!(turn = %key.turn, error = %error, "storing a lost turn's end failed");
        }
    }
}

/// What a turn's events say of its last round.
#[derive(Debug, Default, PartialEq)]
struct Streamed {
    /// The text streamed since the last tool event: earlier rounds are stored already.
    text: String,
    /// The length of each piece of it; none when some of the turn's events are missing, since
    /// the pieces would not be numbered as they were sent.
    deltas: Vec<i32>,
    last_sequence: u64,
    /// How the turn ended, when its last event was written after all.
    end: Option<TurnEnd>,
}

fn streamed_round(written: &[Entry]) -> Streamed {
    let mut streamed = Streamed {
        last_sequence: ACCEPTED,
        ..Streamed::default()
    };
    let mut whole = true;
    for entry in written {
        whole &= entry.sequence == streamed.last_sequence + 1;
        streamed.last_sequence = entry.sequence;
        match decode(&entry.payload) {
            Ok(Ok(TurnEvent::Delta(text))) => {
                streamed
                    .deltas
                    .push(i32::try_from(text.len()).unwrap_or(i32::MAX));
                streamed.text.push_str(&text);
            }
            Ok(Ok(TurnEvent::ToolCall(_) | TurnEvent::ToolResult(_))) => {
                streamed.text.clear();
                streamed.deltas.clear();
            }
            Ok(Ok(TurnEvent::Completed(completion))) if entry.last => {
                streamed.end = Some(TurnEnd::Completed {
                    finish_reason: completion.finish_reason,
                    model: completion.model,
                    usage: completion.usage,
                });
            }
            Ok(Err(failure)) if entry.last => streamed.end = Some(TurnEnd::Failed(failure)),
            _ => {}
        }
    }
    if !whole {
        streamed.deltas.clear();
    }
    streamed
}

/// The text a lost turn's replica streamed, as the interrupted reply stored for it. Which model
/// wrote it went with the replica.
fn interrupted_reply(turn: &LapsedTurn, text: String) -> Message {
    Message {
        id: MessageId::generate(),
        conversation_id: turn.conversation_id,
        role: Role::Assistant,
        content: text,
        status: MessageStatus::Interrupted,
        create_time: crate::domain::now().max(turn.after + chrono::Duration::microseconds(1)),
        tool_calls: Vec::new(),
        model: None,
        usage: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64, event: TurnEvent) -> Entry {
        Entry {
            sequence,
            payload: encode(Ok(&event)),
            last: false,
        }
    }

    #[test]
    fn a_lost_turn_keeps_the_text_of_its_last_round() {
        let call = crate::domain::ToolCall {
            id: crate::domain::ToolCallId::generate(),
            provider_call_id: "c".into(),
            name: "t".into(),
            arguments: serde_json::json!({}),
            status: crate::domain::ToolCallStatus::Requested,
            result: None,
        };
        let written = [
            entry(2, TurnEvent::Delta("stored ".into())),
            entry(3, TurnEvent::ToolCall(Box::new(call))),
            entry(4, TurnEvent::Delta("Hel".into())),
            entry(5, TurnEvent::Delta("lo".into())),
        ];
        assert_eq!(
            streamed_round(&written),
            Streamed {
                text: "Hello".into(),
                deltas: vec![3, 2],
                last_sequence: 5,
                end: None,
            }
        );
        // With an event missing, the pieces are not kept; a last event is an end.
        let gap = [
            entry(2, TurnEvent::Delta("a".into())),
            entry(4, TurnEvent::Delta("b".into())),
        ];
        assert_eq!(streamed_round(&gap).text, "ab");
        assert!(streamed_round(&gap).deltas.is_empty());
        let ended = [Entry {
            sequence: 2,
            payload: encode(Err(&Failure::Cancelled)),
            last: true,
        }];
        assert_eq!(
            streamed_round(&ended).end,
            Some(TurnEnd::Failed(Failure::Cancelled))
        );
        assert_eq!(streamed_round(&[]).last_sequence, ACCEPTED);
    }
}
