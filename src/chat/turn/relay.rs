//! Relaying the model's reply to the client as it is generated.

use std::{pin::pin, time::Duration};

use futures_util::stream;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use super::{
    outlet::{Delivery, Outlet},
    telemetry::TurnTelemetry,
};
use crate::{
    domain::{ToolCall, ToolCallId, ToolCallStatus},
    llm::{LlmError, ModelChoice, ModelEvent, ModelStream, ModelToolCall, TokenUsage},
};

/// How the model's stream ended.
pub(super) enum Ending {
    Finished,
    /// The client cancelled or went away, or someone cancelled the turn.
    Cancelled,
    /// The server's shutdown grace period ran out.
    Interrupted,
    /// The client took nothing for the stall timeout: it is not reading.
    Stalled,
    Failed(LlmError),
}

/// What the model sent that the turn keeps, and how it ended.
pub(super) struct Relayed {
    pub ending: Ending,
    /// Exactly the text the client was sent.
    pub text: String,
    /// The length in bytes of each piece of `text`, as it was sent.
    pub deltas: Vec<i32>,
    /// Complete only when the reply finished.
    pub calls: Vec<ModelToolCall>,
    /// This call's tokens, as reported, or estimated once the call is over.
    pub usage: Option<TokenUsage>,
    /// The tokens of every call of the reply so far, this one's included.
    pub turn_usage: Option<TokenUsage>,
    pub finish_reason: Option<String>,
    /// Each model that failed before answering, the one asked instead, and the kind of the
    /// failure.
    pub fallbacks: Vec<(ModelChoice, ModelChoice, &'static str)>,
}

/// Text as PostgreSQL can store it: NUL, which it refuses, becomes U+FFFD. Done before a delta
/// is relayed, so that what the client reads is exactly what is stored.
pub(super) fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

impl Relayed {
    /// Estimates the call's tokens from its text, `prompt_bytes` in and what was relayed out,
    /// if its provider reported none. A call that failed is left alone: nothing of it is stored.
    pub fn estimate_unreported(&mut self, prompt_bytes: usize) {
        if self.usage.is_some() || matches!(self.ending, Ending::Failed(_)) {
            return;
        }
        let calls: usize = self.calls.iter().map(ModelToolCall::text_bytes).sum();
        self.usage = Some(TokenUsage::estimate(prompt_bytes, self.text.len() + calls));
    }

    /// Ends the model call's span and metrics with what the model reported.
    pub fn report(&self, telemetry: &mut TurnTelemetry) {
        let failure = match &self.ending {
            Ending::Failed(error) => Some(error),
            _ => None,
        };
        telemetry.model_ended(self.usage, self.finish_reason.as_deref(), failure);
    }
}

/// A call the model asked for, as the turn keeps it.
pub(super) fn tool_call(call: ModelToolCall) -> ToolCall {
    // Arguments are stored as JSON; text the model got wrong is kept as a JSON string. NUL is
    // replaced first: PostgreSQL refuses it in text and JSON alike.
    // Both a raw NUL and JSON's escape for it, which would decode to one.
    let raw = storable(call.arguments).replace("\\u0000", "\\ufffd");
    let arguments = serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw));
    ToolCall {
        id: ToolCallId::generate(),
        provider_call_id: storable(call.id),
        name: storable(call.name),
        arguments,
        status: ToolCallStatus::Requested,
        result: None,
    }
}

/// Holds back what the model sends until the user message is committed, so that nothing of the
/// reply reaches anyone before the message it answers is stored. `None` if the commit failed:
/// the stream is dropped, which aborts the model request.
pub(super) async fn after_commit(
    mut model: ModelStream,
    mut committed: oneshot::Receiver<()>,
    telemetry: &mut TurnTelemetry,
) -> Option<ModelStream> {
    let mut early = Vec::new();
    let mut ended_early = false;
    let span = telemetry.model_span().clone();
    loop {
        tokio::select! {
            biased;
            outcome = &mut committed => match outcome {
                Ok(()) => break,
                Err(_) => return None,
            },
            event = model.next().instrument(span.clone()), if !ended_early => match event {
                None => ended_early = true,
                Some(event) => {
                    if matches!(event, Ok(ModelEvent::Delta(_))) {
                        telemetry.text_received();
                    }
                    early.push(event);
                }
            },
        }
    }
    let rest: ModelStream = if ended_early {
        Box::pin(stream::empty())
    } else {
        model
    };
    Some(Box::pin(stream::iter(early).chain(rest)))
}

