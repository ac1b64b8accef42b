//! A reply from start to end: it waits for the commit of the message it answers, relays each
//! model round, runs the tool rounds between them, and stores and reports how it ended.

use tokio::sync::oneshot;

use super::{
    relay,
    state::{Failure, TurnEnd},
    task::{ReplyTask, add},
    telemetry::TurnTelemetry,
    tool_round::Round,
};
use crate::llm::{ModelStream, TokenUsage};

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
                self.end.told(TurnEnd::Failed(Failure::Unavailable));
                Box::pin(self.end_turn()).await;
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
            relayed.report(&mut telemetry);
            usage = add(usage, relayed.usage);
            relayed.usage = usage;
            self.outlet.stalled = matches!(relayed.ending, relay::Ending::Stalled);
            // What comes after a round is boxed: the task is as large as its largest state,
            // and relaying, where a reply spends its life, needs half of what storing its
            // end does.
            let outcome = match Box::pin(self.tool_round(&mut relayed, &mut telemetry)).await {
                Some(Round::Next(next)) => {
                    model = next;
                    continue;
                }
                Some(Round::Ended(outcome)) => outcome,
                None => Box::pin(self.settle(relayed)).await,
            };
            // The client has heard the end: its stream no longer counts while the end is stored.
            telemetry.turn_ended(usage, outcome);
            self.permit = None;
            Box::pin(self.end_turn()).await;
            return;
        }
    }
}
