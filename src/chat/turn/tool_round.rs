//! A round of tool calls: the model asked for tools; the calls are stored, run in parallel,
//! their results stored and sent as they come, and the model is asked to go on.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream::FuturesUnordered};
use tracing::Instrument;

use super::{
    context::{recent_message, replay},
    events::{Completion, ToolResult, TurnEvent},
    persist::Stored,
    relay::Relayed,
    round_plan::plan_round,
    state::Outcome,
    task::{ReplyTask, ToolRounds},
    telemetry::TurnTelemetry,
};
use crate::{
    chat::ChatError,
    domain::{Message, MessageId, MessageStatus, Revision, ToolCallStatus},
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

/// Starts the calls of `message` that `runs` marks; each yields its index, its outcome and how
/// long it took.
fn start_calls(
    tools: &ToolRounds,
    message: &Message,
    runs: &[bool],
) -> FuturesUnordered<impl Future<Output = (usize, ToolOutcome, Duration)> + use<>> {
    message
        .tool_calls
        .iter()
        .enumerate()
        .filter(|(index, _)| runs.get(*index).copied().unwrap_or(false))
        .map(|(index, call)| {
            let (toolbox, catalog) = (tools.toolbox.clone(), tools.catalog.clone());
            let caller = tools.caller.clone();
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
        .collect()
}

/// Asks the model to go on, with the round's calls and results in its context.
fn next_model_call(
    tools: &mut ToolRounds,
    prompt_bytes: &mut usize,
    message: &Message,
    telemetry: &mut TurnTelemetry,
) -> ModelStream {
    tools.rounds += 1;
    replay(recent_message(message), &mut tools.request.messages);
    tools.request.may_call_tools = tools.rounds < tools.max_rounds;
    *prompt_bytes = tools.request.text_bytes();
    telemetry.next_model_call();
    let span = telemetry.model_span().clone();
    span.in_scope(|| tools.model.stream(tools.request.clone()))
}

/// What comes after a round of tool calls.
pub(super) enum Round {
    /// The model's next answer.
    Next(ModelStream),
    /// The turn is over: the client has been told why. The outcome's label.
    Ended(Outcome),
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
    /// Runs the tools the model just called (the round's decision, `state::after_round`, is
    /// that this reply runs them and has rounds left), and asks the model to go on; or ends the
    /// turn when the reply waits for the client's tools, or the round is cut short.
    pub(super) async fn tool_round(
        &mut self,
        relayed: Relayed,
        tools: &mut ToolRounds,
        telemetry: &mut TurnTelemetry,
    ) -> Round {
        let Relayed {
            text,
            deltas,
            calls,
            usage,
            turn_usage,
            ..
        } = relayed;
        let plan = plan_round(calls, &tools.client_tools, tools.results_deadline());
        let status = match plan.awaiting {
            Some(_) => MessageStatus::AwaitingToolResults,
            None => MessageStatus::Complete,
        };
        let mut message = self.reply(text, plan.calls, status, usage);
        // The calls are stored before anyone hears of them.
        let revision = match self
            .store_round(&message, plan.awaiting.as_ref(), &deltas)
            .await
        {
            Ok(revision) => revision,
            Err(outcome) => return Round::Ended(outcome),
        };
        for call in &message.tool_calls {
            self.tell(Ok(TurnEvent::ToolCall(Box::new(call.clone()))))
                .await;
        }
        if let Some(outcome) = self.run_calls(tools, &mut message, &plan.runs).await {
            let waited = plan.awaiting.is_some().then_some(message.id);
            self.end_cut_round(waited).await;
            return Round::Ended(outcome);
        }
        if let Some(revision) = revision {
            let remembered = recent_message(&message);
            let conversation = self.conversation_id;
            self.recent
                .record(self.user, conversation, revision, remembered);
        }
        if plan.awaiting.is_some() {
            let completion = Completion {
                message,
                finish_reason: "tool_calls".to_owned(),
                model: self.model_name().to_owned(),
                usage: turn_usage,
            };
            self.tell(Ok(TurnEvent::Completed(Box::new(completion))))
                .await;
            return Round::Ended(Outcome::AwaitingToolResults);
        }
        Round::Next(next_model_call(
            tools,
            &mut self.prompt_bytes,
            &message,
            telemetry,
        ))
    }

    /// Stores the round's reply with its calls. `Ok` with its place when it is known; `Err`
    /// with the outcome when the turn ends here, its client told why.
    async fn store_round(
        &mut self,
        message: &Message,
        awaiting: Option<&Awaiting>,
        deltas: &[i32],
    ) -> Result<Option<Revision>, Outcome> {
        let revision = match self.store_reply(message, awaiting, deltas, None).await {
            Ok(Stored::At(revision)) => Some(revision),
            Ok(Stored::AtUnknownPlace) => None,
            Ok(Stored::ConversationGone) => {
                self.tell(Err(ChatError::NotFound("conversation"))).await;
                return Err(Outcome::ConversationDeleted);
            }
            Ok(Stored::TakenOver) => return Err(self.taken_over().await),
            Err(error) => return Err(self.storage_failed(error).await),
        };
        self.after = message.create_time;
        Ok(revision)
    }

    /// Ends a round that was cut short: what this replica and others remember of it is not
    /// current, and a wait for results the client never heard of must not hold the
    /// conversation.
    async fn end_cut_round(&mut self, waited: Option<MessageId>) {
        self.recent.forget(self.conversation_id);
        if let Err(error) = self
            .store
            .end_cut_round(self.user, self.conversation_id, waited)
            .await
        {
            tracing::warn!(error = %error, "ending a round that was cut short failed");
        }
    }

    /// Runs the message's calls that `runs` marks, in parallel, storing each result as it comes
    /// and then telling the client. Cut short by the client or by shutdown, the calls still
    /// running are cancelled (on the tool server too) and stored as failed. `Some` with the
    /// outcome if the turn ends here.
    async fn run_calls(
        &mut self,
        tools: &ToolRounds,
        message: &mut Message,
        runs: &[bool],
    ) -> Option<Outcome> {
        let catalog = tools.catalog.clone();
        let mut running = start_calls(tools, message, runs);
        // Calls that are not run here count as answered.
        let mut answered: Vec<bool> = runs.iter().map(|runs| !runs).collect();
        let stops = self.stops();
        let cut_short = loop {
            let next = tokio::select! {
                biased;
                () = self.outlet.abandoned() => break CutShort::Cancelled,
                () = stops.cancel.cancelled() => break CutShort::Cancelled,
                () = stops.shutdown.cancelled() => break CutShort::Interrupted,
                next = running.next() => next,
            };
            let (index, outcome, took) = next?;
            if let Some(flag) = answered.get_mut(index) {
                *flag = true;
            }
            if let Err(outcome) = self
                .keep_result(message, index, outcome, &catalog, took)
                .await
            {
                return Some(outcome);
            }
        };
        // Dropping a call cancels it on its server.
        drop(running);
        Some(
            self.cut_round_short(message, &answered, cut_short, &catalog)
                .await,
        )
    }

    /// Stores the calls of a round cut short that had no result yet as failed, and tells the
    /// client why the turn ended.
    async fn cut_round_short(
        &mut self,
        message: &mut Message,
        answered: &[bool],
        cut_short: CutShort,
        catalog: &Catalog,
    ) -> Outcome {
        let (reason, error, outcome) = match cut_short {
            CutShort::Cancelled => (
                "the client cancelled the turn",
                ChatError::Cancelled,
                Outcome::Cancelled,
            ),
            CutShort::Interrupted => (
                "the server is shutting down",
                ChatError::ShuttingDown,
                Outcome::Interrupted,
            ),
        };
        for index in (0..answered.len()).filter(|i| !answered[*i]) {
            let failed = ToolOutcome::Failed(ToolFailure::Cancelled(reason));
            let kept = self
                .keep_result(message, index, failed, catalog, Duration::ZERO)
                .await;
            if let Err(outcome) = kept {
                return outcome;
            }
        }
        self.tell(Err(error)).await;
        outcome
    }

    /// Stores what became of call `index` of `message`, then tells the client. `Err` with the
    /// outcome's label if the turn ends because it could not be stored.
    async fn keep_result(
        &mut self,
        message: &mut Message,
        index: usize,
        outcome: ToolOutcome,
        catalog: &Catalog,
        took: Duration,
    ) -> Result<(), Outcome> {
        let Some(call) = message.tool_calls.get_mut(index) else {
            return Ok(());
        };
        let tool = metric_label(catalog, &call.name);
        self.metrics
            .record_tool_call(tool, outcome.label(), took.as_secs_f64());
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
                return Err(Outcome::ConversationDeleted);
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
        self.tell(Ok(TurnEvent::ToolResult(Box::new(event)))).await;
        Ok(())
    }
}
