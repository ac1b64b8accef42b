use chrono::{DateTime, Utc};

use super::{conversation::Role, ids::MessageId};

/// Advances by exactly one with every write that adds messages to a conversation, so that a
/// reader can tell whether anything was added since it looked. Only its changes carry meaning.
pub type Revision = i64;

/// A conversation's newest messages, as a model's context needs them, and the conversation's
/// revision when they were read.
#[derive(Debug, Clone)]
pub struct RecentHistory {
    /// `None` when the conversation has no message yet.
    pub revision: Option<Revision>,
    /// Oldest first.
    pub messages: Vec<RecentMessage>,
}

/// One message of a [`RecentHistory`]: what the model reads, and what orders it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentMessage {
    pub id: MessageId,
    pub role: Role,
    pub content: String,
    pub create_time: DateTime<Utc>,
}
