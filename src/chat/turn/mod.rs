//! One turn of `SendMessage`, in the order the service does it:
//! 1. the user's message is parsed and written, which decides its place in the conversation
//!    (this module); a conversation that is gone, or full, stops the turn here;
//! 2. while the write commits, the model's context is built ([`context`]) from the messages
//!    before it, as this replica remembers them or as the database has them, and the model
//!    request starts;
//! 3. once the message is committed, the reply is relayed as it is generated ([`relay`]), by a
//!    task of its own ([`reply`]);
//! 4. what became of it is stored and the client told ([`outcome`]);
//! 5. the turn is reported in spans, metrics and one log line ([`telemetry`]).
//!
//! Every event of a turn is numbered and written to the turn's log ([`journal`]), so that a
//! retry of the same request, or a client whose stream broke, follows the turn from where it is
//! ([`follow`]), on any replica.

mod client_tools;
mod context;
mod follow;
mod journal;
mod lapsed;
mod outcome;
mod relay;
mod reply;
mod telemetry;
mod tools;

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::Stream;

use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

pub use self::client_tools::{
    ClientTool, Continuation, GivenToolResult, MAX_RESULTS_BYTES as MAX_TOOL_RESULTS_BYTES,
    ToolResultsRequest,
};
use self::client_tools::{Offer, awaiting_tool_results};
pub use self::journal::{ACCEPTED, Sequenced};
use self::{
    context::build_context,
    journal::Outlet,
    reply::ReplyTask,
    telemetry::{TurnLabels, TurnTelemetry},
    tools::ToolRounds,
};
use super::{Admission, ChatError, Identities, Limit, StreamPermit, recent::RecentContexts};
use crate::{
    domain::{
        Conversation, ConversationId, FIRST_ATTEMPT, Message, MessageContent, MessageId,
        MessageStatus, RecentHistory, RecentMessage, RequestKey, Revision, Role, Title, ToolCall,
        ToolCallStatus, UserId, now,
    },
    events::{CancelWatch, TurnEvents, TurnKey},
    llm::{ChatModel, TokenUsage},
    store::{NewTurn, Store, StoreError, UserMessageStored},
    telemetry::metrics::{HistorySource, Metrics},
    tools::Toolbox,
};

/// Limits on what a turn accepts and sends to the model.
#[derive(Debug, Clone)]
pub struct TurnSettings {
    /// The longest user message, in characters.
    pub max_message_chars: usize,
    /// At most this many of the conversation's newest messages go to the model...
    pub history_messages: usize,
    /// ...and at most this many characters of them (the newest message always goes).
    pub history_chars: usize,
    /// Sent first, when set.
    pub system_prompt: Option<String>,
    /// A client that takes no event for this long is cut off: its partial reply is stored as
    /// cancelled and the upstream request closed.
    pub stream_stall_timeout: Duration,
    /// How many rounds of tool calls one reply may make before the model must answer without.
    pub max_tool_rounds: u32,
    /// How long a reply waits for the results of tools the client runs; meanwhile its
    /// conversation takes no new message.
    pub tool_results_timeout: Duration,
    /// How long this replica's turns outlive it: it renews its lease while it runs.
    pub lease: Duration,
}

/// A request to hold one turn.
#[derive(Debug)]
pub struct TurnRequest {
    pub user: UserId,
    /// `None` starts a new conversation.
    pub conversation: Option<ConversationId>,
    pub content: String,
    /// Correlates the turn's log lines with the request.
    pub request_id: String,
    /// When the request arrived: time to first token is measured from here.
    pub received_at: Instant,
    /// The caller's bearer token, for tool servers that act on the caller's behalf.
    pub bearer: Option<SecretString>,
    /// Tools the client runs itself, as it defined them.
    pub tools: Vec<ClientTool>,
    /// The client's id for the request: a retry with the same id is the same turn.
    pub request_key: Option<RequestKey>,
    /// Whether the turn goes on when the client goes away.
    pub detached: bool,
}

/// What the client learns while the reply is generated, in this order.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnEvent {
    /// The user's message is stored: the turn's first event.
    Accepted(Accepted),
    Delta(String),
    /// A call the model asked for, stored.
    ToolCall(ToolCall),
    /// A call's result, stored.
    ToolResult(ToolResult),
    Completed(Completion),
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Accepted {
    pub conversation_id: ConversationId,
    pub user_message: Message,
}

/// What became of a tool call.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ToolResult {
    /// The provider's id for the call, as its `ToolCall` event gave it.
    pub provider_call_id: String,
    pub status: ToolCallStatus,
    pub result: serde_json::Value,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    /// The stored reply.
    pub message: Message,
    pub finish_reason: String,
    pub model: String,
    pub usage: Option<TokenUsage>,
}

