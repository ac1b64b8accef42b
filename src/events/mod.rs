//! A turn's events as they are generated, for whoever follows the turn: the client that asked,
//! a retry of the same request, or a client resuming after a broken stream, on any replica.
//!
//! The replica generating a turn keeps its events in memory until the turn has ended. With
//! Redis configured it also appends them to a Redis Stream of the turn's own, from which other
//! replicas read; cancellation travels through Redis too. Without Redis, following and
//! cancelling work on the generating replica only. The events are opaque bytes here: the use
//! case that writes them decides what they say.

mod local;
mod redis;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use self::{
    local::{Local, LocalLog},
    redis::{Relay, RemoteWriter},
};
use crate::{
    domain::{Attempt, TurnId},
    telemetry::metrics::Metrics,
};

/// One attempt at generating a turn: a turn generated again after a failure numbers its events
/// afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TurnKey {
    pub turn: TurnId,
    pub attempt: Attempt,
}

/// One event of a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the turn: one more than the entry before it.
    pub sequence: u64,
    pub payload: Bytes,
    /// Whether it is the turn's last.
    pub last: bool,
}

/// What reading a turn's events yields.
#[derive(Debug)]
pub enum Read {
    Entry(Entry),
    /// Nothing came for a while: the reader may check that the turn is still alive.
    Idle,
}

pub type Entries = BoxStream<'static, Result<Read, EventsError>>;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The turn is not generated here, and no engine carries events between replicas.
    #[error("the turn is generated on another replica, and without Redis its events stay there")]
    Elsewhere,
    /// The engine could not be reached, or refused.
    #[error("the event engine is unavailable: {0}")]
    Unavailable(String),
}

/// How turn events travel.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Redis, to carry events and cancellations between replicas; `None` keeps them in process.
    pub redis_url: Option<secrecy::SecretString>,
    /// How long a reader waits for the next event before it checks that the turn is alive.
    pub idle_check: Duration,
    /// How long a turn's stream stays in Redis once the turn has ended, for readers that are
    /// still catching up; later readers replay the turn from the database.
    pub retention: Duration,
    /// Whether readiness waits for Redis as it does for the database.
    pub gates_readiness: bool,
}

/// The events of the turns this replica generates, and the means to follow and cancel any turn.
#[derive(Clone)]
pub struct TurnEvents {
    local: Arc<Local>,
    relay: Option<Arc<Relay>>,
}

impl TurnEvents {
    /// Events that stay in this process.
    pub fn in_process() -> Self {
        Self {
            local: Arc::new(Local::default()),
            relay: None,
        }
    }

    /// Events shared through Redis as `settings` say, if they name it. Redis need not be up: the
    /// connection is made when first needed, and made again after it breaks. Stops its
    /// background work when `stop` is cancelled.
    pub fn start(
        settings: &EventSettings,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Result<Self, EventsError> {
        let local = Arc::new(Local::default());
        let relay = match &settings.redis_url {
            None => None,
            Some(url) => Some(Relay::start(url, settings, local.clone(), metrics, stop)?),
        };
        Ok(Self { local, relay })
    }

    /// Whether this replica generates the turn now.
    pub fn generates(&self, key: TurnKey) -> bool {
        self.local.find(key).is_some()
    }

    /// Whether events and cancellations reach other replicas.
    pub fn is_shared(&self) -> bool {
        self.relay.is_some()
    }

    /// Whether the engine that carries events between replicas answers; without one, yes.
    pub async fn answers(&self) -> bool {
        match &self.relay {
            Some(relay) => relay.ping().await.is_ok(),
            None => true,
        }
    }

    /// Opens the log of a turn this replica is about to generate.
    pub fn open(&self, key: TurnKey) -> TurnLog {
        TurnLog {
            key,
            local: self.local.open(key),
            remote: self.relay.as_ref().map(|relay| relay.writer(key)),
            events: self.local.clone(),
        }
    }

    /// The turn's events after `after`, those already written first, until its last. On the
    /// replica generating it they come from memory; elsewhere from Redis.
    pub fn read(&self, key: TurnKey, after: u64) -> Result<Entries, EventsError> {
        if let Some(log) = self.local.find(key) {
            return Ok(LocalLog::read(log, after));
        }
        match &self.relay {
            Some(relay) => Ok(relay.read(key, after)),
            None => Err(EventsError::Elsewhere),
        }
    }

    /// Resolves once the turn, generated here, has ended: its log closes once its end is stored,
    /// or storing it failed. `None` if this replica does not generate it.
    pub fn ended_here(&self, key: TurnKey) -> Option<impl Future<Output = ()> + use<>> {
        let log = self.local.find(key)?;
        Some(async move { log.closed().await })
    }

    /// Every event of the turn written so far, as far as they can be found: for a turn whose
    /// replica stopped, what it had sent.
    pub async fn written(&self, key: TurnKey) -> Result<Vec<Entry>, EventsError> {
        if let Some(log) = self.local.find(key) {
            return Ok(log.entries());
        }
        match &self.relay {
            Some(relay) => relay.written(key).await,
            None => Err(EventsError::Elsewhere),
        }
    }

    /// Appends the last event of a turn whose replica stopped before it could, so that its
    /// readers on other replicas learn how it ended.
    pub async fn close_for_lost(&self, key: TurnKey, entry: Entry) -> Result<(), EventsError> {
        match &self.relay {
            Some(relay) => relay.append_now(key, entry).await,
            None => Ok(()),
        }
    }

    /// Cancelled when anyone, on any replica, cancels the turn, for as long as the watch lives.
    pub fn watch_cancel(&self, turn: TurnId) -> CancelWatch {
        CancelWatch {
            token: self.local.watch_cancel(turn),
            turn,
            local: self.local.clone(),
        }
    }

    /// Cancels the turn wherever it is generated.
    pub async fn cancel(&self, turn: TurnId) -> Result<(), EventsError> {
        if self.local.cancel(turn) {
            return Ok(());
        }
        match &self.relay {
            Some(relay) => relay.cancel(turn).await,
            None => Err(EventsError::Elsewhere),
        }
    }
}

/// The log a generating turn writes its events to.
pub struct TurnLog {
    key: TurnKey,
    local: Arc<LocalLog>,
    remote: Option<RemoteWriter>,
    events: Arc<Local>,
}

impl TurnLog {
    /// Appends the next event. Never waits: the events go to Redis in batches, behind the turn.
    pub fn append(&self, entry: Entry) {
        if let Some(remote) = &self.remote {
            remote.append(entry.clone());
        }
        self.local.append(entry);
    }
}

impl Drop for TurnLog {
    /// The turn has ended and its end is stored: readers that come later replay it from the
    /// database. Those reading now read to the end.
    fn drop(&mut self) {
        self.local.close();
        self.events.forget(self.key, &self.local);
    }
}

/// A turn's cancellation, while it is generated here.
pub struct CancelWatch {
    token: CancellationToken,
    turn: TurnId,
    local: Arc<Local>,
}

impl CancelWatch {
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        self.local.unwatch_cancel(self.turn, &self.token);
    }
}
