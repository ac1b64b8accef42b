//! Measures what the service costs: its overhead on time to first token, throughput, CPU and
//! memory, and read latency, against the release binary, a fake OpenAI-compatible upstream and
//! the local PostgreSQL. See BENCHMARKS.md for how to run it and what it found.
//!
//!     cargo build --release && cargo run --release --example bench -- [OPTION...] [SCENARIO...]
//!
//! Scenarios: streams-1, streams-50, streams-50-keyed, streams-500, streams-50-redis, slow-2000,
//! slow-10000 (only when named),
//! reads, search (only when named; a user with 10,000 messages among 1,000,000) (default: all of
//! them). streams-50-keyed names every request with a `request_id`, as a
//! client built to retry does. streams-50-redis runs a second server that relays turn events
//! through Redis (`CHAT_BENCH_REDIS_URL`, by default redis://127.0.0.1:6379). soak-1000 holds
//! 1,000 users with request ids on two such servers for ten minutes, against a model of 200 ms to
//! the first token and 20 chunks 50 ms apart; it runs only when named. streams-500 first measures
//! a client talking to the upstream directly, for comparison. Each turn scenario reports
//! the CPU the hypervisor took meanwhile (steal, from /proc/stat), PostgreSQL's CPU per turn (its
//! processes' /proc/PID/stat), the statements it ran per turn (pg_stat_statements, where it is
//! installed) and, through Redis, Redis's commands per turn (`INFO commandstats`).
//! Options shape the upstream's replies in the turn scenarios (streams-*): `--ttft-ms N` (time
//! to first token, default 20), `--chunks N` (default 20), `--chunk-delay-ms N` (between chunks,
//! default 5); `--seconds N` measures each of those scenarios for N seconds after its warm-up.
//! `--help` lists them.
// A benchmark that cannot set itself up, or finds the service misbehaving, stops on the spot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The 60-line limit (clippy.toml) is for the service's own code: a test, or a fake that
// plays a protocol, reads best whole.
#![allow(clippy::too_many_lines)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::State, http::header, response::Response, routing::post};
use chat_service::{
    api::{
        AuthSettings, JwtKey,
        auth::mint_token,
        proto::{
            GetConversationRequest, ListConversationsRequest, SearchConversationsRequest,
            SendMessageRequest, chat_service_client::ChatServiceClient,
            conversation_service_client::ConversationServiceClient, send_message_response::Event,
        },
    },
    store::{DatabaseUrl, quote_identifier},
};
use clap::{Parser, builder::PossibleValuesParser};
use diesel::{QueryableByName, sql_query, sql_types::BigInt};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::stream;
use secrecy::ExposeSecret;
use tonic::{Request, transport::Channel};

const SECRET: &str = "benchmark-secret-with-at-least-32-bytes!";

/// How the fake upstream answers a request.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Time to first token.
    ttft_ms: u64,
    /// Chunks of text, the first one included.
    chunks: u64,
    /// Between two chunks.
    chunk_delay_ms: u64,
}

/// The turn scenarios' upstream unless the command line says otherwise: about 125 ms a reply.
const TURN_SHAPE: Shape = Shape {
    ttft_ms: 20,
    chunks: 20,
    chunk_delay_ms: 5,
};

/// Streams that stay open for about 20 s, so that all 2,000 are open at once.
const SLOW_SHAPE: Shape = Shape {
    ttft_ms: 10,
    chunks: 20,
    chunk_delay_ms: 1000,
};

/// A replica's open streams at scale, named on the command line only: 10,000 clients arrive
/// over 10 s, as users do rather than in one instant, and each stream stays open for about
/// 60 s, so that all are open at once for most of a minute.
const MANY_SLOW: SlowScenario = SlowScenario {
    name: "slow-10000",
    concurrency: 10_000,
    arrivals: Duration::from_secs(10),
    shape: Shape {
        ttft_ms: 10,
        chunks: 60,
        chunk_delay_ms: 1000,
    },
};

const SLOW: SlowScenario = SlowScenario {
    name: "slow-2000",
    concurrency: 2000,
    arrivals: Duration::ZERO,
    shape: SLOW_SHAPE,
};

/// Streams held open to read what each costs in memory.
struct SlowScenario {
    name: &'static str,
    concurrency: usize,
    /// Over how long the clients arrive, evenly spaced; zero: all at once.
    arrivals: Duration,
    shape: Shape,
}

/// The shape the upstream answers with now; changed between scenarios.
#[derive(Default)]
struct UpstreamShape {
    ttft_ms: AtomicU64,
    chunks: AtomicU64,
    chunk_delay_ms: AtomicU64,
}

impl UpstreamShape {
    fn set(&self, shape: Shape) {
        self.ttft_ms.store(shape.ttft_ms, Ordering::Relaxed);
        self.chunks.store(shape.chunks, Ordering::Relaxed);
        self.chunk_delay_ms
            .store(shape.chunk_delay_ms, Ordering::Relaxed);
    }

    fn get(&self) -> Shape {
        Shape {
            ttft_ms: self.ttft_ms.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            chunk_delay_ms: self.chunk_delay_ms.load(Ordering::Relaxed),
        }
    }
}

async fn complete(State(shape): State<Arc<UpstreamShape>>, _body: axum::body::Bytes) -> Response {
    let Shape {
        ttft_ms,
        chunks,
        chunk_delay_ms,
    } = shape.get();
    let ttft = Duration::from_millis(ttft_ms);
    let delay = Duration::from_millis(chunk_delay_ms);
    let received = Instant::now();
    let frames = stream::unfold(0u64, move |i| async move {
        let frame = match i {
            // The first token says how long the upstream itself took to produce it, so that the
            // client can subtract exactly that (timers are coarser than what is measured).
            0 => {
                tokio::time::sleep(ttft).await;
                let arrived = received.duration_since(epoch()).as_micros();
                chunk(&format!("{} {arrived} ", received.elapsed().as_micros()))
            }
            i if i < chunks => {
                tokio::time::sleep(delay).await;
                chunk(&format!("tok{i} "))
            }
            i if i == chunks => format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":20,\"completion_tokens\":{chunks}}}}}\n\ndata: [DONE]\n\n"
            ),
            _ => return None,
        };
        Some((Ok::<_, std::io::Error>(frame), i + 1))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(frames))
        .unwrap_or_default()
}

