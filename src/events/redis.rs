//! Turn events between replicas, through Redis Streams: one stream per turn attempt, each event
//! an entry whose id is `0-<sequence>`, so that a reader resumes with `XREAD` from the id of the
//! last event it has, and an event appended twice is refused rather than duplicated. Appends go
//! out in pipelined batches from one task; each reader holds a connection of its own, since a
//! blocking `XREAD` holds its connection. Cancellations are entries of one shared stream that
//! every replica follows.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use redis::{
    AsyncConnectionConfig, Client, Value,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    streams::{StreamId, StreamRangeReply, StreamReadReply},
};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Entries, Entry, EventSettings, EventsError, Read, TurnKey, local::Local};
use crate::{domain::MessageId, telemetry::metrics::Metrics};

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

struct Append {
    stream: Arc<str>,
    entry: Entry,
    /// With the writer's record of when the stream's expiry was last set, if the expiry is set
    /// with this entry (it is with the last): forgotten if the entry never reaches Redis, so
    /// that the writer's next entry sets it.
    sets_expiry: Option<Arc<ExpirySet>>,
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
        RemoteWriter {
            stream: stream_name(key).into(),
            relay: self.clone(),
            expiry_set: Arc::default(),
        }
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
        struct Reader {
            relay: Arc<Relay>,
            stream: String,
            connection: Option<MultiplexedConnection>,
            cursor: u64,
            ready: std::collections::VecDeque<Entry>,
            done: bool,
        }
        let reader = Reader {
            relay: self.clone(),
            stream: stream_name(key),
            connection: None,
            cursor: after,
            ready: std::collections::VecDeque::new(),
            done: false,
        };
        Box::pin(futures_util::stream::unfold(
            reader,
            |mut reader| async move {
                if reader.done {
                    return None;
                }
                if let Some(entry) = reader.ready.pop_front() {
                    reader.cursor = entry.sequence;
                    reader.done = entry.last;
                    return Some((Ok(Read::Entry(entry)), reader));
                }
                let mut connection = match reader.connection.take() {
                    Some(connection) => connection,
                    None => match reader.relay.reader_connection().await {
                        Ok(connection) => connection,
                        Err(error) => {
                            reader.done = true;
                            return Some((Err(error), reader));
                        }
                    },
                };
                let block = u64::try_from(reader.relay.idle_check.as_millis()).unwrap_or(u64::MAX);
                let reply: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("BLOCK")
                    .arg(block)
                    .arg("STREAMS")
                    .arg(&reader.stream)
                    .arg(entry_id(reader.cursor))
                    .query_async(&mut connection)
                    .await;
                match reply {
                    Ok(None) => {
                        reader.connection = Some(connection);
                        Some((Ok(Read::Idle), reader))
                    }
                    Ok(Some(reply)) => {
                        reader.connection = Some(connection);
                        let ids = reply.keys.into_iter().flat_map(|key| key.ids);
                        match ids.map(parse_entry).collect::<Result<Vec<_>, _>>() {
                            Ok(entries) => {
                                reader.ready.extend(entries);
                                // An empty reply is not expected; it reads as idle.
                                match reader.ready.pop_front() {
                                    Some(entry) => {
                                        reader.cursor = entry.sequence;
                                        reader.done = entry.last;
                                        Some((Ok(Read::Entry(entry)), reader))
                                    }
                                    None => Some((Ok(Read::Idle), reader)),
                                }
                            }
                            Err(error) => {
                                reader.done = true;
                                Some((Err(error), reader))
                            }
                        }
                    }
                    Err(error) => {
                        reader.done = true;
                        Some((Err(reader.relay.failed("read", &error)), reader))
                    }
                }
            },
        ))
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

    pub async fn cancel(&self, turn: MessageId) -> Result<(), EventsError> {
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

/// When an append that sets a stream's expiry was last queued.
#[derive(Default)]
struct ExpirySet(std::sync::Mutex<Option<Instant>>);

impl ExpirySet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where a generating turn's events go on their way to Redis.
pub(super) struct RemoteWriter {
    stream: Arc<str>,
    relay: Arc<Relay>,
    expiry_set: Arc<ExpirySet>,
}

impl RemoteWriter {
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

fn add_entry(pipe: &mut redis::Pipeline, stream: &str, entry: &Entry) {
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

/// Sends queued appends to Redis, as many as are waiting in one pipeline, with the expiry of
/// the streams whose appends set it: the retention once its last event is in, else an hour.
async fn write_batches(
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
                        let turn = std::str::from_utf8(turn).ok().map(MessageId::parse);
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
