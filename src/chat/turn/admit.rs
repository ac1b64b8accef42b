//! A turn is admitted: the user's message is parsed and written, which decides its place in
//! the conversation. A conversation that is gone, or full, stops the turn here; a request whose
//! id is taken is a retry, and follows its turn.

use tokio::sync::oneshot;

use super::{
    context::recent_message,
    events::Accepted,
    offer::Offer,
    retry::request_hash,
    service::{TurnRequest, TurnStream, Turns},
    spawn::{LiveTurn, ReplyOrigin, SpawnedReply},
};
use crate::{
    chat::{ChatError, Limit, StreamPermit},
    domain::{
        BudgetRefusal, Conversation, ConversationId, FIRST_ATTEMPT, Message, MessageContent,
        MessageId, MessageStatus, RecentHistory, RecentMessage, Role, Title, TurnId, UserId, now,
    },
    events::{CancelWatch, TurnKey},
    llm::ModelChoice,
    store::{AppendLimits, NewTurn, PlaceRefused, Placed, StoreError, UserMessageStored},
    telemetry::metrics::HistorySource,
};

/// The refusal of a user's message while a reply awaits the client's tool results.
pub(super) fn awaiting_tool_results(until: chrono::DateTime<chrono::Utc>) -> ChatError {
    ChatError::FailedPrecondition(format!(
        "a reply in this conversation awaits the results of your tools: give them with \
         SubmitToolResults, or send this message after {}",
        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
}

/// A turn whose request passed every check that needs no database: what is written.
struct Admitted {
    target: Target,
    user_message: Message,
    turn: NewTurn,
}

/// What the turn's reply is made with, once its message has its place.
struct ReplyMakings {
    offer: Offer,
    /// Counts the reply against the user's and the replica's stream limits.
    permit: StreamPermit,
    cancel: CancelWatch,
    model: ModelChoice,
}

/// What became of the user's message.
enum Appended {
    /// Stored, at this place in the conversation.
    Committed(Placed),
    /// Not stored: the request's id names a turn already, which this request retries.
    RequestKeyTaken,
    /// Not stored: the user has no such conversation.
    Missing,
    /// Not stored: the user, or the conversation, holds as much as it may.
    Full(Limit),
    /// Not stored: a reply in the conversation awaits the client's tool results, until then.
    AwaitingToolResults(chrono::DateTime<chrono::Utc>),
    /// Not stored: the place the client chose in the conversation cannot take it.
    PlaceRefused(PlaceRefused),
    /// Not stored: the user's budget refuses the turn.
    Budget(BudgetRefusal),
}

/// Where the user's message goes.
enum Target {
    New(Conversation),
    /// An existing conversation, named `title` if it has no name yet.
    Existing {
        id: ConversationId,
        title: Title,
    },
}

impl Target {
    fn id(&self) -> ConversationId {
        match self {
            Self::New(conversation) => conversation.id,
            Self::Existing { id, .. } => *id,
        }
    }
}

impl Turns {
    pub async fn start(&self, mut request: TurnRequest) -> Result<TurnStream, ChatError> {
        let (admitted, makings) = self.admit(&mut request)?;
        let model = makings.model;
        let Admitted {
            target,
            user_message,
            turn,
        } = &admitted;
        let conversation_id = target.id();
        // The message is written first: its sequence decides which messages come before it,
        // and a conversation deleted by any replica ends the turn before the model hears of
        // it. The write holds the conversation's row until its commit, which waits for the
        // disk; meanwhile the context is gathered and the model request goes out, but nothing
        // of the reply reaches anyone before the commit is done. A request with an id may race
        // its own retry on another replica: its place is final only once the write has
        // claimed the id (the unique index holds the twin until this transaction ends), so
        // that the twin calls the model only if this transaction fails to commit.
        let (placed_tx, placed) = oneshot::channel();
        let commit = self.store_user_message(request.user, target, user_message, turn, placed_tx);
        let ask_model = self.ask_model(&request, &admitted, placed, makings);
        let (committed, reply) = tokio::join!(commit, ask_model);
        let placed = match committed {
            Ok(Appended::Committed(placed)) => placed,
            // A retry of a request this service has seen is the same turn: found by the write
            // itself, or, when its twin was let in first meanwhile, by the unique index.
            Ok(Appended::RequestKeyTaken) | Err(ChatError::Duplicate) => {
                drop(reply);
                let hash = admitted.turn.request_hash;
                return self.retried_by_key(request, hash).await;
            }
            Ok(refused) => return Err(self.refusal(conversation_id, refused)),
            Err(error) => return Err(error),
        };
        let reply = match reply {
            Ok(Some(reply)) => reply,
            failed => {
                return Err(self
                    .never_started(user_message.id.into(), failed.err())
                    .await);
            }
        };
        let Admitted { user_message, .. } = admitted;
        if placed.in_line {
            self.recent.record(
                request.user,
                conversation_id,
                placed.sequence,
                recent_message(&user_message),
            );
        }
        tracing::info!(
            request_id = %request.request_id,
            conversation_id = %conversation_id,
            user_id = %request.user,
            model = %self.models.get(model).name,
            "turn started"
        );
        Ok(reply.release(Accepted {
            conversation_id,
            user_message,
        }))
    }

    /// Checks everything about the request that needs no database, and makes the turn's
    /// message and record; the request keeps its tools, so that a retry of a failed turn
    /// offers them again.
    fn admit(&self, request: &mut TurnRequest) -> Result<(Admitted, ReplyMakings), ChatError> {
        let text = std::mem::take(&mut request.content);
        let content = MessageContent::parse(text, self.settings.max_message_chars)
            .map_err(|e| ChatError::invalid("content", e))?;
        let model = self.choose_model(request.model.as_deref())?;
        let request_hash = request.request_key.as_ref().map(|_| {
            request_hash(
                request.conversation,
                content.as_str(),
                &request.tools,
                request.placement,
                request.model.as_deref(),
            )
        });
        let offer = self.offer(request.tools.clone())?;
        // Held by the reply task until the reply ends.
        let permit = self.runtime.admission.open_stream(request.user)?;
        let time = now();
        let title = Title::from_first_message(content.as_str());
        let target = match request.conversation {
            None if request.placement.is_chosen() => {
                return Err(ChatError::invalid(
                    "parent_message_id",
                    "names a message of a conversation: give conversation_id too",
                ));
            }
            None => Target::New(Conversation {
                id: ConversationId::generate(),
                title,
                create_time: time,
                update_time: time,
            }),
            Some(id) => Target::Existing { id, title },
        };
        let user_message = user_message(target.id(), content, time);
        let turn = NewTurn {
            request_key: request.request_key.as_ref().map(|k| k.as_str().to_owned()),
            request_hash,
            replica: self.runtime.replica,
            placement: request.placement,
        };
        // Watched before the turn is committed, so that no cancel finds it unwatched.
        let cancel = self.runtime.events.watch_cancel(user_message.id.into());
        let admitted = Admitted {
            target,
            user_message,
            turn,
        };
        Ok((
            admitted,
            ReplyMakings {
                offer,
                permit,
                cancel,
                model,
            },
        ))
    }

    /// Once the user's message has its place, gathers the context before it and starts the
    /// reply; `None` if the message was not placed.
    async fn ask_model(
        &self,
        request: &TurnRequest,
        admitted: &Admitted,
        placed: oneshot::Receiver<Option<Placed>>,
        makings: ReplyMakings,
    ) -> Result<Option<SpawnedReply>, ChatError> {
        let Ok(Some(placed)) = placed.await else {
            return Ok(None);
        };
        let Admitted {
            target,
            user_message,
            ..
        } = admitted;
        let mut context = self.history_before(request.user, target, placed).await?;
        context.push(recent_message(user_message));
        let origin = ReplyOrigin {
            user: request.user,
            conversation_id: target.id(),
            after: user_message.create_time,
            request_id: &request.request_id,
            received_at: request.received_at,
            bearer: request.bearer.as_ref(),
            turn: Some(LiveTurn {
                key: TurnKey {
                    turn: user_message.id.into(),
                    attempt: FIRST_ATTEMPT,
                },
                detached: request.detached,
            }),
            cancel: Some(makings.cancel),
            model: makings.model,
        };
        let ReplyMakings { offer, permit, .. } = makings;
        Ok(Some(self.spawn_reply(origin, context, offer, permit)))
    }

    /// What a client is told of a message that was not stored.
    fn refusal(&self, conversation: ConversationId, refused: Appended) -> ChatError {
        match refused {
            Appended::Missing => {
                self.recent.forget(conversation);
                ChatError::NotFound("conversation")
            }
            Appended::Full(limit) => self.runtime.admission.storage_refusal(limit),
            Appended::Budget(refusal) => self.runtime.admission.budget_refusal(refusal),
            Appended::AwaitingToolResults(until) => awaiting_tool_results(until),
            Appended::PlaceRefused(PlaceRefused::ParentMissing) => {
                ChatError::NotFound("parent message")
            }
            Appended::PlaceRefused(PlaceRefused::BranchGenerating) => {
                ChatError::FailedPrecondition(
                    "a reply on the way to parent_message_id is still being generated: wait for \
                     its turn to end, or cancel it with CancelTurn"
                        .to_owned(),
                )
            }
            Appended::PlaceRefused(PlaceRefused::SiblingsFull) => self
                .runtime
                .admission
                .storage_refusal(Limit::MessageSiblings),
            Appended::Committed(_) | Appended::RequestKeyTaken => {
                ChatError::Internal("a stored message taken for a refused one".to_owned())
            }
        }
    }

    /// Ends a turn whose message is stored but whose reply never started, as failed, so that
    /// a retry generates it. Returns what its client is told.
    async fn never_started(&self, turn: TurnId, error: Option<ChatError>) -> ChatError {
        self.end_unstarted(TurnKey {
            turn,
            attempt: FIRST_ATTEMPT,
        })
        .await;
        error.unwrap_or_else(|| {
            ChatError::Internal("a committed message was never placed".to_owned())
        })
    }

    /// The newest messages of the branch before the user's message, oldest first. In a
    /// conversation that is one line, those are the messages before it in the conversation's
    /// order: from memory when this replica remembers the conversation exactly up to there,
    /// else from the database, which is then remembered. In a branched one, the path to its
    /// parent, from the database: what a replica remembers is one line.
    async fn history_before(
        &self,
        user: UserId,
        target: &Target,
        placed: Placed,
    ) -> Result<Vec<RecentMessage>, ChatError> {
        let id = match target {
            Target::New(_) => {
                let empty = RecentHistory {
                    revision: 0,
                    messages: Vec::new(),
                };
                self.recent.remember(user, target.id(), empty);
                return Ok(Vec::new());
            }
            Target::Existing { id, .. } => *id,
        };
        let metrics = &self.runtime.metrics;
        let limit = self.settings.history_messages;
        if !placed.in_line {
            self.recent.forget(id);
            metrics.record_history_source(HistorySource::Database);
            let Some(parent) = placed.parent else {
                return Ok(Vec::new());
            };
            return Ok(self.store.branch_up_to(user, id, parent, limit).await?);
        }
        let before = placed.sequence - 1;
        let source = match self.recent.get(user, id) {
            Some(remembered) if remembered.revision == before => {
                metrics.record_history_source(HistorySource::Memory);
                return Ok(remembered.messages);
            }
            // Another turn or replica wrote since: what is remembered is out of date.
            Some(_) => HistorySource::StaleMemory,
            None => HistorySource::Database,
        };
        metrics.record_history_source(source);
        let messages = self
            .store
            .messages_before(user, id, placed.sequence, limit)
            .await?;
        let context = messages.clone();
        let history = RecentHistory {
            revision: before,
            messages,
        };
        self.recent.remember(user, id, history);
        Ok(context)
    }

    /// Writes the user's message and, once committed, says what became of it. `placed` hears
    /// the message's sequence before the commit, or `None` if nothing was written.
    async fn store_user_message(
        &self,
        user: UserId,
        target: &Target,
        message: &Message,
        turn: &NewTurn,
        placed: oneshot::Sender<Option<Placed>>,
    ) -> Result<Appended, ChatError> {
        let limits = self.runtime.admission.storage();
        let budget = self.runtime.admission.budget();
        let stored = match target {
            Target::New(conversation) => {
                let limits = (limits.conversations_per_user, &budget);
                let created = self
                    .store
                    .start_conversation(user, conversation, message, limits, turn, placed)
                    .await
                    .map_err(duplicate_turn)
                    .map_err(|e| match e {
                        Ok(e) => self.runtime.identities.unless_gone(user, e),
                        Err(duplicate) => duplicate,
                    })?;
                return Ok(match created {
                    UserMessageStored::At(placed) => Appended::Committed(placed),
                    UserMessageStored::RequestKeyTaken => Appended::RequestKeyTaken,
                    UserMessageStored::BudgetRefused(refusal) => Appended::Budget(refusal),
                    UserMessageStored::Refused(_) | UserMessageStored::PlaceRefused(_) => {
                        Appended::Full(Limit::UserConversations)
                    }
                });
            }
            Target::Existing { title, .. } => {
                let limits = AppendLimits {
                    max_revision: limits.messages_per_conversation,
                    max_siblings: limits.siblings_per_message,
                    budget,
                };
                self.store
                    .append_user_message(user, message, title, limits, turn, placed)
                    .await
                    .map_err(|e| match duplicate_turn(e) {
                        Ok(other) => ChatError::from(other),
                        Err(duplicate) => duplicate,
                    })?
            }
        };
        // Nothing written: the conversation's state, as it was locked, says why.
        Ok(match stored {
            UserMessageStored::At(placed) => Appended::Committed(placed),
            UserMessageStored::RequestKeyTaken => Appended::RequestKeyTaken,
            UserMessageStored::PlaceRefused(why) => Appended::PlaceRefused(why),
            UserMessageStored::BudgetRefused(refusal) => Appended::Budget(refusal),
            UserMessageStored::Refused(None) => Appended::Missing,
            UserMessageStored::Refused(Some(state)) => match state.awaiting_until {
                Some(until) if state.awaits_tool_results(message.create_time) => {
                    Appended::AwaitingToolResults(until)
                }
                _ => Appended::Full(Limit::ConversationMessages),
            },
        })
    }
}

/// A unique violation when a user's message is written means its request id is taken: the
/// request was let in first elsewhere. `Ok` with any other error.
fn duplicate_turn(error: StoreError) -> Result<StoreError, ChatError> {
    match error {
        StoreError::Duplicate(_) => Err(ChatError::Duplicate),
        other => Ok(other),
    }
}

fn user_message(
    conversation_id: ConversationId,
    content: MessageContent,
    time: chrono::DateTime<chrono::Utc>,
) -> Message {
    Message {
        id: MessageId::generate(),
        conversation_id,
        role: Role::User,
        content: content.into_string(),
        status: MessageStatus::Complete,
        create_time: time,
        tool_calls: Vec::new(),
        model: None,
        usage: None,
    }
}
