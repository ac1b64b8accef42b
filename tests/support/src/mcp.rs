//! A real MCP server (rmcp, Streamable HTTP over loopback) with tools a test can steer: a task
//! list kept per caller, an echo, a failing tool, one that never answers until cancelled, one
//! that answers too much, two that only answer together, and one that comes and goes.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::http::request::Parts;
use chat_service::tools::McpServerSettings;
use rmcp::{
    ErrorData as McpError, Peer, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
        PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    },
    service::{NotificationContext, RequestContext},
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use serde_json::{Value, json};
use tokio::sync::{Barrier, watch};
use tokio_util::sync::CancellationToken;

/// One call as the server received it.
#[derive(Debug, Clone)]
pub struct SeenCall {
    pub tool: String,
    pub arguments: Value,
    /// The `Authorization` header the call came with.
    pub authorization: Option<String>,
}

struct State {
    /// Each caller's tasks, by the `Authorization` header their calls carry.
    tasks: Mutex<HashMap<String, Vec<Value>>>,
    calls: Mutex<Vec<SeenCall>>,
    /// Whether `weather` is listed.
    weather: AtomicBool,
    /// Every client session, to tell when the list changes.
    peers: Mutex<Vec<Peer<RoleServer>>>,
    /// How many `hang` calls have started, and how many were cancelled by their client.
    hung: watch::Sender<usize>,
    cancelled: watch::Sender<usize>,
    /// `together` answers only once two calls of it are running at once.
    together: Barrier,
}

/// The server, serving until dropped.
pub struct FakeToolServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Drop for FakeToolServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The service's settings for an MCP server at `url`.
pub fn server_settings(name: &str, url: String, forward_bearer_token: bool) -> McpServerSettings {
    McpServerSettings {
        name: name.to_owned(),
        url,
        headers: HashMap::new(),
        forward_bearer_token,
    }
}

/// How many tools the server lists, `weather` aside.
pub const TOOLS: usize = 7;

/// Larger than the result cap the tests set, and small enough to arrive whole.
pub const BIG_RESULT_BYTES: usize = 20_000;

impl FakeToolServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self::serve(listener).await
    }

    /// Serves at `addr`, which nothing else listens on.
    pub async fn start_at(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("{addr}: {e}"));
        Self::serve(listener).await
    }

    async fn serve(listener: tokio::net::TcpListener) -> Self {
        let (hung, _) = watch::channel(0);
        let (cancelled, _) = watch::channel(0);
        let state = Arc::new(State {
            tasks: Mutex::default(),
            calls: Mutex::default(),
            weather: AtomicBool::new(false),
            peers: Mutex::default(),
            hung,
            cancelled,
            together: Barrier::new(2),
        });
        let stop = CancellationToken::new();
        let handler = Handler {
            state: state.clone(),
        };
        let service: StreamableHttpService<Handler, LocalSessionManager> =
            StreamableHttpService::new(
                move || Ok(handler.clone()),
                Arc::default(),
                StreamableHttpServerConfig::default()
                    .with_sse_keep_alive(None)
                    .with_cancellation_token(stop.child_token()),
            );
        let router = axum::Router::new().nest_service("/mcp", service);
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let shutdown = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
        Self { addr, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The service's settings for this server, named `name`.
    pub fn settings(&self, name: &str, forward_bearer_token: bool) -> McpServerSettings {
        server_settings(name, self.url(), forward_bearer_token)
    }

    pub fn calls(&self) -> Vec<SeenCall> {
        self.state
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Lists `weather`, or stops listing it, and tells every connected client.
    pub async fn offer_weather(&self, offered: bool) {
        self.state.weather.store(offered, Ordering::SeqCst);
        let peers = self
            .state
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for peer in peers {
            let _ = peer.notify_tool_list_changed().await;
        }
    }

    /// Waits until `count` calls of `hang` have started.
    pub async fn wait_for_hung_calls(&self, count: usize) {
        let mut hung = self.state.hung.subscribe();
        hung.wait_for(|n| *n >= count)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until the client has cancelled `count` calls.
    pub async fn wait_for_cancelled_calls(&self, count: usize) {
        let mut cancelled = self.state.cancelled.subscribe();
        cancelled
            .wait_for(|n| *n >= count)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[derive(Clone)]
struct Handler {
    state: Arc<State>,
}

fn tool(name: &'static str, description: &'static str, schema: Value) -> Tool {
    let Value::Object(schema) = schema else {
        panic!("a schema is an object");
    };
    Tool::new(name, description, Arc::new(schema))
}

fn no_arguments() -> Value {
    json!({"type": "object", "properties": {}})
}

fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

impl Handler {
    fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![
            tool(
                "add_task",
                "Adds a task to the caller's list",
                json!({"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}),
            ),
            tool("list_tasks", "Lists the caller's tasks", no_arguments()),
            tool(
                "echo",
                "Says the text back",
                json!({"type": "object", "properties": {"text": {"type": "string"}}}),
            ),
            tool("fail", "Always fails", no_arguments()),
            tool("hang", "Never answers until cancelled", no_arguments()),
            tool("big", "Answers with a very large text", no_arguments()),
            tool(
                "together",
                "Answers once a second call of it is running",
                no_arguments(),
            ),
        ];
        if self.state.weather.load(Ordering::SeqCst) {
            tools.push(tool("weather", "Says what the weather is", no_arguments()));
        }
        tools
    }

    async fn run(
        &self,
        name: &str,
        arguments: &Value,
        caller: String,
        cancelled: CancellationToken,
    ) -> CallToolResult {
        match name {
            "add_task" => {
                let title = arguments["title"].as_str().unwrap_or_default();
                let mut tasks = self.state.tasks.lock().unwrap_or_else(|e| e.into_inner());
                let list = tasks.entry(caller).or_default();
                let task = json!({"id": list.len() + 1, "title": title, "done": false});
                list.push(task.clone());
                CallToolResult::structured(task)
            }
            "list_tasks" => {
                let tasks = self.state.tasks.lock().unwrap_or_else(|e| e.into_inner());
                let list = tasks.get(&caller).cloned().unwrap_or_default();
                CallToolResult::structured(json!({"tasks": list}))
            }
            "echo" => text(arguments["text"].as_str().unwrap_or_default()),
            "fail" => {
                CallToolResult::error(vec![ContentBlock::text("the task store is read-only")])
            }
            "hang" => {
                self.state.hung.send_modify(|n| *n += 1);
                cancelled.cancelled().await;
                self.state.cancelled.send_modify(|n| *n += 1);
                text("cancelled")
            }
            "big" => text("x".repeat(BIG_RESULT_BYTES)),
            "together" => {
                self.state.together.wait().await;
                text("together")
            }
            "weather" if self.state.weather.load(Ordering::SeqCst) => text("sunny"),
            other => CallToolResult::error(vec![ContentBlock::text(format!("no tool {other}"))]),
        }
    }
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.state
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(context.peer);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let authorization = context
            .extensions
            .get::<Parts>()
            .and_then(|parts| parts.headers.get("authorization"))
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default());
        self.state
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SeenCall {
                tool: request.name.to_string(),
                arguments: arguments.clone(),
                authorization: authorization.clone(),
            });
        let caller = authorization.unwrap_or_default();
        let result = self
            .run(&request.name, &arguments, caller, context.ct.clone())
            .await;
        Ok(result.into())
    }
}
