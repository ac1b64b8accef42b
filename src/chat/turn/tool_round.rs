//! A round of tool calls: the model asked for tools; the calls are stored, run in parallel,
//! their results stored and sent as they come, and the model is asked to go on.

use std::{collections::HashSet, time::Instant};

use futures_util::{StreamExt, stream::FuturesUnordered};
use tracing::Instrument;

use super::{
    context::{recent_message, replay},
    events::{Completion, ToolResult, TurnEvent},
    persist::Stored,
    relay::{Ending, Relayed, tool_call},
    task::ReplyTask,
    telemetry::TurnTelemetry,
};
use crate::{
    chat::ChatError,
    domain::{Message, MessageStatus, ToolCall, ToolCallStatus},
    llm::ModelStream,
    store::Awaiting,
    tools::{Catalog, ToolFailure, ToolOutcome},
};

/// A tool's name as a metric's label: a name the model made up becomes `unknown`, so that no
/// model (or user steering it) can mint labels without end.
fn metric_label<'a>(catalog: &Catalog, name: &'a str) -> &'a str {
    if catalog.offers(name) {
        name
    } else {
        "unknown"
    }
}

/// The most calls of one round that are run; more fail as `too_many_calls`. At the largest
/// result allowed (64 KiB by default), a round's results then fit in a response.
const MAX_CALLS_PER_ROUND: usize = 32;

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

/// What comes after a round of tool calls.
pub(super) enum Round {
    /// The model's next answer.
    Next(ModelStream),
    /// The turn is over: the client has been told why. The outcome's label.
    Ended(&'static str),
}

/// Why a round's calls did not all get their results.
#[derive(Clone, Copy)]
enum CutShort {
    /// The client cancelled or went away.
    Cancelled,
    /// The server's shutdown grace period ran out.
    Interrupted,
}

impl ReplyTask {
    /// Runs the tools the model just called, if this reply runs tools and has rounds left; `None`
    /// leaves the reply to be settled as it is.
    pub(super) async fn tool_round(
        &mut self,
        relayed: &mut Relayed,
        telemetry: &mut TurnTelemetry,
    ) -> Option<Round> {
        let tools = self.tools.as_ref()?;
        if !matches!(relayed.ending, Ending::Finished)
            || relayed.calls.is_empty()
            || tools.rounds >= tools.max_rounds
        {
            return None;
        }
        let mut calls: Vec<ToolCall> = std::mem::take(&mut relayed.calls)
            .into_iter()
            .map(tool_call)
            .collect();
        give_unique_ids(&mut calls);
        // Beyond a round's share, calls are kept but not run: a round's results must fit in a
        // response.
        let too_many = ToolOutcome::Failed(ToolFailure::TooManyCalls(MAX_CALLS_PER_ROUND));
        for call in calls.iter_mut().skip(MAX_CALLS_PER_ROUND) {
            call.status = ToolCallStatus::Failed;
            call.result = Some(too_many.clone().into_result());
        }
        // The service runs its own tools; the client's end the reply, which awaits their results.
        let runs: Vec<bool> = calls
            .iter()
            .map(|call| {
                call.status == ToolCallStatus::Requested && !tools.client_tools.contains(&call.name)
            })
            .collect();
        let client_calls: Vec<String> = calls
            .iter()
            .filter(|call| call.status == ToolCallStatus::Requested)
            .filter(|call| tools.client_tools.contains(&call.name))
            .map(|call| call.provider_call_id.clone())
            .collect();
        let awaiting = (!client_calls.is_empty()).then(|| Awaiting {
            calls: client_calls,
            until: tools.results_deadline(),
        });
        let text = std::mem::take(&mut relayed.text);
        let status = match awaiting {
            Some(_) => MessageStatus::AwaitingToolResults,
            None => MessageStatus::Complete,
        };
        let mut message = self.reply(text, calls, status);
        // The calls are stored before anyone hears of them.
        let deltas = std::mem::take(&mut relayed.deltas);
        let revision = match self
            .store_reply(&message, awaiting.as_ref(), &deltas, None)
            .await
        {
            Ok(Stored::At(revision)) => Some(revision),
            Ok(Stored::AtUnknownPlace) => None,
            Ok(Stored::ConversationGone) => {
                self.tell(Err(ChatError::NotFound("conversation"))).await;
                return Some(Round::Ended("completed"));
            }
            Ok(Stored::TakenOver) => return Some(Round::Ended(self.taken_over().await)),
            Err(error) => return Some(Round::Ended(self.storage_failed(error).await)),
        };
        self.after = message.create_time;
        for call in &message.tool_calls {
            self.tell(Ok(TurnEvent::ToolCall(call.clone()))).await;
        }
        if let Some(outcome) = self.run_calls(&mut message, &runs).await {
            // What this replica and others remember of the round is not current, and a wait
            // for results the client never heard of must not hold the conversation.
            self.recent.forget(self.conversation_id);
            let waited = awaiting.is_some().then_some(message.id);
            if let Err(error) = self
                .store
                .end_cut_round(self.user, self.conversation_id, waited)
                .await
            {
                tracing::warn!(error = %error, "ending a round that was cut short failed");
            }
            return Some(Round::Ended(outcome));
        }
        if let Some(revision) = revision {
            self.recent.record(
                self.user,
                self.conversation_id,
                revision,
                recent_message(&message),
            );
        }
        if awaiting.is_some() {
            let completion = Completion {
                message,
                finish_reason: "tool_calls".to_owned(),
                model: self.model_name.clone(),
                usage: relayed.usage,
            };
            self.tell(Ok(TurnEvent::Completed(completion))).await;
            return Some(Round::Ended("awaiting_tool_results"));
        }
        let tools = self.tools.as_mut()?;
        tools.rounds += 1;
        replay(recent_message(&message), &mut tools.request.messages);
        tools.request.may_call_tools = tools.rounds < tools.max_rounds;
        telemetry.next_model_call();
        let span = telemetry.model_span().clone();
        let next = span.in_scope(|| tools.model.stream(tools.request.clone()));
        Some(Round::Next(next))
    }

