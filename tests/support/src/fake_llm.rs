//! A fake OpenAI-compatible server: real HTTP and server-sent events over loopback, scripted per
//! test, recording every request it receives and noticing when a client hangs up.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::Response,
    routing::post,
};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::sync::watch;

/// How the fake answers one request.
#[derive(Debug, Clone)]
pub enum Script {
    /// Streams these text deltas, `delay` apart, then a usage chunk if given, then `[DONE]`.
    Reply {
        deltas: Vec<String>,
        delay: Duration,
        usage: Option<(u32, u32)>,
    },
    /// Streams these text deltas, then a chunk whose `usage` is this object as it is, then
    /// `[DONE]`: for usage with details (cached and reasoning tokens).
    Reported {
        deltas: Vec<String>,
        usage: serde_json::Value,
    },
    /// Streams `deltas` and then tool-call fragments: (index, id, name, arguments fragment).
    ToolCalls {
        deltas: Vec<String>,
        fragments: Vec<(usize, Option<String>, Option<String>, String)>,
    },
    /// Answers with an HTTP error status and an optional Retry-After.
    Status { code: u16, retry_after: Option<u64> },
    /// Streams the deltas, then sends nothing but SSE comments forever.
    Stall { deltas: Vec<String> },
    /// Streams the deltas, then breaks the connection.
    Drop { deltas: Vec<String> },
    /// Sends a chunk that is not JSON.
    Malformed,
    /// Streams the deltas, then an error chunk with this message, as gateways do mid-stream.
    ErrorChunk {
        deltas: Vec<String>,
        message: String,
    },
    /// Streams `before`, waits until the test releases the gate, then streams `after` and ends.
    Paused {
        before: Vec<String>,
        gate: Arc<tokio::sync::Notify>,
        after: Vec<String>,
    },
    /// Answers as `then` once the test releases the gate, and not before.
    Gated {
        gate: Arc<tokio::sync::Notify>,
        then: Box<Script>,
    },
}

impl Script {
    /// Streams `before`, then the rest once `gate` is released.
    pub fn paused(before: &[&str], gate: &Arc<tokio::sync::Notify>, after: &[&str]) -> Self {
        let owned = |deltas: &[&str]| deltas.iter().map(|d| (*d).to_owned()).collect();
        Self::Paused {
            before: owned(before),
            gate: gate.clone(),
            after: owned(after),
        }
    }

    pub fn reply(deltas: &[&str]) -> Self {
        Self::Reply {
            deltas: deltas.iter().map(|d| (*d).to_owned()).collect(),
            delay: Duration::ZERO,
            usage: None,
        }
    }

