//! A turn's events as they are numbered: each is written to the turn's log, which anyone may
//! follow, and sent to the client that asked, if it is still there.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    events::{ACCEPTED, Sequenced, TurnEvent, encode, ends_the_turn},
    state::Failure,
};
use crate::{
    chat::ChatError,
    events::{Entry, TurnLog},
};

pub(super) type EventSender = mpsc::Sender<Result<Sequenced, ChatError>>;

/// Whether an event reached the client's stream.
pub(super) enum Delivery {
    /// It did, or the turn goes on without the client, which may resume it.
    Delivered,
    /// The client cancelled or went away.
    Gone,
    /// There was no room for the stall timeout.
    Stalled,
}

/// Where a turn's events go: numbered, into its log, and to its client.
pub(super) struct Outlet {
    /// `None` once a turn that goes on without its client has lost it.
    client: Option<EventSender>,
    /// Whether the turn goes on when its client goes away.
    pub detached: bool,
    /// Where the reply's last event goes when the client's stream has no room for it.
    last_word: Option<oneshot::Sender<Result<Sequenced, ChatError>>>,
    /// Whether the client has stopped reading: nothing waits for it any more.
    pub stalled: bool,
    log: Option<TurnLog>,
    next: u64,
}

impl Outlet {
    pub fn new(
        client: EventSender,
        last_word: oneshot::Sender<Result<Sequenced, ChatError>>,
        log: Option<TurnLog>,
        detached: bool,
    ) -> Self {
        Self {
            client: Some(client),
            detached,
            last_word: Some(last_word),
            stalled: false,
            log,
            next: ACCEPTED + 1,
        }
    }

    /// Resolves when the client has gone away from a turn that ends with it; never otherwise.
    /// It holds no borrow of the outlet, so that one wait can last while events go out: the
    /// sender it keeps only watches the client's stream, which ends with the turn's.
    pub fn abandoned(&self) -> impl Future<Output = ()> + Send + 'static {
        let client = self.client.clone().filter(|_| !self.detached);
        async move {
            match client {
                Some(client) => client.closed().await,
                None => std::future::pending().await,
            }
        }
    }

    fn record(&mut self, sequence: u64, payload: Option<Bytes>, last: bool) {
        if let (Some(log), Some(payload)) = (&self.log, payload) {
            log.append(Entry {
                sequence,
                payload,
                last,
            });
        }
    }

    fn payload(&self, event: Result<&TurnEvent, &Failure>) -> Option<Bytes> {
        self.log.as_ref().map(|_| encode(event))
    }

    /// Hands a delta to the client's stream, waiting at most `stall_timeout` for room: a client
    /// that takes nothing for that long is not reading, and must not hold the turn (and its
    /// upstream request) open. A turn that goes on without its client lets it go instead. Only
    /// a delivered delta is logged, so that the log, the stored text and what the client read
    /// agree.
    pub async fn deliver(&mut self, text: String, stall_timeout: Duration) -> Delivery {
        let sequence = self.next;
        let event = TurnEvent::Delta(text);
        let payload = self.payload(Ok(&event));
        let delivery = match &self.client {
            None => Delivery::Delivered,
            Some(client) => {
                let sent = client.send(Ok(Sequenced { sequence, event }));
                match tokio::time::timeout(stall_timeout, sent).await {
                    Ok(Ok(())) => Delivery::Delivered,
                    Ok(Err(_)) => Delivery::Gone,
                    Err(_) => Delivery::Stalled,
                }
            }
        };
        let delivery = match delivery {
            Delivery::Gone | Delivery::Stalled if self.detached => {
                // It may resume the turn from the log; one that is still there learns so at the
                // end of its stream.
                self.client = None;
                self.leave(Err(ChatError::FellBehind(sequence - 1)));
                Delivery::Delivered
            }
            other => other,
        };
        if matches!(delivery, Delivery::Delivered) {
            self.next += 1;
            self.record(sequence, payload, false);
        }
        delivery
    }

    /// Logs the event and tells the client, waiting for room in its stream for no longer than
    /// the stall timeout, and not at all once the client has stalled or `shutdown` is
    /// cancelled. The last event of a reply that finds no room is left for the end of the
    /// stream, where the client finds it when it reads again; a tool call or result that finds
    /// none is dropped (the log and the stored conversation have it).
    pub async fn tell(
        &mut self,
        event: Result<TurnEvent, ChatError>,
        stall_timeout: Duration,
        shutdown: &CancellationToken,
    ) {
        let sequence = self.next;
        self.next += 1;
        let last = ends_the_turn(&event);
        let payload = match &event {
            Ok(event) => self.payload(Ok(event)),
            Err(error) => self.payload(Err(&Failure::of(error))),
        };
        self.record(sequence, payload, last);
        let Some(client) = self.client.clone() else {
            return;
        };
        let room = if self.stalled || shutdown.is_cancelled() {
            client.try_reserve().ok()
        } else {
            tokio::select! {
                biased;
                reserved = tokio::time::timeout(stall_timeout, client.reserve()) => {
                    match reserved {
                        Ok(Ok(permit)) => Some(permit),
                        // The client went away: there is no one to tell.
                        Ok(Err(_)) => return,
                        Err(_) => {
                            self.stalled = true;
                            None
                        }
                    }
                }
                () = shutdown.cancelled() => client.try_reserve().ok(),
            }
        };
        let event = event.map(|event| Sequenced { sequence, event });
        match room {
            Some(permit) => permit.send(event),
            None if last => self.leave(event),
            None => {}
        }
    }

    /// Leaves the reply's last event for the end of the client's stream.
    fn leave(&mut self, event: Result<Sequenced, ChatError>) {
        if let Some(last_word) = self.last_word.take() {
            let _ = last_word.send(event);
        }
    }

    /// Leaves the reply's last event for the end of the client's stream, without waiting: the
    /// client is not reading, and learns why when it does.
    pub fn leave_last(&mut self, error: ChatError) {
        let sequence = self.next;
        self.next += 1;
        let payload = self.payload(Err(&Failure::of(&error)));
        self.record(sequence, payload, true);
        self.leave(Err(error));
    }

    /// Closes the turn's log: its end is stored.
    pub fn close_log(&mut self) {
        self.log = None;
    }
}
