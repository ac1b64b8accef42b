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

/// A conversation to store as it was elsewhere: its messages in order.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedConversation {
    pub title: Title,
    pub title_source: TitleSource,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub messages: Vec<ArchivedMessage>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedMessage {
    pub role: Role,
    /// Never holds NUL, which PostgreSQL's text cannot.
    pub content: String,
    pub status: MessageStatus,
    pub create_time: DateTime<Utc>,
    pub tool_calls: Vec<ArchivedToolCall>,
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