    /// An answer that only calls tools, each given whole: (id, name, arguments).
    pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Self {
        Self::ToolCalls {
            deltas: Vec::new(),
            fragments: calls
                .iter()
                .enumerate()
                .map(|(index, (id, name, arguments))| {
                    (
                        index,
                        Some((*id).to_owned()),
                        Some((*name).to_owned()),
                        (*arguments).to_owned(),
                    )
                })
                .collect(),
        }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub authorization: Option<String>,
    pub traceparent: Option<String>,
    pub at: tokio::time::Instant,
}

impl Received {
    /// The messages sent, as (role, content) pairs.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .map(|messages| {
                messages
                    .iter()
                    .map(|m| {
                        (
                            m["role"].as_str().unwrap_or_default().to_owned(),
                            m["content"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<VecDeque<Script>>,
    received: Mutex<Vec<Received>>,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    closed: watch::Sender<usize>,
}

pub struct FakeLlm {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    closed: watch::Receiver<usize>,
}

impl FakeLlm {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"))).await
    }

    /// A fake model listening on `addr`: a port a test kept free, say, to bring the model up
    /// late.
    pub async fn start_on(addr: SocketAddr) -> Self {
        let shared = Arc::new(Shared::default());
        let (closed_tx, closed) = watch::channel(0);
        let state = AppState {
            shared: shared.clone(),
            closed: closed_tx,
        };
        let router = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            addr,
            shared,
            closed,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues scripts for the next requests; once they run out, requests get an echo reply.
    pub fn script(&self, scripts: impl IntoIterator<Item = Script>) {
        self.shared
            .scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(scripts);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `count` streaming responses have ended, whether finished or cut off by the client.
    pub async fn wait_for_closed_streams(&self, count: usize) {
        let mut closed = self.closed.clone();
        closed
            .wait_for(|closed| *closed >= count)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Counts a response stream as closed when hyper drops it: at its end, or when the client left.
struct CloseGuard(watch::Sender<usize>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.send_modify(|closed| *closed += 1);
    }
}

fn chunk(delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    });
    format!("data: {chunk}\n\n")
}

fn text_frames(deltas: &[String]) -> Vec<String> {
    let mut frames = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    frames.extend(deltas.iter().map(|d| chunk(json!({"content": d}), None)));
    frames
}

/// An echo of the last user message, in three deltas.
fn echo(body: &Value) -> Script {
    let last = body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    Script::Reply {
        deltas: vec!["You said: ".to_owned(), last.to_owned(), ".".to_owned()],
        delay: Duration::ZERO,
        usage: Some((7, 3)),
    }
}

async fn complete(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state
        .shared
        .received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
            body: body.clone(),
            authorization,
            traceparent: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            at: tokio::time::Instant::now(),
        });
    let script = state
        .shared
        .scripts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front()
        .unwrap_or_else(|| echo(&body));
    let script = match script {
        Script::Gated { gate, then } => {
            gate.notified().await;
            *then
        }
        other => other,
    };

    let guard = CloseGuard(state.closed.clone());
    let frames: stream::BoxStream<'static, Result<Bytes, std::io::Error>> = match script {
        Script::Status { code, retry_after } => {
            drop(guard);
            let mut response = Response::builder()
                .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
            if let Some(seconds) = retry_after {
                response = response.header(header::RETRY_AFTER, seconds.to_string());
            }
            return response
                .body(Body::from("{\"error\":{\"message\":\"scripted failure\"}}"))
                .unwrap_or_default();
        }
        Script::Reply {
            deltas,
            delay,
            usage,
        } => {
            let mut frames = text_frames(&deltas);
            frames.push(chunk(json!({}), Some("stop")));
            if let Some((prompt, completion)) = usage {
                let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
                                   "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}});
                frames.push(format!("data: {usage}\n\n"));
            }
            frames.push("data: [DONE]\n\n".to_owned());
            paced(frames, delay).boxed()
        }
        Script::Reported { deltas, usage } => {
            let mut frames = text_frames(&deltas);
            frames.push(chunk(json!({}), Some("stop")));
            let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [], "usage": usage});
            frames.push(format!("data: {usage}\n\n"));
            frames.push("data: [DONE]\n\n".to_owned());
            paced(frames, Duration::ZERO).boxed()
        }
        Script::ToolCalls { deltas, fragments } => {
            let mut frames = text_frames(&deltas);
            for (index, id, name, arguments) in fragments {
                let mut call = json!({"index": index, "function": {"arguments": arguments}});
                if let Some(id) = id {
                    call["id"] = json!(id);
                    call["type"] = json!("function");
                }
                if let Some(name) = name {
                    call["function"]["name"] = json!(name);
                }
                frames.push(chunk(json!({"tool_calls": [call]}), None));
            }
            frames.push(chunk(json!({}), Some("tool_calls")));
            frames.push("data: [DONE]\n\n".to_owned());
            paced(frames, Duration::ZERO).boxed()
        }
        Script::Paused {
            before,
            gate,
            after,
        } => {
            let mut rest: Vec<String> = after
                .iter()
                .map(|d| chunk(json!({"content": d}), None))
                .collect();
            rest.push(chunk(json!({}), Some("stop")));
            rest.push("data: [DONE]\n\n".to_owned());
            let released = stream::once(async move { gate.notified().await })
                .filter_map(|()| async { None::<Result<Bytes, std::io::Error>> });
            paced(text_frames(&before), Duration::ZERO)
                .chain(released)
                .chain(paced(rest, Duration::ZERO))
                .boxed()
        }
        Script::Stall { deltas } => {
            let keep_alive = stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Ok(Bytes::from_static(b": keep-alive\n\n")), ()))
            });
            paced(text_frames(&deltas), Duration::ZERO)
                .chain(keep_alive)
                .boxed()
        }
        Script::Drop { deltas } => {
            // The pause lets the deltas reach the client before the connection breaks.
            let broken = stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(std::io::Error::other("scripted connection drop"))
            });
            paced(text_frames(&deltas), Duration::ZERO)
                .chain(broken)
                .boxed()
        }
        Script::ErrorChunk { deltas, message } => {
            let mut frames = text_frames(&deltas);
            let error = json!({"error": {"message": message, "type": "upstream_error"}});
            frames.push(format!("data: {error}\n\n"));
            paced(frames, Duration::ZERO).boxed()
        }
        Script::Gated { .. } => unreachable!("a gate is opened before the script is read"),
        Script::Malformed => {
            let frames = vec![
                chunk(json!({"content": "fine"}), None),
                "data: {this is not json\n\n".to_owned(),
            ];
            paced(frames, Duration::ZERO).boxed()
        }
    };
    // The guard lives as long as the body stream, which hyper drops when the response ends or
    // the client goes away.
    let frames = frames.map(move |frame| {
        let _ = &guard;
        frame
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(frames))
        .unwrap_or_default()
}

/// The frames, `delay` apart.
fn paced(
    frames: Vec<String>,
    delay: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    stream::unfold(frames.into_iter(), move |mut frames| async move {
        let frame = frames.next()?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(frame)), frames))
    })
}
