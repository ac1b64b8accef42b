//! A turn that has ended, replayed from the database exactly as its events were sent.

use super::{
    events::{ACCEPTED, Accepted, Completion, Sequenced, ToolResult, TurnEvent},
    state::{Failure, RecordState, TurnEnd},
};
use crate::{
    chat::ChatError,
    domain::{Message, ToolCallStatus},
    store::{StoredReply, TurnRecord},
};

/// A turn that has ended, as its events were sent: `accepted`, then for each reply the pieces
/// of its text as they were streamed, its tool calls, and the results that were sent, in the
/// order they were; then how it ended.
pub(super) fn replay(
    record: &TurnRecord,
    replies: Vec<StoredReply>,
) -> Vec<Result<Sequenced, ChatError>> {
    let mut events = vec![Ok(Sequenced {
        sequence: ACCEPTED,
        event: TurnEvent::Accepted(Box::new(Accepted {
            conversation_id: record.conversation_id,
            user_message: record.user_message.clone(),
        })),
    })];
    let mut push = |event: TurnEvent| {
        let sequence = ACCEPTED + events.len() as u64;
        events.push(Ok(Sequenced { sequence, event }));
    };
    let mut last_message = None;
    for reply in replies {
        for event in reply_events(&reply) {
            push(event);
        }
        last_message = Some(reply.message);
    }
    match last_event(RecordState::of(record), last_message) {
        Ok(event) => push(event),
        Err(failure) => events.push(Err(failure.into_error())),
    }
    events
}

/// The events one reply was sent as: the pieces of its text, its calls, then the results that
/// were sent, in the order they were.
fn reply_events(reply: &StoredReply) -> Vec<TurnEvent> {
    let mut events = Vec::new();
    for piece in pieces(&reply.message.content, reply.deltas.as_deref()) {
        events.push(TurnEvent::Delta(piece.to_owned()));
    }
    // A call was sent as it was stored: awaiting its result, unless it was settled then.
    for (call, order) in reply.message.tool_calls.iter().zip(&reply.answer_order) {
        let mut sent = call.clone();
        if !order.is_some_and(|order| order < 0) {
            sent.status = ToolCallStatus::Requested;
            sent.result = None;
        }
        events.push(TurnEvent::ToolCall(Box::new(sent)));
    }
    let mut answered: Vec<(i32, usize)> = reply
        .answer_order
        .iter()
        .enumerate()
        .filter_map(|(index, order)| order.filter(|order| *order >= 0).map(|o| (o, index)))
        .collect();
    answered.sort_unstable();
    for (_, index) in answered {
        if let Some(call) = reply.message.tool_calls.get(index) {
            events.push(TurnEvent::ToolResult(Box::new(ToolResult {
                provider_call_id: call.provider_call_id.clone(),
                status: call.status,
                result: call.result.clone().unwrap_or_default(),
            })));
        }
    }
    events
}

/// A turn's last event, as the client that was there was told it.
fn last_event(state: RecordState, last_message: Option<Message>) -> Result<TurnEvent, Failure> {
    match (state, last_message) {
        (
            RecordState::Ended(TurnEnd::Completed {
                finish_reason,
                model,
                usage,
            }),
            Some(message),
        ) => Ok(TurnEvent::Completed(Box::new(Completion {
            message,
            finish_reason,
            model,
            usage,
        }))),
        (RecordState::Ended(TurnEnd::Failed(failure)), _) => Err(failure),
        // Its end was never stored: the replica that generated it stopped.
        (RecordState::TakingOver, _) => Err(Failure::Lost),
        _ => Err(Failure::Internal),
    }
}

/// The pieces `content` was streamed in, by their lengths in bytes; the whole text as one piece
/// when the lengths are unknown or do not fit it.
fn pieces<'a>(content: &'a str, lengths: Option<&[i32]>) -> Vec<&'a str> {
    let whole = || {
        if content.is_empty() {
            Vec::new()
        } else {
            vec![content]
        }
    };
    let Some(lengths) = lengths else {
        return whole();
    };
    let mut pieces = Vec::with_capacity(lengths.len());
    let mut rest = content;
    for length in lengths {
        let Ok(length) = usize::try_from(*length) else {
            return whole();
        };
        if length > rest.len() || !rest.is_char_boundary(length) {
            return whole();
        }
        let (piece, after) = rest.split_at(length);
        pieces.push(piece);
        rest = after;
    }
    if rest.is_empty() { pieces } else { whole() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_into_the_pieces_it_was_streamed_in() {
        assert_eq!(pieces("héllo", Some(&[3, 3])), ["hé", "llo"]);
        assert_eq!(pieces("", Some(&[])), Vec::<&str>::new());
        assert_eq!(pieces("abc", None), ["abc"]);
        // Lengths that do not fit the text, or cut a character, give it whole.
        assert_eq!(pieces("abc", Some(&[1])), ["abc"]);
        assert_eq!(pieces("héllo", Some(&[2, 4])), ["héllo"]);
        assert_eq!(pieces("abc", Some(&[-1, 4])), ["abc"]);
    }
}
