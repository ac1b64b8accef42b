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

mod client_tools;
mod context;
mod outcome;
mod relay;
mod reply;
mod telemetry;
mod tools;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

pub use self::client_tools::{
    ClientTool, Continuation, GivenToolResult, MAX_RESULTS_BYTES as MAX_TOOL_RESULTS_BYTES,
    ToolResultsRequest,
};
use self::client_tools::{Offer, awaiting_tool_results};
use self::{
    context::build_context,
    reply::ReplyTask,
    telemetry::{TurnLabels, TurnTelemetry},
    tools::ToolRounds,
};
use super::{Admission, ChatError, Identities, Limit, StreamPermit, recent::RecentContexts};
use crate::{
    domain::{
        Conversation, ConversationId, Message, MessageContent, MessageId, MessageStatus,
        RecentHistory, RecentMessage, Revision, Role, Title, ToolCall, ToolCallStatus, UserId, now,
    },
    llm::{ChatModel, TokenUsage},
    store::Store,
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
}

/// What the client learns while the reply is generated, in this order.
#[derive(Debug)]
pub enum TurnEvent {
    Delta(String),
    /// A call the model asked for, stored.
    ToolCall(ToolCall),
    /// A call's result, stored.
    ToolResult(ToolResult),
    Completed(Completion),
}

/// What became of a tool call.
#[derive(Debug)]
pub struct ToolResult {
    /// The provider's id for the call, as its `ToolCall` event gave it.
    pub provider_call_id: String,
    pub status: ToolCallStatus,
    pub result: serde_json::Value,
}

#[derive(Debug)]
pub struct Completion {
    /// The stored reply.
    pub message: Message,
    pub finish_reason: String,
    pub model: String,
    pub usage: Option<TokenUsage>,
}

/// A turn whose user message is stored and whose reply is being generated.
pub struct StartedTurn {
    pub conversation_id: ConversationId,
    pub user_message: Message,
    /// The reply's events. Dropping the receiver cancels the turn: the model call is aborted and
    /// what was generated so far is stored as a cancelled message.
    pub events: mpsc::Receiver<Result<TurnEvent, ChatError>>,
    /// The reply's last event (`completed` or an error), when `events` had no room for it: it
    /// comes after everything `events` holds.
    pub last_word: oneshot::Receiver<Result<TurnEvent, ChatError>>,
}

/// A reply task just started, and the means to release it and to hear from it.
struct SpawnedReply {
    /// Fired once the user message is committed; dropped, it aborts the model request.
    commit: oneshot::Sender<()>,
    events: mpsc::Receiver<Result<TurnEvent, ChatError>>,
    last_word: oneshot::Receiver<Result<TurnEvent, ChatError>>,
}

/// What became of the user's message.
enum Appended {
    /// Stored, at this place in the conversation.
    Committed(Revision),
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

    pub async fn start(&self, mut request: TurnRequest) -> Result<StartedTurn, ChatError> {
        let text = std::mem::take(&mut request.content);
        let content = MessageContent::parse(text, self.settings.max_message_chars)
            .map_err(|e| ChatError::invalid("content", e))?;
        let offer = self.offer(std::mem::take(&mut request.tools))?;
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

        // The message is written first: its sequence decides which messages come before it,
        // and a conversation deleted by any replica ends the turn before the model hears of
        // it. The write holds the conversation's row until its commit, which waits for the
        // disk; meanwhile the context is gathered and the model request goes out, but nothing
        // of the reply reaches anyone before the commit is done.
        let (placed_tx, placed) = oneshot::channel();
        let commit = self.store_user_message(request.user, &target, &user_message, placed_tx);
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
            };
            Ok::<_, ChatError>(Some(self.spawn_reply(&origin, context, offer, permit)))
        };
        let (committed, reply) = tokio::join!(commit, ask_model);
        let sequence = match committed? {
            Appended::Committed(sequence) => sequence,
            Appended::Missing => {
                self.recent.forget(conversation_id);
                return Err(ChatError::NotFound("conversation"));
            }
            Appended::Full(limit) => return Err(self.runtime.admission.storage_refusal(limit)),
            Appended::AwaitingToolResults(until) => return Err(awaiting_tool_results(until)),
        };
        let reply = reply?.ok_or_else(|| {
            ChatError::Internal("a committed message was never placed".to_owned())
        })?;
        self.recent.record(
            request.user,
            conversation_id,
            sequence,
            recent_message(&user_message),
        );
        let _ = reply.commit.send(());
        tracing::info!(
            request_id = %request.request_id,
            conversation_id = %conversation_id,
            user_id = %request.user,
            model = self.model.name(),
            "turn started"
        );
        Ok(StartedTurn {
            conversation_id,
            user_message,
            events: reply.events,
            last_word: reply.last_word,
        })
    }

    /// Starts the task that relays and stores the reply. It sends the model request at once but
    /// relays nothing until the returned sender fires, once the user message is committed;
    /// dropping the sender instead aborts the model request. The task carries the request's
    /// span, so that its log lines carry the request id.
    fn spawn_reply(
        &self,
        request: &ReplyOrigin<'_>,
        context: Vec<RecentMessage>,
        offer: Offer,
        permit: StreamPermit,
    ) -> SpawnedReply {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let (commit_tx, committed) = oneshot::channel();
        let (last_word_tx, last_word) = oneshot::channel();
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
            _permit: permit,
            last_word: Some(last_word_tx),
            stalled: false,
            tools,
            metrics: self.runtime.metrics.clone(),
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
            .run(model, committed, sender, telemetry)
            .instrument(tracing::Span::current());
        self.runtime.tasks.spawn(task);
        SpawnedReply {
            commit: commit_tx,
            events,
            last_word,
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
        placed: oneshot::Sender<Option<Revision>>,
    ) -> Result<Appended, ChatError> {
        let limits = self.runtime.admission.storage();
        let appended = match target {
            Target::New(conversation) => {
                let max = limits.conversations_per_user;
                let created = self
                    .store
                    .start_conversation(user, conversation, message, max, placed)
                    .await
                    .map_err(|e| self.runtime.identities.unless_gone(user, e))?;
                return Ok(created.map_or(
                    Appended::Full(Limit::UserConversations),
                    Appended::Committed,
                ));
            }
            Target::Existing { title, .. } => {
                let max = limits.messages_per_conversation;
                self.store
                    .append_user_message(user, message, title, max, placed)
                    .await?
            }
        };
        // Nothing written: the conversation's state, as it was locked, says why.
        Ok(match appended {
            Ok(sequence) => Appended::Committed(sequence),
            Err(None) => Appended::Missing,
            Err(Some(state)) => match state.awaiting_until {
                Some(until) if state.awaits_tool_results(message.create_time) => {
                    Appended::AwaitingToolResults(until)
                }
                _ => Appended::Full(Limit::ConversationMessages),
            },
        })
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
