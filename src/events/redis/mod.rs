//! Turn events between replicas, through Redis Streams: one stream per turn attempt, each event
//! an entry whose id is `0-<sequence>`, so that a reader resumes with `XREAD` from the id of the
//! last event it has, and an event appended twice is refused rather than duplicated. Appends go
//! out in pipelined batches from one task; each reader holds a connection of its own, since a
//! blocking `XREAD` holds its connection. Cancellations are entries of one shared stream that
//! every replica follows.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use redis::{
    AsyncConnectionConfig, Client, Value,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    streams::{StreamId, StreamRangeReply, StreamReadReply},
};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod reader;
mod writer;

pub(in crate::events) use self::writer::RemoteWriter;
use self::{
    reader::Reader,
    writer::{Append, add_entry, write_batches},
};
use super::{Entries, Entry, EventSettings, EventsError, TurnKey, local::Local};
use crate::{domain::TurnId, telemetry::metrics::Metrics};

/// The most entries a turn's stream keeps: far more than a reply's events, so that the bound
/// only stops a runaway turn from filling Redis.
const MAX_ENTRIES: u64 = 100_000;
/// How long a turn's stream lives without news: a turn whose replica died is gone from Redis
/// after this, and readers replay it from the database.
const LIVE_EXPIRY: Duration = Duration::from_secs(3600);
/// How often a live stream's expiry is pushed back: with its first event, then with the first
/// event this long after the last push, rather than with every event, which would double the
/// commands Redis runs.
const EXPIRY_RENEWAL: Duration = Duration::from_secs(60);
/// Appends waiting for Redis; more are dropped (and counted) rather than held.
const APPEND_QUEUE: usize = 8192;
/// How long the first append of a batch waits for others.
const LINGER: Duration = Duration::from_millis(1);
/// Appends sent in one pipeline at most.
const BATCH: usize = 256;
/// The stream of cancellations every replica follows.
const CANCELS: &str = "chat:turn-cancels";
const MAX_CANCELS: u64 = 10_000;
/// How long one request to Redis may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct Relay {
    client: Client,
    appends: mpsc::Sender<Append>,
    writes: ConnectionManager,
    metrics: Arc<Metrics>,
    idle_check: Duration,
}

fn stream_name(key: TurnKey) -> String {
    format!("chat:turn:{}:{}", key.turn, key.attempt.get())
}

fn entry_id(sequence: u64) -> String {
    format!("0-{sequence}")
}

impl Relay {
    pub fn start(
        url: &secrecy::SecretString,
        settings: &EventSettings,
        local: Arc<Local>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, EventsError> {
        // The URL's text is never shown: it may carry a password.
        let client = Client::open(url.expose_secret())
            .map_err(|_| EventsError::Unavailable("CHAT_REDIS_URL is not a Redis URL".into()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let writes = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| EventsError::Unavailable(e.to_string()))?;
        let (appends, queue) = mpsc::channel(APPEND_QUEUE);
        let relay = Arc::new(Self {
            client,
            appends,
            writes,
            metrics,
            idle_check: settings.idle_check,
        });
        let retention = settings.retention;
        tokio::spawn(write_batches(relay.clone(), queue, retention, stop.clone()));
        tokio::spawn(follow_cancels(relay.clone(), local, stop));
        Ok(relay)
    }

    pub fn writer(self: &Arc<Self>, key: TurnKey) -> RemoteWriter {
        RemoteWriter::new(self.clone(), stream_name(key))
    }

    async fn reader_connection(&self) -> Result<MultiplexedConnection, EventsError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.idle_check + RESPONSE_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.failed("read", &e))
    }

    fn failed(&self, operation: &'static str, error: &redis::RedisError) -> EventsError {
        self.metrics.record_event_engine_error(operation);
        tracing::warn!(operation, error = %error, "Redis failed");
        EventsError::Unavailable(error.to_string())
    }

    pub fn read(self: &Arc<Self>, key: TurnKey, after: u64) -> Entries {
        Reader::new(self.clone(), stream_name(key), after).into_entries()
    }

    pub async fn written(&self, key: TurnKey) -> Result<Vec<Entry>, EventsError> {
        let mut connection = self.writes.clone();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream_name(key))
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .map_err(|e| self.failed("read", &e))?;
        reply.ids.into_iter().map(parse_entry).collect()
    }

    pub async fn append_now(&self, key: TurnKey, entry: Entry) -> Result<(), EventsError> {
        let stream = stream_name(key);
        let mut pipe = redis::pipe();
        add_entry(&mut pipe, &stream, &entry);
        pipe.cmd("EXPIRE")
            .arg(&stream)
            .arg(LIVE_EXPIRY.as_secs())
            .ignore();
        let mut connection = self.writes.clone();
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.failed("append", &e))
    }

    pub async fn ping(&self) -> Result<(), EventsError> {
        let mut connection = self.writes.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.failed("ping", &e))
    }

    pub async fn cancel(&self, turn: TurnId) -> Result<(), EventsError> {
        let mut connection = self.writes.clone();
        redis::cmd("XADD")
            .arg(CANCELS)
            .arg("MAXLEN")
            .arg("~")
            .arg(MAX_CANCELS)
            .arg("*")
            .arg("turn")
            .arg(turn.to_string())
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.failed("cancel", &e))
    }
}

fn parse_entry(id: StreamId) -> Result<Entry, EventsError> {
    let malformed = || EventsError::Unavailable(format!("a malformed entry {}", id.id));
    let sequence = id
        .id
        .strip_prefix("0-")
        .and_then(|sequence| sequence.parse::<u64>().ok())
        .ok_or_else(malformed)?;
    let payload = match id.map.get("d") {
        Some(Value::BulkString(bytes)) => Bytes::copy_from_slice(bytes),
        _ => return Err(malformed()),
    };
    Ok(Entry {
        sequence,
        payload,
        last: id.map.contains_key("l"),
    })
}

/// Follows the stream of cancellations and cancels the turns generated here, from the newest
/// entry on; reconnects after a failure.
async fn follow_cancels(relay: Arc<Relay>, local: Arc<Local>, stop: CancellationToken) {
    let mut last_seen: Option<String> = None;
    loop {
        let followed = async {
            let mut connection = relay.reader_connection().await?;
            let mut cursor = match last_seen.clone() {
                Some(cursor) => cursor,
                None => newest_cancel(&relay, &mut connection).await?,
            };
            loop {
                let block = u64::try_from(relay.idle_check.as_millis()).unwrap_or(u64::MAX);
                let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("BLOCK")
                    .arg(block)
                    .arg("STREAMS")
                    .arg(CANCELS)
                    .arg(&cursor)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| relay.failed("cancel", &e))?;
                for id in reply
                    .into_iter()
                    .flat_map(|reply| reply.keys)
                    .flat_map(|key| key.ids)
                {
                    if let Some(Value::BulkString(turn)) = id.map.get("turn") {
                        let turn = std::str::from_utf8(turn).ok().map(TurnId::parse);
                        if let Some(Ok(turn)) = turn {
                            local.cancel(turn);
                        }
                    }
                    cursor = id.id;
                    last_seen = Some(cursor.clone());
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), EventsError>(())
        };
        tokio::select! {
            _ = followed => {}
            () = stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The id of the newest cancellation, from which to follow; "0-0" when there is none.
async fn newest_cancel(
    relay: &Relay,
    connection: &mut MultiplexedConnection,
) -> Result<String, EventsError> {
    let newest: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(CANCELS)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(connection)
        .await
        .map_err(|e| relay.failed("cancel", &e))?;
    Ok(newest
        .ids
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |id| id.id))
}
