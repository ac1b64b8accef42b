//! Following a turn from anywhere: a retry of the request that started it, or a client whose
//! stream broke, gets the turn's events from where it is, live from the turn's log while it is
//! generated, replayed from the database once it has ended. Cancelling a turn, wherever it is
//! generated, is here too.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{
    events::{ACCEPTED, Accepted, Sequenced, TurnEvent, decode},
    replay::replay,
    service::{TurnStream, Turns},
    state::RecordState,
};
use crate::{
    chat::ChatError,
    domain::{MessageId, UserId},
    events::{EventsError, Read, TurnKey},
    store::TurnRecord,
};

/// How long CancelTurn waits for the turn to end.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// How many idle checks a follower waits for a turn being taken over to say how it ended.
const TAKEOVER_WAITS: u32 = 5;
/// How many events may wait for a slow follower.
const FOLLOW_BUFFER: usize = 16;

fn events_error(error: EventsError) -> ChatError {
    match error {
        EventsError::Elsewhere => ChatError::FailedPrecondition(
            "the turn is generating on another replica, and without Redis (CHAT_REDIS_URL) its \
             events stay there: resume it once it has ended"
                .to_owned(),
        ),
        EventsError::Unavailable(reason) => {
            tracing::warn!(error = %reason, "turn events unavailable");
            ChatError::TurnUnavailable(
                "the engine that carries turn events between replicas is unavailable: retry \
                 with backoff, or resume the turn once it has ended"
                    .to_owned(),
            )
        }
    }
}

impl Turns {
    /// The user's newest turn answering `message` (the one it started, or the last that
    /// regenerated its reply), from after event `after`.
    pub async fn resume(
        &self,
        user: UserId,
        message: MessageId,
        after: u64,
    ) -> Result<TurnStream, ChatError> {
        let record = self
            .store
            .find_turn_answering(user, message)
            .await?
            .ok_or(ChatError::NotFound("turn"))?;
        if RecordState::of(&record) == RecordState::Generating {
            // Refused now, rather than in the stream, if nobody here can follow it.
            let events = &self.runtime.events;
            if !events.is_shared() && !events.generates(live_key(&record)) {
                let fresh = self.store.find_turn(user, record.id).await?;
                if fresh.as_ref().map(RecordState::of) == Some(RecordState::Generating) {
                    return Err(events_error(EventsError::Elsewhere));
                }
            }
        }
        self.follow(user, record, after)
    }

