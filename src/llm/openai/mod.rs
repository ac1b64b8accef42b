//! OpenAI-compatible Chat Completions over HTTP with server-sent events: the protocol spoken by
//! OpenAI, vLLM, Ollama, llama.cpp's server, LM Studio, LiteLLM and most gateways.

mod reply_reader;
mod retries;
mod sse;
mod wire;

use std::{error::Error as _, pin::Pin, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::{Instant, sleep, timeout_at};
use tokio_stream::Stream;

pub use self::reply_reader::{MAX_EVENT_BYTES, MAX_REPLY_BYTES, ReplyReader};
use self::retries::{backoff, retry_after};
use self::wire::{
    RequestBody, StreamOptions, WireFunction, WireFunctionCall, WireMessage, WireTool, WireToolCall,
};
use super::{ChatModel, LlmError, ModelEvent, ModelRequest, ModelStream, TimeoutKind};

/// How to reach the model and how long to wait for it.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// The API root, e.g. `https://api.openai.com/v1` or `http://localhost:11434/v1`.
    pub base_url: String,
    pub api_key: Option<SecretString>,
    pub model: String,
    /// The longest reply the model may write, in tokens (`max_completion_tokens`); `None` leaves
    /// it to the model.
    pub max_output_tokens: Option<u32>,
    pub connect_timeout: Duration,
    /// From sending a request to the first chunk of the reply.
    pub first_token_timeout: Duration,
    /// The longest pause allowed between two chunks.
    pub idle_timeout: Duration,
    /// The longest a whole reply may take.
    pub total_timeout: Duration,
    /// Retries after the first attempt, for connection errors, 429 and 5xx, before any token.
    pub max_retries: u32,
    /// The first retry waits between this long and twice as long; each further one doubles.
    pub retry_base_delay: Duration,
}

/// How long a finished response may take to reach its end, so that its connection is reused.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A model behind an OpenAI-compatible API, sharing one pooled keep-alive HTTP client.
#[derive(Clone)]
pub struct OpenAiModel {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    endpoint: String,
    settings: OpenAiSettings,
}

impl OpenAiModel {
    pub fn new(settings: OpenAiSettings) -> Result<Self, LlmError> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| LlmError::Connect(describe(&e)))?;
        let endpoint = format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        );
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                endpoint,
                settings,
            }),
        })
    }
}

impl ChatModel for OpenAiModel {
    fn name(&self) -> &str {
        &self.inner.settings.model
    }

    fn provider(&self) -> &'static str {
        // What the API speaks; the server behind it may be vLLM, Ollama or another.
        "openai"
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let completion = CompletionStream::new(self.inner.clone(), &request);
        Box::pin(stream::unfold(completion, |mut completion| async move {
            let item = completion.next().await?;
            Some((item, completion))
        }))
    }
}

/// About what a request's JSON spends on each message beside its text: its keys, role and
/// quotes.
const REQUEST_BYTES_PER_MESSAGE: usize = 64;

type BodyStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>;

/// One reply being generated: connects (with retries), then reads the body's events.
struct CompletionStream {
    inner: Arc<Inner>,
    /// Encoded once; every attempt sends the same bytes without copying them.
    body: Result<bytes::Bytes, LlmError>,
    deadline: Instant,
    body_stream: Option<BodyStream>,
    /// When the current attempt's first content (text or tool call) is due. Until the reader has
    /// seen content, only this applies; after it, the idle timeout.
    first_content_due: Instant,
    /// When the last server-sent event arrived: the idle timeout runs from there, so that
    /// keep-alive comments do not keep a stalled stream alive.
    last_event_at: Instant,
    reader: ReplyReader,
    done: bool,
}

impl CompletionStream {
    fn new(inner: Arc<Inner>, request: &ModelRequest) -> Self {
        let body = RequestBody {
            model: &inner.settings.model,
            messages: request
                .messages
                .iter()
                .map(|m| WireMessage {
                    role: m.role.into(),
                    content: &m.content,
                    tool_calls: m
                        .tool_calls
                        .iter()
                        .map(|call| WireToolCall {
                            id: &call.id,
                            r#type: "function",
                            function: WireFunctionCall {
                                name: &call.name,
                                arguments: &call.arguments,
                            },
                        })
                        .collect(),
                    tool_call_id: m.tool_call_id.as_deref(),
                })
                .collect(),
            tools: request
                .tools
                .iter()
                .map(|tool| WireTool {
                    r#type: "function",
                    function: WireFunction {
                        name: &tool.name,
                        description: &tool.description,
                        parameters: &tool.parameters,
                    },
                })
                .collect(),
            tool_choice: (!request.may_call_tools && !request.tools.is_empty()).then_some("none"),
            max_completion_tokens: inner.settings.max_output_tokens,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
        };
        // Sized for the text and each message's keys up front, so that a long context is not
        // copied again at each doubling of the buffer.
        let mut encoded = Vec::with_capacity(
            request.text_bytes() + REQUEST_BYTES_PER_MESSAGE * (request.messages.len() + 2),
        );
        let body = serde_json::to_writer(&mut encoded, &body)
            .map_err(|e| LlmError::Malformed(format!("cannot encode the request: {e}")))
            .map(|()| bytes::Bytes::from(encoded));
        let now = Instant::now();
        let deadline = now + inner.settings.total_timeout;
        Self {
            inner,
            body,
            deadline,
            body_stream: None,
            first_content_due: deadline,
            last_event_at: now,
            reader: ReplyReader::default(),
            done: false,
        }
    }

