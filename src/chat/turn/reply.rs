//! The task that carries one reply from the model to the client and into the database.

use std::{sync::Arc, time::Duration};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{
    journal::{Failure, Outlet, TurnEnd},
    relay::{self, Stops},
    telemetry::TurnTelemetry,
    tools::{Round, ToolRounds},
};
use crate::{
    chat::{RecentContexts, StreamPermit},
    domain::{ConversationId, UserId},
    events::{CancelWatch, TurnKey},
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
    pub permit: Option<StreamPermit>,
    /// Where the reply's events go.
    pub outlet: Outlet,
    /// The turn the reply is for, when it may be followed, resumed and cancelled.
    pub turn: Option<TurnKey>,
    /// Cancelled when anyone cancels the turn.
    pub cancel: Option<CancelWatch>,
    /// When the service runs the tools the model calls: what it needs for that.
    pub tools: Option<ToolRounds>,
    pub metrics: Arc<Metrics>,
    /// How many tool results the reply has sent: the next one's place among them.
    pub answered: i32,
    /// Whether the turn's end was stored with its last reply.
    pub ended_in_store: bool,
}

impl ReplyTask {
    /// Waits for the user message's commit, relays the reply, stores what became of it, and
    /// reports the turn. Dropping `committed`'s sender instead aborts the model request.
    pub async fn run(
        mut self,
        model: ModelStream,
        committed: oneshot::Receiver<()>,
        mut telemetry: TurnTelemetry,
    ) {
        let Some(mut model) = relay::after_commit(model, committed, &mut telemetry).await else {
            // Nothing was relayed. Had the user message been committed after all (its request
            // went away in between), its turn ends as failed, so that a retry generates it.
            if self.turn.is_some() {
                self.outlet.end = Some(TurnEnd::Failed(Failure::Unavailable));
                self.end_turn().await;
            }
            return;
        };
        // Summed over the rounds of the reply.
        let mut usage: Option<TokenUsage> = None;
        loop {
            let stops = self.stops();
            let mut relayed = relay::relay(
                model,
                &mut self.outlet,
                &stops,
                self.stall_timeout,
                &mut telemetry,
            )
            .await;
            telemetry.model_ended(&relayed);
            usage = add(usage, relayed.usage);
            relayed.usage = usage;
            self.outlet.stalled = matches!(relayed.ending, relay::Ending::Stalled);
            let outcome = match self.tool_round(&mut relayed, &mut telemetry).await {
                Some(Round::Next(next)) => {
                    model = next;
                    continue;
                }
                Some(Round::Ended(outcome)) => outcome,
                None => self.settle(relayed).await,
            };
            // The client has heard the end: its stream no longer counts while the end is stored.
            telemetry.turn_ended(usage, outcome);
            self.permit = None;
            self.end_turn().await;
            return;
        }
    }

    pub(super) fn stops(&self) -> Stops {
        Stops {
            cancel: self
                .cancel
                .as_ref()
                .map_or_else(CancellationToken::new, |watch| watch.token().clone()),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Stores how the turn ended, so that whoever follows it from now on replays it from the
    /// database; then closes its log. Tried a few times: a turn left generating would be taken
    /// for lost only once this replica stops.
    async fn end_turn(&mut self) {
        let Some(key) = self.turn.filter(|_| !self.ended_in_store) else {
            self.outlet.close_log();
            return;
        };
        let end = self
            .outlet
            .end
            .clone()
            .unwrap_or(TurnEnd::Failed(Failure::Internal));
        let outcome = serde_json::to_value(&end).unwrap_or_default();
        let mut delays = super::outcome::reply_store_backoff();
        loop {
            match self
                .store
                .end_turn(key.turn, key.attempt, end.state(), &outcome)
                .await
            {
                Ok(()) => break,
                Err(error) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(error = %error, "storing the turn's end failed; trying again");
                        tokio::time::sleep(delay).await;
                    }
                    None => {
                        tracing::error!(error = %error, "storing the turn's end failed");
                        break;
                    }
                },
            }
        }
        self.outlet.close_log();
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
