//! A conversation as it leaves the service and comes back: everything a user wrote and was
//! answered, without the ids and places the database gives it.

use chrono::{DateTime, Utc};

use super::conversation::{MessageStatus, Role, Title, ToolCallStatus};

/// Who named a conversation, and so whether the model may name it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::IntoStaticStr,
    strum::EnumString,
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum TitleSource {
    /// Derived from the first message: the model may replace it.
    Derived,
    /// Chosen by the client: never replaced.
    Client,
    /// Written by the model.
    Model,
}

/// A conversation to store as it was elsewhere: its messages in the order they were written.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedConversation {
    pub title: Title,
    pub title_source: TitleSource,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub messages: Vec<ArchivedMessage>,
    /// Which of `messages` is the current leaf; `None`: the last.
    pub leaf: Option<usize>,
}

impl ArchivedConversation {
    /// The index of each message's parent in `messages` (`None` for a first message). A tree
    /// is built from messages already written: a parent comes before its child, and the leaf
    /// is one of the messages.
    pub fn parents(&self) -> Result<Vec<Option<usize>>, InvalidTree> {
        let parents: Vec<Option<usize>> = self
            .messages
            .iter()
            .enumerate()
            .map(|(at, message)| match message.parent {
                ArchivedParent::Previous => at.checked_sub(1),
                ArchivedParent::Root => None,
                ArchivedParent::Message(parent) => Some(parent),
            })
            .collect();
        if let Some(at) = parents
            .iter()
            .enumerate()
            .position(|(at, parent)| parent.is_some_and(|parent| parent >= at))
        {
            return Err(InvalidTree::ParentNotBefore(at));
        }
        match self.leaf {
            Some(leaf) if leaf >= self.messages.len() => Err(InvalidTree::LeafMissing(leaf)),
            _ => Ok(parents),
        }
    }
}

/// Why an archived conversation's messages do not make a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTree {
    #[error("message {0} must follow a message that comes before it")]
    ParentNotBefore(usize),
    #[error("{0} is not the index of one of its messages")]
    LeafMissing(usize),
}

/// The message an archived message follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchivedParent {
    /// The one before it; none for the first.
    #[default]
    Previous,
    /// None, though messages come before it: the conversation starts anew (an edited first
    /// message).
    Root,
    /// The message at this index of the conversation's messages, which comes before it.
    Message(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedMessage {
    /// The message it follows.
    pub parent: ArchivedParent,
    pub role: Role,
    /// Never holds NUL, which PostgreSQL's text cannot.
    pub content: String,
    pub status: MessageStatus,
    pub create_time: DateTime<Utc>,
    pub tool_calls: Vec<ArchivedToolCall>,
    /// On an assistant's message: the model that wrote it, if known.
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedToolCall {
    /// The provider's id for the call.
    pub provider_call_id: String,
    pub name: String,
    pub arguments: serde_json::Value,
    pub status: ToolCallStatus,
    pub result: Option<serde_json::Value>,
}
