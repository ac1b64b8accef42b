//! An MCP server with the product's task tools, for trying the service's tools end to end:
//! `add_task`, `list_tasks`, `complete_task`, `update_task` and `delete_task`, over Streamable HTTP.
//!
//! Each user's tasks are kept apart by who the call is from, which the server learns from the
//! bearer token the service forwards (`"forwardBearerToken": true` in `CHAT_MCP_CONFIG`) and
//! verifies itself with the service's `CHAT_JWT_SECRET`: never from the model's arguments.
//! Tasks live in memory.
//!
//! ```sh
//! CHAT_JWT_SECRET=<the service's secret> cargo run --release --example task_tools
//! ```
//!
//! It listens on `TASK_TOOLS_ADDR` (default `127.0.0.1:8000`), at `/mcp`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
        PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    },
    service::RequestContext,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Serialize)]
struct Task {
    id: u64,
    title: String,
    done: bool,
}

#[derive(Default)]
struct Tasks {
    by_user: HashMap<String, Vec<Task>>,
    next_id: u64,
}

#[derive(Clone)]
struct TaskTools {
    tasks: Arc<Mutex<Tasks>>,
    key: Arc<DecodingKey>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// A tool failure the model reads: MCP's error result, in words.
fn refuse(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

fn schema(value: Value) -> Arc<serde_json::Map<String, Value>> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::default(),
    }
}

fn tools() -> Vec<Tool> {
    let id = json!({"type": "integer", "description": "The task's id, as add_task or list_tasks gave it"});
    vec![
        Tool::new(
            "add_task",
            "Adds a task to the user's list and returns it",
            schema(json!({
                "type": "object",
                "properties": {"title": {"type": "string", "description": "What is to be done"}},
                "required": ["title"]
            })),
        ),
        Tool::new(
            "list_tasks",
            "Lists the user's tasks",
            schema(json!({
                "type": "object",
                "properties": {"status": {"type": "string", "enum": ["all", "pending", "completed"]}}
            })),
        ),
        Tool::new(
            "complete_task",
            "Marks one of the user's tasks as done",
            schema(
                json!({"type": "object", "properties": {"task_id": id}, "required": ["task_id"]}),
            ),
        ),
        Tool::new(
            "update_task",
            "Renames one of the user's tasks",
            schema(json!({
                "type": "object",
                "properties": {"task_id": id, "title": {"type": "string"}},
                "required": ["task_id", "title"]
            })),
        ),
        Tool::new(
            "delete_task",
            "Deletes one of the user's tasks",
            schema(
                json!({"type": "object", "properties": {"task_id": id}, "required": ["task_id"]}),
            ),
        ),
    ]
}

impl TaskTools {
    /// The user a call is from: the `sub` of the bearer token it carries, once verified.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Result<String, String> {
        let header = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.headers.get(http::header::AUTHORIZATION))
            .and_then(|value| value.to_str().ok())
            .ok_or("the call carries no bearer token: set \"forwardBearerToken\": true")?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or("the authorization is not a bearer token")?;
        jsonwebtoken::decode::<Claims>(token, &self.key, &Validation::new(Algorithm::HS256))
            .map(|data| data.claims.sub)
            .map_err(|e| format!("the bearer token is not valid: {e}"))
    }

    fn run(&self, user: &str, tool: &str, arguments: &Value) -> CallToolResult {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let Tasks { by_user, next_id } = &mut *tasks;
        let list = by_user.entry(user.to_owned()).or_default();
        let task_id = arguments["task_id"].as_u64();
        let position = task_id.and_then(|id| list.iter().position(|t| t.id == id));
        match (tool, position) {
            ("add_task", _) => {
                let Some(title) = arguments["title"].as_str().filter(|t| !t.trim().is_empty())
                else {
                    return refuse("a task needs a title");
                };
                *next_id += 1;
                let task = Task {
                    id: *next_id,
                    title: title.trim().to_owned(),
                    done: false,
                };
                list.push(task.clone());
                CallToolResult::structured(json!(task))
            }
            ("list_tasks", _) => {
                let wanted = |task: &&Task| match arguments["status"].as_str() {
                    Some("pending") => !task.done,
                    Some("completed") => task.done,
                    _ => true,
                };
                let shown: Vec<&Task> = list.iter().filter(wanted).collect();
                CallToolResult::structured(json!({"tasks": shown}))
            }
            ("complete_task" | "update_task" | "delete_task", None) => {
                refuse(format!("there is no task {}", arguments["task_id"]))
            }
            ("complete_task", Some(at)) => {
                list[at].done = true;
                CallToolResult::structured(json!(list[at]))
            }
            ("update_task", Some(at)) => match arguments["title"].as_str() {
                Some(title) if !title.trim().is_empty() => {
                    list[at].title = title.trim().to_owned();
                    CallToolResult::structured(json!(list[at]))
                }
                _ => refuse("a task needs a title"),
            },
            ("delete_task", Some(at)) => {
                let task = list.remove(at);
                CallToolResult::structured(json!({"deleted": task}))
            }
            (other, _) => refuse(format!("there is no tool {other}")),
        }
    }
}

impl ServerHandler for TaskTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let result = match self.caller(&context) {
            Ok(user) => {
                let arguments = Value::Object(request.arguments.unwrap_or_default());
                self.run(&user, &request.name, &arguments)
            }
            Err(reason) => refuse(reason),
        };
        Ok(result.into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("CHAT_JWT_SECRET")
        .map_err(|_| "set CHAT_JWT_SECRET to the service's token secret")?;
    let addr = std::env::var("TASK_TOOLS_ADDR").unwrap_or_else(|_| "127.0.0.1:8000".to_owned());
    let tools = TaskTools {
        tasks: Arc::default(),
        key: Arc::new(DecodingKey::from_secret(secret.as_bytes())),
    };
    let service: StreamableHttpService<TaskTools, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::default(),
        StreamableHttpServerConfig::default(),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("task tools at http://{}/mcp", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
