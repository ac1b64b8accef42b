//! What a turn emits, in order, and how each event is kept in the turn's log, which anyone
//! may follow.

use bytes::Bytes;

use super::state::{Failure, TurnEnd};
use crate::{
    chat::ChatError,
    domain::{ConversationId, Message, ToolCall, ToolCallStatus},
    llm::TokenUsage,
};

/// What the client learns while the reply is generated, in this order. The events that come
/// once a turn are boxed, so that a delta, the event of which there are many, is what sizes
/// every slot of the channels that carry them (boxing changes nothing of how they are encoded).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnEvent {
    /// The user's message is stored: the turn's first event.
    Accepted(Box<Accepted>),
    Delta(String),
    /// A call the model asked for, stored.
    ToolCall(Box<ToolCall>),
    /// A call's result, stored.
    ToolResult(Box<ToolResult>),
    Completed(Box<Completion>),
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Accepted {
    pub conversation_id: ConversationId,
    pub user_message: Message,
}

/// What became of a tool call.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ToolResult {
    /// The provider's id for the call, as its `ToolCall` event gave it.
    pub provider_call_id: String,
    pub status: ToolCallStatus,
    pub result: serde_json::Value,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    /// The stored reply.
    pub message: Message,
    pub finish_reason: String,
    pub model: String,
    pub usage: Option<TokenUsage>,
}

impl Completion {
    /// How a turn that completed so ended.
    pub fn end(&self) -> TurnEnd {
        TurnEnd::Completed {
            finish_reason: self.finish_reason.clone(),
            model: self.model.clone(),
            usage: self.usage,
        }
    }
}

/// Whether `event` is the turn's last: anything but a tool call or result told to the client.
pub fn ends_the_turn(event: &Result<TurnEvent, ChatError>) -> bool {
    !matches!(event, Ok(TurnEvent::ToolCall(_) | TurnEvent::ToolResult(_)))
}

/// How the turn ended, if `event` ends it: as the client that was there was told.
pub fn end_told(event: &Result<TurnEvent, ChatError>) -> Option<TurnEnd> {
    if !ends_the_turn(event) {
        return None;
    }
    Some(match event {
        Ok(TurnEvent::Completed(completion)) => completion.end(),
        Err(error) => TurnEnd::Failed(Failure::of(error)),
        // Nothing but `completed` or an error ends a turn.
        Ok(_) => TurnEnd::Failed(Failure::Internal),
    })
}

/// An event with its place in the turn.
#[derive(Debug)]
pub struct Sequenced {
    pub sequence: u64,
    pub event: TurnEvent,
}

/// The sequence of `accepted`, a turn's first event.
pub const ACCEPTED: u64 = 1;

/// An event as a turn's log keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Logged<E, F> {
    Event(E),
    Failed(F),
}

/// The most a worker thread keeps of the buffer events are encoded in: one large event (a
/// reply's `completed`) does not hold its size for good.
const SCRATCH_KEPT: usize = 16 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The event as the turn's log keeps it: encoded in a buffer the thread reuses, then copied
/// out at its exact size. A log holds every event of the turn until it ends, and a buffer of
/// its own per event would hold at least 128 bytes for a delta of a few, and cost a second
/// allocation to share it.
pub(super) fn encode(event: Result<&TurnEvent, &Failure>) -> Bytes {
    if let Ok(TurnEvent::Delta(text)) = event {
        return encode_delta(text);
    }
    let logged = match event {
        Ok(event) => Logged::Event(event),
        Err(failure) => Logged::Failed(failure),
    };
    SCRATCH.with_borrow_mut(|buffer| {
        buffer.clear();
        // Serialising these types cannot fail: no maps with non-string keys, no foreign types.
        let encoded = match serde_json::to_writer(&mut *buffer, &logged) {
            Ok(()) => Bytes::copy_from_slice(buffer),
            Err(_) => Bytes::new(),
        };
        if buffer.capacity() > SCRATCH_KEPT {
            *buffer = Vec::new();
        }
        encoded
    })
}

