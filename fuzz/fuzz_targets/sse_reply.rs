//! A model's streamed reply read from any bytes, split into reads anywhere (the first byte sets
//! the size of the reads): the reader yields events or one of the errors a stream can have,
//! never a panic; how the body is split changes nothing; the events keep their order (deltas,
//! then tool calls, the usage and the finish, last); and the reply stays within its limits.
#![no_main]

use chat_service::llm::{LlmError, MAX_REPLY_BYTES, MAX_TOOL_CALLS, ModelEvent, ReplyReader};
use libfuzzer_sys::fuzz_target;

fn read<'a>(reads: impl Iterator<Item = &'a [u8]>) -> (Vec<ModelEvent>, Result<(), LlmError>) {
    let mut reader = ReplyReader::default();
    let mut events = Vec::new();
    for bytes in reads {
        let outcome = reader.push(bytes);
        events.extend(std::iter::from_fn(|| reader.next_event()));
        if outcome.is_err() {
            return (events, outcome);
        }
    }
    let outcome = reader.end();
    events.extend(std::iter::from_fn(|| reader.next_event()));
    (events, outcome)
}

/// Where an event may come: 0 deltas, 1 tool calls, 2 usage, 3 the finish.
fn stage(event: &ModelEvent) -> u8 {
    match event {
        ModelEvent::Delta(_) => 0,
        ModelEvent::ToolCall(_) => 1,
        ModelEvent::Usage(_) => 2,
        ModelEvent::Finished { .. } => 3,
        // Only a catalog's fallbacks say this; one upstream's reply never does.
        ModelEvent::FellBack { .. } => panic!("a reply reader fell back: {event:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, body)) = data.split_first() else {
        return;
    };
    let (events, outcome) = read(std::iter::once(body));
    let split = read(body.chunks(usize::from(read_size).max(1)));
    assert_eq!(
        (&events, &outcome),
        (&split.0, &split.1),
        "reading in pieces of {read_size} bytes changed the reply"
    );

    let stages: Vec<u8> = events.iter().map(stage).collect();
    assert!(stages.is_sorted(), "events out of order: {events:?}");
    assert!(stages.iter().filter(|&&s| s == 2).count() <= 1);
    match &outcome {
        Ok(()) => assert_eq!(stages.iter().filter(|&&s| s == 3).count(), 1),
        Err(LlmError::Malformed(_) | LlmError::Interrupted(_) | LlmError::Oversized(_)) => {
            assert!(!stages.contains(&3), "a finish before an error");
        }
        Err(other) => panic!("reading a body cannot fail with {other:?}"),
    }
    let calls = stages.iter().filter(|&&s| s == 1).count();
    assert!(calls <= MAX_TOOL_CALLS);
    let reply_bytes: usize = events
        .iter()
        .map(|event| match event {
            ModelEvent::Delta(text) => text.len(),
            ModelEvent::ToolCall(call) => call.id.len() + call.name.len() + call.arguments.len(),
            _ => 0,
        })
        .sum();
    assert!(reply_bytes <= MAX_REPLY_BYTES);
    // An invalid UTF-8 byte becomes U+FFFD, three bytes; nothing else grows.
    assert!(reply_bytes <= 3 * body.len());
});