/// Sends each delta to the client as it arrives, until the model finishes or fails, the client
/// goes away (from a turn that ends with it) or stops reading, someone cancels the turn, or
/// shutdown cuts it short. Every wait is raced against shutdown. Dropping the model's stream on
/// return closes the upstream request if it is still open.
pub(super) async fn relay(
    mut model: ModelStream,
    outlet: &mut Outlet,
    stops: &Stops,
    stall_timeout: Duration,
    telemetry: &mut TurnTelemetry,
) -> Relayed {
    let mut relayed = Relayed {
        ending: Ending::Finished,
        text: String::new(),
        deltas: Vec::new(),
        calls: Vec::new(),
        usage: None,
        turn_usage: None,
        finish_reason: None,
        fallbacks: Vec::new(),
    };
    let span = telemetry.model_span().clone();
    // Set up once: each registers a waiter, which a wait made afresh for every event would
    // register and remove again.
    let mut abandoned = pin!(outlet.abandoned());
    let mut cancelled = pin!(stops.cancel.cancelled());
    let mut shutdown = pin!(stops.shutdown.cancelled());
    relayed.ending = loop {
        let event = tokio::select! {
            biased;
            () = &mut abandoned => break Ending::Cancelled,
            () = &mut cancelled => break Ending::Cancelled,
            () = &mut shutdown => break Ending::Interrupted,
            event = next_in(&mut model, &span) => event,
        };
        match event {
            None => break Ending::Finished,
            Some(Err(error)) => break Ending::Failed(error),
            Some(Ok(ModelEvent::Delta(delta))) => {
                let delta = storable(delta);
                telemetry.text_relayed();
                let length = i32::try_from(delta.len()).unwrap_or(i32::MAX);
                // The text keeps exactly what reached the client's stream.
                let sent_before = relayed.text.len();
                relayed.text.push_str(&delta);
                let delivery = tokio::select! {
                    biased;
                    () = &mut shutdown => None,
                    delivery = outlet.deliver(delta, stall_timeout) => Some(delivery),
                };
                let ending = match delivery {
                    Some(Delivery::Delivered) => {
                        relayed.deltas.push(length);
                        continue;
                    }
                    Some(Delivery::Gone) => Ending::Cancelled,
                    Some(Delivery::Stalled) => Ending::Stalled,
                    None => Ending::Interrupted,
                };
                relayed.text.truncate(sent_before);
                break ending;
            }
            Some(Ok(ModelEvent::ToolCall(call))) => relayed.calls.push(call),
            Some(Ok(ModelEvent::Usage(usage))) => relayed.usage = Some(usage),
            Some(Ok(ModelEvent::Finished { reason })) => relayed.finish_reason = Some(reason),
            Some(Ok(ModelEvent::FellBack { from, to, error })) => {
                relayed.fallbacks.push((from, to, error));
            }
        }
    };
    relayed
}

/// The model's next event, read inside its call's span, as `Instrumented` would, without a
/// handle of the span for each event.
fn next_in<'a>(
    model: &'a mut ModelStream,
    span: &'a Span,
) -> impl Future<Output = Option<Result<ModelEvent, LlmError>>> + Send + 'a {
    std::future::poll_fn(move |cx| {
        let _entered = span.enter();
        model.as_mut().poll_next(cx)
    })
}

