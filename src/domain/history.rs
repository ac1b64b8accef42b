use super::{
    conversation::{Role, ToolCall},
    ids::MessageId,
};

/// A conversation's revision: how many writes have added messages to it. Each write takes it
/// one further, under the conversation's row lock, and gives the message it stores that number
/// as its sequence, so the revision is also the newest message's sequence.
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
