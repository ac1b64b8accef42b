//! Following a turn from anywhere: a retry of the request that started it, or a client whose
//! stream broke, gets the turn's events from where it is, live from the turn's log while it is
//! generated, replayed from the database once it has ended; a turn that failed is generated
//! again for the same stored message.

use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{
    Accepted, ClientTool, Completion, LiveTurn, ReplyOrigin, ToolResult, TurnEvent, TurnRequest,
    TurnStream, Turns,
    journal::{ACCEPTED, Failure, Sequenced, TurnEnd, decode},
    recent_message,
};
use crate::{
    chat::ChatError,
    domain::{ConversationId, MessageId, ToolCallStatus, TurnState, UserId},
    events::{EventsError, Read, TurnKey},
    store::{StoredReply, TurnRecord},
};

/// How long CancelTurn waits for the turn to end.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// How many idle checks a follower waits for a turn being taken over to say how it ended.
const TAKEOVER_WAITS: u32 = 5;
/// How many events may wait for a slow follower.
const FOLLOW_BUFFER: usize = 16;

/// What a request asked, hashed: a retry must ask the same.
pub(super) fn request_hash(
    conversation: Option<ConversationId>,
    content: &str,
    tools: &[ClientTool],
) -> Vec<u8> {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(
        conversation
            .map(|id| id.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    field(content.as_bytes());
    for tool in tools {
        field(tool.name.as_bytes());
        field(tool.description.as_bytes());
        field(tool.parameters_json.as_bytes());
    }
    hash.finalize().to_vec()
}

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
    /// The turn a request's id names, as its retry gets it (see [`Turns::retried`]).
    pub(super) async fn retried_by_key(
        &self,
        request: TurnRequest,
        hash: Option<Vec<u8>>,
    ) -> Result<TurnStream, ChatError> {
        let (Some(key), Some(hash)) = (&request.request_key, hash) else {
            return Err(ChatError::Internal(
                "a request id taken by a request without one".into(),
            ));
        };
        let record = self
            .store
            .find_turn_by_request(request.user, key.as_str())
            .await?
            // Its conversation was deleted since the id was found taken.
            .ok_or(ChatError::NotFound("conversation"))?;
        self.retried(request, record, &hash).await
    }

    /// The turn a request with a known id started, as its retry gets it: followed while it
    /// is generated or once it has ended, generated again if it failed.
    pub(super) async fn retried(
        &self,
        request: TurnRequest,
        record: TurnRecord,
        hash: &[u8],
    ) -> Result<TurnStream, ChatError> {
        if record.request_hash.as_deref() != Some(hash) {
            return Err(ChatError::invalid(
                "request_id",
                "was used for a different request: a retry must send the same conversation_id, \
                 content and tools",
            ));
        }
        if !record.state.may_generate_again() {
            tracing::info!(
                request_id = %request.request_id,
                turn = %record.user_message.id,
                state = <&str>::from(record.state),
                "a retried request follows its turn"
            );
            return self.follow(request.user, record, 0);
        }
        self.generate_again(request, record).await
    }

    /// Generates the reply to a stored message again, as its next attempt; follows the turn
    /// instead if another retry took it first.
    async fn generate_again(
        &self,
        mut request: TurnRequest,
        record: TurnRecord,
    ) -> Result<TurnStream, ChatError> {
        let user = request.user;
        let turn = record.user_message.id;
        // Everything that can refuse the retry comes first: once the turn is taken, a reply
        // task must end it.
        if self
            .store
            .has_later_user_message(user, record.conversation_id, record.sequence)
            .await?
        {
            return Err(ChatError::FailedPrecondition(
                "the conversation has moved on since this message: send it again with a new \
                 request_id"
                    .to_owned(),
            ));
        }
        let offer = self.offer(std::mem::take(&mut request.tools))?;
        let permit = self.runtime.admission.open_stream(user)?;
        let mut context = self
            .store
            .messages_before(
                user,
                record.conversation_id,
                record.sequence,
                self.settings.history_messages,
            )
            .await?;
        context.push(recent_message(&record.user_message));
        // Watched before the turn is taken, so that no cancel finds it unwatched.
        let cancel = self.runtime.events.watch_cancel(turn);
        let replica = self.runtime.replica;
        let Some(attempt) = self
            .store
            .retry_turn(user, turn, record.attempt, replica)
            .await?
        else {
            let record = self
                .store
                .find_turn(user, turn)
                .await?
                .ok_or(ChatError::NotFound("turn"))?;
            return self.follow(user, record, 0);
        };
        let key = TurnKey { turn, attempt };
        let origin = ReplyOrigin {
            user,
            conversation_id: record.conversation_id,
            // After everything in the conversation now, the earlier attempt's replies included.
            after: crate::domain::now(),
            request_id: &request.request_id,
            received_at: request.received_at,
            bearer: request.bearer.as_ref(),
            turn: Some(LiveTurn {
                key,
                detached: request.detached,
            }),
            cancel: Some(cancel),
        };
        let reply = self.spawn_reply(origin, context, offer, permit);
        tracing::info!(
            request_id = %request.request_id,
            turn = %turn,
            attempt = attempt.get(),
            "a retried request generates its turn again"
        );
        Ok(reply.release(Accepted {
            conversation_id: record.conversation_id,
            user_message: record.user_message,
        }))
    }

    /// The user's turn answering `message`, from after event `after`.
    pub async fn resume(
        &self,
        user: UserId,
        message: MessageId,
        after: u64,
    ) -> Result<TurnStream, ChatError> {
        let record = self
            .store
            .find_turn(user, message)
            .await?
            .ok_or(ChatError::NotFound("turn"))?;
        if record.state == TurnState::Generating {
            // Refused now, rather than in the stream, if nobody here can follow it.
            let events = &self.runtime.events;
            if !events.is_shared() && !events.generates(live_key(&record)) {
                let fresh = self.store.find_turn(user, message).await?;
                if fresh
                    .as_ref()
                    .is_some_and(|r| r.state == TurnState::Generating)
                {
                    return Err(events_error(EventsError::Elsewhere));
                }
            }
        }
        self.follow(user, record, after)
    }

    /// Stops the user's turn answering `message` wherever it is generated, and waits (a while)
    /// until it has ended. A turn that has ended is left as it is.
    pub async fn cancel(&self, user: UserId, message: MessageId) -> Result<(), ChatError> {
        let record = self
            .store
            .find_turn(user, message)
            .await?
            .ok_or(ChatError::NotFound("turn"))?;
        if record.state != TurnState::Generating {
            return Ok(());
        }
        let key = live_key(&record);
        // Read first, so that the end is not missed.
        let following = self.runtime.events.read(key, ACCEPTED);
        self.runtime
            .events
            .cancel(message)
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
            if let Ok(mut entries) = following {
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
            // The turn's end is stored, or is about to be.
            loop {
                match self.store.find_turn(user, message).await {
                    Ok(Some(record)) if record.state == TurnState::Generating => {}
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
        mut record: TurnRecord,
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
                event: TurnEvent::Accepted(Accepted {
                    conversation_id: record.conversation_id,
                    user_message: record.user_message.clone(),
                }),
            };
            if !send(Ok(accepted)).await {
                return;
            }
            cursor = ACCEPTED;
        }
        if record.state == TurnState::Generating {
            match self.follow_live(user, &record, &mut cursor, sender).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => {
                    let _ = send(Err(error)).await;
                    return;
                }
            }
            record = match self.store.find_turn(user, record.user_message.id).await {
                Ok(Some(fresh)) if fresh.attempt == record.attempt => fresh,
                Ok(Some(_)) => {
                    let _ = send(Err(ChatError::FailedPrecondition(
                        "the turn is being generated again: resume it from sequence 0".into(),
                    )))
                    .await;
                    return;
                }
                Ok(None) => {
                    let _ = send(Err(ChatError::NotFound("turn"))).await;
                    return;
                }
                Err(error) => {
                    let _ = send(Err(error.into())).await;
                    return;
                }
            };
        }
        let replies = if record.state == TurnState::Generating {
            Err(ChatError::Unavailable(
                "the turn is still generating, but its events cannot be read".to_owned(),
            ))
        } else {
            self.store
                .turn_replies(user, &record)
                .await
                .map_err(ChatError::from)
        };
        let events = match replies {
            Ok(replies) => replay(&record, replies),
            Err(error) => vec![Err(error)],
        };
        for event in events {
            let sequence = match &event {
                Ok(sequenced) => sequenced.sequence,
                Err(_) => u64::MAX,
            };
            if sequence > cursor && !send(event).await {
                return;
            }
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
                    let fresh = self.store.find_turn(user, record.user_message.id).await?;
                    match fresh {
                        Some(fresh)
                            if fresh.state == TurnState::Generating
                                && fresh.attempt == record.attempt =>
                        {
                            continue;
                        }
                        // Another replica is taking the turn over from its stopped replica:
                        // its last event, once what it streamed is stored, comes through the
                        // log. A while at most, should that replica stop too.
                        Some(fresh)
                            if fresh.state == TurnState::Interrupted
                                && fresh.outcome.is_none()
                                && fresh.attempt == record.attempt
                                && takeover_waits < TAKEOVER_WAITS =>
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
        turn: record.user_message.id,
        attempt: record.attempt,
    }
}

/// A turn that has ended, as its events were sent: `accepted`, then for each reply the pieces
/// of its text as they were streamed, its tool calls, and the results that were sent, in the
/// order they were; then how it ended.
pub(super) fn replay(
    record: &TurnRecord,
    replies: Vec<StoredReply>,
) -> Vec<Result<Sequenced, ChatError>> {
    let mut events = vec![Ok(Sequenced {
        sequence: ACCEPTED,
        event: TurnEvent::Accepted(Accepted {
            conversation_id: record.conversation_id,
            user_message: record.user_message.clone(),
        }),
    })];
    let mut push = |event: TurnEvent| {
        let sequence = ACCEPTED + events.len() as u64;
        events.push(Ok(Sequenced { sequence, event }));
    };
    let mut last_message = None;
    for reply in replies {
        for piece in pieces(&reply.message.content, reply.deltas.as_deref()) {
            push(TurnEvent::Delta(piece.to_owned()));
        }
        // A call was sent as it was stored: awaiting its result, unless it was settled then.
        for (call, order) in reply.message.tool_calls.iter().zip(&reply.answer_order) {
            let mut sent = call.clone();
            if !order.is_some_and(|order| order < 0) {
                sent.status = ToolCallStatus::Requested;
                sent.result = None;
            }
            push(TurnEvent::ToolCall(sent));
        }
        let mut answered: Vec<(i32, usize)> = reply
            .answer_order
            .iter()
            .enumerate()
            .filter_map(|(index, order)| order.filter(|order| *order >= 0).map(|o| (o, index)))
            .collect();
        answered.sort_unstable();
        for (_, index) in answered {
            if let Some(call) = reply.message.tool_calls.get(index) {
                push(TurnEvent::ToolResult(ToolResult {
                    provider_call_id: call.provider_call_id.clone(),
                    status: call.status,
                    result: call.result.clone().unwrap_or_default(),
                }));
            }
        }
        last_message = Some(reply.message);
    }
    let end = record
        .outcome
        .clone()
        .and_then(|outcome| serde_json::from_value::<TurnEnd>(outcome).ok());
    let last = match (end, last_message) {
        (
            Some(TurnEnd::Completed {
                finish_reason,
                model,
                usage,
            }),
            Some(message),
        ) => Ok(TurnEvent::Completed(Completion {
            message,
            finish_reason,
            model,
            usage,
        })),
        (Some(TurnEnd::Failed(failure)), _) => Err(failure),
        (None, _) if record.state == TurnState::Interrupted => Err(Failure::Lost),
        _ => Err(Failure::Internal),
    };
    match last {
        Ok(event) => push(event),
        Err(failure) => events.push(Err(failure.into_error())),
    }
    events
}

/// The pieces `content` was streamed in, by their lengths in bytes; the whole text as one piece
/// when the lengths are unknown or do not fit it.
fn pieces<'a>(content: &'a str, lengths: Option<&[i32]>) -> Vec<&'a str> {
    let whole = || {
        if content.is_empty() {
            Vec::new()
        } else {
            vec![content]
        }
    };
    let Some(lengths) = lengths else {
        return whole();
    };
    let mut pieces = Vec::with_capacity(lengths.len());
    let mut rest = content;
    for length in lengths {
        let Ok(length) = usize::try_from(*length) else {
            return whole();
        };
        if length > rest.len() || !rest.is_char_boundary(length) {
            return whole();
        }
        let (piece, after) = rest.split_at(length);
        pieces.push(piece);
        rest = after;
    }
    if rest.is_empty() { pieces } else { whole() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_into_the_pieces_it_was_streamed_in() {
        assert_eq!(pieces("héllo", Some(&[3, 3])), ["hé", "llo"]);
        assert_eq!(pieces("", Some(&[])), Vec::<&str>::new());
        assert_eq!(pieces("abc", None), ["abc"]);
        // Lengths that do not fit the text, or cut a character, give it whole.
        assert_eq!(pieces("abc", Some(&[1])), ["abc"]);
        assert_eq!(pieces("héllo", Some(&[2, 4])), ["héllo"]);
        assert_eq!(pieces("abc", Some(&[-1, 4])), ["abc"]);
    }

    #[test]
    fn the_hash_tells_apart_what_a_retry_must_repeat() {
        let tool = |name: &str| ClientTool {
            name: name.into(),
            description: String::new(),
            parameters_json: String::new(),
        };
        let id = ConversationId::generate();
        let base = request_hash(Some(id), "hello", &[tool("a")]);
        assert_eq!(base, request_hash(Some(id), "hello", &[tool("a")]));
        assert_ne!(base, request_hash(None, "hello", &[tool("a")]));
        assert_ne!(base, request_hash(Some(id), "hello!", &[tool("a")]));
        assert_ne!(base, request_hash(Some(id), "hello", &[tool("b")]));
        assert_ne!(base, request_hash(Some(id), "hello", &[]));
    }
}
