//! A streamed Chat Completion read from its body: server-sent events whose data are JSON
//! chunks, turned into the model's events. Bytes in, events out, with no I/O, so that any bytes
//! an upstream may send can be tried on it.

use std::collections::VecDeque;

use super::sse::{EventTooLarge, SseDecoder};
use super::wire::Chunk;
use crate::llm::{
    LlmError, ModelEvent, TokenUsage,
    tool_calls::{MAX_TOOL_CALLS, ToolCallAssembler},
};

/// The longest server-sent event accepted, in bytes: one chunk of a reply is a few hundred.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The most a reply's text and tool calls may take together, in bytes: several times the
/// longest reply a model writes (128,000 tokens are about 512 KiB of text), and no more than the
/// text one response carries (`chat::RESPONSE_TEXT_BYTES`), so that a stored reply can always
/// be read back.
pub const MAX_REPLY_BYTES: usize = 2 * 1024 * 1024;

/// Reads one reply. Feed it the body with [`ReplyReader::push`] and [`ReplyReader::end`], and
/// take the events with [`ReplyReader::next_event`]: deltas as they come, then the tool calls,
/// the usage and the finish, once the stream says it is done.
#[derive(Debug)]
pub struct ReplyReader {
    sse: SseDecoder,
    /// The data of events decoded but not yet read.
    data: VecDeque<String>,
    /// Server-sent events read so far, keep-alive comments not counted.
    events_read: u64,
    events: VecDeque<ModelEvent>,
    tool_calls: ToolCallAssembler,
    usage: Option<TokenUsage>,
    finish_reason: Option<String>,
    saw_content: bool,
    reply_bytes: usize,
    finished: bool,
}

impl Default for ReplyReader {
    fn default() -> Self {
        Self {
            sse: SseDecoder::new(MAX_EVENT_BYTES),
            data: VecDeque::new(),
            events_read: 0,
            events: VecDeque::new(),
            tool_calls: ToolCallAssembler::default(),
            usage: None,
            finish_reason: None,
            saw_content: false,
            reply_bytes: 0,
            finished: false,
        }
    }
}

