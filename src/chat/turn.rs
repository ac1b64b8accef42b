//! One turn of `SendMessage`: store the user's message, ask the model, relay its reply as it is
//! generated, and store the reply.

use std::{sync::Arc, time::Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, field};

use super::{ChatError, recent::RecentContexts};
use crate::{
    domain::{
        Conversation, ConversationId, Message, MessageContent, MessageId, MessageStatus, Role,
        Title, ToolCall, ToolCallId, ToolCallStatus, UserId, now,
    },
    llm::{
        ChatModel, ContextMessage, LlmError, ModelEvent, ModelRequest, ModelToolCall, TokenUsage,
    },
    store::{RecentHistory, RecentMessage, Revision, Store},
    telemetry::metrics::{HistorySource, Metrics},
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
}

/// What the client learns while the reply is generated, in this order.
#[derive(Debug)]
pub enum TurnEvent {
    Delta(String),
    ToolCall(ToolCall),
    Completed(Completion),
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
}

/// What became of the user's message.
enum Stored {
    Committed,
    /// Not stored: the conversation is not at the revision its remembered history was.
    Stale,
    /// Not stored: the user has no such conversation.
    Missing,
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

/// How many events may wait for a slow client before the model is made to wait too.
const EVENT_BUFFER: usize = 16;

/// What a turn needs besides the store and the model: metrics, and the means to stop it.
#[derive(Clone)]
pub struct TurnRuntime {
    pub metrics: Arc<Metrics>,
    /// Cancelled when the shutdown grace period is over: turns still running are cut short.
    pub shutdown: CancellationToken,
    /// Tracks running generations, so that shutdown can wait until their replies are stored.
    pub tasks: TaskTracker,
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

    pub async fn start(&self, request: TurnRequest) -> Result<StartedTurn, ChatError> {
        let content = MessageContent::parse(request.content, self.settings.max_message_chars)
            .map_err(|e| ChatError::invalid("content", e))?;
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

        // What the model sees is known before anything is written, so that the model request
        // can go out while the user message is being committed. It comes from memory when this
        // replica remembers the conversation; if another write came first, the turn starts
        // again from the database.
        let mut from_memory = true;
        loop {
            let (history, expected) = self.history(request.user, &target, from_memory).await?;
            let mut context = history;
            context.push((Role::User, user_message.content.clone()));
            let (sender, events) = mpsc::channel(EVENT_BUFFER);
            let (commit_tx, committed) = oneshot::channel();
            let generation = Generation {
                store: self.store.clone(),
                recent: self.recent.clone(),
                user: request.user,
                request_id: request.request_id.clone(),
                conversation_id,
                after: user_message.create_time,
                model_name: self.model.name().to_owned(),
                provider: self.model.provider(),
                started: request.received_at,
                metrics: self.runtime.metrics.clone(),
                shutdown: self.runtime.shutdown.clone(),
            };
            // The task carries the request's span, so its log lines carry the request id. It
            // starts the model request at once but relays nothing until the user message is
            // committed; dropping `commit_tx` instead aborts the model request.
            let task = generation
                .run(self.model.stream(self.context(context)), committed, sender)
                .instrument(tracing::Span::current());
            self.runtime.tasks.spawn(task);
            // Lets the generation task put the model request on the wire before this task
            // claims the thread for the user message's write: the model's time to first token
            // is the longer wait, and the commit only has to finish before that token.
            tokio::task::yield_now().await;

            match self
                .store_user_message(request.user, &target, &user_message, expected)
                .await?
            {
                Stored::Stale => {
                    self.recent.forget(conversation_id);
                    from_memory = false;
                    continue;
                }
                Stored::Missing => return Err(ChatError::NotFound("conversation")),
                Stored::Committed => {}
            }
            let _ = commit_tx.send(());
            tracing::info!(
                request_id = %request.request_id,
                conversation_id = %conversation_id,
                user_id = %request.user,
                model = self.model.name(),
                "turn started"
            );
            return Ok(StartedTurn {
                conversation_id,
                user_message,
                events,
            });
        }
    }

