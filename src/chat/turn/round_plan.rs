//! What a round does with the calls the model asked for, decided before anything is stored or
//! run: which the service runs, which the client runs, and which are refused.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::relay::tool_call;
use crate::{
    domain::{ToolCall, ToolCallStatus},
    llm::ModelToolCall,
    store::Awaiting,
    tools::{ToolFailure, ToolOutcome},
};

/// The most calls of one round that are run; more fail as `too_many_calls`. At the largest
/// result allowed (64 KiB by default), a round's results then fit in a response.
const MAX_CALLS_PER_ROUND: usize = 32;

/// A round's calls, and what becomes of each.
pub(super) struct RoundPlan {
    /// The calls as they are stored: each with an id unique in the round.
    pub calls: Vec<ToolCall>,
    /// For each call, whether the service runs it.
    pub runs: Vec<bool>,
    /// The calls of the client's tools, whose results the reply awaits until the deadline.
    pub awaiting: Option<Awaiting>,
}

/// Plans a round: calls beyond [`MAX_CALLS_PER_ROUND`] are kept but fail, since a round's
/// results must fit in a response; the service runs its own tools; the client's end the reply,
/// which awaits their results until `deadline`.
pub(super) fn plan_round(
    asked: Vec<ModelToolCall>,
    client_tools: &HashSet<String>,
    deadline: DateTime<Utc>,
) -> RoundPlan {
    let mut calls: Vec<ToolCall> = asked.into_iter().map(tool_call).collect();
    give_unique_ids(&mut calls);
    let too_many = ToolOutcome::Failed(ToolFailure::TooManyCalls(MAX_CALLS_PER_ROUND));
    for call in calls.iter_mut().skip(MAX_CALLS_PER_ROUND) {
        call.status = ToolCallStatus::Failed;
        call.result = Some(too_many.clone().into_result());
    }
    let requested = |call: &&ToolCall| call.status == ToolCallStatus::Requested;
    let runs = calls
        .iter()
        .map(|call| requested(&call) && !client_tools.contains(&call.name))
        .collect();
    let client_calls: Vec<String> = calls
        .iter()
        .filter(requested)
        .filter(|call| client_tools.contains(&call.name))
        .map(|call| call.provider_call_id.clone())
        .collect();
    let awaiting = (!client_calls.is_empty()).then_some(Awaiting {
        calls: client_calls,
        until: deadline,
    });
    RoundPlan {
        calls,
        runs,
        awaiting,
    }
}

/// Gives each call an id unique in its round: a provider that leaves an id out, or repeats one,
/// would make a call that no result can name.
fn give_unique_ids(calls: &mut [ToolCall]) {
    let mut seen = HashSet::new();
    for (index, call) in calls.iter_mut().enumerate() {
        if call.provider_call_id.is_empty() || !seen.insert(call.provider_call_id.clone()) {
            call.provider_call_id = format!("call_{}_{index}", call.id);
            seen.insert(call.provider_call_id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(id: &str, name: &str) -> ModelToolCall {
        ModelToolCall {
            id: id.into(),
            name: name.into(),
            arguments: "{}".into(),
        }
    }

    #[test]
    fn the_service_runs_its_tools_and_the_reply_awaits_the_clients() {
        let client: HashSet<String> = ["locate".to_owned()].into();
        let deadline = DateTime::<Utc>::MIN_UTC;
        let plan = plan_round(
            vec![
                asked("a", "search"),
                asked("b", "locate"),
                asked("c", "search"),
            ],
            &client,
            deadline,
        );
        assert_eq!(plan.runs, [true, false, true]);
        let awaiting = plan.awaiting.expect("the client's call is awaited");
        assert_eq!(awaiting.calls, ["b"]);
        assert_eq!(awaiting.until, deadline);
        assert!(
            plan.calls
                .iter()
                .all(|c| c.status == ToolCallStatus::Requested)
        );

        let served = plan_round(vec![asked("a", "search")], &client, deadline);
        assert!(served.awaiting.is_none());
    }

    #[test]
    fn calls_beyond_a_rounds_share_are_kept_but_neither_run_nor_awaited() {
        let client: HashSet<String> = ["locate".to_owned()].into();
        let many = (0..=MAX_CALLS_PER_ROUND)
            .map(|i| {
                asked(
                    &format!("id{i}"),
                    if i == MAX_CALLS_PER_ROUND {
                        "locate"
                    } else {
                        "search"
                    },
                )
            })
            .collect();
        let plan = plan_round(many, &client, DateTime::<Utc>::MIN_UTC);
        assert_eq!(plan.calls.len(), MAX_CALLS_PER_ROUND + 1);
        let last = &plan.calls[MAX_CALLS_PER_ROUND];
        assert_eq!(last.status, ToolCallStatus::Failed);
        assert_eq!(
            plan.runs.iter().filter(|runs| **runs).count(),
            MAX_CALLS_PER_ROUND
        );
        assert!(
            plan.awaiting.is_none(),
            "the refused client call is not awaited"
        );
    }

    #[test]
    fn every_call_gets_an_id_no_other_call_of_its_round_has() {
        let plan = plan_round(
            vec![asked("", "a"), asked("x", "a"), asked("x", "a")],
            &HashSet::new(),
            DateTime::<Utc>::MIN_UTC,
        );
        let ids: HashSet<&str> = plan
            .calls
            .iter()
            .map(|c| c.provider_call_id.as_str())
            .collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(plan.calls[1].provider_call_id, "x");
    }
}
