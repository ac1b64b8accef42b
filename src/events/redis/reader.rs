//! Reading a turn's stream from a cursor: batches of entries by blocking `XREAD`, on a
//! connection of the reader's own, with an idle tick when nothing came for a while.

use std::{collections::VecDeque, sync::Arc};

use redis::{aio::MultiplexedConnection, streams::StreamReadReply};

use super::{BATCH, Relay, entry_id, parse_entry};
use crate::events::{Entries, Entry, EventsError, Read};

pub(super) struct Reader {
    relay: Arc<Relay>,
    stream: String,
    /// Kept between reads; a failed read drops it.
    connection: Option<MultiplexedConnection>,
    /// The sequence of the last entry read.
    cursor: u64,
    /// Entries read from Redis, not yet handed out.
    ready: VecDeque<Entry>,
    /// Set once the last entry was handed out, or reading failed.
    done: bool,
}

impl Reader {
    pub fn new(relay: Arc<Relay>, stream: String, after: u64) -> Self {
        Self {
            relay,
            stream,
            connection: None,
            cursor: after,
            ready: VecDeque::new(),
            done: false,
        }
    }

    pub fn into_entries(self) -> Entries {
        Box::pin(futures_util::stream::unfold(
            self,
            |mut reader| async move {
                let item = reader.next().await?;
                Some((item, reader))
            },
        ))
    }

    async fn next(&mut self) -> Option<Result<Read, EventsError>> {
        if self.done {
            return None;
        }
        if self.ready.is_empty() {
            match self.fetch().await {
                Ok(true) => {}
                Ok(false) => return Some(Ok(Read::Idle)),
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
        // An empty reply is not expected; it reads as idle.
        let Some(entry) = self.ready.pop_front() else {
            return Some(Ok(Read::Idle));
        };
        self.cursor = entry.sequence;
        self.done = entry.last;
        Some(Ok(Read::Entry(entry)))
    }

    /// Reads the entries after the cursor into `ready`, waiting for them up to the relay's
    /// idle check. `false` if none came meanwhile.
    async fn fetch(&mut self) -> Result<bool, EventsError> {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.relay.reader_connection().await?,
        };
        let block = u64::try_from(self.relay.idle_check.as_millis()).unwrap_or(u64::MAX);
        let reply: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(entry_id(self.cursor))
            .query_async(&mut connection)
            .await;
        let reply = reply.map_err(|error| self.relay.failed("read", &error))?;
        self.connection = Some(connection);
        let Some(reply) = reply else {
            return Ok(false);
        };
        let ids = reply.keys.into_iter().flat_map(|key| key.ids);
        let entries = ids.map(parse_entry).collect::<Result<Vec<_>, _>>()?;
        self.ready.extend(entries);
        Ok(true)
    }
}
