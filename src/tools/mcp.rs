//! One MCP server over Streamable HTTP, through the official Rust SDK (rmcp): a connection kept
//! open to follow its tool list, and the calls.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, PoisonError, RwLock, Weak},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use http::{HeaderName, HeaderValue};
use rmcp::{
    ClientHandler, Peer, RoleClient, ServiceError, ServiceExt,
    model::{
        CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
    },
    service::{NotificationContext, RunningService},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    ToolFailure, ToolOutcome,
    answers::{MAX_ERROR_BYTES, listed_tools, tool_outcome, truncate},
    catalog::Shared,
};

/// One server, as configured.
#[derive(Clone)]
pub struct McpServerSettings {
    /// Letters, digits, `_` and `-`: it prefixes tool names that two servers share.
    pub name: String,
    /// The Streamable HTTP endpoint, e.g. `http://tasks:8000/mcp`.
    pub url: String,
    /// Sent with every request. May hold credentials: never printed.
    pub headers: HashMap<HeaderName, HeaderValue>,
    /// Whether each call carries the caller's own bearer token, so that the server can tell
    /// whose call it is from a token it can verify.
    pub forward_bearer_token: bool,
}

impl fmt::Debug for McpServerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL may carry credentials (`https://user:password@host/`): only where it points is
        // shown.
        let url = url::Url::parse(&self.url).map_or_else(
            |_| "<not a URL>".to_owned(),
            |url| {
                format!(
                    "{}://{}{}",
                    url.scheme(),
                    url.host_str().unwrap_or(""),
                    url.path()
                )
            },
        );
        f.debug_struct("McpServerSettings")
            .field("name", &self.name)
            .field("url", &url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("forward_bearer_token", &self.forward_bearer_token)
            .finish()
    }
}

/// The protocol version the client asks for: the last one with sessions, which every server
/// in use speaks and on which servers announce list changes without being subscribed.
const PROTOCOL: ProtocolVersion = ProtocolVersion::V_2025_11_25;

/// The largest answer read from a server: a result up to a few times too large still arrives
/// whole, so that the model can be told it was too large; anything larger is cut off by the
/// transport, and memory stays bounded either way.
fn max_answer_bytes(max_result_bytes: usize) -> usize {
    max_result_bytes.saturating_mul(4).saturating_add(64 * 1024)
}

pub(super) struct McpServer {
    index: usize,
    settings: McpServerSettings,
    max_result_bytes: usize,
    catalog: Arc<Shared>,
    /// The open connection, while there is one.
    peer: RwLock<Option<Peer<RoleClient>>>,
    /// Told when the server says its tool list changed.
    list_changed: Notify,
}