/// The load generator and the upstream share this process and its clock: both measure from here.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn chunk(text: &str) -> String {
    format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

async fn start_upstream(shape: Arc<UpstreamShape>) -> SocketAddr {
    let router = Router::new()
        .route("/v1/chat/completions", post(complete))
        .with_state(shape);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let addr = listener.local_addr().expect("upstream address");
    // As real model servers do: without it, Nagle's algorithm holds each small chunk back until
    // the previous one is acknowledged, which a delayed ACK can stretch to tens of milliseconds.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// The service under test, as a separate process so that its CPU and memory can be read.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The service's own overhead per turn, from its `turn ended` log lines: time to first
    /// token minus the time it waited for the model's first token.
    overheads: Arc<std::sync::Mutex<Vec<f64>>>,
    /// From the model's end to the turn's stored outcome, per turn (`after_model_ms`; builds
    /// before it log none).
    ends: Arc<std::sync::Mutex<Vec<f64>>>,
    /// How long each read RPC took inside the service, from its `rpc finished` log lines.
    read_durations: Arc<std::sync::Mutex<Vec<f64>>>,
}

impl Server {
    fn start(database: &DatabaseUrl, upstream: SocketAddr, redis: Option<&str>) -> Self {
        // Another build of the service may be measured beside this one (`CHAT_BENCH_BINARY`).
        let binary = std::env::var("CHAT_BENCH_BINARY").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/chat-service").to_owned()
        });
        let mut command = Command::new(&binary);
        if let Some(redis) = redis {
            command.env("CHAT_REDIS_URL", redis);
        }
        let mut child = command
            .env("DATABASE_URL", database.expose().expose_secret())
            .env("CHAT_JWT_SECRET", SECRET)
            .env("CHAT_LLM_BASE_URL", format!("http://{upstream}/v1"))
            .env("CHAT_LLM_MODEL", "bench-model")
            .env("CHAT_LISTEN_ADDR", "127.0.0.1:0")
            .env("CHAT_METRICS_ADDR", "127.0.0.1:0")
            .env("CHAT_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("CHAT_DB_ACQUIRE_TIMEOUT", "30s")
            // The reads scenario is one user asking as fast as it can: far beyond the per-user
            // rate a real client is allowed, on purpose.
            .env("CHAT_USER_REQUESTS_PER_SECOND", "1000000")
            .env("CHAT_USER_REQUEST_BURST", "1000000")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (run `cargo build --release` first): {e}")
            });
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let overheads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let logged = overheads.clone();
        let ends = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ends_logged = ends.clone();
        let read_durations = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reads_logged = read_durations.clone();
        // Reads the log as a log shipper would, so that logging costs what it costs in production.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("serving gRPC and grpc-web") {
                    let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    let _ = tx.send(entry["addr"].as_str().unwrap_or_default().to_owned());
                } else if line.contains("rpc finished") && line.contains("Conversation") {
                    let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    if let Some(duration) = entry["duration_ms"].as_f64() {
                        reads_logged
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(duration);
                    }
                } else if line.contains(r#""level":"ERROR""#) {
                    eprintln!("service: {line}");
                } else if line.contains("turn ended") && line.contains(MEASURED) {
                    let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    let total = entry["time_to_first_token_ms"].as_f64();
                    let model = entry["model_time_to_first_token_ms"].as_f64();
                    if let (Some(total), Some(model)) = (total, model) {
                        logged
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(total - model);
                    }
                    if let Some(after_model) = entry["after_model_ms"].as_f64() {
                        ends_logged
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(after_model);
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the service did not start");
        Self {
            child,
            addr: addr.parse().expect("address"),
            overheads,
            ends,
            read_durations,
        }
    }

    /// User plus system CPU seconds the server has used.
    fn cpu_seconds(&self) -> f64 {
        cpu_ticks(self.child.id()) as f64 / 100.0
    }

    /// Resident memory now and at its peak, in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct TurnResults {
    overheads: Vec<OverheadSplit>,
    completed: u64,
    errors: u64,
    message_ids: Vec<String>,
    /// The first failure, so that a run with errors says what went wrong.
    first_error: Option<String>,
}

impl TurnResults {
    fn record_error(&mut self, status: &tonic::Status) {
        self.errors += 1;
        self.first_error
            .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "{:.2} | {:.2} | {:.2} | {:.2}",
        percentile(values, 0.5),
        percentile(values, 0.9),
        percentile(values, 0.99),
        values.last().copied().unwrap_or(f64::NAN)
    )
}

fn median_and_p99(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "{:.2} | {:.2}",
        percentile(values, 0.5),
        percentile(values, 0.99)
    )
}

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// What the upstream's first delta says of it: its own time to first token, and when the
/// request reached it (microseconds since `epoch()`).
struct UpstreamTiming {
    ttft: Duration,
    arrived: Instant,
}

/// Where a turn's overhead went: on the way to the model (client → service → upstream, until
/// the upstream has read the request) and on the way back (upstream's first chunk → service →
/// client). Together they are the whole overhead.
#[derive(Clone, Copy)]
struct OverheadSplit {
    to_model: Duration,
    back: Duration,
}

impl UpstreamTiming {
    fn parse(delta: &str) -> Option<Self> {
        let mut fields = delta.split_whitespace().map(|f| f.parse::<u64>().ok());
        let ttft = Duration::from_micros(fields.next()??);
        let arrived = epoch() + Duration::from_micros(fields.next()??);
        Some(Self { ttft, arrived })
    }

    fn split(&self, sent: Instant, first_seen: Instant) -> OverheadSplit {
        OverheadSplit {
            to_model: self.arrived.saturating_duration_since(sent),
            back: first_seen.saturating_duration_since(self.arrived + self.ttft),
        }
    }
}

