//! Identifiers: UUIDs by type, so that one kind cannot be passed as another.

use std::fmt;

use uuid::Uuid;

/// A text that should have been a UUID and was not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a UUID such as 0190f1c2-7b3a-7d4e-8f00-1234567890ab")]
pub struct InvalidId;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered (v7) id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the hyphenated text form a client sends.
            pub fn parse(text: &str) -> Result<Self, InvalidId> {
                // Only the canonical hyphenated form is accepted, so that an id has one spelling.
                if text.len() != 36 {
                    return Err(InvalidId);
                }
                Uuid::try_parse(text).map(Self).map_err(|_| InvalidId)
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// The service's own id for a user, never shown to other users.
    UserId
);
uuid_id!(ConversationId);
uuid_id!(MessageId);
uuid_id!(ToolCallId);
uuid_id!(
    /// A turn: the work of answering one user message with a reply. A turn started by a user
    /// message has that message's id; one that regenerates a reply has an id of its own.
    TurnId
);

impl From<MessageId> for TurnId {
    /// The turn a user message starts.
    fn from(message: MessageId) -> Self {
        Self(message.0)
    }
}

/// The authenticated principal as the identity provider names it (the token's `sub`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(String);

impl Subject {
    /// At most this many bytes, which is far more than any identity provider uses.
    pub const MAX_LEN: usize = 255;

    pub fn parse(text: &str) -> Option<Self> {
        let valid =
            !text.is_empty() && text.len() <= Self::MAX_LEN && !text.chars().any(char::is_control);
        valid.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_form() {
        let id = ConversationId::generate();
        assert_eq!(ConversationId::parse(&id.to_string()), Ok(id));
    }

    #[test]
    fn only_the_hyphenated_form_is_an_id() {
        let id = MessageId::generate();
        let simple = id.as_uuid().simple().to_string();
        assert_eq!(MessageId::parse(&simple), Err(InvalidId));
        assert_eq!(MessageId::parse(""), Err(InvalidId));
        assert_eq!(
            MessageId::parse("not-a-uuid-but-thirty-six-characters"),
            Err(InvalidId)
        );
    }

    #[test]
    fn generated_ids_increase() {
        let first = ConversationId::generate();
        let second = ConversationId::generate();
        assert!(first < second);
    }

    #[test]
    fn subjects_are_non_empty_printable_and_bounded() {
        assert!(Subject::parse("alice").is_some());
        assert!(Subject::parse("").is_none());
        assert!(Subject::parse("bad\nsubject").is_none());
        assert!(Subject::parse(&"x".repeat(256)).is_none());
    }
}