/// What stops a turn before its end: someone cancelling it, or the shutdown grace period
/// running out.
pub(super) struct Stops {
    pub cancel: CancellationToken,
    pub shutdown: CancellationToken,
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        chat::turn::{
            events::{Sequenced, TurnEvent},
            outlet::EventSender,
            telemetry::TurnLabels,
        },
        domain::{ConversationId, UserId},
        telemetry::metrics::Metrics,
    };

    const STALL: Duration = Duration::from_secs(30);

    fn telemetry() -> TurnTelemetry {
        let labels = TurnLabels {
            request_id: "test".to_owned(),
            conversation_id: ConversationId::generate(),
            user: UserId::generate(),
        };
        TurnTelemetry::start(Metrics::new(), labels, "m", "test", Instant::now())
    }

    /// An outlet to a client whose stream holds `capacity` events, without a log.
    fn outlet(
        capacity: usize,
    ) -> (
        Outlet,
        mpsc::Receiver<Result<Sequenced, crate::chat::ChatError>>,
    ) {
        let (sender, client): (EventSender, _) = mpsc::channel(capacity);
        let (last_word, _) = oneshot::channel();
        (Outlet::new(sender, last_word, None, false), client)
    }

    fn stops(shutdown: &CancellationToken) -> Stops {
        Stops {
            cancel: CancellationToken::new(),
            shutdown: shutdown.clone(),
        }
    }

    fn delta(text: &str) -> Result<ModelEvent, LlmError> {
        Ok(ModelEvent::Delta(text.to_owned()))
    }

    /// A model that sends `events`, then nothing more until it is dropped.
    fn model(events: Vec<Result<ModelEvent, LlmError>>) -> ModelStream {
        Box::pin(stream::iter(events).chain(stream::pending()))
    }

    fn finished(events: Vec<Result<ModelEvent, LlmError>>) -> ModelStream {
        Box::pin(stream::iter(events))
    }

    #[tokio::test]
    async fn deltas_go_out_in_order_and_the_rest_is_kept_for_storing() {
        let call = ModelToolCall {
            id: "call_1".into(),
            name: "lookup".into(),
            arguments: "{}".into(),
        };
        let usage = TokenUsage {
            input_tokens: 3,
            output_tokens: 2,
            ..TokenUsage::default()
        };
        let events = vec![
            delta("Hel"),
            delta("lo"),
            Ok(ModelEvent::ToolCall(call.clone())),
            Ok(ModelEvent::Usage(usage)),
            Ok(ModelEvent::Finished {
                reason: "tool_calls".into(),
            }),
        ];
        let (mut outlet, mut client) = outlet(16);
        let relayed = relay(
            finished(events),
            &mut outlet,
            &stops(&CancellationToken::new()),
            STALL,
            &mut telemetry(),
        )
        .await;
        assert!(matches!(relayed.ending, Ending::Finished));
        assert_eq!(relayed.text, "Hello");
        assert_eq!(relayed.calls, [call]);
        assert_eq!(relayed.usage, Some(usage));
        assert_eq!(relayed.finish_reason.as_deref(), Some("tool_calls"));
        drop(outlet);
        let mut sent = Vec::new();
        while let Some(event) = client.recv().await {
            match event {
                Ok(Sequenced {
                    event: TurnEvent::Delta(text),
                    ..
                }) => sent.push(text),
                other => panic!("only deltas are relayed, got {other:?}"),
            }
        }
        assert_eq!(sent, ["Hel", "lo"]);
    }

    #[tokio::test]
    async fn a_client_that_went_away_cancels_and_keeps_what_it_was_sent() {
        let (mut outlet, client) = outlet(1);
        drop(client);
        let relayed = relay(
            model(vec![delta("never sent")]),
            &mut outlet,
            &stops(&CancellationToken::new()),
            STALL,
            &mut telemetry(),
        )
        .await;
        assert!(matches!(relayed.ending, Ending::Cancelled));
        assert_eq!(relayed.text, "");
    }

    #[tokio::test]
    async fn shutdown_interrupts_a_reply_that_is_still_coming() {
        let (mut outlet, mut client) = outlet(16);
        let shutdown = CancellationToken::new();
        let mut telemetry = telemetry();
        let stops = stops(&shutdown);
        let relaying = relay(
            model(vec![delta("partial")]),
            &mut outlet,
            &stops,
            STALL,
            &mut telemetry,
        );
        let (relayed, ()) = tokio::join!(relaying, async {
            // Cut once the first delta has reached the client.
            assert!(matches!(
                client.recv().await,
                Some(Ok(Sequenced {
                    event: TurnEvent::Delta(_),
                    ..
                }))
            ));
            shutdown.cancel();
        });
        assert!(matches!(relayed.ending, Ending::Interrupted));
        assert_eq!(relayed.text, "partial");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_off_and_keeps_only_what_it_was_sent() {
        let (mut outlet, _reader_that_never_reads) = outlet(2);
        let deltas = (0..10).map(|i| delta(&i.to_string())).collect();
        let relayed = relay(
            model(deltas),
            &mut outlet,
            &stops(&CancellationToken::new()),
            STALL,
            &mut telemetry(),
        )
        .await;
        assert!(matches!(relayed.ending, Ending::Stalled));
        assert_eq!(relayed.text, "01", "only two deltas fit the channel");
    }

    #[tokio::test]
    async fn nul_characters_are_replaced_before_they_reach_anyone() {
        let (mut outlet, mut client) = outlet(16);
        let relayed = relay(
            finished(vec![delta("a\0b")]),
            &mut outlet,
            &stops(&CancellationToken::new()),
            STALL,
            &mut telemetry(),
        )
        .await;
        assert_eq!(relayed.text, "a\u{FFFD}b");
        match client.recv().await {
            Some(Ok(Sequenced {
                event: TurnEvent::Delta(text),
                sequence,
            })) => {
                assert_eq!(text, relayed.text);
                assert_eq!(sequence, 2, "the first event after accepted");
            }
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_model_failure_ends_the_relay_with_that_failure() {
        let (mut outlet, _client) = outlet(16);
        let events = vec![delta("a"), Err(LlmError::Malformed("bad chunk".into()))];
        let relayed = relay(
            finished(events),
            &mut outlet,
            &stops(&CancellationToken::new()),
            STALL,
            &mut telemetry(),
        )
        .await;
        assert!(matches!(
            relayed.ending,
            Ending::Failed(LlmError::Malformed(_))
        ));
        assert_eq!(relayed.text, "a");
    }

    #[tokio::test]
    async fn once_committed_the_whole_reply_is_released_in_order() {
        let (commit, committed) = oneshot::channel();
        let mut telemetry = telemetry();
        let holding = after_commit(
            finished(vec![delta("early"), delta(" bird")]),
            committed,
            &mut telemetry,
        );
        commit
            .send(())
            .unwrap_or_else(|()| panic!("the relay stopped waiting"));
        let released = holding
            .await
            .unwrap_or_else(|| panic!("the commit was lost"));
        let texts: Vec<String> = released
            .filter_map(|event| match event {
                Ok(ModelEvent::Delta(text)) => Some(text),
                _ => None,
            })
            .collect()
            .await;
        assert_eq!(texts, ["early", " bird"]);
    }

    #[tokio::test]
    async fn a_failed_commit_releases_nothing() {
        let (commit, committed) = oneshot::channel::<()>();
        drop(commit);
        let released =
            after_commit(model(vec![delta("secret")]), committed, &mut telemetry()).await;
        assert!(released.is_none());
    }
}