/// One user holding one conversation, turn after turn, until `until`.
/// How long users talk before their turns count.
const WARM_UP: Duration = Duration::from_secs(3);

/// Marks the request ids of turns that count; the others warm the service up.
const MEASURED: &str = "measured-";

/// One user holding one conversation, turn after turn, until `until`. Turns sent before
/// `measure_from` warm up (the user's first turn creates the user and the conversation; the
/// service opens its database connections) and are only checked for being stored.
async fn user_loop(
    channel: Channel,
    token: String,
    measure_from: Instant,
    until: Instant,
    keyed: bool,
) -> TurnResults {
    let mut client = ChatServiceClient::new(channel);
    let mut results = TurnResults::default();
    let mut conversation = String::new();
    while Instant::now() < until {
        let sent = Instant::now();
        let measured = sent >= measure_from;
        let id = format!(
            "{}{}",
            if measured { MEASURED } else { "warm-up-" },
            uuid::Uuid::new_v4()
        );
        let mut request = authorized(
            SendMessageRequest {
                conversation_id: conversation.clone(),
                content: "How fast is this service?".into(),
                // A client built to retry and resume names every request.
                request_id: if keyed { id.clone() } else { String::new() },
                ..Default::default()
            },
            &token,
        );
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().expect("header"));
        let mut stream = match client.send_message(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                results.record_error(&status);
                continue;
            }
        };
        let mut first_token: Option<OverheadSplit> = None;
        let mut ids = Vec::new();
        let mut completed = false;
        loop {
            match stream.message().await {
                Ok(Some(response)) => match response.event {
                    Some(Event::Accepted(accepted)) => {
                        conversation = accepted.conversation_id;
                        ids.extend(accepted.user_message.map(|m| m.id));
                    }
                    Some(Event::Delta(delta)) if first_token.is_none() => {
                        first_token = UpstreamTiming::parse(&delta.text)
                            .map(|upstream| upstream.split(sent, Instant::now()));
                    }
                    Some(Event::Completed(done)) => {
                        ids.extend(done.message.map(|m| m.id));
                        completed = true;
                    }
                    _ => {}
                },
                Ok(None) => break,
                Err(status) => {
                    results.record_error(&status);
                    break;
                }
            }
        }
        if completed {
            results.message_ids.extend(ids);
        }
        if !measured {
            continue;
        }
        if completed {
            results.completed += 1;
            results.overheads.extend(first_token);
        }
    }
    results
}

async fn channels(addr: SocketAddr, count: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..count {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        channels.push(channel);
    }
    channels
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// How many of `ids` are stored.
async fn stored(database: &DatabaseUrl, ids: &[String]) -> i64 {
    use diesel_async::RunQueryDsl;
    let mut conn = AsyncPgConnection::establish(database.expose().expose_secret())
        .await
        .expect("connect");
    let mut total = 0;
    for batch in ids.chunks(5000) {
        let list = batch
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(",");
        let row: Count = sql_query(format!(
            "SELECT count(*) AS n FROM messages WHERE id IN ({list})"
        ))
        .get_result(&mut conn)
        .await
        .expect("count");
        total += row.n;
    }
    total
}

fn token(user: &str) -> String {
    let auth = AuthSettings {
        key: JwtKey::Hs256Secret(secrecy::SecretSlice::from(SECRET.as_bytes().to_vec())),
        issuer: None,
        audience: None,
        leeway: Duration::ZERO,
    };
    mint_token(&auth, user, Duration::from_secs(3600)).expect("token")
}

/// One turn scenario as it runs.
struct TurnScenario<'a> {
    concurrency: usize,
    seconds: u64,
    /// Whether every request carries a `request_id`.
    keyed: bool,
    /// The Redis the server relays turn events through, if it does.
    redis: Option<&'a str>,
}

/// User plus system CPU ticks that process `pid` has used, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// User plus system CPU ticks of every process whose name is `name`, by process id.
fn process_ticks(name: &str) -> std::collections::HashMap<u32, u64> {
    let mut ticks = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == name {
            ticks.insert(pid, cpu_ticks(pid));
        }
    }
    ticks
}

/// CPU seconds that the processes of two readings of [`process_ticks`] used in between; a
/// process that started in between counts whole.
fn process_seconds_between(
    before: &std::collections::HashMap<u32, u64>,
    after: &std::collections::HashMap<u32, u64>,
) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, now)| now.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks as f64 / 100.0
}

/// The machine's CPU time so far, from /proc/stat: all of it, and what the hypervisor took
/// (steal), in ticks.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let total = fields.iter().take(8).sum();
    (total, fields.get(7).copied().unwrap_or(0))
}

/// Statements PostgreSQL has executed in `database` so far, from pg_stat_statements (exact: it
/// counts as each statement ends); `None` where the extension is not installed in the database
/// `postgres` (`shared_preload_libraries = 'pg_stat_statements'`, then `CREATE EXTENSION`).
async fn statements_executed(database: &DatabaseUrl) -> Option<i64> {
    use diesel_async::RunQueryDsl;
    let admin = database.with_database("postgres");
    let mut conn = AsyncPgConnection::establish(admin.expose().expose_secret())
        .await
        .ok()?;
    let row: Count = sql_query(
        "SELECT coalesce(sum(calls), 0)::int8 AS n FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)",
    )
    .bind::<diesel::sql_types::Text, _>(database.database_name())
    .get_result(&mut conn)
    .await
    .ok()?;
    Some(row.n)
}

/// Commands Redis has run so far, from `INFO commandstats`.
async fn redis_commands(url: &str) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .ok()?;
    // Lines such as `cmdstat_xadd:calls=12,usec=...`; INFO itself counts too, once per reading.
    Some(
        info.lines()
            .filter_map(|line| {
                line.split_once("calls=")?
                    .1
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum(),
    )
}

/// How fast a client talking to the upstream directly completes replies, `concurrency` at once
/// for `seconds`: what the service's turns per second are compared with.
async fn direct_turns_per_second(upstream: SocketAddr, concurrency: usize, seconds: u64) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let url = format!("http://{upstream}/v1/chat/completions");
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < until {
                    let body = r#"{"model":"bench-model","stream":true,"messages":[{"role":"user","content":"How fast is this service?"}]}"#;
                    let response = client.post(&url).body(body).send().await.expect("upstream");
                    let text = response.text().await.expect("upstream's reply");
                    assert!(text.ends_with("data: [DONE]\n\n"), "a reply cut short");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("direct client");
    }
    done as f64 / started.elapsed().as_secs_f64()
}

