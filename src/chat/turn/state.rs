//! How a turn stands and how it ended, as plain values: no I/O. The stored state is parsed here
//! once; how a turn ended decides what its record says, what a late follower is told, and the
//! label its telemetry carries.

use crate::{
    chat::ChatError,
    domain::TurnState,
    llm::TokenUsage,
    store::{TurnEnding, TurnRecord},
};

/// How a turn ended, as its log and the database keep it: enough to tell a client who asks
/// later exactly what the client who was there was told.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnEnd {
    Completed {
        finish_reason: String,
        model: String,
        usage: Option<TokenUsage>,
    },
    Failed(Failure),
}

impl TurnEnd {
    pub fn state(&self) -> TurnState {
        match self {
            Self::Completed { .. } => TurnState::Completed,
            Self::Failed(failure) => failure.state(),
        }
    }
}

/// How a turn ended, as its record keeps it.
pub struct RecordedEnd {
    pub state: TurnState,
    pub outcome: serde_json::Value,
}

impl From<&TurnEnd> for RecordedEnd {
    fn from(end: &TurnEnd) -> Self {
        Self {
            state: end.state(),
            // Serialising a `TurnEnd` cannot fail: no maps, no foreign types.
            outcome: serde_json::to_value(end).unwrap_or_default(),
        }
    }
}

impl RecordedEnd {
    /// The end as a reply's write stores it.
    pub fn ending(&self) -> TurnEnding<'_> {
        TurnEnding {
            state: self.state,
            outcome: &self.outcome,
        }
    }
}

/// Why a turn ended without completing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// The model failed: how, by category.
    Model {
        summary: String,
        timeout: bool,
    },
    ShuttingDown,
    NotRead,
    ReplyNotSaved,
    ConversationGone,
    Cancelled,
    /// The replica generating it stopped.
    Lost,
    Unavailable,
    Internal,
}

impl Failure {
    pub fn of(error: &ChatError) -> Self {
        match error {
            ChatError::Model(error) => Self::Model {
                summary: error.summary(),
                timeout: error.is_timeout(),
            },
            ChatError::ModelFailed { summary, timeout } => Self::Model {
                summary: summary.clone(),
                timeout: *timeout,
            },
            ChatError::ShuttingDown => Self::ShuttingDown,
            ChatError::NotRead => Self::NotRead,
            ChatError::ReplyNotSaved(_) => Self::ReplyNotSaved,
            ChatError::NotFound(_) => Self::ConversationGone,
            ChatError::Cancelled => Self::Cancelled,
            ChatError::TurnLost => Self::Lost,
            ChatError::Unavailable(_) | ChatError::TurnUnavailable(_) => Self::Unavailable,
            _ => Self::Internal,
        }
    }

    pub fn into_error(self) -> ChatError {
        match self {
            Self::Model { summary, timeout } => ChatError::ModelFailed { summary, timeout },
            Self::ShuttingDown => ChatError::ShuttingDown,
            Self::NotRead => ChatError::NotRead,
            Self::ReplyNotSaved => ChatError::ReplyNotSaved("told before".to_owned()),
            Self::ConversationGone => ChatError::NotFound("conversation"),
            Self::Cancelled => ChatError::Cancelled,
            Self::Lost => ChatError::TurnLost,
            Self::Unavailable => ChatError::Unavailable("told before".to_owned()),
            Self::Internal => {
                ChatError::Internal("a turn that ended with an internal error".into())
            }
        }
    }

    /// What the turn's record says of a turn that ended so.
    pub fn state(&self) -> TurnState {
        match self {
            Self::Cancelled | Self::NotRead => TurnState::Cancelled,
            Self::ShuttingDown | Self::Lost => TurnState::Interrupted,
            _ => TurnState::Failed,
        }
    }
}

/// Where a reply task stands with its turn's end.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum EndState {
    /// No last event told yet.
    #[default]
    Open,
    /// Told, and to be stored by a statement of its own once the reply is over.
    Told(TurnEnd),
    /// Stored with the reply's own write: nothing is left to store.
    Stored,
}

impl EndState {
    /// The turn's last event was told, ending it so; an end stored already stays stored.
    pub fn told(&mut self, end: TurnEnd) {
        if *self != Self::Stored {
            *self = Self::Told(end);
        }
    }

    /// What is left to store once the reply is over: nothing once stored; a turn that was never
    /// told an end failed for a reason of ours.
    pub fn to_store(&self) -> Option<TurnEnd> {
        match self {
            Self::Open => Some(TurnEnd::Failed(Failure::Internal)),
            Self::Told(end) => Some(end.clone()),
            Self::Stored => None,
        }
    }
}

