//! The turn service and what it is built from: its settings, its runtime, and the request
//! that starts a turn. The use cases are its methods, each in the file named for it.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::Stream;
use secrecy::SecretString;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::events::Sequenced;
use crate::{
    chat::{Admission, ChatError, Identities, Titler, recent::RecentContexts},
    domain::{ConversationId, Placement, RequestKey, UserId},
    events::TurnEvents,
    llm::{ModelCatalog, ModelChoice},
    store::Store,
    telemetry::metrics::{Metrics, TokenCounters},
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
    /// Whether the model names a conversation after its first reply.
    pub titles: bool,
    /// The catalog's model that writes titles; `None`: the default.
    pub title_model: Option<String>,
}

/// A tool the client runs, as the client defined it.
#[derive(Debug, Clone)]
pub struct ClientTool {
    pub name: String,
    pub description: String,
    /// A JSON Schema object as text; empty for no arguments.
    pub parameters_json: String,
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
    /// Where the user's message goes in the conversation's tree.
    pub placement: Placement,
    /// The catalog's model to ask, as the client named it; `None`: the default.
    pub model: Option<String>,
}

/// A turn's events as its client reads them, `accepted` first. Dropping the stream of a turn
/// that ends with its client cancels it: the model call is aborted and what was generated so
/// far is stored as a cancelled message.
pub type TurnStream = Pin<Box<dyn Stream<Item = Result<Sequenced, ChatError>> + Send>>;

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

/// Each catalog model's token counters, by its place in the catalog: counting a call's tokens
/// allocates nothing.
pub(crate) struct TokenMeters(Box<[TokenCounters]>);

impl TokenMeters {
    pub fn new(models: &ModelCatalog, metrics: &Metrics) -> Self {
        Self(
            models
                .iter()
                .map(|(model, _)| metrics.token_counters(&model.name))
                .collect(),
        )
    }

    pub fn of(&self, model: ModelChoice) -> &TokenCounters {
        &self.0[model.index()]
    }
}

#[derive(Clone)]
pub struct Turns {
    pub(super) store: Store,
    pub(super) recent: Arc<RecentContexts>,
    pub(super) models: Arc<ModelCatalog>,
    pub(super) settings: Arc<TurnSettings>,
    pub(super) runtime: TurnRuntime,
    /// Names new conversations, when titles are on.
    pub(super) titler: Option<Arc<Titler>>,
    pub(super) token_counters: Arc<TokenMeters>,
}

impl Turns {
    pub fn new(
        store: Store,
        recent: Arc<RecentContexts>,
        models: Arc<ModelCatalog>,
        settings: TurnSettings,
        runtime: TurnRuntime,
    ) -> Self {
        let titler = settings.titles.then(|| {
            // Checked against the catalog with the settings.
            let writer = models
                .choose(settings.title_model.as_deref())
                .unwrap_or(models.default_choice());
            Arc::new(Titler::new(
                models.clone(),
                writer,
                store.clone(),
                runtime.metrics.clone(),
                runtime.shutdown.clone(),
            ))
        });
        let token_counters = Arc::new(TokenMeters::new(&models, &runtime.metrics));
        Self {
            store,
            recent,
            models,
            token_counters,
            settings: Arc::new(settings),
            runtime,
            titler,
        }
    }

    /// The models clients choose among.
    pub fn models(&self) -> &ModelCatalog {
        &self.models
    }

    /// The model a request named, or the default for none.
    pub(super) fn choose_model(&self, name: Option<&str>) -> Result<ModelChoice, ChatError> {
        self.models.choose(name).map_err(|unknown| {
            let shown: String = unknown.0.chars().take(64).collect();
            ChatError::invalid(
                "model",
                format!("no model is named {shown:?}: ListModels gives the names"),
            )
        })
    }
}
