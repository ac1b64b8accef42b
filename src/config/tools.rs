//! CHAT_MCP_CONFIG, CHAT_TOOL_TIMEOUT, CHAT_TOOL_RESULT_MAX_BYTES

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use clap::Args;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{ConfigError, invalid, is_http_url};
use crate::tools::{McpServerSettings, ToolSettings};

#[derive(Debug, Clone, Args)]
pub struct ToolArgs {
    /// A JSON file naming the MCP servers whose tools the assistant may call, in the shape MCP
    /// clients use: {"mcpServers": {"<name>": {"url": "http://…/mcp", "headers": {…},
    /// "forwardBearerToken": false}}}. Unset: no tools.
    #[arg(long, env = "CHAT_MCP_CONFIG", global = true)]
    pub mcp_config: Option<PathBuf>,

    /// The longest one tool call may take; then it fails, and the model is told so.
    #[arg(long, env = "CHAT_TOOL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub tool_timeout: Duration,

    /// The largest tool result kept, in bytes of JSON; a larger one fails the call.
    #[arg(
        long,
        env = "CHAT_TOOL_RESULT_MAX_BYTES",
        default_value_t = 65_536,
        global = true
    )]
    pub tool_result_max_bytes: usize,
}

const SETTING: &str = "CHAT_MCP_CONFIG";

/// Headers the Streamable HTTP transport sets on each request: configured, they would break it.
const RESERVED_HEADERS: [&str; 6] = [
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "host",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct McpConfigFile {
    mcp_servers: BTreeMap<String, McpServerEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct McpServerEntry {
    url: Option<String>,
    /// Only Streamable HTTP is spoken; "http" and "streamable-http" name it.
    #[serde(rename = "type")]
    transport: Option<String>,
    /// Present on stdio servers, which are not supported.
    command: Option<serde_json::Value>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    forward_bearer_token: bool,
}

impl ToolArgs {
    pub fn into_settings(self) -> Result<ToolSettings, ConfigError> {
        if self.tool_timeout.is_zero() {
            return Err(invalid("CHAT_TOOL_TIMEOUT", "must be longer than zero"));
        }
        if self.tool_result_max_bytes == 0 {
            return Err(invalid("CHAT_TOOL_RESULT_MAX_BYTES", "must be at least 1"));
        }
        let servers = match &self.mcp_config {
            None => Vec::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid(SETTING, format!("{}: {e}", path.display())))?;
                parse_mcp_config(&text)?
            }
        };
        Ok(ToolSettings {
            servers,
            call_timeout: self.tool_timeout,
            max_result_bytes: self.tool_result_max_bytes,
        })
    }
}

/// The servers a `CHAT_MCP_CONFIG` file names, in the order of their names.
pub fn parse_mcp_config(text: &str) -> Result<Vec<McpServerSettings>, ConfigError> {
    let file: McpConfigFile = serde_json::from_str(text)
        .map_err(|e| invalid(SETTING, format!("not an MCP configuration: {e}")))?;
    file.mcp_servers
        .into_iter()
        .map(|(name, entry)| server(name, entry))
        .collect()
}

fn server(name: String, entry: McpServerEntry) -> Result<McpServerSettings, ConfigError> {
    let problem = |message: String| invalid(SETTING, format!("server {name:?}: {message}"));
    let valid_name = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(problem(
            "a name is 1 to 32 letters, digits, '_' or '-'".to_owned(),
        ));
    }
    if entry.command.is_some() {
        return Err(problem(
            "stdio servers are not supported: give the url of a Streamable HTTP server".to_owned(),
        ));
    }
    if let Some(transport) = entry.transport.as_deref()
        && !matches!(transport, "http" | "streamable-http" | "streamableHttp")
    {
        return Err(problem(format!(
            "transport {transport:?} is not supported: only Streamable HTTP (\"http\") is"
        )));
    }
    let Some(url) = entry.url.filter(|url| is_http_url(url)) else {
        return Err(problem(
            "needs a \"url\" starting with http:// or https://".to_owned(),
        ));
    };
    let headers = entry
        .headers
        .into_iter()
        .map(|(header, value)| {
            let parsed_name = HeaderName::try_from(header.as_str())
                .map_err(|_| problem(format!("{header:?} is not a header name")))?;
            if RESERVED_HEADERS.contains(&parsed_name.as_str()) {
                return Err(problem(format!(
                    "{header:?} is set by the MCP transport itself and cannot be configured"
                )));
            }
            let mut parsed_value = HeaderValue::try_from(value)
                .map_err(|_| problem(format!("the value of {header:?} is not a header value")))?;
            parsed_value.set_sensitive(true);
            Ok((parsed_name, parsed_value))
        })
        .collect::<Result<_, ConfigError>>()?;
    Ok(McpServerSettings {
        name,
        url,
        headers,
        forward_bearer_token: entry.forward_bearer_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        match parse_mcp_config(text) {
            Ok(servers) => panic!("accepted: {servers:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn servers_are_read_in_the_shape_mcp_clients_use() {
        let servers = parse_mcp_config(
            r#"{"mcpServers": {
                "web": {"url": "https://robot:pa55word@tools.example/mcp", "headers": {"Authorization": "Bearer s3cret"}},
                "tasks": {"type": "http", "url": "http://tasks:8000/mcp", "forwardBearerToken": true}
            }}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["tasks", "web"]);
        assert!(servers[0].forward_bearer_token);
        assert!(!servers[1].forward_bearer_token);
        assert_eq!(servers[1].headers.len(), 1);
        let printed = format!("{servers:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!printed.contains("pa55word"), "{printed}");
        assert!(printed.contains("https://tools.example/mcp"), "{printed}");
    }

    #[test]
    fn what_cannot_be_served_is_refused_by_name() {
        assert!(
            refused(r#"{"mcpServers": {"fs": {"command": "npx", "args": []}}}"#)
                .contains("stdio servers are not supported")
        );
        assert!(
            refused(r#"{"mcpServers": {"old": {"type": "sse", "url": "http://x/sse"}}}"#)
                .contains("only Streamable HTTP")
        );
        assert!(refused(r#"{"mcpServers": {"x": {"url": "ftp://x"}}}"#).contains("\"url\""));
        assert!(
            refused(r#"{"mcpServers": {"a b": {"url": "http://x/mcp"}}}"#).contains("a name is")
        );
        assert!(refused(r#"{"servers": {}}"#).contains("not an MCP configuration"));
        assert!(
            refused(r#"{"mcpServers": {"x": {"url": "http://x/mcp", "headers": {"Mcp-Session-Id": "1"}}}}"#)
                .contains("set by the MCP transport")
        );
        assert!(refused("{").contains("CHAT_MCP_CONFIG"));
    }
}
