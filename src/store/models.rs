//! Rows as diesel reads and writes them, and their conversion to domain values.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::{
    StoreError,
    schema::{conversations, messages, tool_calls},
};
use crate::domain::{
    Conversation, ConversationId, Message, MessageId, MessageStatus, Role, Title, ToolCall,
    ToolCallId, ToolCallStatus, UserId,
};

#[derive(Queryable, QueryableByName, Selectable)]
#[diesel(table_name = conversations, check_for_backend(diesel::pg::Pg))]
pub struct ConversationRow {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ConversationRow> for Conversation {
    fn from(row: ConversationRow) -> Self {
        Self {
            id: ConversationId::from_uuid(row.id),
            title: Title::from_stored(row.title),
            create_time: row.created_at,
            update_time: row.updated_at,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = conversations)]
pub struct NewConversationRow<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub title: &'a str,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> NewConversationRow<'a> {
    pub fn new(user: UserId, conversation: &'a Conversation) -> Self {
        Self {
            id: *conversation.id.as_uuid(),
            user_id: *user.as_uuid(),
            title: conversation.title.as_str(),
            created_at: conversation.create_time,
            updated_at: conversation.update_time,
        }
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = messages, check_for_backend(diesel::pg::Pg))]
pub struct MessageRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub role: String,
    pub content: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

impl MessageRow {
    pub fn into_message(self, tool_calls: Vec<ToolCall>) -> Result<Message, StoreError> {
        let role = Role::from_stored(&self.role).ok_or_else(|| {
            StoreError::Corrupt(format!("message {} has role {:?}", self.id, self.role))
        })?;
        let status = MessageStatus::from_stored(&self.status).ok_or_else(|| {
            StoreError::Corrupt(format!("message {} has status {:?}", self.id, self.status))
        })?;
        Ok(Message {
            id: MessageId::from_uuid(self.id),
            conversation_id: ConversationId::from_uuid(self.conversation_id),
            role,
            content: self.content,
            status,
            create_time: self.created_at,
            tool_calls,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = messages)]
pub struct NewMessageRow<'a> {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub role: &'static str,
    pub content: &'a str,
    pub status: &'static str,
    pub created_at: DateTime<Utc>,
}

impl<'a> NewMessageRow<'a> {
    pub fn new(message: &'a Message) -> Self {
        Self {
            id: *message.id.as_uuid(),
            conversation_id: *message.conversation_id.as_uuid(),
            role: message.role.as_str(),
            content: &message.content,
            status: message.status.as_str(),
            created_at: message.create_time,
        }
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = tool_calls, check_for_backend(diesel::pg::Pg))]
pub struct ToolCallRow {
    pub id: Uuid,
    pub message_id: Uuid,
    pub provider_call_id: String,
    pub name: String,
    pub arguments: serde_json::Value,
    pub status: String,
}

impl TryFrom<ToolCallRow> for ToolCall {
    type Error = StoreError;

    fn try_from(row: ToolCallRow) -> Result<Self, StoreError> {
        let status = ToolCallStatus::from_stored(&row.status).ok_or_else(|| {
            StoreError::Corrupt(format!("tool call {} has status {:?}", row.id, row.status))
        })?;
        Ok(Self {
            id: ToolCallId::from_uuid(row.id),
            provider_call_id: row.provider_call_id,
            name: row.name,
            arguments: row.arguments,
            status,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = tool_calls)]
pub struct NewToolCallRow<'a> {
    pub id: Uuid,
    pub message_id: Uuid,
    pub position: i32,
    pub provider_call_id: &'a str,
    pub name: &'a str,
    pub arguments: &'a serde_json::Value,
    pub status: &'static str,
    pub created_at: DateTime<Utc>,
}