/// The tool rounds of a reply that runs the tools its model calls: how many it has had, and
/// how many it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundBudget {
    pub run: u32,
    pub max: u32,
}

/// What comes after a round of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRound {
    /// The round's calls are stored and run, and the model is asked again with their results
    /// (or the reply waits for the results of the client's tools).
    ToolRound,
    /// The reply is stored as the round left it: complete, cut off or failed.
    Settle,
}

/// Decides what follows a round: a tool round only when the model finished by calling tools,
/// and the reply runs tools (`budget`) with rounds left. A reply that may run no more rounds
/// is settled with its calls kept, each failed for the round limit.
pub fn after_round(finished: bool, calls: usize, budget: Option<RoundBudget>) -> AfterRound {
    match budget {
        Some(RoundBudget { run, max }) if finished && calls > 0 && run < max => {
            AfterRound::ToolRound
        }
        _ => AfterRound::Settle,
    }
}

/// What became of a turn, as its telemetry labels it: one value for each way a reply task
/// can end, so that no end is labelled as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// The reply called the client's tools, and waits for their results.
    AwaitingToolResults,
    Cancelled,
    /// The client stopped reading.
    Stalled,
    /// The server shut down.
    Interrupted,
    /// The model failed, in the way its error's kind names (`timeout`, `connect`...).
    ModelFailed(&'static str),
    /// What the turn made could not be stored.
    StorageFailed,
    /// Another replica took the turn over while this one was away.
    Lost,
    /// The conversation was deleted while the reply was generated.
    ConversationDeleted,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::AwaitingToolResults => "awaiting_tool_results",
            Self::Cancelled => "cancelled",
            Self::Stalled => "stalled",
            Self::Interrupted => "interrupted",
            Self::ModelFailed(_) => "model_failed",
            Self::StorageFailed => "storage_failed",
            Self::Lost => "lost",
            Self::ConversationDeleted => "conversation_deleted",
        }
    }

    /// How the model failed, when it did.
    pub fn model_error(self) -> Option<&'static str> {
        match self {
            Self::ModelFailed(kind) => Some(kind),
            _ => None,
        }
    }
}

/// A turn as its record stands, parsed once: every state the stored columns can be in.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordState {
    /// A replica generates it.
    Generating,
    /// Its replica stopped and another is taking it over: how it ended is about to be stored.
    TakingOver,
    /// It ended so.
    Ended(TurnEnd),
    /// It ended in this state, but how was not kept or cannot be read.
    Unreadable(TurnState),
}

impl RecordState {
    pub fn of(record: &TurnRecord) -> Self {
        let end = record
            .outcome
            .clone()
            .and_then(|outcome| serde_json::from_value::<TurnEnd>(outcome).ok());
        match (record.state, end) {
            (TurnState::Generating, _) => Self::Generating,
            (_, Some(end)) => Self::Ended(end),
            (TurnState::Interrupted, None) => Self::TakingOver,
            (state, None) => Self::Unreadable(state),
        }
    }