/// A delta, the event of which a turn has many, as serde would encode it as [`Logged`], with
/// only the text escaped by serde: its enums' machinery costs more than the text for a delta of
/// a few words.
fn encode_delta(text: &str) -> Bytes {
    const OPEN: &[u8] = br#"{"event":{"delta":"#;
    const CLOSE: &[u8] = b"}}";
    let mut encoded = Vec::with_capacity(OPEN.len() + text.len() + 2 + CLOSE.len());
    encoded.extend_from_slice(OPEN);
    // Writing a string into a vector cannot fail.
    if serde_json::to_writer(&mut encoded, text).is_err() {
        return Bytes::new();
    }
    encoded.extend_from_slice(CLOSE);
    Bytes::from(encoded)
}

pub(super) fn decode(payload: &[u8]) -> Result<Result<TurnEvent, Failure>, ChatError> {
    match serde_json::from_slice::<Logged<TurnEvent, Failure>>(payload) {
        Ok(Logged::Event(event)) => Ok(Ok(event)),
        Ok(Logged::Failed(failure)) => Ok(Err(failure)),
        Err(e) => Err(ChatError::Internal(format!(
            "an unreadable turn event: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_is_encoded_as_serde_encodes_every_other_event() {
        for text in [
            "",
            "héllo",
            "a \"quote\", a \\ and a\nline",
            "\u{0}\u{1f}\u{7f}",
            "👋",
        ] {
            let delta = TurnEvent::Delta(text.to_owned());
            let by_serde = serde_json::to_vec(&Logged::<_, Failure>::Event(&delta))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&encode(Ok(&delta))[..], &by_serde[..], "{text:?}");
        }
    }

    #[test]
    fn logged_events_read_back_as_they_were_written() {
        let event = TurnEvent::Delta("héllo".into());
        match decode(&encode(Ok(&event))) {
            Ok(Ok(TurnEvent::Delta(text))) => assert_eq!(text, "héllo"),
            other => panic!("got {other:?}"),
        }
        let failure = Failure::Model {
            summary: "the model timed out".into(),
            timeout: true,
        };
        match decode(&encode(Err(&failure))) {
            Ok(Err(read)) => assert_eq!(read, failure),
            other => panic!("got {other:?}"),
        }
        // A large event, then a small one: nothing of the first is left in the second.
        let large = TurnEvent::Delta("x".repeat(3 * SCRATCH_KEPT));
        assert_eq!(
            encode(Ok(&large)).len(),
            3 * SCRATCH_KEPT + r#"{"event":{"delta":""}}"#.len()
        );
        match decode(&encode(Ok(&event))) {
            Ok(Ok(TurnEvent::Delta(text))) => assert_eq!(text, "héllo"),
            other => panic!("got {other:?}"),
        }
    }

    #[test]
    fn only_completed_or_an_error_ends_a_turn_and_says_how() {
        let completion = Completion {
            message: crate::domain::Message {
                id: crate::domain::MessageId::generate(),
                conversation_id: ConversationId::generate(),
                role: crate::domain::Role::Assistant,
                content: "Hi".into(),
                status: crate::domain::MessageStatus::Complete,
                create_time: crate::domain::now(),
                tool_calls: Vec::new(),
                model: None,
                usage: None,
            },
            finish_reason: "stop".into(),
            model: "m".into(),
            usage: None,
        };
        let ended = end_told(&Ok(TurnEvent::Completed(Box::new(completion))));
        assert!(
            matches!(ended, Some(TurnEnd::Completed { finish_reason, .. }) if finish_reason == "stop")
        );
        assert_eq!(
            end_told(&Err(ChatError::NotRead)),
            Some(TurnEnd::Failed(Failure::NotRead))
        );
        let result = ToolResult {
            provider_call_id: "c".into(),
            status: ToolCallStatus::Succeeded,
            result: serde_json::Value::Null,
        };
        assert_eq!(end_told(&Ok(TurnEvent::ToolResult(Box::new(result)))), None);
    }
}
