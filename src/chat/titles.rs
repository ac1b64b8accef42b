//! Titles written by the model. Once a conversation's first reply is stored and told, the model
//! is asked, in the background, for a short title, which replaces the one derived from the first
//! message unless the client chose one. Nothing waits for it, and its failure changes nothing.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::usage::count_tokens;
use crate::{
    domain::{CallUsage, ConversationId, Role, Title, TokenUsage, UserId, now},
    llm::{ContextMessage, LlmError, ModelCatalog, ModelChoice, ModelEvent, ModelRequest},
    store::{Store, StoreError},
    telemetry::metrics::Metrics,
};

/// Titles asked for at once on this replica; more are skipped rather than queued, since a
/// title is a nicety and a burst of new conversations must not become a backlog of model calls.
const MOST_AT_ONCE: usize = 8;
/// How long the model may take to name a conversation.
const TIME_ALLOWED: Duration = Duration::from_secs(30);
/// How much of the first message and of the reply the model is shown.
const EXCERPT_CHARS: usize = 2_000;
/// Beyond this much text the answer is not a title, and is not read further.
const ANSWER_BYTES: usize = 1_024;

const INSTRUCTION: &str = "Write a title of at most eight words for the conversation below, in \
    its language. Answer with the title alone: no quotes, no label, no full stop.";

#[derive(Debug, thiserror::Error)]
enum TitleError {
    #[error("the model failed: {0}")]
    Model(#[from] LlmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the model took longer than {TIME_ALLOWED:?}")]
    TimedOut,
}

/// What the model answered, which model did, and what that used.
struct Answer {
    text: String,
    model: ModelChoice,
    usage: CallUsage,
}

/// Asks the model to name new conversations.
pub struct Titler {
    models: Arc<ModelCatalog>,
    /// The model that writes titles.
    model: ModelChoice,
    store: Store,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Cancelled when the replica shuts down: a title being written is dropped.
    shutdown: CancellationToken,
}

impl Titler {
    pub fn new(
        models: Arc<ModelCatalog>,
        model: ModelChoice,
        store: Store,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            models,
            model,
            store,
            permits: Arc::new(Semaphore::new(MOST_AT_ONCE)),
            metrics,
            shutdown,
        }
    }

    /// Names the user's conversation after its first exchange, `said` and `replied`, in the
    /// background.
    pub fn name_after(
        self: &Arc<Self>,
        user: UserId,
        conversation: ConversationId,
        said: String,
        replied: String,
    ) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::debug!(conversation = %conversation, "too many titles being written; this conversation keeps its own");
            self.metrics.record_title("skipped");
            return;
        };
        let titler = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let named = titler.name(user, conversation, &said, &replied);
            let outcome = tokio::select! {
                () = titler.shutdown.cancelled() => return,
                outcome = tokio::time::timeout(TIME_ALLOWED, named) => {
                    outcome.unwrap_or(Err(TitleError::TimedOut))
                }
            };
            let label = match outcome {
                Ok(true) => "named",
                Ok(false) => "kept",
                Err(error) => {
                    tracing::warn!(conversation = %conversation, error = %error, "naming a conversation failed; it keeps its title");
                    "failed"
                }
            };
            titler.metrics.record_title(label);
        });
    }

    /// Whether the conversation got the model's title: not when the client chose one, the
    /// conversation is gone, or the model gave no usable title.
    async fn name(
        &self,
        user: UserId,
        conversation: ConversationId,
        said: &str,
        replied: &str,
    ) -> Result<bool, TitleError> {
        // A conversation the client named is not worth a model call.
        if !self.store.has_derived_title(user, conversation).await? {
            return Ok(false);
        }
        let answer = self.ask(said, replied).await?;
        // The call counts whatever becomes of its answer.
        let model = &self.models.get(answer.model).name;
        count_tokens(&self.metrics.token_counters(model), &answer.usage.tokens);
        self.store
            .add_usage(user, now(), model, answer.usage)
            .await?;
        let Some(title) = Title::from_model(&answer.text) else {
            return Ok(false);
        };
        Ok(self
            .store
            .name_conversation(user, conversation, &title)
            .await?)
    }

    async fn ask(&self, said: &str, replied: &str) -> Result<Answer, LlmError> {
        let excerpt = |text: &str| text.chars().take(EXCERPT_CHARS).collect::<String>();
        let exchange = format!("User: {}\n\nAssistant: {}", excerpt(said), excerpt(replied));
        let request = ModelRequest {
            messages: vec![
                ContextMessage::text(Role::System, INSTRUCTION),
                ContextMessage::text(Role::User, exchange),
            ],
            tools: Arc::from([]),
            may_call_tools: false,
        };
        let prompt_bytes = request.text_bytes();
        let mut stream = self.models.stream(self.model, request);
        let (mut text, mut model, mut usage) = (String::new(), self.model, None);
        while let Some(event) = stream.next().await {
            match event? {
                ModelEvent::Delta(delta) => text.push_str(&delta),
                ModelEvent::Usage(reported) => usage = Some(reported),
                ModelEvent::Finished { .. } => break,
                ModelEvent::FellBack { to, .. } => model = to,
                ModelEvent::ToolCall(_) => {}
            }
            if text.len() > ANSWER_BYTES {
                break;
            }
        }
        let tokens = usage.unwrap_or_else(|| TokenUsage::estimate(prompt_bytes, text.len()));
        let usage = self.models.get(model).call_usage(tokens);
        Ok(Answer { text, model, usage })
    }
}
