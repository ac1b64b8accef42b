//! Turn events within one replica: each generating turn's events in memory, and its
//! cancellation token.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Entries, Entry, Read, TurnKey};
use crate::domain::TurnId;

#[derive(Default)]
pub(super) struct Local {
    logs: Mutex<HashMap<TurnKey, Arc<LocalLog>>>,
    cancels: Mutex<HashMap<TurnId, CancellationToken>>,
}

impl Local {
    pub fn open(&self, key: TurnKey) -> Arc<LocalLog> {
        let log = Arc::new(LocalLog::new());
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, log.clone());
        log
    }

    pub fn find(&self, key: TurnKey) -> Option<Arc<LocalLog>> {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    }

    /// Forgets the log of a turn that has ended, unless a newer log took its place.
    pub fn forget(&self, key: TurnKey, log: &Arc<LocalLog>) {
        let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        if logs.get(&key).is_some_and(|kept| Arc::ptr_eq(kept, log)) {
            logs.remove(&key);
        }
    }

    pub fn watch_cancel(&self, turn: TurnId) -> CancellationToken {
        let token = CancellationToken::new();
        self.cancels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(turn, token.clone());
        token
    }

    pub fn unwatch_cancel(&self, turn: TurnId, token: &CancellationToken) {
        let mut cancels = self.cancels.lock().unwrap_or_else(PoisonError::into_inner);
        if cancels.get(&turn).is_some_and(|kept| kept == token) {
            cancels.remove(&turn);
        }
    }

    /// Cancels the turn if it is generated here. Whether it was.
    pub fn cancel(&self, turn: TurnId) -> bool {
        let token = self
            .cancels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&turn)
            .cloned();
        token.map(|token| token.cancel()).is_some()
    }
}

/// The events of one turn generated here.
pub(super) struct LocalLog {
    state: Mutex<LogState>,
    /// Bumped at every change, to wake readers.
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct LogState {
    entries: Vec<Entry>,
    /// No more entries will come.
    closed: bool,
}

impl LocalLog {
    fn new() -> Self {
        Self {
            state: Mutex::new(LogState::default()),
            changes: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn append(&self, entry: Entry) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.entries.push(entry);
        drop(state);
        self.changes.send_modify(|version| *version += 1);
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.changes.send_modify(|version| *version += 1);
    }

    /// Resolves once the log is closed: the turn has ended, and its end is stored (or storing
    /// it failed).
    pub async fn closed(&self) {
        // Subscribed before the check: a close after it wakes the wait.
        let mut changes = self.changes.subscribe();
        while !self.lock().closed {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.clone()
    }

    /// The entries after `after` and whether the log is closed.
    fn after(&self, after: u64) -> (Vec<Entry>, bool) {
        let state = self.lock();
        let start = state
            .entries
            .partition_point(|entry| entry.sequence <= after);
        let entries = state.entries.get(start..).unwrap_or_default().to_vec();
        (entries, state.closed)
    }

    /// The entries after `after`, then those to come, until the last or until the log closes.
    pub fn read(log: Arc<Self>, after: u64) -> Entries {
        struct Reader {
            log: Arc<LocalLog>,
            changes: watch::Receiver<u64>,
            cursor: u64,
            ready: VecDeque<Entry>,
            done: bool,
        }
        let changes = log.changes.subscribe();
        let reader = Reader {
            log,
            changes,
            cursor: after,
            ready: VecDeque::new(),
            done: false,
        };
        Box::pin(futures_util::stream::unfold(
            reader,
            |mut reader| async move {
                loop {
                    if reader.done {
                        return None;
                    }
                    if let Some(entry) = reader.ready.pop_front() {
                        reader.cursor = entry.sequence;
                        reader.done = entry.last;
                        return Some((Ok(Read::Entry(entry)), reader));
                    }
                    // Marked seen first: a change made after this wakes the wait below.
                    reader.changes.borrow_and_update();
                    let (entries, closed) = reader.log.after(reader.cursor);
                    if entries.is_empty() {
                        if closed || reader.changes.changed().await.is_err() {
                            return None;
                        }
                        continue;
                    }
                    reader.ready.extend(entries);
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn entry(sequence: u64, last: bool) -> Entry {
        Entry {
            sequence,
            payload: bytes::Bytes::from(sequence.to_string()),
            last,
        }
    }

    #[tokio::test]
    async fn closed_waits_for_the_close() {
        let log = Arc::new(LocalLog::new());
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.closed().await }
        });
        // The waiting task runs at each yield: first to wait, then to see the append.
        tokio::task::yield_now().await;
        log.append(entry(1, true));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the last entry is not the close");
        log.close();
        waiting.await.unwrap();
        // A log closed already answers at once.
        log.closed().await;
    }

    async fn sequences(mut entries: Entries) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Some(read) = entries.next().await {
            match read {
                Ok(Read::Entry(entry)) => seen.push(entry.sequence),
                other => panic!("unexpected {other:?}"),
            }
        }
        seen
    }

    #[tokio::test]
    async fn a_reader_gets_what_was_written_after_its_point_then_what_comes_until_the_last() {
        let log = Arc::new(LocalLog::new());
        log.append(entry(2, false));
        log.append(entry(3, false));
        let reading = tokio::spawn(sequences(LocalLog::read(log.clone(), 2)));
        log.append(entry(4, false));
        log.append(entry(5, true));
        log.append(entry(6, false));
        assert_eq!(reading.await.unwrap(), [3, 4, 5]);
    }

    #[tokio::test]
    async fn a_log_closed_without_a_last_entry_ends_its_readers() {
        let log = Arc::new(LocalLog::new());
        log.append(entry(2, false));
        let reading = tokio::spawn(sequences(LocalLog::read(log.clone(), 0)));
        log.close();
        assert_eq!(reading.await.unwrap(), [2]);
    }

    #[test]
    fn a_cancel_reaches_the_turn_watched_here_and_only_while_watched() {
        let local = Local::default();
        let turn = TurnId::generate();
        assert!(!local.cancel(turn));
        let token = local.watch_cancel(turn);
        assert!(local.cancel(turn));
        assert!(token.is_cancelled());
        local.unwatch_cancel(turn, &token);
        assert!(!local.cancel(turn));
    }
}
