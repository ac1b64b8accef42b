//! The task that carries one reply from the model to the client and into the database: what
//! it holds, and the small things every step of it does.

use std::{collections::HashSet, sync::Arc, time::Duration};

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::{
    events::{TurnEvent, end_told},
    outlet::Outlet,
    relay::Stops,
    service::TokenMeters,
    state::{EndState, Failure, RoundBudget, TurnEnd},
};
use crate::{
    chat::{ChatError, RecentContexts, StreamPermit, Titler},
    domain::{
        CallUsage, ConversationId, Message, MessageId, MessageStatus, Role, ToolCall, UserId, now,
    },
    events::{CancelWatch, TurnKey},
    llm::{ChatModel, ModelCatalog, ModelChoice, ModelRequest, TokenUsage},
    store::Store,
    telemetry::metrics::Metrics,
    tools::{Catalog, Toolbox},
};

pub(super) struct ReplyTask {
    pub store: Store,
    pub recent: Arc<RecentContexts>,
    pub user: UserId,
    pub conversation_id: ConversationId,
    /// The time of the newest message stored by the turn: the next is stored after it.
    pub after: chrono::DateTime<chrono::Utc>,
    pub models: Arc<ModelCatalog>,
    /// The model answering: the one chosen, or the fallback that answered for it.
    pub model: ModelChoice,
    /// Cancelled when the shutdown grace period is over.
    pub shutdown: CancellationToken,
    /// How long the client may take nothing before it is cut off.
    pub stall_timeout: Duration,
    /// Counts the reply against its user's and the replica's stream limits while it runs.
    pub permit: Option<StreamPermit>,
    /// Where the reply's events go.
    pub outlet: Outlet,
    /// The turn the reply is for, when it may be followed, resumed and cancelled.
    pub turn: Option<TurnKey>,
    /// Cancelled when anyone cancels the turn.
    pub cancel: Option<CancelWatch>,
    /// When the service runs the tools the model calls: what it needs for that.
    pub tools: Option<Box<ToolRounds>>,
    pub metrics: Arc<Metrics>,
    /// How many tool results the reply has sent: the next one's place among them.
    pub answered: i32,
    /// How the turn ended, once its last event was told, and whether that is stored yet.
    pub end: EndState,
    /// For a conversation's first turn, when the model names conversations: the first message,
    /// for the title the model writes once the reply is complete.
    pub first_exchange: Option<Box<FirstExchange>>,
    /// The length in bytes of the text of the model call under way: what its input is
    /// estimated from, should its provider report no usage.
    pub prompt_bytes: usize,
    pub token_counters: Arc<TokenMeters>,
}

/// The first message of a conversation, and who names the conversation after it.
pub(super) struct FirstExchange {
    pub titler: Arc<Titler>,
    pub said: String,
}

/// What a reply needs to run the tools its model calls.
pub(super) struct ToolRounds {
    pub toolbox: Arc<Toolbox>,
    /// The tools offered when the turn began; the rounds of one reply keep them.
    pub catalog: Arc<Catalog>,
    /// The names of the tools the client runs: a call of one ends the reply, awaiting its result.
    pub client_tools: HashSet<String>,
    /// How long a reply waits for the client's results.
    pub results_wait: Duration,
    /// The caller's bearer token, for servers that act on the caller's behalf.
    pub caller: Option<SecretString>,
    /// The model answering: later rounds ask it alone, since a turn never switches models
    /// once it has streamed.
    pub model: Arc<dyn ChatModel>,
    /// The context so far: the next round's request.
    pub request: ModelRequest,
    /// Rounds of tool calls run so far.
    pub rounds: u32,
    pub max_rounds: u32,
}

impl ToolRounds {
    pub fn budget(&self) -> RoundBudget {
        RoundBudget {
            run: self.rounds,
            max: self.max_rounds,
        }
    }

