//! A page token decodes only for the user and the listing it was issued for, and only as it was
//! issued: whatever decodes, encoded again, is the same text. Checked on the input as a token,
//! and on tokens the codec issues for cursors made of the input's bytes.
#![no_main]

use chat_service::domain::{
    ConversationCursor, ConversationId, MessageCursor, MessageId, PageTokenCodec, UserId,
};
use libfuzzer_sys::fuzz_target;

/// The key the seed corpus's tokens were signed with.
const KEY: &[u8] = b"fuzzing page token key, 32 bytes";

fn ids() -> (UserId, UserId, ConversationId) {
    (
        UserId::from_uuid(uuid::Uuid::from_u128(1)),
        UserId::from_uuid(uuid::Uuid::from_u128(2)),
        ConversationId::from_uuid(uuid::Uuid::from_u128(3)),
    )
}

/// Tokens issued for alice's cursors decode for her listing alone.
fn issued_tokens_are_bound(codec: &PageTokenCodec, data: &[u8]) {
    let (alice, bob, chat) = ids();
    let (Some(micros), Some(id)) = (data.get(..8), data.get(8..24)) else {
        return;
    };
    let micros = i64::from_be_bytes(micros.try_into().unwrap_or_default());
    let Ok(id) = uuid::Uuid::from_slice(id) else {
        return;
    };
    if let Some(update_time) = chrono::DateTime::from_timestamp_micros(micros) {
        let cursor = ConversationCursor {
            update_time,
            id: ConversationId::from_uuid(id),
        };
        let token = codec.encode_conversations(alice, &cursor);
        assert_eq!(codec.decode_conversations(alice, &token), Ok(cursor));
        assert!(codec.decode_conversations(bob, &token).is_err());
        assert!(codec.decode_messages(alice, chat, &token).is_err());
    }
    let cursor = MessageCursor {
        after: MessageId::from_uuid(id),
    };
    let token = codec.encode_messages(alice, chat, &cursor);
    assert_eq!(codec.decode_messages(alice, chat, &token), Ok(cursor));
    assert!(codec.decode_messages(bob, chat, &token).is_err());
    assert!(codec.decode_conversations(alice, &token).is_err());
}

fuzz_target!(|data: &[u8]| {
    let codec = PageTokenCodec::new(KEY);
    issued_tokens_are_bound(&codec, data);
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let (alice, bob, chat) = ids();
    if let Ok(cursor) = codec.decode_conversations(alice, token) {
        assert_eq!(codec.encode_conversations(alice, &cursor), token);
        assert!(codec.decode_conversations(bob, token).is_err());
        assert!(codec.decode_messages(alice, chat, token).is_err());
    }
    if let Ok(cursor) = codec.decode_messages(alice, chat, token) {
        assert_eq!(codec.encode_messages(alice, chat, &cursor), token);
        assert!(codec.decode_messages(bob, chat, token).is_err());
        assert!(codec.decode_conversations(alice, token).is_err());
    }
});
