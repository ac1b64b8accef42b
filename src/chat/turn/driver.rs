//! A reply from start to end, as one state machine: [`Phase`] names where a reply stands and
//! holds only what that needs; [`ReplyTask::run`] takes one transition a step until the turn
//! has ended. Each transition is one function, and each of its writes one store call; the
//! decisions between them are pure (`state::after_round`).

use tokio::sync::oneshot;

use super::{
    relay::{self, Ending, Relayed},
    state::{AfterRound, Failure, Outcome, TurnEnd, after_round},
    task::{ReplyTask, ToolRounds, add},
    telemetry::TurnTelemetry,
    tool_round::Round,
};
use crate::{
    chat::usage::count_tokens,
    llm::{ModelStream, TokenUsage},
};

/// Where a reply stands, from the moment its user's message has its place to its end:
///
/// ```text
/// Placed ──committed──▶ Generating ──round over──▶ ToolRound ──results──▶ Generating
///   │                        │                         │
///   │ not committed          ▼                         │ awaits the client's tools,
///   ▼                     Settling ──stored, told──▶ Ended ◀──┘ cut short, or not stored
/// Unstarted
/// ```
///
/// Its names are README's ("A reply's phases"), and a test keeps the two alike.
pub(super) enum Phase {
    /// The model has been asked; what it sends is held back until the user's message is
    /// committed (`Store::append_user_message`). Emits nothing.
    Placed {
        model: ModelStream,
        committed: oneshot::Receiver<()>,
    },
    /// A round of the model streams to the client. Emits `delta`s; stores nothing.
    Generating(ModelStream),
    /// The round finished by calling tools that this reply runs: the calls are stored with the
    /// round's text (`Store::store_reply`), run, and each result stored as it comes
    /// (`Store::store_tool_result`). Emits `tool_call`s and `tool_result`s; then `completed`
    /// when the reply waits for the client's tools, or the error that cut the round short.
    ToolRound(Box<Relayed>, Box<ToolRounds>),
    /// The round left the reply as it is: stored complete or cut off, with the turn's end
    /// (`Store::store_reply`), or its failure told. Emits `tool_call`s and `completed`, or the
    /// error that ended the turn.
    Settling(Box<Relayed>),
    /// The user's message was not committed, or its request went away before: nothing was
    /// relayed. A turn committed after all ends failed (`Store::end_turn`), so that a retry
    /// generates it. Emits nothing.
    Unstarted,
    /// Every event was told. The turn's end is stored unless the reply's write stored it
    /// (`Store::end_turn`), and the turn's log is closed.
    Ended(Outcome),
}

/// What a reply keeps from phase to phase.
struct Progress {
    telemetry: TurnTelemetry,
    /// Summed over the rounds of the reply.
    usage: Option<TokenUsage>,
}

impl ReplyTask {
    /// Runs the reply from its placed message to its end. Dropping `committed`'s sender instead
    /// aborts the model request.
    pub async fn run(
        mut self,
        model: ModelStream,
        committed: oneshot::Receiver<()>,
        telemetry: TurnTelemetry,
    ) {
        let mut progress = Progress {
            telemetry,
            usage: None,
        };
        let mut phase = Phase::Placed { model, committed };
        // What comes after a round is boxed: the task is as large as its largest state, and
        // relaying, where a reply spends its life, needs half of what storing its end does.
        loop {
            phase = match phase {
                Phase::Placed { model, committed } => {
                    match relay::after_commit(model, committed, &mut progress.telemetry).await {
                        Some(model) => Phase::Generating(model),
                        None => Phase::Unstarted,
                    }
                }
                Phase::Generating(model) => self.generate(model, &mut progress).await,
                Phase::ToolRound(relayed, mut tools) => {
                    let round = self.tool_round(*relayed, &mut tools, &mut progress.telemetry);
                    let next = match Box::pin(round).await {
                        Round::Next(model) => Phase::Generating(model),
                        Round::Ended(outcome) => Phase::Ended(outcome),
                    };
                    self.tools = Some(tools);
                    next
                }
                Phase::Settling(relayed) => Phase::Ended(Box::pin(self.settle(*relayed)).await),
                Phase::Unstarted => return Box::pin(self.unstarted()).await,
                Phase::Ended(outcome) => return Box::pin(self.ended(outcome, progress)).await,
            };
        }
    }