impl McpServer {
    pub fn new(
        index: usize,
        settings: McpServerSettings,
        max_result_bytes: usize,
        catalog: Arc<Shared>,
    ) -> Arc<Self> {
        Arc::new(Self {
            index,
            settings,
            max_result_bytes,
            catalog,
            peer: RwLock::new(None),
            list_changed: Notify::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Keeps a connection open and the server's tools listed, reconnecting after a pause that
    /// grows while the server does not answer, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut pauses = reconnect_backoff();
        loop {
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                connected = self.connect(None, Some(Arc::downgrade(&self))) => connected,
            };
            match connected {
                Ok(running) => {
                    tracing::info!(server = %self.name(), "connected to the MCP server");
                    let connected_at = tokio::time::Instant::now();
                    let peer = running.peer().clone();
                    *self.peer.write().unwrap_or_else(PoisonError::into_inner) = Some(peer.clone());
                    let closing = running.cancellation_token();
                    let closed = running.waiting();
                    tokio::pin!(closed);
                    // Lists now, then once for any number of changes announced meanwhile, one
                    // list at a time, so that an older list never replaces a newer one.
                    let mut relist = true;
                    loop {
                        if std::mem::take(&mut relist) {
                            tokio::select! {
                                () = stop.cancelled() => {
                                    closing.cancel();
                                    return;
                                }
                                _ = &mut closed => break,
                                () = self.relist(&peer) => {}
                            }
                        }
                        tokio::select! {
                            () = stop.cancelled() => {
                                closing.cancel();
                                return;
                            }
                            _ = &mut closed => break,
                            () = self.list_changed.notified() => relist = true,
                        }
                    }
                    tracing::warn!(server = %self.name(), "the MCP server closed the connection");
                    // A server that drops each connection at once is not retried at once forever.
                    if connected_at.elapsed() >= MAX_RECONNECT_PAUSE {
                        pauses = reconnect_backoff();
                    }
                    *self.peer.write().unwrap_or_else(PoisonError::into_inner) = None;
                    self.catalog.update(self.index, self.name(), None);
                }
                Err(error) => {
                    tracing::warn!(server = %self.name(), error = %error, "the MCP server does not answer; its tools are not offered");
                }
            }
            let pause = pauses.next().unwrap_or(MAX_RECONNECT_PAUSE);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Lists the server's tools and offers them.
    async fn relist(&self, peer: &Peer<RoleClient>) {
        let listed = tokio::time::timeout(LIST_TIMEOUT, peer.list_all_tools()).await;
        match listed.unwrap_or_else(|_| {
            Err(ServiceError::Timeout {
                timeout: LIST_TIMEOUT,
            })
        }) {
            Ok(tools) => {
                let tools = listed_tools(tools);
                let count = tools.len();
                self.catalog.update(self.index, self.name(), Some(tools));
                tracing::info!(server = %self.name(), tools = count, "listed the MCP server's tools");
            }
            Err(error) => {
                tracing::warn!(server = %self.name(), error = %error, "listing the MCP server's tools failed");
            }
        }
    }

    /// Opens a connection. `bearer` replaces the configured authorization; `watcher` hears of
    /// list changes.
    async fn connect(
        &self,
        bearer: Option<&SecretString>,
        watcher: Option<Weak<Self>>,
    ) -> Result<RunningService<RoleClient, Watcher>, String> {
        let mut headers = self.settings.headers.clone();
        let limit = max_answer_bytes(self.max_result_bytes);
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.settings.url.as_str())
            .max_json_response_size(limit)
            .max_sse_event_size(limit);
        if let Some(token) = bearer {
            headers.remove(&http::header::AUTHORIZATION);
            config = config.auth_header(token.expose_secret());
        }
        let config = config.custom_headers(headers);
        let transport = StreamableHttpClientTransport::from_config(config);
        Watcher { server: watcher }
            .serve(transport)
            .await
            .map_err(|e| e.to_string())
    }

    /// Calls `tool`. A server that forwards the caller's token gets a connection of the
    /// caller's own for the call; the others share the watching one.
    pub async fn call(
        &self,
        tool: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        caller: Option<&SecretString>,
    ) -> ToolOutcome {
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        let result = if self.settings.forward_bearer_token {
            let Some(token) = caller else {
                return ToolOutcome::Failed(ToolFailure::Unreachable(
                    "the server needs the caller's token, and the call has none".to_owned(),
                ));
            };
            let running = match self.connect(Some(token), None).await {
                Ok(running) => running,
                Err(error) => {
                    tracing::warn!(server = %self.name(), error = %error, "connecting for a call failed");
                    return ToolOutcome::Failed(ToolFailure::Unreachable(format!(
                        "the server {:?} did not answer",
                        self.name()
                    )));
                }
            };
            let result = running.peer().call_tool(params).await;
            // The caller's session is closed in the background: its closing is not the call's
            // time. A call cut short never gets here; its connection is dropped, which closes it.
            tokio::spawn(async move {
                let _ = running.cancel().await;
            });
            result
        } else {
            let peer = self
                .peer
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let Some(peer) = peer else {
                return ToolOutcome::Failed(ToolFailure::Unreachable("not connected".to_owned()));
            };
            peer.call_tool(params).await
        };
        match result {
            Ok(result) => tool_outcome(result, self.max_result_bytes),
            Err(ServiceError::McpError(error)) => ToolOutcome::Failed(ToolFailure::ToolError(
                truncate(error.message.into_owned(), MAX_ERROR_BYTES),
            )),
            Err(error) => {
                let text = error.to_string();
                if text.contains("exceeded the maximum size") {
                    ToolOutcome::Failed(ToolFailure::TooLarge(self.max_result_bytes))
                } else {
                    // The detail can name internal addresses: it goes to the log, not to the
                    // model or the user.
                    tracing::warn!(server = %self.name(), error = %text, "a tool call failed");
                    ToolOutcome::Failed(ToolFailure::Unreachable(format!(
                        "the server {:?} did not answer",
                        self.name()
                    )))
                }
            }
        }
    }
}

/// The longest a server may take to list its tools.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest pause between two attempts to reach a server.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(30);

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(MAX_RECONNECT_PAUSE)
        .without_max_times()
        .with_jitter()
        .build()
}

/// The client side of a connection: says who we are, and relists the tools when the server
/// says they changed.
#[derive(Clone)]
pub(super) struct Watcher {
    server: Option<Weak<McpServer>>,
}

impl ClientHandler for Watcher {
    fn get_info(&self) -> ClientConfig {
        let mut info = Implementation::new("chat-service", env!("CARGO_PKG_VERSION"));
        info.title = Some("chat-service".to_owned());
        ClientConfig::new(ClientCapabilities::default(), info).with_protocol_version(PROTOCOL)
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        // The watching task lists again: not here, since the answer comes through the same
        // connection, and once however many changes are announced.
        if let Some(server) = self.server.as_ref().and_then(Weak::upgrade) {
            server.list_changed.notify_one();
        }
    }
}