impl ReplyReader {
    /// Reads the next bytes of the body. What comes after the reply's end is ignored.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), LlmError> {
        if self.finished {
            return Ok(());
        }
        // The events these bytes completed are read even when a later one is too large, so that
        // how the body happens to be split into reads changes nothing.
        let decoded = self.sse.push(bytes, &mut self.data);
        while let Some(data) = self.data.pop_front() {
            self.events_read += 1;
            self.take_event(&data)?;
            if self.finished {
                self.data.clear();
                return Ok(());
            }
        }
        decoded.map_err(|EventTooLarge| {
            LlmError::Oversized(format!("an event is longer than {MAX_EVENT_BYTES} bytes"))
        })
    }

    /// The body ended. Without `[DONE]` the reply counts as whole if a chunk gave its finish
    /// reason (some servers close the stream right after it); otherwise it broke off.
    pub fn end(&mut self) -> Result<(), LlmError> {
        if self.finished {
            return Ok(());
        }
        if self.finish_reason.is_none() {
            let what = if self.sse.holds_partial_event() {
                "the stream ended inside an event"
            } else {
                "the stream ended before the reply was finished"
            };
            return Err(LlmError::Interrupted(what.to_owned()));
        }
        self.finish();
        Ok(())
    }

    /// The next event of the reply, once it has been read.
    pub fn next_event(&mut self) -> Option<ModelEvent> {
        self.events.pop_front()
    }

    /// Whether text or a tool call has arrived: a role announcement or a keep-alive is not
    /// content, since a model may announce itself at once and then think for a long time.
    pub fn saw_content(&self) -> bool {
        self.saw_content
    }

    /// How many server-sent events have been read: a stream that sends only keep-alive comments
    /// makes no progress.
    pub fn events_read(&self) -> u64 {
        self.events_read
    }

    /// Whether the reply has ended: the events it holds are its last.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn take_event(&mut self, data: &str) -> Result<(), LlmError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.finish();
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| LlmError::Malformed(format!("a chunk is not valid JSON: {e}")))?;
        self.take_chunk(chunk)
    }

    /// Queues what a chunk of the reply holds.
    fn take_chunk(&mut self, chunk: Chunk) -> Result<(), LlmError> {
        if let Some(error) = chunk.error {
            return Err(LlmError::Interrupted(format!(
                "the model reported an error: {}",
                error.message
            )));
        }
        for choice in chunk.choices {
            if let Some(text) = choice.delta.content.filter(|text| !text.is_empty()) {
                self.count(text.len())?;
                self.saw_content = true;
                self.events.push_back(ModelEvent::Delta(text));
            }
            for call in choice.delta.tool_calls {
                self.saw_content = true;
                let function = call.function.as_ref();
                let name = function.and_then(|f| f.name.as_deref());
                let arguments = function.and_then(|f| f.arguments.as_deref());
                self.count(
                    [call.id.as_deref(), name, arguments]
                        .iter()
                        .map(|part| part.map_or(0, str::len))
                        .sum(),
                )?;
                self.tool_calls
                    .push(call.index, call.id.as_deref(), name, arguments)
                    .map_err(|out_of_range| {
                        LlmError::Malformed(format!(
                            "tool call index {} is beyond {MAX_TOOL_CALLS}",
                            out_of_range.0
                        ))
                    })?;
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        if let Some(usage) = chunk.usage {
            let cached = usage.prompt_tokens_details.and_then(|d| d.cached_tokens);
            let reasoning = usage
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens);
            self.usage = Some(TokenUsage {
                input_tokens: usage.prompt_tokens,
                // A part is never more than its whole, whatever a server says.
                cached_input_tokens: cached.unwrap_or(0).min(usage.prompt_tokens),
                output_tokens: usage.completion_tokens,
                reasoning_tokens: reasoning.unwrap_or(0).min(usage.completion_tokens),
                estimated: false,
            });
        }
        Ok(())
    }

    fn count(&mut self, bytes: usize) -> Result<(), LlmError> {
        self.reply_bytes = self.reply_bytes.saturating_add(bytes);
        if self.reply_bytes > MAX_REPLY_BYTES {
            return Err(LlmError::Oversized(format!(
                "the reply is longer than {MAX_REPLY_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Queues the tool calls, the usage and the finish.
    fn finish(&mut self) {
        for call in std::mem::take(&mut self.tool_calls).finish() {
            self.events.push_back(ModelEvent::ToolCall(call));
        }
        if let Some(usage) = self.usage {
            self.events.push_back(ModelEvent::Usage(usage));
        }
        let reason = self
            .finish_reason
            .take()
            .unwrap_or_else(|| "stop".to_owned());
        self.events.push_back(ModelEvent::Finished { reason });
        self.finished = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &[u8]) -> (Vec<ModelEvent>, Result<(), LlmError>) {
        let mut reader = ReplyReader::default();
        let outcome = reader.push(body).and_then(|()| reader.end());
        (
            std::iter::from_fn(|| reader.next_event()).collect(),
            outcome,
        )
    }

    #[test]
    fn text_then_usage_then_the_finish_and_nothing_after_done() {
        let (events, outcome) = read(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
              data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n\
              data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
              data: [DONE]\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"late\"}}]}\n\n",
        );
        assert_eq!(outcome, Ok(()));
        assert_eq!(
            events,
            vec![
                ModelEvent::Delta("Hi".to_owned()),
                ModelEvent::Usage(TokenUsage {
                    input_tokens: 3,
                    output_tokens: 1,
                    ..TokenUsage::default()
                }),
                ModelEvent::Finished {
                    reason: "stop".to_owned()
                },
            ]
        );
    }

    #[test]
    fn cached_and_reasoning_tokens_are_read_and_kept_within_their_wholes() {
        let usage = |json: &str| {
            // One line, as a server sends it.
            let json = json.replace('\n', " ");
            let body = format!(
                "data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"stop\"}}],\"usage\":{json}}}\n\ndata: [DONE]\n\n"
            );
            read(body.as_bytes())
                .0
                .into_iter()
                .find_map(|event| match event {
                    ModelEvent::Usage(usage) => Some(usage),
                    _ => None,
                })
        };
        let reported = TokenUsage {
            input_tokens: 30,
            cached_input_tokens: 20,
            output_tokens: 9,
            reasoning_tokens: 5,
            estimated: false,
        };
        assert_eq!(
            usage(
                r#"{"prompt_tokens":30,"completion_tokens":9,
                    "prompt_tokens_details":{"cached_tokens":20,"audio_tokens":0},
                    "completion_tokens_details":{"reasoning_tokens":5}}"#
            ),
            Some(reported)
        );
        let bare = TokenUsage {
            input_tokens: 30,
            output_tokens: 9,
            ..TokenUsage::default()
        };
        assert_eq!(
            usage(
                r#"{"prompt_tokens":30,"completion_tokens":9,"prompt_tokens_details":null,
                    "completion_tokens_details":{"reasoning_tokens":null}}"#
            ),
            Some(bare)
        );
        assert_eq!(
            usage(
                r#"{"prompt_tokens":30,"completion_tokens":9,
                    "prompt_tokens_details":{"cached_tokens":99},
                    "completion_tokens_details":{"reasoning_tokens":10}}"#
            ),
            Some(TokenUsage {
                cached_input_tokens: 30,
                reasoning_tokens: 9,
                ..bare
            })
        );
    }

    #[test]
    fn a_body_that_ends_without_a_finish_broke_off() {
        let (events, outcome) = read(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n");
        assert_eq!(events, vec![ModelEvent::Delta("Hi".to_owned())]);
        assert!(
            matches!(outcome, Err(LlmError::Interrupted(_))),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_reply_longer_than_the_limit_is_refused() {
        let delta = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(MAX_REPLY_BYTES / 4)
        );
        let mut reader = ReplyReader::default();
        for _ in 0..4 {
            assert_eq!(reader.push(delta.as_bytes()), Ok(()));
        }
        assert!(matches!(
            reader.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"!\"}}]}\n\n"),
            Err(LlmError::Oversized(_))
        ));
    }

    #[test]
    fn an_event_longer_than_the_limit_is_refused_before_it_is_read_whole() {
        let mut reader = ReplyReader::default();
        let piece = vec![b'x'; 64 * 1024];
        let mut outcome = reader.push(b"data: ");
        for _ in 0..=MAX_EVENT_BYTES / piece.len() {
            outcome = outcome.and_then(|()| reader.push(&piece));
        }
        assert!(
            matches!(outcome, Err(LlmError::Oversized(_))),
            "{outcome:?}"
        );
    }
}
