//! Properties of the domain's parse-don't-validate types and of page tokens, over inputs
//! proptest makes up (and shrinks to the smallest that fails): whatever a client sends, a value
//! exists only if it is valid, keeps what was sent, and a page token opens only the listing
//! that issued it.

// A failed expectation is a failed test, reported by panicking like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chat_service::domain::{
    ConversationCursor, ConversationId, MessageContent, MessageCursor, MessageId, PageSize,
    PageTokenCodec, RequestKey, Subject, Title, UserId,
};
use chrono::{DateTime, Utc};
use proptest::prelude::*;

/// Any text, with whitespace, control characters and NUL well represented.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t\n\r\u{0}\u{7}a-zé😀]{0,40}",
        "[!-~]{0,140}",
    ]
}

fn uuid() -> impl Strategy<Value = uuid::Uuid> {
    any::<u128>().prop_map(uuid::Uuid::from_u128)
}

/// A time a cursor can hold: microseconds, as PostgreSQL stores them.
fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800_000_000)
        .prop_map(|micros| DateTime::from_timestamp_micros(micros).unwrap())
}

proptest! {
    #[test]
    fn content_exists_only_if_valid_and_keeps_the_text(text in text(), max in 1usize..64) {
        let chars = text.chars().count();
        let valid = !text.trim().is_empty() && !text.contains('\0') && chars <= max;
        match MessageContent::parse(text.clone(), max) {
            Ok(content) => {
                prop_assert!(valid);
                prop_assert_eq!(content.as_str(), text.as_str());
            }
            Err(_) => prop_assert!(!valid),
        }
    }

    #[test]
    fn a_request_id_is_printable_ascii_of_at_most_128_bytes(text in text()) {
        let valid = text.len() <= RequestKey::MAX_LEN && text.bytes().all(|b| b.is_ascii_graphic());
        match RequestKey::parse(text.clone()) {
            Ok(None) => prop_assert!(text.is_empty()),
            Ok(Some(key)) => {
                prop_assert!(valid && !text.is_empty());
                prop_assert_eq!(key.as_str(), text.as_str());
            }
            Err(_) => prop_assert!(!valid),
        }
    }

    #[test]
    fn a_title_made_from_a_message_is_one_short_line_a_client_could_have_chosen(text in text()) {
        let title = Title::from_first_message(&text);
        let title = title.as_str();
        prop_assert!(title.chars().count() <= Title::DERIVED_MAX_CHARS);
        prop_assert!(!title.chars().any(char::is_control));
        prop_assert_eq!(title.trim(), title);
        prop_assert!(!title.contains("  "));
        prop_assert_eq!(Title::parse(title).map(Title::into_string), Ok(title.to_owned()));
    }

    #[test]
    fn a_chosen_title_is_trimmed_and_bounded(text in text()) {
        if let Ok(title) = Title::parse(&text) {
            prop_assert_eq!(title.as_str(), text.trim());
            prop_assert!(title.as_str().chars().count() <= Title::MAX_CHARS);
            prop_assert!(!title.as_str().chars().any(char::is_control));
        }
    }

    #[test]
    fn a_subject_is_a_bounded_line(text in text()) {
        let valid = !text.is_empty()
            && text.len() <= Subject::MAX_LEN
            && !text.chars().any(char::is_control);
        prop_assert_eq!(Subject::parse(&text).map(|s| s.as_str().to_owned()), valid.then_some(text));
    }

    #[test]
    fn an_id_is_read_only_in_its_hyphenated_form(id in uuid(), text in text()) {
        let spelled = id.to_string();
        prop_assert_eq!(ConversationId::parse(&spelled).map(|c| *c.as_uuid()), Ok(id));
        // Hex digits in either case name the same id.
        let upper = spelled.to_uppercase();
        prop_assert_eq!(ConversationId::parse(&upper).map(|c| *c.as_uuid()), Ok(id));
        // Other spellings of a UUID are refused.
        prop_assert!(ConversationId::parse(&id.simple().to_string()).is_err());
        prop_assert!(ConversationId::parse(&id.braced().to_string()).is_err());
        prop_assert!(ConversationId::parse(&id.urn().to_string()).is_err());
        if let Ok(parsed) = ConversationId::parse(&text) {
            prop_assert_eq!(parsed.as_uuid().to_string(), text.to_lowercase());
        }
    }

    #[test]
    fn a_page_size_is_clamped_and_never_negative(requested in any::<i32>()) {
        match PageSize::parse(requested) {
            Ok(size) => {
                prop_assert!(requested >= 0);
                prop_assert!((1..=usize::from(PageSize::MAX)).contains(&size.get()));
            }
            Err(_) => prop_assert!(requested < 0),
        }
    }

    #[test]
    fn a_conversations_token_opens_only_its_users_listing(
        key in proptest::collection::vec(any::<u8>(), 32),
        user in uuid(),
        other in uuid(),
        id in uuid(),
        update_time in time(),
        flip in any::<prop::sample::Index>(),
    ) {
        let codec = PageTokenCodec::new(key);
        let (user, other) = (UserId::from_uuid(user), UserId::from_uuid(other));
        let cursor = ConversationCursor { update_time, id: ConversationId::from_uuid(id) };
        let token = codec.encode_conversations(user, &cursor);
        prop_assert_eq!(codec.decode_conversations(user, &token), Ok(cursor));
        if other != user {
            prop_assert!(codec.decode_conversations(other, &token).is_err());
        }
        // Any one character changed makes a token no listing issued.
        let mut changed: Vec<char> = token.chars().collect();
        let at = flip.index(changed.len());
        changed[at] = if changed[at] == 'A' { 'B' } else { 'A' };
        let changed: String = changed.into_iter().collect();
        prop_assert!(codec.decode_conversations(user, &changed).is_err());
    }

    #[test]
    fn a_messages_token_opens_only_its_conversation(
        key in proptest::collection::vec(any::<u8>(), 32),
        user in uuid(),
        conversation in uuid(),
        elsewhere in uuid(),
        after in uuid(),
    ) {
        let codec = PageTokenCodec::new(key);
        let user = UserId::from_uuid(user);
        let (conversation, elsewhere) =
            (ConversationId::from_uuid(conversation), ConversationId::from_uuid(elsewhere));
        let cursor = MessageCursor { after: MessageId::from_uuid(after) };
        let token = codec.encode_messages(user, conversation, &cursor);
        prop_assert_eq!(codec.decode_messages(user, conversation, &token), Ok(cursor));
        if elsewhere != conversation {
            prop_assert!(codec.decode_messages(user, elsewhere, &token).is_err());
        }
        // Nor does it open the user's list of conversations.
        prop_assert!(codec.decode_conversations(user, &token).is_err());
    }

    #[test]
    fn text_a_client_makes_up_is_no_page_token(
        key in proptest::collection::vec(any::<u8>(), 32),
        user in uuid(),
        text in text(),
    ) {
        let codec = PageTokenCodec::new(key);
        prop_assert!(codec.decode_conversations(UserId::from_uuid(user), &text).is_err());
    }
}