async fn streams(
    servers: &[&Server],
    upstream: &UpstreamShape,
    shape: Shape,
    database: &DatabaseUrl,
    scenario: TurnScenario<'_>,
    direct: Option<f64>,
) -> Result<(), String> {
    let TurnScenario {
        concurrency,
        seconds,
        keyed,
        redis,
    } = scenario;
    let via = if redis.is_some() {
        " through Redis"
    } else {
        ""
    };
    upstream.set(shape);
    // Users are dealt to the servers in turn, over one HTTP/2 connection per 100 of them.
    let mut pools = Vec::new();
    for server in servers {
        let users = concurrency.div_ceil(servers.len());
        pools.push(channels(server.addr, users.div_ceil(100)).await);
        server
            .overheads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
    let measure_from = Instant::now() + WARM_UP;
    let until = measure_from + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let pool = &pools[i % pools.len()];
            tokio::spawn(user_loop(
                pool[(i / pools.len()) % pool.len()].clone(),
                token(&format!("user{i}")),
                measure_from,
                until,
                keyed,
            ))
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let servers_cpu = || {
        servers
            .iter()
            .map(|server| server.cpu_seconds())
            .sum::<f64>()
    };
    let cpu_before = servers_cpu();
    let statements_before = statements_executed(database).await;
    let redis_before = match redis {
        Some(url) => redis_commands(url).await,
        None => None,
    };
    let postgres_before = process_ticks("postgres");
    let machine_before = machine_ticks();
    let mut total = TurnResults::default();
    for task in tasks {
        let results = task.await.expect("user task");
        total.completed += results.completed;
        total.errors += results.errors;
        total.overheads.extend(results.overheads);
        total.message_ids.extend(results.message_ids);
        total.first_error = total.first_error.or(results.first_error);
    }
    if let Some(error) = &total.first_error {
        eprintln!("{concurrency} streams: first error: {error}");
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    let cpu = servers_cpu() - cpu_before;
    let postgres = process_seconds_between(&postgres_before, &process_ticks("postgres"));
    let machine_after = machine_ticks();
    let machine = machine_after.0.saturating_sub(machine_before.0).max(1);
    let steal = machine_after.1.saturating_sub(machine_before.1);
    let statements = match (statements_before, statements_executed(database).await) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let redis_calls = match (redis, redis_before) {
        (Some(url), Some(before)) => redis_commands(url).await.map(|after| after - before),
        _ => None,
    };
    // The largest replica's.
    let peak = servers
        .iter()
        .map(|server| server.memory_kib().1)
        .max()
        .unwrap_or(0);
    let stored = stored(database, &total.message_ids).await;
    let mut inside = logged_by(servers, |server| &server.overheads);
    let mut ends = logged_by(servers, |server| &server.ends);
    let ends = if ends.is_empty() {
        "– | –".to_owned()
    } else {
        median_and_p99(&mut ends)
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut overheads: Vec<f64> = total
        .overheads
        .iter()
        .map(|o| ms(o.to_model + o.back))
        .collect();
    let mut to_model: Vec<f64> = total.overheads.iter().map(|o| ms(o.to_model)).collect();
    let mut back: Vec<f64> = total.overheads.iter().map(|o| ms(o.back)).collect();
    let rate = total.completed as f64 / elapsed;
    let against_direct = direct.map_or_else(
        || "–".to_owned(),
        |direct| format!("{direct:.0} ({:.2}×)", rate / direct),
    );
    let turns = total.completed.max(1) as f64;
    let per_turn = |count: Option<u64>| {
        count.map_or_else(|| "–".to_owned(), |n| format!("{:.2}", n as f64 / turns))
    };
    let statements = per_turn(statements.and_then(|n| u64::try_from(n).ok()));
    let redis_calls = per_turn(redis_calls);
    let settings_label = match (keyed, servers.len()) {
        (true, 1) => ", request ids".to_owned(),
        (false, 1) => String::new(),
        (true, n) => format!(", request ids, {n} replicas"),
        (false, n) => format!(", {n} replicas"),
    };
    println!(
        "| {concurrency} streams{via}{settings_label}, {seconds} s | {} | {} | {} | {} | {rate:.1} | {against_direct} | {} | {:.3} | {:.3} | {statements} | {redis_calls} | {:.1} | {:.2} s ({:.1} %) | {}/{} | {ends} |",
        summary(&mut overheads),
        median_and_p99(&mut to_model),
        median_and_p99(&mut back),
        summary(&mut inside),
        total.errors,
        cpu * 1000.0 / turns,
        postgres * 1000.0 / turns,
        peak as f64 / 1024.0,
        steal as f64 / 100.0,
        steal as f64 * 100.0 / machine as f64,
        stored,
        total.message_ids.len(),
    );
    let scenario = format!("{concurrency} streams{via}{settings_label}");
    all_stored(&scenario, stored, total.message_ids.len())?;
    match total.errors {
        0 => Ok(()),
        errors => Err(format!("{scenario}: {errors} turns failed")),
    }
}

/// What every replica's log said of one figure since it was last taken.
fn logged_by(
    servers: &[&Server],
    figure: impl Fn(&Server) -> &std::sync::Mutex<Vec<f64>>,
) -> Vec<f64> {
    servers
        .iter()
        .flat_map(|server| {
            std::mem::take(&mut *figure(server).lock().unwrap_or_else(|e| e.into_inner()))
        })
        .collect()
}

/// Fails when fewer of a scenario's messages are stored than its completed turns returned.
fn all_stored(scenario: &str, stored: i64, returned: usize) -> Result<(), String> {
    match usize::try_from(stored) {
        Ok(stored) if stored == returned => Ok(()),
        _ => Err(format!(
            "{scenario}: {stored} of the {returned} messages that completed turns returned are stored"
        )),
    }
}

async fn slow_streams(
    server: &Server,
    upstream: &UpstreamShape,
    database: &DatabaseUrl,
    scenario: &SlowScenario,
) -> Result<(), String> {
    let concurrency = scenario.concurrency;
    upstream.set(scenario.shape);
    let started = tokio::time::Instant::now();
    let (baseline, _) = server.memory_kib();
    let pool = channels(server.addr, concurrency.div_ceil(100)).await;
    let open = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let channel = pool[i % pool.len()].clone();
            let token = token(&format!("slow{i}"));
            let open = open.clone();
            let arrives = started + scenario.arrivals.mul_f64(i as f64 / concurrency as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(arrives).await;
                let mut client = ChatServiceClient::new(channel);
                let request = authorized(
                    SendMessageRequest {
                        conversation_id: String::new(),
                        content: "Take your time".into(),
                        ..Default::default()
                    },
                    &token,
                );
                let mut ids = Vec::new();
                let Ok(response) = client.send_message(request).await else {
                    return (false, ids);
                };
                let mut stream = response.into_inner();
                let mut counted = false;
                while let Ok(Some(response)) = stream.message().await {
                    match response.event {
                        Some(Event::Accepted(accepted)) => {
                            ids.extend(accepted.user_message.map(|m| m.id))
                        }
                        Some(Event::Delta(_)) if !counted => {
                            counted = true;
                            open.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Event::Completed(done)) => {
                            ids.extend(done.message.map(|m| m.id));
                            return (true, ids);
                        }
                        _ => {}
                    }
                }
                (false, ids)
            })
        })
        .collect();
    // Memory is read once every stream is open and streaming.
    while open.load(Ordering::Relaxed) < concurrency as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (with_streams, _) = server.memory_kib();
    let mut completed = 0;
    let mut ids = Vec::new();
    for task in tasks {
        let (done, task_ids) = task.await.expect("stream task");
        completed += u64::from(done);
        ids.extend(task_ids);
    }
    let (_, peak) = server.memory_kib();
    let stored = stored(database, &ids).await;
    let per_stream = (with_streams.saturating_sub(baseline)) as f64 / concurrency as f64;
    println!(
        "| {concurrency} slow streams ({} chunks, {} ms apart) | {:.1} MiB → {:.1} MiB | {per_stream:.1} KiB | {completed} | {:.1} | {stored}/{} |",
        scenario.shape.chunks,
        scenario.shape.chunk_delay_ms,
        baseline as f64 / 1024.0,
        with_streams as f64 / 1024.0,
        peak as f64 / 1024.0,
        ids.len()
    );
    let scenario = format!("{concurrency} slow streams");
    all_stored(&scenario, stored, ids.len())?;
    if completed < concurrency as u64 {
        return Err(format!(
            "{scenario}: {} streams did not complete",
            concurrency as u64 - completed
        ));
    }
    Ok(())
}

