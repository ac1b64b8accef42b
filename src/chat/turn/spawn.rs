//! Starting the task that generates a reply: its model request goes out at once, its events
//! are held until the message it answers is committed.

use std::time::Instant;

use futures_util::Stream;
use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{
    context::build_context,
    events::{ACCEPTED, Accepted, Sequenced, TurnEvent},
    offer::Offer,
    outlet::Outlet,
    persist::record_end,
    service::{TurnStream, Turns},
    state::{EndState, Failure, TurnEnd},
    task::{FirstExchange, ReplyTask, ToolRounds},
    telemetry::{TurnLabels, TurnTelemetry},
};
use crate::{
    chat::{ChatError, StreamPermit},
    domain::{ConversationId, RecentMessage, TurnState, UserId},
    events::{CancelWatch, TurnKey},
    llm::{ModelChoice, ModelRequest},
};

/// How many events may wait for a slow client before the model is made to wait too.
const EVENT_BUFFER: usize = 16;

// The channel allocates its slots 32 at a time, each the size of an event: the events that come
// once a turn are boxed (`TurnEvent`), so that every open stream does not pay for the largest.
const _: () = assert!(std::mem::size_of::<Result<Sequenced, ChatError>>() <= 48);

/// A reply task just started, and the means to release it and to hear from it.
pub(super) struct SpawnedReply {
    /// Fired once the user message is committed; dropped, it aborts the model request.
    commit: oneshot::Sender<()>,
    events: mpsc::Receiver<Result<Sequenced, ChatError>>,
    /// The reply's last event (`completed` or an error), when `events` had no room for it: it
    /// comes after everything `events` holds.
    last_word: oneshot::Receiver<Result<Sequenced, ChatError>>,
}

impl SpawnedReply {
    /// Lets the reply go (its user message is committed) and returns the events of the turn as
    /// its client reads them: `accepted`, the reply's, and the last one, when the stream had no
    /// room for it, after everything else.
    pub fn release(self, accepted: Accepted) -> TurnStream {
        use tokio_stream::StreamExt;
        let accepted = Sequenced {
            sequence: ACCEPTED,
            event: TurnEvent::Accepted(Box::new(accepted)),
        };
        Box::pin(tokio_stream::once(Ok(accepted)).chain(self.reply()))
    }

    /// Lets the reply go (what it answers is committed) and returns its events as its client
    /// reads them: the last one, when the stream had no room for it, after everything else.
    pub fn go_on(self) -> TurnStream {
        Box::pin(self.reply())
    }

    fn reply(self) -> impl Stream<Item = Result<Sequenced, ChatError>> + Send + 'static {
        use tokio_stream::StreamExt;
        let _ = self.commit.send(());
        let last_word = futures_util::stream::once(self.last_word).filter_map(Result::ok);
        tokio_stream::wrappers::ReceiverStream::new(self.events).chain(last_word)
    }
}

/// Who a reply is for, where it goes, and the request it answers.
pub(super) struct ReplyOrigin<'a> {
    pub user: UserId,
    pub conversation_id: ConversationId,
    /// The newest message's time: the reply is stored after it.
    pub after: chrono::DateTime<chrono::Utc>,
    pub request_id: &'a str,
    /// When the request arrived: time to first token is measured from here.
    pub received_at: Instant,
    pub bearer: Option<&'a SecretString>,
    /// The turn the reply is for, if it is one that may be followed.
    pub turn: Option<LiveTurn>,
    /// The turn's cancellation, watched from before the turn could be seen.
    pub cancel: Option<CancelWatch>,
    /// The model asked first.
    pub model: ModelChoice,
}

/// A turn being generated: its attempt, and whether it outlives its client.
#[derive(Debug, Clone, Copy)]
pub(super) struct LiveTurn {
    pub key: TurnKey,
    pub detached: bool,
}

