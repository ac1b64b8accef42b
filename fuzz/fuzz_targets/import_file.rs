//! What `chat-service import` reads from a file: a line of this service's export, or a
//! conversation of ChatGPT's. Whatever the bytes, parsing never panics, and what it accepts is
//! what the database can store: no NUL in any text, titles on one line within their bound, and
//! from ChatGPT only the user's and the assistant's words, none of them blank; and messages that
//! make a tree, each following one written before it.
#![no_main]

use chat_service::{
    domain::{ArchivedConversation, Role, Title},
    transfer::{chatgpt::ChatGptConversation, format::ConversationLine},
};
use libfuzzer_sys::fuzz_target;

fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(fields) => fields
            .iter()
            .any(|(key, value)| key.contains('\0') || holds_nul(value)),
        _ => false,
    }
}

fn storable(conversation: &ArchivedConversation) {
    let title = conversation.title.as_str();
    assert!(title.chars().count() <= Title::MAX_CHARS, "{title:?}");
    assert!(!title.chars().any(char::is_control), "{title:?}");
    assert!(conversation.parents().is_ok(), "{:?}", conversation.parents());
    for message in &conversation.messages {
        assert!(!message.content.contains('\0'));
        for call in &message.tool_calls {
            assert!(!call.provider_call_id.contains('\0') && !call.name.contains('\0'));
            for value in std::iter::once(&call.arguments).chain(call.result.as_ref()) {
                assert!(!holds_nul(value), "{value}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = serde_json::from_slice::<ConversationLine>(data) {
        if let Ok(conversation) = line.into_archived() {
            storable(&conversation);
        }
    }
    if let Ok(conversation) = serde_json::from_slice::<ChatGptConversation>(data) {
        if let Ok(conversation) = conversation.into_archived() {
            storable(&conversation);
            for message in &conversation.messages {
                assert!(matches!(message.role, Role::User | Role::Assistant));
                assert!(!message.content.trim().is_empty());
            }
        }
    }
});
