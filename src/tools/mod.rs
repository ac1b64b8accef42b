//! The tools port: what the assistant may call, and calling it. Tools come from MCP servers over
//! Streamable HTTP ([`mcp`]); their names are made unique across servers ([`catalog`]). Knows
//! nothing of gRPC, storage or the model.

mod answers;
mod catalog;
mod mcp;
mod outcome;

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::telemetry::metrics::Metrics;

pub use self::answers::{MAX_ERROR_BYTES, listed_tools, tool_outcome};
pub use self::catalog::{Catalog, ListedTool, MAX_TOOLS_PER_SERVER, is_model_name};
use self::mcp::McpServer;
pub use self::{
    mcp::McpServerSettings,
    outcome::{ToolFailure, ToolOutcome},
};

/// Which MCP servers serve tools, and how long and how much a call may take.
#[derive(Debug, Clone)]
pub struct ToolSettings {
    pub servers: Vec<McpServerSettings>,
    /// The longest one call may take, from sending it to its result.
    pub call_timeout: Duration,
    /// The largest result kept, in bytes of JSON; a larger one fails the call.
    pub max_result_bytes: usize,
}

/// The tools of every configured MCP server, kept up to date as servers come and go and as
/// they announce changes to their lists.
pub struct Toolbox {
    servers: Vec<Arc<McpServer>>,
    catalog: Arc<catalog::Shared>,
    settings: ToolSettings,
}

impl Toolbox {
    /// Starts watching each server: its tools are listed as soon as it answers, and again
    /// whenever it says its list changed. A server that does not answer does not hold anything
    /// up; its tools are simply absent until it does. `stop` ends the watching.
    pub fn start(
        settings: ToolSettings,
        metrics: Arc<Metrics>,
        stop: &CancellationToken,
    ) -> Arc<Self> {
        // rmcp's HTTP client comes without a TLS crypto provider; the one the rest of the
        // service uses is installed for it. Installing twice is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let catalog = Arc::new(catalog::Shared::new(settings.servers.len(), metrics));
        let servers: Vec<Arc<McpServer>> = settings
            .servers
            .iter()
            .enumerate()
            .map(|(index, server)| {
                McpServer::new(
                    index,
                    server.clone(),
                    settings.max_result_bytes,
                    catalog.clone(),
                )
            })
            .collect();
        for server in &servers {
            tokio::spawn(server.clone().watch(stop.child_token()));
        }
        Arc::new(Self {
            servers,
            catalog,
            settings,
        })
    }

    /// Whether any tool server is configured: then the service runs the tools the model calls,
    /// even when none is on offer just now.
    pub fn is_configured(&self) -> bool {
        !self.servers.is_empty()
    }

    /// The largest tool result kept, in bytes of JSON.
    pub fn max_result_bytes(&self) -> usize {
        self.settings.max_result_bytes
    }

    /// The tools on offer now. Cheap: the list is shared until it changes.
    pub fn offered(&self) -> Arc<Catalog> {
        self.catalog.current()
    }

    /// Calls the tool the model named `name` in `catalog`, with its arguments as the model wrote
    /// them. Never fails: an unknown tool, bad arguments, a tool error, an unreachable server, a
    /// timeout and an oversized result are each a failed outcome that says why. `caller` is the
    /// caller's bearer token, forwarded to servers configured to receive it. Dropping the
    /// returned future cancels the call on the server.
    pub async fn call(
        &self,
        catalog: &Catalog,
        name: &str,
        arguments: &serde_json::Value,
        caller: Option<&SecretString>,
    ) -> ToolOutcome {
        let Some((server, tool)) = catalog.route(name) else {
            return ToolOutcome::Failed(ToolFailure::UnknownTool(name.to_owned()));
        };
        let Some(server) = self.servers.get(server) else {
            return ToolOutcome::Failed(ToolFailure::UnknownTool(name.to_owned()));
        };
        let arguments = match arguments {
            serde_json::Value::Object(map) => map.clone(),
            // Models write `{}` as nothing at all, or as `null`, for tools without parameters.
            serde_json::Value::Null => serde_json::Map::new(),
            serde_json::Value::String(text) if text.trim().is_empty() => serde_json::Map::new(),
            _ => return ToolOutcome::Failed(ToolFailure::InvalidArguments),
        };
        let span = tracing::info_span!(
            "execute_tool",
            otel.name = %format!("execute_tool {name}"),
            otel.kind = "client",
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = %name,
            mcp.server = %server.name(),
            error.type = tracing::field::Empty,
        );
        let call = server
            .call(tool, arguments, caller)
            .instrument(span.clone());
        let outcome = match tokio::time::timeout(self.settings.call_timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => ToolOutcome::Failed(ToolFailure::Timeout(self.settings.call_timeout)),
        };
        if let ToolOutcome::Failed(failure) = &outcome {
            span.record("error.type", failure.kind());
        }
        outcome
    }
}
