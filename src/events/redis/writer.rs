//! Appends to turns' streams: queued by each turn's writer, sent in pipelined batches by one
//! task, each stream's expiry pushed back as it goes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BATCH, EXPIRY_RENEWAL, LINGER, LIVE_EXPIRY, MAX_ENTRIES, Relay, entry_id};
use crate::events::Entry;

pub(super) struct Append {
    stream: Arc<str>,
    entry: Entry,
    /// With the writer's record of when the stream's expiry was last set, if the expiry is set
    /// with this entry (it is with the last): forgotten if the entry never reaches Redis, so
    /// that the writer's next entry sets it.
    sets_expiry: Option<Arc<ExpirySet>>,
}

/// When an append that sets a stream's expiry was last queued.
#[derive(Default)]
pub(super) struct ExpirySet(std::sync::Mutex<Option<Instant>>);

impl ExpirySet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where a generating turn's events go on their way to Redis.
pub(in crate::events) struct RemoteWriter {
    stream: Arc<str>,
    relay: Arc<Relay>,
    expiry_set: Arc<ExpirySet>,
}

impl RemoteWriter {
    pub(super) fn new(relay: Arc<Relay>, stream: String) -> Self {
        Self {
            stream: stream.into(),
            relay,
            expiry_set: Arc::default(),
        }
    }

    pub fn append(&self, entry: Entry) {
        let now = Instant::now();
        let mut expiry_set = self.expiry_set.lock();
        let sets_expiry =
            entry.last || expiry_set.is_none_or(|set| now.duration_since(set) >= EXPIRY_RENEWAL);
        let append = Append {
            stream: self.stream.clone(),
            entry,
            sets_expiry: sets_expiry.then(|| self.expiry_set.clone()),
        };
        // A full queue means Redis is not keeping up: the turn goes on, and readers elsewhere
        // find the gap and say so. The next append sets the expiry in this one's stead.
        if self.relay.appends.try_send(append).is_err() {
            self.relay.metrics.record_event_engine_error("append");
        } else if sets_expiry {
            *expiry_set = Some(now);
        }
    }
}

pub(super) fn add_entry(pipe: &mut redis::Pipeline, stream: &str, entry: &Entry) {
    let command = pipe
        .cmd("XADD")
        .arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(MAX_ENTRIES)
        .arg(entry_id(entry.sequence))
        .arg("d")
        .arg(entry.payload.as_ref());
    if entry.last {
        command.arg("l").arg(1);
    }
    command.ignore();
}

/// Sends queued appends to Redis, as many as are waiting in one pipeline, with the expiry of
/// the streams whose appends set it: the retention once its last event is in, else an hour.
pub(super) async fn write_batches(
    relay: Arc<Relay>,
    mut queue: mpsc::Receiver<Append>,
    retention: Duration,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            first = queue.recv() => first,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else {
            return;
        };
        batch.push(first);
        // A moment's wait gathers the events of every turn that streams meanwhile into one
        // round trip; followers on other replicas read them that much later.
        tokio::time::sleep(LINGER).await;
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(append) => batch.push(append),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        let mut expiries: Vec<(Arc<str>, bool)> = Vec::new();
        for append in &batch {
            add_entry(&mut pipe, &append.stream, &append.entry);
            if append.sets_expiry.is_none() {
                continue;
            }
            match expiries
                .iter_mut()
                .find(|(stream, _)| *stream == append.stream)
            {
                Some((_, ended)) => *ended |= append.entry.last,
                None => expiries.push((append.stream.clone(), append.entry.last)),
            }
        }
        for (stream, ended) in &expiries {
            let expiry = if *ended { retention } else { LIVE_EXPIRY };
            pipe.cmd("PEXPIRE")
                .arg(stream.as_ref())
                .arg(u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX))
                .ignore();
        }
        if !send_batch(&relay, &pipe).await {
            for expiry in batch
                .iter()
                .filter_map(|append| append.sets_expiry.as_ref())
            {
                *expiry.lock() = None;
            }
        }
        batch.clear();
    }
}

/// Sends a batch, again after a pause or two if it fails: a connection broken while Redis was
/// away is made again on the next try. Entries an earlier try did write are refused as
/// duplicates, which is success. Whether it was sent.
async fn send_batch(relay: &Relay, pipe: &redis::Pipeline) -> bool {
    for pause in [100, 300, 1000, 0] {
        let mut connection = relay.writes.clone();
        match pipe.query_async::<()>(&mut connection).await {
            Ok(()) => return true,
            Err(error) if error.to_string().contains("equal or smaller") => return true,
            Err(error) => {
                relay.failed("append", &error);
                if pause == 0 {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
    false
}