    /// Stops the user's newest turn answering `message` wherever it is generated, and waits (a while)
    /// until it has ended. A turn that has ended is left as it is.
    pub async fn cancel(&self, user: UserId, message: MessageId) -> Result<(), ChatError> {
        let record = self
            .store
            .find_turn_answering(user, message)
            .await?
            .ok_or(ChatError::NotFound("turn"))?;
        if RecordState::of(&record) != RecordState::Generating {
            return Ok(());
        }
        let key = live_key(&record);
        // Found or read first, so that the end is not missed.
        let ended_here = self.runtime.events.ended_here(key);
        let following = match ended_here {
            Some(_) => None,
            None => Some(self.runtime.events.read(key, ACCEPTED)),
        };
        self.runtime
            .events
            .cancel(record.id)
            .await
            .map_err(|error| {
                match error {
            EventsError::Elsewhere => ChatError::Unavailable(
                "the turn is generated on another replica, and without CHAT_REDIS_URL it can be \
                 cancelled only there"
                    .to_owned(),
            ),
            other => events_error(other),
        }
            })?;
        let ended = async {
            if let Some(closed) = ended_here {
                // Generated here: its log closes once its end is stored (or storing it failed).
                closed.await;
            } else if let Some(Ok(mut entries)) = following {
                // Generated elsewhere: its last event comes through the events engine.
                while let Some(read) = entries.next().await {
                    match read {
                        // Told; its end is being stored.
                        Ok(Read::Entry(entry)) if entry.last => break,
                        Ok(Read::Entry(_)) => {}
                        // Its last event may never come through: the record says.
                        Ok(Read::Idle) | Err(_) => break,
                    }
                }
            }
            // The turn's end is stored, or is about to be: its record says. Here, at its first
            // read, unless storing the end failed.
            loop {
                match self.store.find_turn(user, record.id).await {
                    Ok(Some(record)) if RecordState::of(&record) == RecordState::Generating => {}
                    _ => return,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(CANCEL_WAIT, ended).await.map_err(|_| {
            ChatError::TurnUnavailable(
                "the turn was told to stop but has not ended within 10 s; it will".to_owned(),
            )
        })
    }

    /// The turn's events after `after`, by a task of their own, which counts against the
    /// user's and the replica's stream limits. It ends when the follower goes away or stops
    /// reading, and when the shutdown grace period is over (a follower only reads: the turn it
    /// follows goes on).
    pub(super) fn follow(
        &self,
        user: UserId,
        record: TurnRecord,
        after: u64,
    ) -> Result<TurnStream, ChatError> {
        let permit = self.runtime.admission.open_stream(user)?;
        let (sender, events) = mpsc::channel(FOLLOW_BUFFER);
        let turns = self.clone();
        let shutdown = self.runtime.shutdown.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                tokio::select! {
                    () = turns.follow_into(user, record, after, &sender) => {}
                    () = shutdown.cancelled() => {
                        let _ = sender.try_send(Err(ChatError::TurnUnavailable(
                            "this replica is shutting down: resume the turn on another".to_owned(),
                        )));
                    }
                    () = sender.closed() => {}
                }
            }
            .in_current_span(),
        );
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            events,
        )))
    }

    async fn follow_into(
        &self,
        user: UserId,
        record: TurnRecord,
        after: u64,
        sender: &mpsc::Sender<Result<Sequenced, ChatError>>,
    ) {
        let stall = self.settings.stream_stall_timeout;
        let send = async |item: Result<Sequenced, ChatError>| {
            matches!(
                tokio::time::timeout(stall, sender.send(item)).await,
                Ok(Ok(()))
            )
        };
        let mut cursor = after;
        if cursor < ACCEPTED {
            let accepted = Sequenced {
                sequence: ACCEPTED,
                event: TurnEvent::Accepted(Box::new(Accepted {
                    conversation_id: record.conversation_id,
                    user_message: record.user_message.clone(),
                })),
            };
            if !send(Ok(accepted)).await {
                return;
            }
            cursor = ACCEPTED;
        }
        let ended = match self
            .follow_while_live(user, record, &mut cursor, sender)
            .await
        {
            Ok(Some(ended)) => ended,
            Ok(None) => return,
            Err(error) => {
                let _ = send(Err(error)).await;
                return;
            }
        };
        for event in self.replayed(user, &ended).await {
            let sequence = match &event {
                Ok(sequenced) => sequenced.sequence,
                Err(_) => u64::MAX,
            };
            if sequence > cursor && !send(event).await {
                return;
            }
        }
    }

    /// Follows a turn that is generating live, from `cursor`. `None` once its last event was
    /// sent; else the turn's record as it is once it has ended, to replay the rest from.
    async fn follow_while_live(
        &self,
        user: UserId,
        record: TurnRecord,
        cursor: &mut u64,
        sender: &mpsc::Sender<Result<Sequenced, ChatError>>,
    ) -> Result<Option<TurnRecord>, ChatError> {
        if RecordState::of(&record) != RecordState::Generating {
            return Ok(Some(record));
        }
        if self.follow_live(user, &record, cursor, sender).await? {
            return Ok(None);
        }
        match self.store.find_turn(user, record.id).await? {
            Some(fresh) if fresh.attempt == record.attempt => Ok(Some(fresh)),
            Some(_) => Err(ChatError::FailedPrecondition(
                "the turn is being generated again: resume it from sequence 0".into(),
            )),
            None => Err(ChatError::NotFound("turn")),
        }
    }

    /// A turn that has ended, replayed from the database.
    async fn replayed(
        &self,
        user: UserId,
        record: &TurnRecord,
    ) -> Vec<Result<Sequenced, ChatError>> {
        if RecordState::of(record) == RecordState::Generating {
            return vec![Err(ChatError::Unavailable(
                "the turn is still generating, but its events cannot be read".to_owned(),
            ))];
        }
        match self.store.turn_replies(user, record).await {
            Ok(replies) => replay(record, replies),
            Err(error) => vec![Err(error.into())],
        }
    }

    /// Follows the turn's log from `cursor`. `Ok(true)` once the turn's last event was sent,
    /// `Ok(false)` if the turn ended without its log saying so here (it is then replayed from
    /// the database).
    async fn follow_live(
        &self,
        user: UserId,
        record: &TurnRecord,
        cursor: &mut u64,
        sender: &mpsc::Sender<Result<Sequenced, ChatError>>,
    ) -> Result<bool, ChatError> {
        let key = live_key(record);
        let mut entries = match self.runtime.events.read(key, *cursor) {
            Ok(entries) => entries,
            // Not here: it may just have ended.
            Err(EventsError::Elsewhere) => return Ok(false),
            Err(error) => return Err(events_error(error)),
        };
        let mut takeover_waits = 0;
        while let Some(read) = entries.next().await {
            let entry = match read.map_err(events_error)? {
                Read::Entry(entry) => entry,
                Read::Idle => {
                    if sender.is_closed() {
                        return Ok(true);
                    }
                    let fresh = self.store.find_turn(user, record.id).await?;
                    let same_attempt = fresh.as_ref().is_some_and(|f| f.attempt == record.attempt);
                    match fresh.as_ref().map(RecordState::of) {
                        Some(RecordState::Generating) if same_attempt => continue,
                        // Another replica is taking the turn over from its stopped replica:
                        // its last event, once what it streamed is stored, comes through the
                        // log. A while at most, should that replica stop too.
                        Some(RecordState::TakingOver)
                            if same_attempt && takeover_waits < TAKEOVER_WAITS =>
                        {
                            takeover_waits += 1;
                            continue;
                        }
                        _ => return Ok(false),
                    }
                }
            };
            if entry.sequence != *cursor + 1 {
                return Err(ChatError::TurnUnavailable(format!(
                    "events {} to {} of the turn were lost on their way between replicas: resume \
                     it once it has ended, when it replays from storage",
                    *cursor + 1,
                    entry.sequence.saturating_sub(1).max(*cursor + 1)
                )));
            }
            *cursor = entry.sequence;
            let item = match decode(&entry.payload)? {
                Ok(event) => Ok(Sequenced {
                    sequence: entry.sequence,
                    event,
                }),
                Err(failure) => Err(failure.into_error()),
            };
            let sent = tokio::time::timeout(self.settings.stream_stall_timeout, sender.send(item));
            if !matches!(sent.await, Ok(Ok(()))) || entry.last {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn live_key(record: &TurnRecord) -> TurnKey {
    TurnKey {
        turn: record.id,
        attempt: record.attempt,
    }
}