    /// When the wait for the client's results, beginning now, is over.
    pub fn results_deadline(&self) -> chrono::DateTime<chrono::Utc> {
        let now = now();
        chrono::Duration::from_std(self.results_wait)
            .ok()
            .and_then(|wait| now.checked_add_signed(wait))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
    }
}

impl ReplyTask {
    pub(super) fn stops(&self) -> Stops {
        Stops {
            cancel: self
                .cancel
                .as_ref()
                .map_or_else(CancellationToken::new, |watch| watch.token().clone()),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Keeps how the turn ended, if the event ends it, then logs the event and tells the client
    /// (see [`Outlet::tell`](super::outlet::Outlet::tell)).
    pub(super) async fn tell(&mut self, event: Result<TurnEvent, ChatError>) {
        if let Some(end) = end_told(&event) {
            self.end.told(end);
        }
        self.outlet
            .tell(event, self.stall_timeout, &self.shutdown)
            .await;
    }

    /// The catalog's name of the model answering.
    pub(super) fn model_name(&self) -> &str {
        &self.models.get(self.model).name
    }

    /// Model `from` failed (a failure of kind `error`) before answering and `to` is asked
    /// instead: the rest of the turn is its.
    pub(super) fn fell_back(&mut self, from: ModelChoice, to: ModelChoice, error: &'static str) {
        let from_name = &self.models.get(from).name;
        let to_model = self.models.get(to);
        tracing::warn!(from = %from_name, to = %to_model.name, error, "a model failed before answering; its fallback is asked");
        self.metrics.record_model_error(error);
        self.metrics
            .record_model_fallback(from_name, &to_model.name);
        self.model = to;
        if let Some(tools) = &mut self.tools {
            tools.model = to_model.model.clone();
        }
    }

    /// Leaves `error` for the end of the client's stream, without waiting: the client is not
    /// reading, and learns why when it does.
    pub(super) fn leave_last(&mut self, error: ChatError) {
        self.end.told(TurnEnd::Failed(Failure::of(&error)));
        self.outlet.leave_last(error);
    }

    /// The assistant's message that the model call written `content` and `calls`, which used
    /// `usage`.
    pub(super) fn reply(
        &self,
        content: String,
        calls: Vec<ToolCall>,
        status: MessageStatus,
        tokens: Option<TokenUsage>,
    ) -> Message {
        // Strictly after the user's message, even if the clock stepped back meanwhile.
        let create_time = now().max(self.after + chrono::Duration::microseconds(1));
        Message {
            id: MessageId::generate(),
            conversation_id: self.conversation_id,
            role: Role::Assistant,
            content,
            status,
            create_time,
            tool_calls: calls,
            model: Some(self.model_name().to_owned()),
            usage: tokens.map(|tokens| self.call_usage(tokens)),
        }
    }

    /// A call of the answering model that used `tokens`, at the model's prices.
    pub(super) fn call_usage(&self, tokens: TokenUsage) -> CallUsage {
        self.models.get(self.model).call_usage(tokens)
    }
}

/// Usage summed over the calls of a reply that have it.
pub(super) fn add(total: Option<TokenUsage>, more: Option<TokenUsage>) -> Option<TokenUsage> {
    match (total, more) {
        (Some(total), Some(more)) => Some(total.plus(more)),
        (total, more) => total.or(more),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_summed_over_the_rounds_that_report_it() {
        let usage = |input, output| {
            Some(TokenUsage {
                input_tokens: input,
                output_tokens: output,
                ..TokenUsage::default()
            })
        };
        assert_eq!(add(usage(10, 2), usage(15, 3)), usage(25, 5));
        assert_eq!(add(None, usage(1, 1)), usage(1, 1));
        assert_eq!(add(usage(1, 1), None), usage(1, 1));
        assert_eq!(add(usage(u32::MAX, 0), usage(1, 0)), usage(u32::MAX, 0));
        assert_eq!(add(None, None), None);
    }
}
