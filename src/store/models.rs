//! Rows as diesel reads and writes them, and their conversion to domain values.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use diesel::{
    deserialize::{self, FromSql, Queryable},
    pg::{Pg, PgValue},
    prelude::*,
    sql_types::Text,
};
use uuid::Uuid;

use super::{
    StoreError,
    schema::{conversations, messages, tool_calls},
};
use crate::domain::{
    CallUsage, Conversation, ConversationId, Message, MessageId, MessageStatus, Role, Title,
    TokenUsage, ToolCall, ToolCallId, ToolCallStatus,
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

/// A `text` column that holds one of a fixed set of names, read straight into its enum: a
/// conversation's thousand messages need no thousand strings for their roles.
pub struct Stored<T>(pub T);

impl<T: FromStr> FromSql<Text, Pg> for Stored<T> {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let name = std::str::from_utf8(value.as_bytes())?;
        let what = std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("value");
        T::from_str(name)
            .map(Self)
            .map_err(|_| format!("unknown {what} {name:?}").into())
    }
}

impl<T: FromStr> Queryable<Text, Pg> for Stored<T> {
    type Row = Self;

    fn build(row: Self) -> deserialize::Result<Self> {
        Ok(row)
    }
}

/// A message as read back, without its conversation's id: whoever reads it knows that.
#[derive(Queryable, Selectable)]
#[diesel(table_name = messages, check_for_backend(diesel::pg::Pg))]
pub struct MessageRow {
    pub id: Uuid,
    pub role: Stored<Role>,
    pub content: String,
    pub status: Stored<MessageStatus>,
    pub created_at: DateTime<Utc>,
    pub parent_id: Option<Uuid>,
    pub model: Option<String>,
    pub usage: Option<serde_json::Value>,
}

/// The usage kept with an assistant's message, as the reply's statement writes it.
#[derive(serde::Deserialize)]
struct StoredUsage {
    input_tokens: u32,
    cached_input_tokens: u32,
    output_tokens: u32,
    reasoning_tokens: u32,
    estimated: bool,
    cost_micros: Option<i64>,
}

/// A message's stored usage. What cannot be read is left out rather than failing the read:
/// usage is an account of the call, not part of the conversation.
pub fn stored_usage(usage: Option<serde_json::Value>) -> Option<CallUsage> {
    let usage: StoredUsage = serde_json::from_value(usage?).ok()?;
    Some(CallUsage {
        tokens: TokenUsage {
            input_tokens: usage.input_tokens,
            cached_input_tokens: usage.cached_input_tokens,
            output_tokens: usage.output_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            estimated: usage.estimated,
        },
        cost_micros: usage.cost_micros,
    })
}

impl MessageRow {
    pub fn into_message(
        self,
        conversation_id: ConversationId,
        tool_calls: Vec<ToolCall>,
    ) -> Message {
        Message {
            id: MessageId::from_uuid(self.id),
            conversation_id,
            role: self.role.0,
            content: self.content,
            status: self.status.0,
            create_time: self.created_at,
            tool_calls,
            model: self.model,
            usage: stored_usage(self.usage),
        }
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
            role: message.role.into(),
            content: &message.content,
            status: message.status.into(),
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
    pub result: Option<serde_json::Value>,
}

impl TryFrom<ToolCallRow> for ToolCall {
    type Error = StoreError;

    fn try_from(row: ToolCallRow) -> Result<Self, StoreError> {
        let status = row.status.parse::<ToolCallStatus>().map_err(|_| {
            StoreError::Corrupt(format!("tool call {} has status {:?}", row.id, row.status))
        })?;
        Ok(Self {
            id: ToolCallId::from_uuid(row.id),
            provider_call_id: row.provider_call_id,
            name: row.name,
            arguments: row.arguments,
            status,
            result: row.result,
        })
    }
}

/// The answer index of a call that was settled (failed without being run) when it was stored:
/// no result event follows it, and later results number themselves from 0.
pub const SETTLED_WHEN_STORED: i32 = -1;

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use diesel::{deserialize::FromSql, pg::PgValue, sql_types::Text};

    use super::Stored;
    use crate::domain::{MessageStatus, Role};

    /// PostgreSQL's oid of `text`.
    const TEXT_OID: NonZeroU32 = NonZeroU32::new(25).unwrap();

    fn decode<T>(bytes: &[u8]) -> Result<T, String>
    where
        Stored<T>: FromSql<Text, diesel::pg::Pg>,
    {
        <Stored<T> as FromSql<Text, _>>::from_sql(PgValue::new(bytes, &TEXT_OID))
            .map(|stored| stored.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn stored_names_decode_to_their_enums() {
        assert_eq!(decode::<Role>(b"user"), Ok(Role::User));
        assert_eq!(decode::<Role>(b"assistant"), Ok(Role::Assistant));
        assert_eq!(decode::<Role>(b"system"), Ok(Role::System));
        assert_eq!(decode::<Role>(b"tool"), Ok(Role::Tool));
        assert_eq!(
            decode::<MessageStatus>(b"complete"),
            Ok(MessageStatus::Complete)
        );
        assert_eq!(
            decode::<MessageStatus>(b"cancelled"),
            Ok(MessageStatus::Cancelled)
        );
    }

    #[test]
    fn unknown_stored_names_are_refused_by_name() {
        assert_eq!(
            decode::<Role>(b"robot"),
            Err(r#"unknown Role "robot""#.to_owned())
        );
        assert_eq!(
            decode::<MessageStatus>(b"Complete"),
            Err(r#"unknown MessageStatus "Complete""#.to_owned())
        );
        assert!(decode::<Role>(&[0xff, 0xfe]).is_err());
    }
}