    /// The conversation's newest messages, oldest first, and, when they came from memory, the
    /// revision the conversation must still be at for them to be right.
    async fn history(
        &self,
        user: UserId,
        target: &Target,
        from_memory: bool,
    ) -> Result<(Vec<(Role, String)>, Option<Revision>), ChatError> {
        let id = match target {
            Target::New(_) => return Ok((Vec::new(), None)),
            Target::Existing { id, .. } => *id,
        };
        if from_memory && let Some(remembered) = self.recent.get(user, id) {
            return Ok((remembered.messages, Some(remembered.revision)));
        }
        let history = self
            .store
            .recent_messages(user, id, self.settings.history_messages)
            .await?
            .ok_or(ChatError::NotFound("conversation"))?;
        self.runtime
            .metrics
            .record_history_source(HistorySource::Database);
        let messages = history
            .messages
            .iter()
            .map(|m| (m.role, m.content.clone()))
            .collect();
        self.recent.remember(user, id, history);
        Ok((messages, None))
    }

    async fn store_user_message(
        &self,
        user: UserId,
        target: &Target,
        message: &Message,
        expected: Option<Revision>,
    ) -> Result<Stored, ChatError> {
        let revision = match target {
            Target::New(conversation) => {
                self.store
                    .start_conversation(user, conversation, message)
                    .await?;
                let history = RecentHistory {
                    revision: Some(1),
                    messages: vec![recent_message(message)],
                };
                self.recent.remember(user, conversation.id, history);
                return Ok(Stored::Committed);
            }
            Target::Existing { title, .. } => {
                self.store
                    .append_user_message(user, message, title, expected)
                    .await?
            }
        };
        let metrics = &self.runtime.metrics;
        Ok(match (revision, expected) {
            (Some(revision), from_memory) => {
                if from_memory.is_some() {
                    metrics.record_history_source(HistorySource::Memory);
                }
                self.recent
                    .record(user, target.id(), revision, recent_message(message));
                Stored::Committed
            }
            (None, Some(_)) => {
                metrics.record_history_source(HistorySource::StaleMemory);
                Stored::Stale
            }
            (None, None) => Stored::Missing,
        })
    }