/// A turn's events as its client reads them, `accepted` first. Dropping the stream of a turn
/// that ends with its client cancels it: the model call is aborted and what was generated so
/// far is stored as a cancelled message.
pub type TurnStream = Pin<Box<dyn Stream<Item = Result<Sequenced, ChatError>> + Send>>;

/// A reply task just started, and the means to release it and to hear from it.
struct SpawnedReply {
    /// Fired once the user message is committed; dropped, it aborts the model request.
    commit: oneshot::Sender<()>,
    events: mpsc::Receiver<Result<Sequenced, ChatError>>,
    /// The reply's last event (`completed` or an error), when `events` had no room for it: it
    /// comes after everything `events` holds.
    last_word: oneshot::Receiver<Result<Sequenced, ChatError>>,
}

impl SpawnedReply {
    /// Lets the reply go (its user message is committed) and returns the events of the turn as
    /// its client reads them: `accepted`, the reply's, and the last one, when the stream had no
    /// room for it, after everything else.
    fn release(self, accepted: Accepted) -> TurnStream {
        let _ = self.commit.send(());
        use tokio_stream::StreamExt;
        let accepted = Sequenced {
            sequence: ACCEPTED,
            event: TurnEvent::Accepted(accepted),
        };
        let last_word = futures_util::stream::once(self.last_word).filter_map(Result::ok);
        Box::pin(
            tokio_stream::once(Ok(accepted))
                .chain(tokio_stream::wrappers::ReceiverStream::new(self.events))
                .chain(last_word),
        )
    }
}

/// What became of the user's message.
enum Appended {
    /// Stored, at this place in the conversation.
    Committed(Revision),
    /// Not stored: the request's id names a turn already, which this request retries.
    RequestKeyTaken,
    /// Not stored: the user has no such conversation.
    Missing,
    /// Not stored: the user, or the conversation, holds as much as it may.
    Full(Limit),
    /// Not stored: a reply in the conversation awaits the client's tool results, until then.
    AwaitingToolResults(chrono::DateTime<chrono::Utc>),
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

/// Who a reply is for, where it goes, and the request it answers.
struct ReplyOrigin<'a> {
    user: UserId,
    conversation_id: ConversationId,
    /// The newest message's time: the reply is stored after it.
    after: chrono::DateTime<chrono::Utc>,
    request_id: &'a str,
    /// When the request arrived: time to first token is measured from here.
    received_at: Instant,
    bearer: Option<&'a SecretString>,
    /// The turn the reply is for, if it is one that may be followed.
    turn: Option<LiveTurn>,
    /// The turn's cancellation, watched from before the turn could be seen.
    cancel: Option<CancelWatch>,
}

/// A turn being generated: its attempt, and whether it outlives its client.
#[derive(Debug, Clone, Copy)]
struct LiveTurn {
    key: TurnKey,
    detached: bool,
}

/// How many events may wait for a slow client before the model is made to wait too.
const EVENT_BUFFER: usize = 16;

/// What a turn needs besides the store and the model: metrics, and the means to stop it.
#[derive(Clone)]
pub struct TurnRuntime {
    pub metrics: Arc<Metrics>,
    /// Cancelled when the shutdown grace period is over: turns still running are cut short.
    pub shutdown: CancellationToken,
    /// Tracks running reply tasks, so that shutdown can wait until their replies are stored.
    pub tasks: TaskTracker,
    /// Admits each reply stream against the user's and the replica's limits.
    pub admission: Arc<Admission>,
    /// Told when a user turns out to be deleted, so that the next request starts afresh.
    pub identities: Identities,
    /// The tools the model is offered, and the means to call them.
    pub toolbox: Arc<Toolbox>,
    /// Turn events, for those who follow a turn, and turn cancellation, on any replica.
    pub events: TurnEvents,
    /// This replica, whose lease keeps its turns alive.
    pub replica: uuid::Uuid,
}

#[derive(Clone)]
pub struct Turns {
    store: Store,
    recent: Arc<RecentContexts>,
    model: Arc<dyn ChatModel>,
    settings: Arc<TurnSettings>,
    runtime: TurnRuntime,
}

impl Turns {
    pub fn new(
        store: Store,
        recent: Arc<RecentContexts>,
        model: Arc<dyn ChatModel>,
        settings: TurnSettings,
        runtime: TurnRuntime,
    ) -> Self {
        Self {
            store,
            recent,
            model,
            settings: Arc::new(settings),
            runtime,
        }
    }

