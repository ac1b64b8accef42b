//! Relaying the model's reply to the client as it is generated.

use futures_util::stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{TurnEvent, telemetry::TurnTelemetry};
use crate::{
    chat::ChatError,
    llm::{LlmError, ModelEvent, ModelStream, ModelToolCall, TokenUsage},
};

pub(super) type EventSender = mpsc::Sender<Result<TurnEvent, ChatError>>;

/// How the model's stream ended.
pub(super) enum Ending {
    Finished,
    /// The client cancelled or went away.
    Cancelled,
    /// The server's shutdown grace period ran out.
    Interrupted,
    Failed(LlmError),
}

/// What the model sent that the turn keeps, and how it ended.
pub(super) struct Relayed {
    pub ending: Ending,
    /// Exactly the text the client was sent.
    pub text: String,
    /// Complete only when the reply finished.
    pub calls: Vec<ModelToolCall>,
    pub usage: Option<TokenUsage>,
    pub finish_reason: Option<String>,
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
/// goes away, or shutdown cuts the turn short. Dropping the model's stream on return closes the
/// upstream request if it is still open.
pub(super) async fn relay(
    mut model: ModelStream,
    sender: &EventSender,
    shutdown: &CancellationToken,
    telemetry: &mut TurnTelemetry,
) -> Relayed {
    let mut relayed = Relayed {
        ending: Ending::Finished,
        text: String::new(),
        calls: Vec::new(),
        usage: None,
        finish_reason: None,
    };
    let span = telemetry.model_span().clone();
    relayed.ending = loop {
        let event = tokio::select! {
            biased;
            () = sender.closed() => break Ending::Cancelled,
            () = shutdown.cancelled() => break Ending::Interrupted,
            event = model.next().instrument(span.clone()) => event,
        };
        match event {
            None => break Ending::Finished,
            Some(Err(error)) => break Ending::Failed(error),
            Some(Ok(ModelEvent::Delta(delta))) => {
                telemetry.text_relayed();
                relayed.text.push_str(&delta);
                if sender.send(Ok(TurnEvent::Delta(delta))).await.is_err() {
                    break Ending::Cancelled;
                }
            }
            Some(Ok(ModelEvent::ToolCall(call))) => relayed.calls.push(call),
            Some(Ok(ModelEvent::Usage(usage))) => relayed.usage = Some(usage),
            Some(Ok(ModelEvent::Finished { reason })) => relayed.finish_reason = Some(reason),
        }
    };
    relayed
}