/// The durations the service logged for its last `runs` read calls. It logs each call as it
/// ends, and its log is read on another thread: this waits up to 5 s for all of them.
async fn logged_durations(durations: &std::sync::Mutex<Vec<f64>>, runs: usize) -> Vec<f64> {
    let logged_by = Instant::now() + Duration::from_secs(5);
    loop {
        let logged = durations.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if logged.len() >= runs || Instant::now() > logged_by {
            return logged;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn reads(server: &Server, database: &DatabaseUrl) {
    let token = token("reader");
    let channel = channels(server.addr, 1).await.remove(0);
    let mut client = ConversationServiceClient::new(channel);
    client
        .list_conversations(authorized(ListConversationsRequest::default(), &token))
        .await
        .expect("first call");
    let mut conn = AsyncPgConnection::establish(database.expose().expose_secret())
        .await
        .expect("connect");
    conn.batch_execute(
        "INSERT INTO conversations (id, user_id, title, created_at, updated_at)
         SELECT gen_random_uuid(), u.id, 'conversation ' || g, now(), now() - g * interval '1 second'
         FROM users u, generate_series(1, 1000) g WHERE u.subject = 'reader';
         INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
         SELECT gen_random_uuid(), c.id, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END,
                repeat('A message of about two hundred characters. ', 5), 'complete', now() + g * interval '1 ms', g
         FROM (SELECT c.id FROM conversations c JOIN users u ON u.id = c.user_id
               WHERE u.subject = 'reader' ORDER BY c.updated_at DESC LIMIT 1) c, generate_series(1, 1000) g;
         UPDATE conversations SET revision = 1000
         WHERE id = (SELECT c.id FROM conversations c JOIN users u ON u.id = c.user_id
                     WHERE u.subject = 'reader' ORDER BY c.updated_at DESC LIMIT 1);
         ANALYZE;",
    )
    .await
    .expect("seed");
    let newest = client
        .list_conversations(authorized(
            ListConversationsRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &token,
        ))
        .await
        .expect("list")
        .into_inner()
        .conversations
        .remove(0)
        .id;

    let durations = server.read_durations.clone();
    let mut measure = async |name: &str, runs: usize, page_size: i32| {
        let mut latencies = Vec::with_capacity(runs);
        durations.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for _ in 0..runs {
            let started = Instant::now();
            if name == "GetConversation" {
                let request = authorized(
                    GetConversationRequest {
                        conversation_id: newest.clone(),
                    },
                    &token,
                );
                let response = client
                    .get_conversation(request)
                    .await
                    .expect("get")
                    .into_inner();
                assert_eq!(response.messages.len(), 1000);
            } else {
                let request = authorized(
                    ListConversationsRequest {
                        page_size,
                        page_token: String::new(),
                    },
                    &token,
                );
                let response = client
                    .list_conversations(request)
                    .await
                    .expect("list")
                    .into_inner();
                assert_eq!(response.conversations.len(), page_size as usize);
            }
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let mut inside = logged_durations(&durations, runs).await;
        let label = match name {
            "GetConversation" => format!("{name}, 1,000 messages"),
            _ => format!("{name}, page size {page_size}"),
        };
        println!(
            "| {label} | {runs} | {} | {} |",
            summary(&mut latencies),
            median_and_p99(&mut inside)
        );
    };
    measure("ListConversations", 2000, 20).await;
    measure("ListConversations", 2000, 100).await;
    measure("GetConversation", 500, 1000).await;
}

/// The search scenario's data: this many users with this many conversations of this many
/// messages each (100 × 100 × 100: a user with 10,000 messages in a database of 1,000,000).
const SEARCH_USERS: usize = 100;
const SEARCH_CONVERSATIONS: usize = 100;
const SEARCH_MESSAGES: usize = 100;
/// Words a message of the search scenario holds.
const SEARCH_WORDS: usize = 20;

/// The search scenario's vocabulary: 8,000 made-up words of three of these syllables, the n-th
/// (from 0) made of syllables n / 400, n / 20 % 20 and n % 20.
const SYLLABLES: [&str; 20] = [
    "ka", "lo", "mi", "ne", "ru", "sa", "te", "vi", "do", "pe", "zu", "ga", "ho", "ji", "fa", "bu",
    "ce", "wy", "xo", "qi",
];

/// A message's text: `SEARCH_WORDS` words of the vocabulary, drawn with a skew like a
/// language's: the first word is about 5 % of a text's words, the 100th 0.08 %, the 4,000th
/// 0.005 %. `row` is a column of the row, so that the text is drawn anew for every row.
fn search_text(row: &str) -> String {
    let syllables = SYLLABLES.map(|s| format!("'{s}'")).join(", ");
    format!(
        "(SELECT string_agg(s[r.n / 400 + 1] || s[r.n / 20 % 20 + 1] || s[r.n % 20 + 1], ' ')
          FROM (SELECT floor(8000 * power(random(), 3))::int AS n
                FROM generate_series(1, {SEARCH_WORDS} + 0 * {row})) r,
               (SELECT ARRAY[{syllables}] AS s) v)"
    )
}

/// The vocabulary's n-th word (from 1), as the scenario's queries name them.
fn search_word(n: usize) -> String {
    let i = n - 1;
    format!(
        "{}{}{}",
        SYLLABLES[i / 400],
        SYLLABLES[i / 20 % 20],
        SYLLABLES[i % 20]
    )
}

/// SearchConversations for one user with 10,000 messages among 1,000,000: the latency of each
/// kind of query, the plans PostgreSQL chose, and what indexing costs a message's write.
async fn search(server: &Server, database: &DatabaseUrl) {
    let token = token("searcher-1");
    let channel = channels(server.addr, 1).await.remove(0);
    let mut client = ConversationServiceClient::new(channel);
    let mut conn = AsyncPgConnection::establish(database.expose().expose_secret())
        .await
        .expect("connect");

    // What the words cost a write: the same 100,000 messages with the trigger that fills their
    // words (and so with their GIN entries), and without it.
    let seed_conversation = "INSERT INTO users (id, subject) VALUES (gen_random_uuid(), 'writer');
        INSERT INTO conversations (id, user_id, title)
        SELECT '01900000-0000-7000-8000-00000000beef', id, 'writes' FROM users WHERE subject = 'writer'";
    conn.batch_execute(seed_conversation).await.expect("seed");
    let mut write_cost = async |with_words: bool| {
        let role = if with_words { "origin" } else { "replica" };
        let insert = format!(
            "SET session_replication_role = {role};
             INSERT INTO messages (id, conversation_id, role, content, status, sequence)
             SELECT gen_random_uuid(), '01900000-0000-7000-8000-00000000beef', 'user', {}, 'complete', g
             FROM generate_series(1, 100000) g;",
            search_text("g")
        );
        conn.batch_execute(
            "DELETE FROM messages WHERE conversation_id = '01900000-0000-7000-8000-00000000beef'",
        )
        .await
        .expect("delete");
        conn.batch_execute("VACUUM messages").await.expect("vacuum");
        let started = Instant::now();
        conn.batch_execute(&insert).await.expect("insert");
        let elapsed = started.elapsed();
        conn.batch_execute("SET session_replication_role = origin")
            .await
            .expect("reset");
        elapsed.as_secs_f64() * 1e6 / 100_000.0
    };
    let (bare, words) = (write_cost(false).await, write_cost(true).await);
    let (bare_again, words_again) = (write_cost(false).await, write_cost(true).await);
    conn.batch_execute(
        "DELETE FROM messages WHERE conversation_id = '01900000-0000-7000-8000-00000000beef'",
    )
    .await
    .expect("clean up");
    println!(
        "Writing 100,000 messages of {SEARCH_WORDS} words in one statement, per message: {bare:.1} and {bare_again:.1} µs without their words (trigger off), {words:.1} and {words_again:.1} µs with them and their GIN entries."
    );

    let seeded = Instant::now();
    conn.batch_execute(&format!(
        "INSERT INTO users (id, subject)
         SELECT gen_random_uuid(), 'searcher-' || u FROM generate_series(1, {SEARCH_USERS}) u;
         INSERT INTO conversations (id, user_id, title, created_at, updated_at, revision)
         SELECT gen_random_uuid(), u.id, 'conversation ' || g, now(), now() - g * interval '1 second', {SEARCH_MESSAGES}
         FROM users u, generate_series(1, {SEARCH_CONVERSATIONS}) g WHERE u.subject LIKE 'searcher-%';
         INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
         SELECT gen_random_uuid(), c.id, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END,
                {}, 'complete', now(), g
         FROM (SELECT c.id FROM conversations c JOIN users u ON u.id = c.user_id
               WHERE u.subject LIKE 'searcher-%') c, generate_series(1, {SEARCH_MESSAGES}) g
         -- Users write at the same time: one user's messages are spread over the table.
         ORDER BY g, c.id;",
        search_text("g")
    ))
    .await
    .expect("seed");
    conn.batch_execute("VACUUM ANALYZE messages")
        .await
        .expect("vacuum");
    conn.batch_execute("ANALYZE").await.expect("analyze");
    println!(
        "Seeded {} messages in {:.0} s.",
        SEARCH_USERS * SEARCH_CONVERSATIONS * SEARCH_MESSAGES,
        seeded.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| query | matching messages of the user | of all users | runs | seen by the client: p50 | p90 | p99 | max (ms) | inside the service: p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");

    let (common, second, medium, other, rare) = (
        search_word(1),
        search_word(2),
        search_word(100),
        search_word(200),
        search_word(4000),
    );
    let queries = [
        common.clone(),
        medium.clone(),
        rare.clone(),
        format!("{common} {medium}"),
        format!("\"{common} {second}\""),
        format!("{medium} or {other}"),
        format!("{medium} -{common}"),
    ];
    let durations = server.read_durations.clone();
    let mut all = Vec::new();
    for query in &queries {
        let counts = |scope: &str| {
            format!(
                "SELECT count(*) AS n FROM messages m JOIN conversations c ON c.id = m.conversation_id
                 JOIN users u ON u.id = c.user_id
                 WHERE {scope} m.search_vector @@ websearch_to_tsquery('simple', '{}')",
                query.replace('\'', "''")
            )
        };
        let mine = count(&mut conn, &counts("u.subject = 'searcher-1' AND")).await;
        let everyone = count(&mut conn, &counts("")).await;
        let runs = 200;
        let mut latencies = Vec::with_capacity(runs);
        durations.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for _ in 0..runs {
            let started = Instant::now();
            let response = client
                .search_conversations(authorized(
                    SearchConversationsRequest {
                        query: query.clone(),
                        page_size: 20,
                        page_token: String::new(),
                    },
                    &token,
                ))
                .await
                .expect("search")
                .into_inner();
            assert_eq!(response.matches.is_empty(), mine == 0, "{query}");
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let mut inside = logged_durations(&durations, runs).await;
        all.extend_from_slice(&latencies);
        println!(
            "| `{query}` | {mine} | {everyone} | {runs} | {} | {} |",
            summary(&mut latencies),
            median_and_p99(&mut inside)
        );
    }
    println!(
        "| all of them | | | {} | {} | |",
        all.len(),
        summary(&mut all)
    );

    // The plans, for the most common word and a rare one, as the service runs them.
    let user_id: String = {
        #[derive(QueryableByName)]
        struct User {
            #[diesel(sql_type = diesel::sql_types::Text)]
            id: String,
        }
        use diesel_async::RunQueryDsl;
        sql_query("SELECT id::text AS id FROM users WHERE subject = 'searcher-1'")
            .get_result::<User>(&mut conn)
            .await
            .expect("user")
            .id
    };
    // As the service runs them: the common word from the user's messages, the rare one from
    // the index.
    conn.batch_execute(&format!(
        "PREPARE from_the_user(uuid, text, real, uuid, bigint) AS {};
         PREPARE from_the_index(uuid, text, real, uuid, bigint) AS {}",
        chat_service::store::SEARCH_FROM_THE_USER,
        chat_service::store::SEARCH_FROM_THE_INDEX
    ))
    .await
    .expect("prepare");
    for (query, statement) in [(&common, "from_the_user"), (&rare, "from_the_index")] {
        let plan = explain(&mut conn, &format!(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE {statement}('{user_id}', '{query}', NULL, NULL, 21)"
        ))
        .await;
        println!();
        println!("EXPLAIN of `{query}` ({statement}):");
        println!();
        println!("```");
        println!("{plan}");
        println!("```");
    }
}

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
    line: String,
}

async fn explain(conn: &mut AsyncPgConnection, statement: &str) -> String {
    use diesel_async::RunQueryDsl;
    let lines: Vec<PlanLine> = sql_query(statement).load(conn).await.expect("explain");
    lines
        .into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}

async fn count(conn: &mut AsyncPgConnection, statement: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    sql_query(statement)
        .get_result::<Count>(conn)
        .await
        .expect("count")
        .n
}

/// The turn scenarios: name, users, and seconds measured unless `--seconds` says otherwise.
const TURN_SCENARIOS: [(&str, usize, u64); 5] = [
    ("streams-1", 1, 10),
    ("streams-50", 50, 15),
    ("streams-50-keyed", 50, 15),
    ("streams-500", 500, 15),
    ("streams-50-redis", 50, 15),
];

/// The head of the turn scenarios' table.
const TURN_TABLE_HEADER: &str = "| scenario | overhead seen by the client: p50 | p90 | p99 | max (ms) | of it on the way to the model: p50 | p99 | on the way back: p50 | p99 | inside the service: p50 | p90 | p99 | max (ms) | turns/s | direct client turns/s (service's share) | errors | server CPU ms/turn | PostgreSQL CPU ms/turn | statements/turn | Redis commands/turn | server peak RSS (MiB) | CPU steal | messages stored | model's end to stored outcome: p50 | p99 (ms) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The soak: users on two replicas that share turn events through Redis, every request with a
/// request id, against a slower model; measured for ten minutes unless `--seconds` says otherwise.
const SOAK: (&str, usize, u64) = ("soak-1000", 1000, 600);

/// The soak's upstream: 200 ms to the first token, then 19 more chunks 50 ms apart (about 1.2 s
/// a reply).
const SOAK_SHAPE: Shape = Shape {
    ttft_ms: 200,
    chunks: 20,
    chunk_delay_ms: 50,
};

/// From this many users on, a turn scenario first measures a client that talks to the upstream
/// directly, for comparison.
const COMPARED_WITH_DIRECT: usize = 500;

/// Every scenario's name, in the order they run.
fn scenario_names() -> impl Iterator<Item = &'static str> {
    TURN_SCENARIOS.iter().map(|(name, ..)| *name).chain([
        SOAK.0,
        SLOW.name,
        MANY_SLOW.name,
        "reads",
        "search",
    ])
}

/// A whole number of at least 1. clap's own range check would name u64::MAX as the limit.
fn at_least_one(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        parsed => parsed.map_err(|e| e.to_string()),
    }
}

/// What the command line asked for.
#[derive(Parser)]
#[command(
    name = "bench",
    about = "Measures the service's overhead against the release binary (see BENCHMARKS.md).",
    // As before clap: a repeated option means its last value rather than an error.
    args_override_self = true
)]
struct Options {
    /// Scenarios to run, in their own order whatever the order given [default: all of them].
    #[arg(
        value_name = "SCENARIO",
        value_parser = PossibleValuesParser::new(scenario_names())
    )]
    scenarios: Vec<String>,
    /// The upstream's time to first token in the turn scenarios, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = TURN_SHAPE.ttft_ms)]
    ttft_ms: u64,
    /// Chunks of text in each reply of the turn scenarios.
    // The first chunk carries the upstream's timing, so there is always one.
    #[arg(
        long,
        value_name = "N",
        default_value_t = TURN_SHAPE.chunks,
        value_parser = at_least_one
    )]
    chunks: u64,
    /// Milliseconds between two chunks in the turn scenarios.
    #[arg(long, value_name = "N", default_value_t = TURN_SHAPE.chunk_delay_ms)]
    chunk_delay_ms: u64,
    /// Seconds each turn scenario measures after its warm-up [default: the scenario's own].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    seconds: Option<u64>,
}

