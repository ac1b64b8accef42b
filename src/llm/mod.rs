//! The language-model port and its adapters: an OpenAI-compatible HTTP/SSE client and a
//! built-in development model. Knows nothing of gRPC or storage.

mod catalog;
mod dev;
mod error;
mod openai;
mod tool_calls;

use std::{pin::Pin, sync::Arc, time::Duration};

use tokio_stream::Stream;

pub use catalog::{
    CatalogModel, CatalogModelSettings, CatalogSettings, ModelCatalog, ModelChoice, Prices,
    UnknownModel,
};
pub use dev::DevModel;
pub use error::{LlmError, TimeoutKind};
pub use openai::{MAX_EVENT_BYTES, MAX_REPLY_BYTES, OpenAiModel, OpenAiSettings, ReplyReader};
pub use tool_calls::{IndexOutOfRange, MAX_TOOL_CALLS, ToolCallAssembler};

use crate::domain::{Role, ToolSpec};

/// One message of the context sent to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextMessage {
    pub role: Role,
    pub content: String,
    /// On an assistant message: the tools it called.
    pub tool_calls: Vec<ModelToolCall>,
    /// On a tool message: the call it answers.
    pub tool_call_id: Option<String>,
}

impl ContextMessage {
    /// A message that is only text.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// The result of the call `call_id`, as the model reads it.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
        }
    }
}

/// What the model is asked to continue.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    pub messages: Vec<ContextMessage>,
    /// The tools the model may call; none, and it is offered none.
    pub tools: Arc<[ToolSpec]>,
    /// Whether the model may call them now; if not, it is shown them but must answer in text.
    pub may_call_tools: bool,
}

impl ModelRequest {
    /// The length in bytes of the request's text, for estimating its tokens when the provider
    /// reports none: each message's text and the calls it made. The tools offered are left out.
    pub fn text_bytes(&self) -> usize {
        self.messages
            .iter()
            .map(|m| {
                m.content.len()
                    + m.tool_calls
                        .iter()
                        .map(ModelToolCall::text_bytes)
                        .sum::<usize>()
            })
            .sum()
    }
}

/// A whole tool call, assembled from the fragments the model streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelToolCall {
    pub id: String,
    pub name: String,
    /// JSON text as the model wrote it; not guaranteed to be valid JSON.
    pub arguments: String,
}

impl ModelToolCall {
    /// The length in bytes of the call's name and arguments.
    pub fn text_bytes(&self) -> usize {
        self.name.len() + self.arguments.len()
    }
}

pub use crate::domain::{CallUsage, TokenUsage};

/// What a model stream yields, in this order: text deltas, then tool calls, usage and the finish.
/// A stream with fallbacks may begin with one or more `FellBack`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelEvent {
    /// Model `from` failed before its first event (an error of kind `error`); `to` is asked
    /// instead, and what follows is its.
    FellBack {
        from: ModelChoice,
        to: ModelChoice,
        error: &'static str,
    },
    Delta(String),
    ToolCall(ModelToolCall),
    Usage(TokenUsage),
    Finished {
        reason: String,
    },
}

/// A reply being generated. Dropping it aborts the generation, including the HTTP request.
pub type ModelStream = Pin<Box<dyn Stream<Item = Result<ModelEvent, LlmError>> + Send>>;

/// A language model that streams its replies.
pub trait ChatModel: Send + Sync + 'static {
    /// The model's name as reported to clients.
    fn name(&self) -> &str;

    /// Who serves the model, for the GenAI semantic conventions (`gen_ai.provider.name`).
    fn provider(&self) -> &'static str;

    /// Starts generating a reply. Nothing happens until the stream is polled.
    fn stream(&self, request: ModelRequest) -> ModelStream;
}

/// Which model answers.
#[derive(Debug, Clone)]
pub enum ModelSettings {
    /// The built-in development model, pausing this long before each word.
    Development {
        delay: Duration,
    },
    OpenAi(OpenAiSettings),
}

/// The model the settings describe, ready to stream.
pub fn connect(settings: &ModelSettings) -> Result<Arc<dyn ChatModel>, LlmError> {
    match settings {
        ModelSettings::Development { delay } => {
            tracing::warn!(
                "DEVELOPMENT MODEL: replies come from the built-in `dev` model, not a real one. \
                 Set CHAT_LLM_BASE_URL and CHAT_LLM_MODEL to use an OpenAI-compatible API"
            );
            Ok(Arc::new(DevModel::new(*delay)))
        }
        ModelSettings::OpenAi(settings) => {
            tracing::info!(model = %settings.model, "replies come from an OpenAI-compatible API");
            Ok(Arc::new(OpenAiModel::new(settings.clone())?))
        }
    }
}
