//! Titles written by the model. Once a conversation's first reply is stored and told, the model
//! is asked, in the background, for a short title, which replaces the one derived from the first
//! message unless the client chose one. Nothing waits for it, and its failure changes nothing.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{ConversationId, Role, Title, UserId},
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
        let Some(title) = Title::from_model(&answer) else {
            return Ok(false);
        };
        Ok(self
            .store
            .name_conversation(user, conversation, &title)
            .await?)
    }

    async fn ask(&self, said: &str, replied: &str) -> Result<String, LlmError> {
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
        let mut stream = self.models.stream(self.model, request);
        let mut answer = String::new();
        while let Some(event) = stream.next().await {
            match event? {
                ModelEvent::Delta(text) => answer.push_str(&text),
                ModelEvent::Finished { .. } => break,
                ModelEvent::ToolCall(_) | ModelEvent::Usage(_) | ModelEvent::FellBack { .. } => {}
            }
            if answer.len() > ANSWER_BYTES {
                break;
            }
        }
        Ok(answer)
    }
}
