//! What a replica remembers of a conversation for the model's context.

use super::{
    conversation::{Role, ToolCall},
    ids::MessageId,
};

/// A conversation's revision: it moves one further, under the conversation's row lock, with
/// every write that adds a message (which takes the new number as its sequence), and when a round
/// of tool calls ends with no message after it (the client's results given, or the round cut
/// short), so that what a replica remembers of the round's calls is never taken for current. So
/// sequences grow, with gaps, in the order the messages were committed.
pub type Revision = i64;

/// A conversation's newest messages, as a model's context needs them, and the revision they
/// are the newest of: every message up to it, and none after.
#[derive(Debug, Clone)]
pub struct RecentHistory {
    pub revision: Revision,
    /// Oldest first.
    pub messages: Vec<RecentMessage>,
}

/// One message of a [`RecentHistory`]: what the model reads.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentMessage {
    pub id: MessageId,
    pub role: Role,
    pub content: String,
    /// The tools an assistant message called, with their results.
    pub tool_calls: Vec<ToolCall>,
}
