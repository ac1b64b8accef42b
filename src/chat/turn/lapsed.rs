//! Turns whose replica stopped. Each replica renews a lease while it runs; the turns of one
//! whose lease ran out are taken over by another, which stores what they had streamed as
//! interrupted and tells those who follow them, so that no turn stays generating for ever.

use tokio_util::sync::CancellationToken;

use super::{
    TurnEvent, Turns,
    journal::{ACCEPTED, Failure, decode, encode},
};
use crate::{
    domain::{Message, MessageId, MessageStatus, Role},
    events::{Entry, TurnKey},
    store::{LapsedTurn, ReplyOf},
};

/// How many lapsed turns one sweep takes over at most.
const SWEEP_BATCH: i64 = 32;

impl Turns {
    /// Renews this replica's lease, and takes over the turns of replicas whose lease ran out,
    /// until `stop`; then gives the lease up.
    pub async fn keep_alive(self, stop: CancellationToken) {
        let lease = self.settings.lease;
        let replica = self.runtime.replica;
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
            if let Err(error) = self.take_over_lapsed().await {
                tracing::warn!(error = %error, "taking over turns whose replica stopped failed");
            }
        }
        if let Err(error) = self.store.release_lease(replica).await {
            tracing::warn!(error = %error, "giving up this replica's lease failed");
        }
    }

    /// Ends the turns of replicas whose lease ran out.
    async fn take_over_lapsed(&self) -> Result<(), crate::store::StoreError> {
        loop {
            let lapsed = self.store.take_lapsed_turns(SWEEP_BATCH).await?;
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
    /// Redis, or Redis lost them) is lost with the replica.
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
        tracing::warn!(
            turn = %turn.turn,
            attempt = turn.attempt.get(),
            "a turn's replica stopped; the turn is ended as interrupted"
        );
        if streamed.ended {
            return;
        }
        if !streamed.text.is_empty() {
            let reply = Message {
                id: MessageId::generate(),
                conversation_id: turn.conversation_id,
                role: Role::Assistant,
                content: streamed.text,
                status: MessageStatus::Interrupted,
                create_time: crate::domain::now()
                    .max(turn.after + chrono::Duration::microseconds(1)),
                tool_calls: Vec::new(),
            };
            let of = ReplyOf {
                turn: turn.turn,
                attempt: turn.attempt,
                deltas: &streamed.deltas,
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
    }
}

/// What a turn's events say of its last round.
#[derive(Debug, Default, PartialEq)]
struct Streamed {
    /// The text streamed since the last tool event: earlier rounds are stored already.
    text: String,
    deltas: Vec<i32>,
    last_sequence: u64,
    /// Whether the turn's last event was written: it ended after all.
    ended: bool,
}

fn streamed_round(written: &[Entry]) -> Streamed {
    let mut streamed = Streamed {
        last_sequence: ACCEPTED,
        ..Streamed::default()
    };
    for entry in written {
        streamed.last_sequence = entry.sequence;
        streamed.ended |= entry.last;
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
            _ => {}
        }
    }
    streamed
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
            entry(3, TurnEvent::ToolCall(call)),
            entry(4, TurnEvent::Delta("Hel".into())),
            entry(5, TurnEvent::Delta("lo".into())),
        ];
        assert_eq!(
            streamed_round(&written),
            Streamed {
                text: "Hello".into(),
                deltas: vec![3, 2],
                last_sequence: 5,
                ended: false,
            }
        );
        assert_eq!(streamed_round(&[]).last_sequence, ACCEPTED);
    }
}
