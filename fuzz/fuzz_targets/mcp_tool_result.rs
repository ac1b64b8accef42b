//! A tool call's result as an MCP server sends it (the first byte sets the result limit): what
//! the conversation keeps is the structured content or the text, within the limit; an error
//! result keeps at most the error limit of the tool's message; nothing else comes out.
#![no_main]

use chat_service::tools::{MAX_ERROR_BYTES, ToolFailure, ToolOutcome, tool_outcome};
use libfuzzer_sys::fuzz_target;
use rmcp::model::CallToolResult;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, json)) = data.split_first() else {
        return;
    };
    let max_result_bytes = 1 + usize::from(limit) * 16;
    let Ok(result) = serde_json::from_slice::<CallToolResult>(json) else {
        return;
    };
    let text: Vec<&str> = result
        .content
        .iter()
        .filter_map(|block| block.as_text().map(|t| t.text.as_str()))
        .collect();
    let text = text.join("\n");
    match tool_outcome(result.clone(), max_result_bytes) {
        ToolOutcome::Succeeded(value) => {
            assert_ne!(result.is_error, Some(true));
            let kept = serde_json::to_vec(&value).map_or(usize::MAX, |bytes| bytes.len());
            assert!(kept <= max_result_bytes, "{kept} bytes kept");
            let expected = result
                .structured_content
                .clone()
                .unwrap_or(Value::String(text));
            assert_eq!(value, expected);
        }
        ToolOutcome::Failed(ToolFailure::ToolError(message)) => {
            assert_eq!(result.is_error, Some(true));
            assert!(message.len() <= MAX_ERROR_BYTES);
            assert!(text.starts_with(&message));
        }
        ToolOutcome::Failed(ToolFailure::TooLarge(limit)) => {
            assert_eq!(limit, max_result_bytes);
            assert_ne!(result.is_error, Some(true));
        }
        other => panic!("a result became {other:?}"),
    }
});