    /// The system prompt, then the newest messages that fit the budgets, oldest first.
    fn context(&self, history: Vec<(Role, String)>) -> ModelRequest {
        let mut budget = self.settings.history_chars;
        let mut kept = Vec::new();
        for (role, content) in history
            .into_iter()
            .rev()
            .take(self.settings.history_messages)
        {
            if content.is_empty() {
                continue;
            }
            let chars = content.chars().count();
            if !kept.is_empty() && chars > budget {
                break;
            }
            budget = budget.saturating_sub(chars);
            kept.push(ContextMessage { role, content });
        }
        let system = self
            .settings
            .system_prompt
            .iter()
            .map(|prompt| ContextMessage {
                role: Role::System,
                content: prompt.clone(),
            });
        ModelRequest {
            messages: system.chain(kept.into_iter().rev()).collect(),
        }
    }
}

fn recent_message(message: &Message) -> RecentMessage {
    RecentMessage {
        id: message.id,
        role: message.role,
        content: message.content.clone(),
        create_time: message.create_time,
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

/// How a generation ended.
enum Outcome {
    Finished,
    /// The client cancelled or went away.
    Cancelled,
    /// The server's shutdown grace period ran out.
    Interrupted,
    Failed(LlmError),
}

/// The task that relays one reply and stores it.
struct Generation {
    store: Store,
    recent: Arc<RecentContexts>,
    user: UserId,
    request_id: String,
    conversation_id: ConversationId,
    /// The user message's time: the reply is stored after it.
    after: chrono::DateTime<chrono::Utc>,
    model_name: String,
    provider: &'static str,
    started: Instant,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Generation {
    async fn run(
        self,
        stream: crate::llm::ModelStream,
        mut committed: oneshot::Receiver<()>,
        sender: mpsc::Sender<Result<TurnEvent, ChatError>>,
    ) {
        let mut text = String::new();
        let mut calls: Vec<ModelToolCall> = Vec::new();
        let mut usage = None;
        let mut finish_reason = None;
        let mut first_token = None;
        let _active = self.metrics.stream_started();
        // Time spent waiting for the model is measured from here, where its request starts.
        let model_started = Instant::now();
        // The model call, as the GenAI semantic conventions describe it. Polling the stream
        // inside it makes it the parent of the upstream request's trace.
        let model_span = tracing::info_span!(
            "gen_ai",
            otel.name = %format!("chat {}", self.model_name),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.system = self.provider,
            gen_ai.provider.name = self.provider,
            gen_ai.request.model = %self.model_name,
            gen_ai.usage.input_tokens = field::Empty,
            gen_ai.usage.output_tokens = field::Empty,
            gen_ai.response.finish_reasons = field::Empty,
            error.type = field::Empty,
            otel.status_code = field::Empty,
        );

        // Until the user message is committed, what the model sends is only buffered. If the
        // commit fails, returning drops the stream, which aborts the model request.
        let mut stream = stream;
        let mut early = Vec::new();
        let mut first_received = None;
        let mut ended_early = false;
        loop {
            tokio::select! {
                biased;
                outcome = &mut committed => match outcome {
                    Ok(()) => break,
                    Err(_) => return,
                },
                event = stream.next().instrument(model_span.clone()), if !ended_early => match event {
                    None => ended_early = true,
                    Some(event) => {
                        if matches!(event, Ok(ModelEvent::Delta(_))) && first_received.is_none() {
                            first_received = Some(Instant::now());
                        }
                        early.push(event);
                    }
                },
            }
        }
        let rest: crate::llm::ModelStream = if ended_early {
            Box::pin(futures_util::stream::empty())
        } else {
            stream
        };
        let mut stream = futures_util::stream::iter(early).chain(rest);

        let outcome = loop {
            let event = tokio::select! {
                biased;
                () = sender.closed() => break Outcome::Cancelled,
                () = self.shutdown.cancelled() => break Outcome::Interrupted,
                event = stream.next().instrument(model_span.clone()) => event,
            };
            match event {
                None => break Outcome::Finished,
                Some(Err(error)) => break Outcome::Failed(error),
                Some(Ok(ModelEvent::Delta(delta))) => {
                    if first_token.is_none() {
                        let total = self.started.elapsed();
                        let received = *first_received.get_or_insert_with(Instant::now);
                        let waited = received.duration_since(model_started);
                        self.metrics
                            .record_first_token(total.as_secs_f64(), waited.as_secs_f64());
                        first_token = Some((total, waited));
                    }
                    text.push_str(&delta);
                    if sender.send(Ok(TurnEvent::Delta(delta))).await.is_err() {
                        break Outcome::Cancelled;
                    }
                }
                Some(Ok(ModelEvent::ToolCall(call))) => calls.push(call),
                Some(Ok(ModelEvent::Usage(reported))) => usage = Some(reported),
                Some(Ok(ModelEvent::Finished { reason })) => finish_reason = Some(reason),
            }
        };
        // Aborts the upstream request at once if it is still running.
        drop(stream);
        if let Some(usage) = usage {
            model_span.record("gen_ai.usage.input_tokens", i64::from(usage.input_tokens));
            model_span.record("gen_ai.usage.output_tokens", i64::from(usage.output_tokens));
        }
        if let Some(reason) = &finish_reason {
            model_span.record("gen_ai.response.finish_reasons", reason.as_str());
        }
        if let Outcome::Failed(error) = &outcome {
            model_span.record("error.type", error.kind());
            model_span.record("otel.status_code", "ERROR");
        }
        drop(model_span);

        let outcome_label = match &outcome {
            Outcome::Finished => "completed",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
            Outcome::Failed(error) => error.kind(),
        };
        if let Some(usage) = usage {
            self.metrics
                .record_tokens(usage.input_tokens, usage.output_tokens);
        }
        let result = match outcome {
            Outcome::Failed(error) => {
                self.metrics.record_model_error(error.kind());
                let error = ChatError::from(error);
                let _ = sender.send(Err(error)).await;
                Ok(())
            }
            Outcome::Cancelled | Outcome::Interrupted => {
                // Tool calls are only complete at the end of a reply; a cut-off reply has none.
                let reply = self.reply(text, Vec::new(), MessageStatus::Cancelled);
                let stored = self.store_reply(&reply).await.map(|_| ());
                if matches!(outcome, Outcome::Interrupted) && stored.is_ok() {
                    let _ = sender.send(Err(ChatError::ShuttingDown)).await;
                }
                stored
            }
            Outcome::Finished => {
                let reply = self.reply(text, calls, MessageStatus::Complete);
                self.finish(reply, finish_reason, usage, &sender).await
            }
        };
        let outcome_label = match &result {
            Ok(()) => outcome_label,
            Err(_) => "storage_failed",
        };
        if let Err(error) = result {
            tracing::error!(request_id = %self.request_id, error = %error, "storing the reply failed");
            let _ = sender.send(Err(ChatError::from(error))).await;
        }
        tracing::info!(
            request_id = %self.request_id,
            conversation_id = %self.conversation_id,
            user_id = %self.user,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            time_to_first_token_ms = first_token.map(|(total, _)| total.as_secs_f64() * 1000.0),
            model_time_to_first_token_ms = first_token.map(|(_, model)| model.as_secs_f64() * 1000.0),
            input_tokens = usage.map(|u| u.input_tokens),
            output_tokens = usage.map(|u| u.output_tokens),
            outcome = outcome_label,
            "turn ended"
        );
    }

    async fn finish(
        &self,
        reply: Message,
        finish_reason: Option<String>,
        usage: Option<TokenUsage>,
        sender: &mpsc::Sender<Result<TurnEvent, ChatError>>,
    ) -> Result<(), crate::store::StoreError> {
        for call in &reply.tool_calls {
            if sender
                .send(Ok(TurnEvent::ToolCall(call.clone())))
                .await
                .is_err()
            {
                break;
            }
        }
        if self.store_reply(&reply).await?.is_none() {
            let _ = sender.send(Err(ChatError::NotFound("conversation"))).await;
            return Ok(());
        }
        let completion = Completion {
            message: reply,
            finish_reason: finish_reason.unwrap_or_else(|| "stop".to_owned()),
            model: self.model_name.clone(),
            usage,
        };
        let _ = sender.send(Ok(TurnEvent::Completed(completion))).await;
        Ok(())
    }

    /// Stores the reply and adds it to what this replica remembers of the conversation.
    async fn store_reply(
        &self,
        reply: &Message,
    ) -> Result<Option<Revision>, crate::store::StoreError> {
        let stored = self.store.store_reply(self.user, reply).await;
        match &stored {
            Ok(Some(revision)) => {
                self.recent.record(
                    self.user,
                    self.conversation_id,
                    *revision,
                    recent_message(reply),
                );
            }
            // Whether it was written is unknown, so what is remembered may be wrong.
            Err(_) => self.recent.forget(self.conversation_id),
            Ok(None) => {}
        }
        stored
    }

    fn reply(&self, content: String, calls: Vec<ModelToolCall>, status: MessageStatus) -> Message {
        // Strictly after the user's message, even if the clock stepped back meanwhile.
        let create_time = now().max(self.after + chrono::Duration::microseconds(1));
        Message {
            id: MessageId::generate(),
            conversation_id: self.conversation_id,
            role: Role::Assistant,
            content,
            status,
            create_time,
            tool_calls: calls.into_iter().map(tool_call).collect(),
        }
    }
}

fn tool_call(call: ModelToolCall) -> ToolCall {
    // Arguments are stored as JSON; text the model got wrong is kept as a JSON string.
    let arguments =
        serde_json::from_str(&call.arguments).unwrap_or(serde_json::Value::String(call.arguments));
    ToolCall {
        id: ToolCallId::generate(),
        provider_call_id: call.id,
        name: call.name,
        arguments,
        status: ToolCallStatus::Requested,
    }
}