    /// Runs the message's calls that `runs` marks, in parallel, storing each result as it comes
    /// and then telling the client. Cut short by the client or by shutdown, the calls still
    /// running are cancelled (on the tool server too) and stored as failed. `Some` with the
    /// outcome's label if the turn ends here.
    async fn run_calls(&mut self, message: &mut Message, runs: &[bool]) -> Option<&'static str> {
        let tools = self.tools.as_ref()?;
        let (toolbox, catalog, caller) = (
            tools.toolbox.clone(),
            tools.catalog.clone(),
            tools.caller.clone(),
        );
        let mut running: FuturesUnordered<_> = message
            .tool_calls
            .iter()
            .enumerate()
            .filter(|(index, _)| runs.get(*index).copied().unwrap_or(false))
            .map(|(index, call)| {
                let (toolbox, catalog, caller) = (toolbox.clone(), catalog.clone(), caller.clone());
                let (name, arguments) = (call.name.clone(), call.arguments.clone());
                async move {
                    let started = Instant::now();
                    let outcome = toolbox
                        .call(&catalog, &name, &arguments, caller.as_ref())
                        .await;
                    (index, outcome, started.elapsed())
                }
                .in_current_span()
            })
            .collect();
        // Calls that are not run here count as answered.
        let mut answered: Vec<bool> = runs.iter().map(|runs| !runs).collect();
        let stops = self.stops();
        let cut_short = loop {
            let next = tokio::select! {
                biased;
                () = self.outlet.abandoned() => break Some(CutShort::Cancelled),
                () = stops.cancel.cancelled() => break Some(CutShort::Cancelled),
                () = stops.shutdown.cancelled() => break Some(CutShort::Interrupted),
                next = running.next() => next,
            };
            let Some((index, outcome, took)) = next else {
                break None;
            };
            if let Some(flag) = answered.get_mut(index) {
                *flag = true;
            }
            if let Some(call) = message.tool_calls.get(index) {
                let tool = metric_label(&catalog, &call.name);
                self.metrics
                    .record_tool_call(tool, outcome.label(), took.as_secs_f64());
            }
            if let Err(outcome) = self.keep_result(message, index, outcome).await {
                return Some(outcome);
            }
        };
        // Dropping a call cancels it on its server.
        drop(running);
        let cut_short = cut_short?;
        let reason = match cut_short {
            CutShort::Cancelled => "the client cancelled the turn",
            CutShort::Interrupted => "the server is shutting down",
        };
        for index in (0..answered.len()).filter(|i| !answered[*i]) {
            let outcome = ToolOutcome::Failed(ToolFailure::Cancelled(reason));
            if let Some(call) = message.tool_calls.get(index) {
                let tool = metric_label(&catalog, &call.name);
                self.metrics.record_tool_call(tool, outcome.label(), 0.0);
            }
            if let Err(outcome) = self.keep_result(message, index, outcome).await {
                return Some(outcome);
            }
        }
        Some(match cut_short {
            CutShort::Cancelled => {
                self.tell(Err(ChatError::Cancelled)).await;
                "cancelled"
            }
            CutShort::Interrupted => {
                self.tell(Err(ChatError::ShuttingDown)).await;
                "interrupted"
            }
        })
    }

    /// Stores what became of call `index` of `message`, then tells the client. `Err` with the
    /// outcome's label if the turn ends because it could not be stored.
    async fn keep_result(
        &mut self,
        message: &mut Message,
        index: usize,
        outcome: ToolOutcome,
    ) -> Result<(), &'static str> {
        let Some(call) = message.tool_calls.get_mut(index) else {
            return Ok(());
        };
        let status = if outcome.succeeded() {
            ToolCallStatus::Succeeded
        } else {
            ToolCallStatus::Failed
        };
        let result = outcome.into_result();
        let stored = self
            .store
            .store_tool_result(self.user, call.id, status, &result, Some(self.answered))
            .instrument(tracing::Span::current())
            .await;
        match stored {
            Ok(true) => {}
            Ok(false) => {
                self.tell(Err(ChatError::NotFound("conversation"))).await;
                return Err("completed");
            }
            Err(error) => return Err(self.storage_failed(error).await),
        }
        self.answered += 1;
        call.status = status;
        call.result = Some(result.clone());
        let event = ToolResult {
            provider_call_id: call.provider_call_id.clone(),
            status,
            result,
        };
        self.tell(Ok(TurnEvent::ToolResult(event))).await;
        Ok(())
    }
}
