//! The task that carries one reply from the model to the client and into the database.

use std::{sync::Arc, time::Duration};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{
    TurnEvent,
    relay::{self, EventSender},
    telemetry::TurnTelemetry,
    tools::{Round, ToolRounds},
};
use crate::{
    chat::{ChatError, RecentContexts, StreamPermit},
    domain::{ConversationId, UserId},
    llm::{ModelStream, TokenUsage},
    store::Store,
    telemetry::metrics::Metrics,
};

pub(super) struct ReplyTask {
    pub store: Store,
    pub recent: Arc<RecentContexts>,
    pub user: UserId,
    pub conversation_id: ConversationId,
    /// The time of the newest message stored by the turn: the next is stored after it.
    pub after: chrono::DateTime<chrono::Utc>,
    pub model_name: String,
    /// Cancelled when the shutdown grace period is over.
    pub shutdown: CancellationToken,
    /// How long the client may take nothing before it is cut off.
    pub stall_timeout: Duration,
    /// Counts the reply against its user's and the replica's stream limits while it runs.
    pub _permit: StreamPermit,
    /// Where the reply's last event goes when the client's stream has no room for it.
    pub last_word: Option<oneshot::Sender<Result<TurnEvent, ChatError>>>,
    /// Whether the client has stopped reading: nothing waits for it any more.
    pub stalled: bool,
    /// When the service runs the tools the model calls: what it needs for that.
    pub tools: Option<ToolRounds>,
    pub metrics: Arc<Metrics>,
}

impl ReplyTask {
    /// Waits for the user message's commit, relays the reply, stores what became of it, and
    /// reports the turn. Dropping `committed`'s sender instead aborts the model request.
    pub async fn run(
        mut self,
        model: ModelStream,
        committed: oneshot::Receiver<()>,
        sender: EventSender,
        mut telemetry: TurnTelemetry,
    ) {
        let Some(mut model) = relay::after_commit(model, committed, &mut telemetry).await else {
            return;
        };
        // Summed over the rounds of the reply.
        let mut usage: Option<TokenUsage> = None;
        loop {
            let mut relayed = relay::relay(
                model,
                &sender,
                &self.shutdown,
                self.stall_timeout,
                &mut telemetry,
            )
            .await;
            telemetry.model_ended(&relayed);
            usage = add(usage, relayed.usage);
            relayed.usage = usage;
            self.stalled = matches!(relayed.ending, relay::Ending::Stalled);
            let outcome = match self.tool_round(&mut relayed, &sender, &mut telemetry).await {
                Some(Round::Next(next)) => {
                    model = next;
                    continue;
                }
                Some(Round::Ended(outcome)) => outcome,
                None => self.settle(relayed, &sender).await,
            };
            telemetry.turn_ended(usage, outcome);
            return;
        }
    }
}

fn add(total: Option<TokenUsage>, more: Option<TokenUsage>) -> Option<TokenUsage> {
    match (total, more) {
        (Some(total), Some(more)) => Some(TokenUsage {
            input_tokens: total.input_tokens.saturating_add(more.input_tokens),
            output_tokens: total.output_tokens.saturating_add(more.output_tokens),
        }),
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
            })
        };
        assert_eq!(add(usage(10, 2), usage(15, 3)), usage(25, 5));
        assert_eq!(add(None, usage(1, 1)), usage(1, 1));
        assert_eq!(add(usage(1, 1), None), usage(1, 1));
        assert_eq!(add(usage(u32::MAX, 0), usage(1, 0)), usage(u32::MAX, 0));
        assert_eq!(add(None, None), None);
    }
}
