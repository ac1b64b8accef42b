//! Tool calls put together from whatever fragments a model streams (one `tool_calls` item of a
//! chunk's delta per line, as OpenAI sends them): an index beyond the limit is refused, never
//! allocated; no more calls than the limit come out; and they hold no byte that was not sent.
#![no_main]

use chat_service::llm::{MAX_TOOL_CALLS, ToolCallAssembler};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut assembler = ToolCallAssembler::default();
    let mut sent = 0;
    for line in data.split(|byte| *byte == b'\n') {
        let Ok(fragment) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let Some(index) = fragment["index"].as_u64() else {
            continue;
        };
        let index = usize::try_from(index).unwrap_or(usize::MAX);
        let id = fragment["id"].as_str();
        let name = fragment["function"]["name"].as_str();
        let arguments = fragment["function"]["arguments"].as_str();
        let pushed = assembler.push(index, id, name, arguments);
        assert_eq!(pushed.is_err(), index >= MAX_TOOL_CALLS);
        if pushed.is_ok() {
            sent += [id, name, arguments]
                .iter()
                .map(|part| part.map_or(0, str::len))
                .sum::<usize>();
        }
    }
    let calls = assembler.finish();
    assert!(calls.len() <= MAX_TOOL_CALLS);
    let kept: usize = calls
        .iter()
        .map(|call| call.id.len() + call.name.len() + call.arguments.len())
        .sum();
    assert!(kept <= sent, "{kept} bytes kept of {sent} sent");
    assert!(
        calls
            .iter()
            .all(|call| !call.id.is_empty() || !call.name.is_empty())
    );
});