    /// Relays one round of the model, and decides what follows it.
    async fn generate(&mut self, model: ModelStream, progress: &mut Progress) -> Phase {
        let stops = self.stops();
        let telemetry = &mut progress.telemetry;
        let mut relayed = relay::relay(
            model,
            &mut self.outlet,
            &stops,
            self.stall_timeout,
            telemetry,
        )
        .await;
        for (from, to, error) in std::mem::take(&mut relayed.fallbacks) {
            self.fell_back(from, to, error);
        }
        relayed.estimate_unreported(self.prompt_bytes);
        relayed.report(telemetry);
        if let Some(usage) = &relayed.usage {
            count_tokens(self.token_counters.of(self.model), usage);
        }
        progress.usage = add(progress.usage, relayed.usage);
        relayed.turn_usage = progress.usage;
        self.outlet.stalled = matches!(relayed.ending, Ending::Stalled);
        let finished = matches!(relayed.ending, Ending::Finished);
        let budget = self.tools.as_deref().map(ToolRounds::budget);
        let relayed = Box::new(relayed);
        match (
            after_round(finished, relayed.calls.len(), budget),
            self.tools.take(),
        ) {
            (AfterRound::ToolRound, Some(tools)) => Phase::ToolRound(relayed, tools),
            (_, tools) => {
                self.tools = tools;
                Phase::Settling(relayed)
            }
        }
    }

    /// Ends a turn whose reply never started, as failed, if its message was committed after
    /// all (its request went away in between).
    async fn unstarted(mut self) {
        if self.turn.is_some() {
            self.end.told(TurnEnd::Failed(Failure::Unavailable));
            self.end_turn().await;
        }
    }

    /// Reports the turn, then stores its end. The client has heard the end: its stream no
    /// longer counts while the end is stored.
    async fn ended(mut self, outcome: Outcome, progress: Progress) {
        progress.telemetry.turn_ended(progress.usage, outcome);
        self.permit = None;
        self.end_turn().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phase's name, as README's table gives it. A new phase does not compile until it has
    /// one.
    fn name(phase: &Phase) -> &'static str {
        match phase {
            Phase::Placed { .. } => "placed",
            Phase::Generating(_) => "generating",
            Phase::ToolRound(..) => "tool_round",
            Phase::Settling(_) => "settling",
            Phase::Unstarted => "unstarted",
            Phase::Ended(_) => "ended",
        }
    }

    /// Every phase, in the order a reply may go through them.
    const NAMES: [&str; 6] = [
        "placed",
        "generating",
        "tool_round",
        "settling",
        "unstarted",
        "ended",
    ];

    /// README's "A reply's phases" has a row for every phase, and no other.
    #[test]
    fn the_readme_draws_the_phases_as_the_type_has_them() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### A reply's phases")
            .nth(1)
            .and_then(|rest| rest.split("\n#").next())
            .unwrap_or_default();
        for name in NAMES {
            let row = format!("| `{name}` |");
            assert!(section.contains(&row), "README lacks the row {row}");
        }
        let rows = section.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(
            rows,
            NAMES.len(),
            "README's table has a phase the type lacks"
        );
        // The phases that need no toolbox, model or reply to make are named from the list.
        let (_, committed) = oneshot::channel();
        let made = [
            Phase::Placed {
                model: Box::pin(futures_util::stream::empty()),
                committed,
            },
            Phase::Generating(Box::pin(futures_util::stream::empty())),
            Phase::Unstarted,
            Phase::Ended(Outcome::Completed),
        ];
        for phase in &made {
            assert!(
                NAMES.contains(&name(phase)),
                "{} is not listed",
                name(phase)
            );
        }
    }
}