    pub async fn start(&self, mut request: TurnRequest) -> Result<TurnStream, ChatError> {
        let text = std::mem::take(&mut request.content);
        let content = MessageContent::parse(text, self.settings.max_message_chars)
            .map_err(|e| ChatError::invalid("content", e))?;
        let hash = request
            .request_key
            .as_ref()
            .map(|_| follow::request_hash(request.conversation, content.as_str(), &request.tools));
        // The request keeps its tools: a retry of a failed turn offers them again.
        let offer = self.offer(request.tools.clone())?;
        // Held by the reply task until the reply ends.
        let permit = self.runtime.admission.open_stream(request.user)?;
        let time = now();
        let title = Title::from_first_message(content.as_str());
        let target = match request.conversation {
            None => Target::New(Conversation {
                id: ConversationId::generate(),
                title,
                create_time: time,
                update_time: time,
            }),
            Some(id) => Target::Existing { id, title },
        };
        let conversation_id = target.id();
        let user_message = user_message(conversation_id, content, time);
        let turn = NewTurn {
            request_key: request
                .request_key
                .as_ref()
                .map(|key| key.as_str().to_owned()),
            request_hash: hash.clone(),
            replica: self.runtime.replica,
        };
        // Watched before the turn is committed, so that no cancel finds it unwatched.
        let cancel = self.runtime.events.watch_cancel(user_message.id);

        // The message is written first: its sequence decides which messages come before it,
        // and a conversation deleted by any replica ends the turn before the model hears of
        // it. The write holds the conversation's row until its commit, which waits for the
        // disk; meanwhile the context is gathered and the model request goes out, but nothing
        // of the reply reaches anyone before the commit is done. A request with an id may race
        // its own retry on another replica: its place is final only once the write has
        // claimed the id (the unique index holds the twin until this transaction ends), so
        // that the twin calls the model only if this transaction fails to commit.
        let (placed_tx, placed) = oneshot::channel();
        let commit =
            self.store_user_message(request.user, &target, &user_message, &turn, placed_tx);
        let ask_model = async {
            let Ok(Some(sequence)) = placed.await else {
                return Ok(None);
            };
            let mut context = self.history_before(request.user, &target, sequence).await?;
            context.push(recent_message(&user_message));
            let origin = ReplyOrigin {
                user: request.user,
                conversation_id,
                after: user_message.create_time,
                request_id: &request.request_id,
                received_at: request.received_at,
                bearer: request.bearer.as_ref(),
                turn: Some(LiveTurn {
                    key: TurnKey {
                        turn: user_message.id,
                        attempt: FIRST_ATTEMPT,
                    },
                    detached: request.detached,
                }),
                cancel: Some(cancel),
            };
            Ok::<_, ChatError>(Some(self.spawn_reply(origin, context, offer, permit)))
        };
        let (committed, reply) = tokio::join!(commit, ask_model);
        let sequence = match committed {
            Ok(Appended::Committed(sequence)) => sequence,
            Ok(Appended::Missing) => {
                self.recent.forget(conversation_id);
                return Err(ChatError::NotFound("conversation"));
            }
            Ok(Appended::Full(limit)) => {
                return Err(self.runtime.admission.storage_refusal(limit));
            }
            Ok(Appended::AwaitingToolResults(until)) => return Err(awaiting_tool_results(until)),
            // A retry of a request this service has seen is the same turn: found by the write
            // itself, or, when its twin was let in first meanwhile, by the unique index.
            Ok(Appended::RequestKeyTaken) | Err(ChatError::Duplicate) => {
                drop(reply);
                return self.retried_by_key(request, hash).await;
            }
            Err(error) => return Err(error),
        };
        let reply = match reply {
            Ok(Some(reply)) => reply,
            failed => {
                // The turn is stored, but nothing will generate it: it ends here, failed, so
                // that a retry generates it.
                let key = TurnKey {
                    turn: user_message.id,
                    attempt: FIRST_ATTEMPT,
                };
                self.end_unstarted(key).await;
                return Err(failed.err().unwrap_or_else(|| {
                    ChatError::Internal("a committed message was never placed".to_owned())
                }));
            }
        };
        self.recent.record(
            request.user,
            conversation_id,
            sequence,
            recent_message(&user_message),
        );
        tracing::info!(
            request_id = %request.request_id,
            conversation_id = %conversation_id,
            user_id = %request.user,
            model = self.model.name(),
            "turn started"
        );
        Ok(reply.release(Accepted {
            conversation_id,
            user_message,
        }))
    }

