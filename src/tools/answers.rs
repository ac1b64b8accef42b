//! What an MCP server answers, read into what the service keeps: the tools it lists, and the
//! results of calls. Whatever a server sends, what is kept stays within the service's limits.

use rmcp::model::{CallToolResult, Tool};

use super::{ToolFailure, ToolOutcome, catalog::ListedTool};
use crate::domain::ToolSpec;

/// The most of a tool's own error message that is kept.
pub const MAX_ERROR_BYTES: usize = 4096;

/// The tools of a server's list that can be offered: a description or a schema larger than a
/// client's own tool may have goes into every model request, so such a tool is left out.
/// Names are checked where the tools of all servers meet ([`super::Catalog::build`]).
pub fn listed_tools(tools: Vec<Tool>) -> Vec<ListedTool> {
    tools
        .into_iter()
        .filter_map(|tool| {
            let description = tool.description.map(|d| d.into_owned()).unwrap_or_default();
            let parameters = serde_json::Value::Object((*tool.input_schema).clone());
            let schema_bytes = serde_json::to_vec(&parameters).map_or(usize::MAX, |b| b.len());
            if description.chars().count() > ToolSpec::MAX_DESCRIPTION_CHARS
                || schema_bytes > ToolSpec::MAX_PARAMETERS_BYTES
            {
                tracing::warn!(tool = %tool.name, "a tool whose description or schema is too large is not offered");
                return None;
            }
            Some(ListedTool {
                name: tool.name.into_owned(),
                description,
                parameters,
            })
        })
        .collect()
}

/// A call's result as the conversation keeps it: its structured content if it has some, else
/// its text; an error result is a failed call whose message is the tool's text.
pub fn tool_outcome(result: CallToolResult, max_result_bytes: usize) -> ToolOutcome {
    let text = result
        .content
        .iter()
        .filter_map(|block| block.as_text().map(|t| t.text.as_str()))
        .collect::<Vec<_>>()
        .join("\n");
    if result.is_error == Some(true) {
        return ToolOutcome::Failed(ToolFailure::ToolError(truncate(text, MAX_ERROR_BYTES)));
    }
    let value = match result.structured_content {
        Some(value) => value,
        None => serde_json::Value::String(text),
    };
    let size = serde_json::to_vec(&value).map_or(usize::MAX, |bytes| bytes.len());
    if size > max_result_bytes {
        return ToolOutcome::Failed(ToolFailure::TooLarge(max_result_bytes));
    }
    ToolOutcome::Succeeded(value)
}

/// `text` cut to at most `max_bytes`, at a character boundary.
pub(super) fn truncate(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn tool(name: &str, description: String, schema: serde_json::Value) -> Tool {
        let serde_json::Value::Object(schema) = schema else {
            panic!("a schema is an object");
        };
        Tool::new(name.to_owned(), description, Arc::new(schema))
    }

    #[test]
    fn tools_larger_than_a_clients_own_may_be_are_not_offered() {
        let big = "x".repeat(ToolSpec::MAX_PARAMETERS_BYTES);
        let listed = listed_tools(vec![
            tool(
                "small",
                "Fits".to_owned(),
                serde_json::json!({"type": "object"}),
            ),
            tool(
                "wordy",
                "é".repeat(ToolSpec::MAX_DESCRIPTION_CHARS + 1),
                serde_json::json!({"type": "object"}),
            ),
            tool(
                "huge",
                String::new(),
                serde_json::json!({"type": "object", "description": big}),
            ),
            tool(
                "longest",
                "é".repeat(ToolSpec::MAX_DESCRIPTION_CHARS),
                serde_json::json!({"type": "object"}),
            ),
        ]);
        let names: Vec<&str> = listed.iter().map(|tool| tool.name.as_str()).collect();
        assert_eq!(names, ["small", "longest"]);
    }

    #[test]
    fn an_error_result_keeps_at_most_the_error_limit_of_its_text() {
        let result = CallToolResult::error(vec![rmcp::model::ContentBlock::text(
            "é".repeat(MAX_ERROR_BYTES),
        )]);
        let ToolOutcome::Failed(ToolFailure::ToolError(message)) = tool_outcome(result, 1024)
        else {
            panic!("an error result is a failed call");
        };
        assert_eq!(message, "é".repeat(MAX_ERROR_BYTES / 2));
    }
}