impl Options {
    /// How the upstream answers in the turn scenarios.
    fn turn_shape(&self) -> Shape {
        Shape {
            ttft_ms: self.ttft_ms,
            chunks: self.chunks,
            chunk_delay_ms: self.chunk_delay_ms,
        }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|s| s == scenario)
    }
}

fn main() {
    let options = Options::parse();
    // Fixed before anything is measured against it.
    epoch();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let failures = runtime.block_on(async {
        let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| chat_service::store::DEFAULT_DATABASE_URL.to_owned());
        let database = DatabaseUrl::parse(&base).expect("DATABASE_URL").with_database("chat_bench");
        let mut admin = AsyncPgConnection::establish(database.with_database("postgres").expose().expose_secret()).await.expect("connect");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_identifier("chat_bench")))
            .await
            .expect("drop the benchmark database");

        let upstream_shape = Arc::new(UpstreamShape::default());
        let upstream = start_upstream(upstream_shape.clone()).await;
        let server = Server::start(&database, upstream, None);
        // Started only when asked for: it needs Redis.
        let mut with_redis = None;
        let redis_url = std::env::var("CHAT_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());

        if TURN_SCENARIOS.iter().any(|(name, ..)| options.wants(name)) {
            let Shape { ttft_ms, chunks, chunk_delay_ms } = options.turn_shape();
            println!("Turn scenarios: the upstream's first token after {ttft_ms} ms, then {} more chunks {chunk_delay_ms} ms apart.", chunks - 1);
            println!();
            println!("{TURN_TABLE_HEADER}");
        }
        // Every scenario runs and reports; what went wrong is repeated at the end.
        let mut failures = Vec::new();
        for (name, concurrency, seconds) in TURN_SCENARIOS {
            if options.wants(name) {
                let seconds = options.seconds.unwrap_or(seconds);
                let direct = if concurrency >= COMPARED_WITH_DIRECT {
                    upstream_shape.set(options.turn_shape());
                    Some(direct_turns_per_second(upstream, concurrency, seconds).await)
                } else {
                    None
                };
                let redis = name.ends_with("-redis").then_some(redis_url.as_str());
                let server = match redis {
                    Some(redis) => &*with_redis.get_or_insert_with(|| Server::start(&database, upstream, Some(redis))),
                    None => &server,
                };
                let scenario = TurnScenario { concurrency, seconds, keyed: name.ends_with("-keyed"), redis };
                failures.extend(streams(&[server], &upstream_shape, options.turn_shape(), &database, scenario, direct).await.err());
            }
        }
        // Ten minutes: only when named.
        if options.scenarios.iter().any(|name| name == SOAK.0) {
            let (_, concurrency, seconds) = SOAK;
            let seconds = options.seconds.unwrap_or(seconds);
            let Shape { ttft_ms, chunks, chunk_delay_ms } = SOAK_SHAPE;
            println!();
            println!("Soak: the upstream's first token after {ttft_ms} ms, then {} more chunks {chunk_delay_ms} ms apart; two replicas sharing turn events through Redis.", chunks - 1);
            println!();
            println!("{TURN_TABLE_HEADER}");
            let replicas = [
                Server::start(&database, upstream, Some(&redis_url)),
                Server::start(&database, upstream, Some(&redis_url)),
            ];
            upstream_shape.set(SOAK_SHAPE);
            let direct = direct_turns_per_second(upstream, concurrency, seconds.min(30)).await;
            let scenario = TurnScenario { concurrency, seconds, keyed: true, redis: Some(&redis_url) };
            failures.extend(streams(&[&replicas[0], &replicas[1]], &upstream_shape, SOAK_SHAPE, &database, scenario, Some(direct)).await.err());
        }
        let many_slow = options.scenarios.iter().any(|name| name == MANY_SLOW.name);
        if options.wants(SLOW.name) || many_slow {
            println!();
            println!("| scenario | server RSS idle → with streams | per stream | completed | peak RSS (MiB) | messages stored |");
            println!("|---|---|---|---|---|---|");
        }
        if options.wants(SLOW.name) {
            failures.extend(slow_streams(&server, &upstream_shape, &database, &SLOW).await.err());
        }
        if many_slow {
            failures.extend(slow_streams(&server, &upstream_shape, &database, &MANY_SLOW).await.err());
        }
        if options.wants("reads") {
            println!();
            println!("| request | runs | seen by the client: p50 | p90 | p99 | max (ms) | inside the service: p50 | p99 |");
            println!("|---|---|---|---|---|---|---|---|");
            reads(&server, &database).await;
        }
        // Seeding a million messages takes minutes: only when named.
        if options.scenarios.iter().any(|name| name == "search") {
            println!();
            search(&server, &database).await;
        }
        failures
    });
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("bench: FAILED: {failure}");
        }
        std::process::exit(1);
    }
}