    /// Starts the task that relays and stores the reply. It sends the model request at once but
    /// relays nothing until the returned sender fires, once the user message is committed;
    /// dropping the sender instead aborts the model request. The task carries the request's
    /// span, so that its log lines carry the request id.
    fn spawn_reply(
        &self,
        request: ReplyOrigin<'_>,
        context: Vec<RecentMessage>,
        offer: Offer,
        permit: StreamPermit,
    ) -> SpawnedReply {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let (commit_tx, committed) = oneshot::channel();
        let (last_word_tx, last_word) = oneshot::channel();
        let events_port = &self.runtime.events;
        let log = request.turn.map(|turn| events_port.open(turn.key));
        let cancel = request.cancel;
        let detached = request.turn.is_some_and(|turn| turn.detached);
        let outlet = Outlet::new(sender, last_word_tx, log, detached);
        let conversation_id = request.conversation_id;
        let model_request = build_context(&self.settings, context, offer.specs());
        // Only a reply that may call tools needs its request again, for the next round.
        let runs_tools = self.runtime.toolbox.is_configured() || !offer.client.is_empty();
        let tools = runs_tools.then(|| ToolRounds {
            toolbox: self.runtime.toolbox.clone(),
            catalog: offer.catalog,
            client_tools: offer.client.into_iter().map(|tool| tool.name).collect(),
            results_wait: self.settings.tool_results_timeout,
            caller: request.bearer.cloned(),
            model: self.model.clone(),
            request: model_request.clone(),
            rounds: 0,
            max_rounds: self.settings.max_tool_rounds,
        });
        let task = ReplyTask {
            store: self.store.clone(),
            recent: self.recent.clone(),
            user: request.user,
            conversation_id,
            after: request.after,
            model_name: self.model.name().to_owned(),
            shutdown: self.runtime.shutdown.clone(),
            stall_timeout: self.settings.stream_stall_timeout,
            permit: Some(permit),
            outlet,
            turn: request.turn.map(|turn| turn.key),
            cancel,
            tools,
            metrics: self.runtime.metrics.clone(),
            answered: 0,
            ended_in_store: false,
        };
        let labels = TurnLabels {
            request_id: request.request_id.to_owned(),
            conversation_id,
            user: request.user,
        };
        let telemetry = TurnTelemetry::start(
            self.runtime.metrics.clone(),
            labels,
            self.model.name(),
            self.model.provider(),
            request.received_at,
        );
        let model = self.model.stream(model_request);
        let task = task
            .run(model, committed, telemetry)
            .instrument(tracing::Span::current());
        self.runtime.tasks.spawn(task);
        SpawnedReply {
            commit: commit_tx,
            events,
            last_word,
        }
    }

    /// Ends a turn that no reply task took, as failed: a retry generates it.
    async fn end_unstarted(&self, key: TurnKey) {
        let end = journal::TurnEnd::Failed(journal::Failure::Unavailable);
        let outcome = serde_json::to_value(&end).unwrap_or_default();
        if let Err(error) = self
            .store
            .end_turn(key.turn, key.attempt, end.state(), &outcome)
            .await
        {
            tracing::warn!(turn = %key.turn, error = %error, "ending a turn that never started failed");
        }
    }

    /// The newest messages before the user's message at `sequence`, oldest first: from memory
    /// when this replica remembers the conversation exactly up to there, else from the
    /// database, which is then remembered.
    async fn history_before(
        &self,
        user: UserId,
        target: &Target,
        sequence: Revision,
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
        let before = sequence - 1;
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
            .messages_before(user, id, sequence, self.settings.history_messages)
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
        placed: oneshot::Sender<Option<Revision>>,
    ) -> Result<Appended, ChatError> {
        let limits = self.runtime.admission.storage();
        let stored = match target {
            Target::New(conversation) => {
                let max = limits.conversations_per_user;
                let created = self
                    .store
                    .start_conversation(user, conversation, message, max, turn, placed)
                    .await
                    .map_err(duplicate_turn)
                    .map_err(|e| match e {
                        Ok(e) => self.runtime.identities.unless_gone(user, e),
                        Err(duplicate) => duplicate,
                    })?;
                return Ok(match created {
                    UserMessageStored::At(sequence) => Appended::Committed(sequence),
                    UserMessageStored::RequestKeyTaken => Appended::RequestKeyTaken,
                    UserMessageStored::Refused(_) => Appended::Full(Limit::UserConversations),
                });
            }
            Target::Existing { title, .. } => {
                let max = limits.messages_per_conversation;
                self.store
                    .append_user_message(user, message, title, max, turn, placed)
                    .await
                    .map_err(|e| match duplicate_turn(e) {
                        Ok(other) => ChatError::from(other),
                        Err(duplicate) => duplicate,
                    })?
            }
        };
        // Nothing written: the conversation's state, as it was locked, says why.
        Ok(match stored {
            UserMessageStored::At(sequence) => Appended::Committed(sequence),
            UserMessageStored::RequestKeyTaken => Appended::RequestKeyTaken,
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

fn recent_message(message: &Message) -> RecentMessage {
    RecentMessage {
        id: message.id,
        role: message.role,
        content: message.content.clone(),
        tool_calls: message.tool_calls.clone(),
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
    }
}