    async fn next(&mut self) -> Option<Result<ModelEvent, LlmError>> {
        loop {
            if let Some(event) = self.reader.next_event() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let step = match self.body_stream.is_some() {
                false => self.connect().await,
                true => self.read_body().await,
            };
            if let Err(error) = step {
                self.done = true;
                self.body_stream = None;
                return Some(Err(error));
            }
        }
    }

    /// The request of one attempt, with the caller's trace: the upstream gets the model call's
    /// span as its parent.
    fn request(&self, body: bytes::Bytes) -> reqwest::RequestBuilder {
        let mut request = self
            .inner
            .client
            .post(&self.inner.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body);
        if let Some(key) = &self.inner.settings.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        let mut trace_headers = reqwest::header::HeaderMap::new();
        crate::telemetry::propagation::inject_current(&mut trace_headers);
        request.headers(trace_headers)
    }

    /// Sends the request, retrying connection errors, 429 and 5xx with backoff.
    async fn connect(&mut self) -> Result<(), LlmError> {
        let settings = &self.inner.settings;
        let body = self.body.clone()?;
        let mut backoff = backoff(settings);
        loop {
            let sent_at = Instant::now();
            self.first_content_due = (sent_at + settings.first_token_timeout).min(self.deadline);
            let request = self.request(body.clone());
            let outcome = timeout_at(self.first_content_due, request.send()).await;
            let (failed, asked_for) = match outcome {
                Err(_) => return Err(self.timeout()),
                Ok(Ok(response)) if response.status().is_success() => {
                    self.body_stream = Some(Box::pin(response.bytes_stream()));
                    return Ok(());
                }
                Ok(Ok(response)) => {
                    let status = response.status();
                    let retryable = status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || status.is_server_error();
                    let failed = LlmError::Http {
                        status: status.as_u16(),
                    };
                    if !retryable {
                        return Err(failed);
                    }
                    (failed, retry_after(&response))
                }
                Ok(Err(error)) => {
                    let failed = LlmError::Connect(describe(&error));
                    if !error.is_connect() {
                        return Err(failed);
                    }
                    (failed, None)
                }
            };
            // The backoff decides whether there is another try; the server may ask for a delay.
            let Some(delay) = backoff.next() else {
                return Err(failed);
            };
            let delay = asked_for.unwrap_or(delay);
            if Instant::now() + delay >= self.deadline {
                return Err(LlmError::Timeout(TimeoutKind::Total));
            }
            tracing::warn!(
                error = %failed,
                delay_ms = delay.as_millis(),
                "the model request failed; trying again"
            );
            sleep(delay).await;
        }
    }

    /// Reads the next bytes of the body, which may complete events, end the reply or fail it.
    async fn read_body(&mut self) -> Result<(), LlmError> {
        let due = if self.reader.saw_content() {
            (self.last_event_at + self.inner.settings.idle_timeout).min(self.deadline)
        } else {
            self.first_content_due
        };
        let Some(body) = self.body_stream.as_mut() else {
            return Ok(());
        };
        match timeout_at(due, body.next()).await {
            Err(_) => return Err(self.timeout()),
            Ok(None) => {
                self.body_stream = None;
                self.reader.end()?;
            }
            Ok(Some(Err(error))) => return Err(LlmError::Interrupted(describe(&error))),
            Ok(Some(Ok(bytes))) => {
                let read_before = self.reader.events_read();
                self.reader.push(&bytes)?;
                if self.reader.events_read() != read_before {
                    self.last_event_at = Instant::now();
                }
            }
        }
        if self.reader.is_finished() {
            self.finish();
        }
        Ok(())
    }

    /// Lets the rest of the response drain in the background, so that its connection goes back
    /// to the pool.
    fn finish(&mut self) {
        self.done = true;
        if let Some(mut body) = self.body_stream.take() {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
                    while body.next().await.is_some() {}
                })
                .await;
            });
        }
    }

    fn timeout(&self) -> LlmError {
        LlmError::Timeout(if Instant::now() >= self.deadline {
            TimeoutKind::Total
        } else if self.reader.saw_content() {
            TimeoutKind::Idle
        } else {
            TimeoutKind::FirstToken
        })
    }
}

/// The error and its causes, without the URL (which may reveal internal addresses).
fn describe(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source = error.source();
    while let Some(cause) = source {
        text = cause.to_string();
        source = cause.source();
    }
    if text.is_empty() {
        error.to_string()
    } else {
        text
    }
}