impl Turns {
    /// Starts the task that relays and stores the reply. It sends the model request at once but
    /// relays nothing until the returned sender fires, once the user message is committed;
    /// dropping the sender instead aborts the model request. The task carries the request's
    /// span, so that its log lines carry the request id.
    pub(super) fn spawn_reply(
        &self,
        request: ReplyOrigin<'_>,
        context: Vec<RecentMessage>,
        offer: Offer,
        permit: StreamPermit,
    ) -> SpawnedReply {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let (commit_tx, committed) = oneshot::channel();
        let (last_word_tx, last_word) = oneshot::channel();
        let events_port = &self.runtime.events;
        let log = request.turn.map(|turn| events_port.open(turn.key));
        let cancel = request.cancel;
        let detached = request.turn.is_some_and(|turn| turn.detached);
        let outlet = Outlet::new(sender, last_word_tx, log, detached);
        let conversation_id = request.conversation_id;
        let first_exchange = self.first_exchange(&context);
        let model_request = build_context(&self.settings, context, offer.specs());
        let chosen = self.models.get(request.model);
        let tools = self.tool_rounds(offer, request.bearer, &model_request, request.model);
        let task = ReplyTask {
            store: self.store.clone(),
            recent: self.recent.clone(),
            user: request.user,
            conversation_id,
            after: request.after,
            models: self.models.clone(),
            model: request.model,
            shutdown: self.runtime.shutdown.clone(),
            stall_timeout: self.settings.stream_stall_timeout,
            permit: Some(permit),
            outlet,
            turn: request.turn.map(|turn| turn.key),
            cancel,
            tools,
            metrics: self.runtime.metrics.clone(),
            answered: 0,
            end: EndState::Open,
            first_exchange,
            prompt_bytes: model_request.text_bytes(),
            token_counters: self.token_counters.clone(),
        };
        let labels = TurnLabels {
            request_id: request.request_id.to_owned(),
            conversation_id,
            user: request.user,
        };
        let telemetry = TurnTelemetry::start(
            self.runtime.metrics.clone(),
            labels,
            chosen.model.name(),
            chosen.model.provider(),
            request.received_at,
        );
        let model = self.models.stream(request.model, model_request);
        let task = task
            .run(model, committed, telemetry)
            .instrument(tracing::Span::current());
        self.runtime.tasks.spawn(task);
        SpawnedReply {
            commit: commit_tx,
            events,
            last_word,
        }
    }

    /// The conversation's first message, when this turn answers it and the model names
    /// conversations: the context then holds that message alone.
    fn first_exchange(&self, context: &[RecentMessage]) -> Option<Box<FirstExchange>> {
        let titler = self.titler.as_ref()?;
        match context {
            [first] => Some(Box::new(FirstExchange {
                titler: titler.clone(),
                said: first.content.clone(),
            })),
            _ => None,
        }
    }

    /// What a reply needs to run the tools its model calls; `None` when it is offered none.
    fn tool_rounds(
        &self,
        offer: Offer,
        caller: Option<&SecretString>,
        request: &ModelRequest,
        model: ModelChoice,
    ) -> Option<Box<ToolRounds>> {
        // Only a reply that may call tools needs its request again, for the next round.
        let runs_tools = self.runtime.toolbox.is_configured() || !offer.client.is_empty();
        runs_tools.then(|| {
            Box::new(ToolRounds {
                toolbox: self.runtime.toolbox.clone(),
                catalog: offer.catalog,
                client_tools: offer.client.into_iter().map(|tool| tool.name).collect(),
                results_wait: self.settings.tool_results_timeout,
                caller: caller.cloned(),
                model: self.models.get(model).model.clone(),
                request: request.clone(),
                rounds: 0,
                max_rounds: self.settings.max_tool_rounds,
            })
        })
    }

    /// Ends a turn that no reply task took, as failed: a retry generates it.
    pub(super) async fn end_unstarted(&self, key: TurnKey) {
        let end = TurnEnd::Failed(Failure::Unavailable);
        if let Err(error) = record_end(&self.store, key, TurnState::Generating, &end).await {
            tracing::warn!(turn = %key.turn, error = %error, "ending a turn that never started failed");
        }
    }
}