    /// Whether a retry of its request generates the reply anew: nothing complete came of it.
    pub fn may_generate_again(&self) -> bool {
        match self {
            Self::Generating => false,
            Self::TakingOver => true,
            Self::Ended(end) => end.state().may_generate_again(),
            Self::Unreadable(state) => state.may_generate_again(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_what_the_client_is_told_and_what_the_record_says() {
        for (error, state) in [
            (ChatError::Cancelled, TurnState::Cancelled),
            (ChatError::NotRead, TurnState::Cancelled),
            (ChatError::ShuttingDown, TurnState::Interrupted),
            (ChatError::TurnLost, TurnState::Interrupted),
            (ChatError::NotFound("conversation"), TurnState::Failed),
        ] {
            let failure = Failure::of(&error);
            assert_eq!(failure.state(), state, "{error}");
            assert_eq!(Failure::of(&failure.into_error()).state(), state);
        }
    }

    fn record(state: TurnState, outcome: Option<serde_json::Value>) -> TurnRecord {
        let message = crate::domain::Message {
            id: crate::domain::MessageId::generate(),
            conversation_id: crate::domain::ConversationId::generate(),
            role: crate::domain::Role::User,
            content: "hi".into(),
            status: crate::domain::MessageStatus::Complete,
            create_time: crate::domain::now(),
            tool_calls: Vec::new(),
            model: None,
            usage: None,
        };
        TurnRecord {
            id: message.id.into(),
            conversation_id: message.conversation_id,
            parent: None,
            user_message: message,
            sequence: 1,
            request_hash: None,
            state,
            attempt: crate::domain::FIRST_ATTEMPT,
            outcome,
        }
    }

    #[test]
    fn the_stored_columns_parse_into_one_state() {
        let lost = TurnEnd::Failed(Failure::Lost);
        let kept = RecordedEnd::from(&lost);
        assert_eq!(kept.state, TurnState::Interrupted);
        let cases = [
            (TurnState::Generating, None, RecordState::Generating),
            (TurnState::Interrupted, None, RecordState::TakingOver),
            (
                TurnState::Interrupted,
                Some(kept.outcome.clone()),
                RecordState::Ended(lost),
            ),
            (
                TurnState::Completed,
                Some(serde_json::json!("unreadable")),
                RecordState::Unreadable(TurnState::Completed),
            ),
        ];
        for (state, outcome, parsed) in cases {
            assert_eq!(RecordState::of(&record(state, outcome)), parsed);
        }
    }

    #[test]
    fn only_a_turn_that_came_to_nothing_is_generated_again() {
        assert!(!RecordState::Generating.may_generate_again());
        assert!(RecordState::TakingOver.may_generate_again());
        assert!(RecordState::Ended(TurnEnd::Failed(Failure::Unavailable)).may_generate_again());
        assert!(!RecordState::Ended(TurnEnd::Failed(Failure::Cancelled)).may_generate_again());
        assert!(!RecordState::Unreadable(TurnState::Completed).may_generate_again());
    }

    /// Every way a reply task ends.
    const OUTCOMES: [Outcome; 9] = [
        Outcome::Completed,
        Outcome::AwaitingToolResults,
        Outcome::Cancelled,
        Outcome::Stalled,
        Outcome::Interrupted,
        Outcome::ModelFailed("timeout"),
        Outcome::StorageFailed,
        Outcome::Lost,
        Outcome::ConversationDeleted,
    ];

    /// A state's name, as README's table of states gives it. A new state does not compile
    /// until it has one.
    fn name(state: &RecordState) -> &'static str {
        match state {
            RecordState::Generating => "generating",
            RecordState::TakingOver => "taking_over",
            RecordState::Ended(_) => "ended",
            RecordState::Unreadable(_) => "unreadable",
        }
    }

    #[test]
    fn every_outcome_has_a_label_of_its_own() {
        let labels: std::collections::HashSet<_> = OUTCOMES.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), OUTCOMES.len());
        assert_ne!(
            Outcome::ConversationDeleted.label(),
            Outcome::Completed.label()
        );
        assert_eq!(Outcome::ModelFailed("interrupted").label(), "model_failed");
        assert_ne!(
            Outcome::ModelFailed("interrupted").label(),
            Outcome::Interrupted.label()
        );
    }

    /// README's "A turn's states" names every state and every outcome, as the types do.
    #[test]
    fn the_readme_draws_the_machine_as_the_types_have_it() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### A turn's states")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .unwrap_or_default();
        let states = [
            RecordState::Generating,
            RecordState::TakingOver,
            RecordState::Ended(TurnEnd::Failed(Failure::Lost)),
            RecordState::Unreadable(TurnState::Failed),
        ];
        for state in &states {
            let row = format!("| `{}` |", name(state));
            assert!(section.contains(&row), "README lacks the row {row}");
        }
        let rows = section.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(
            rows,
            states.len(),
            "README's table has a state the type lacks"
        );
        for outcome in OUTCOMES {
            let named = format!("`{}`", outcome.label());
            assert!(section.contains(&named), "README does not name {named}");
        }
    }

    #[test]
    fn only_a_finished_round_with_calls_and_rounds_left_runs_tools() {
        let left = Some(RoundBudget { run: 1, max: 3 });
        let spent = Some(RoundBudget { run: 3, max: 3 });
        assert_eq!(after_round(true, 2, left), AfterRound::ToolRound);
        // No calls, cut short or failed, no rounds left, or tools not run here: settled.
        assert_eq!(after_round(true, 0, left), AfterRound::Settle);
        assert_eq!(after_round(false, 2, left), AfterRound::Settle);
        assert_eq!(after_round(true, 2, spent), AfterRound::Settle);
        assert_eq!(after_round(true, 2, None), AfterRound::Settle);
    }

    #[test]
    fn an_end_stored_with_the_reply_is_not_stored_again() {
        let mut end = EndState::default();
        assert_eq!(end.to_store(), Some(TurnEnd::Failed(Failure::Internal)));
        end.told(TurnEnd::Failed(Failure::Cancelled));
        assert_eq!(end.to_store(), Some(TurnEnd::Failed(Failure::Cancelled)));
        end = EndState::Stored;
        end.told(TurnEnd::Failed(Failure::NotRead));
        assert_eq!(end, EndState::Stored);
        assert_eq!(end.to_store(), None);
    }
}
