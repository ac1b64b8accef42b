//! What the model is shown of a conversation: its newest messages before a turn, with their
//! tool calls.

use diesel::{
    prelude::*,
    sql_types::{BigInt, Integer, Jsonb, Nullable, Text, Uuid as SqlUuid},
};
use diesel_async::RunQueryDsl;

use super::{Operation, Store, StoreError, models::Stored, statement::fixed};
use crate::domain::{
    ConversationId, MessageId, RecentMessage, Revision, Role, ToolCall, ToolCallId, ToolCallStatus,
    UserId,
};

/// The tool calls of the message whose id is `$message`, as JSON in the order the model made
/// them: what [`JsonToolCall`] reads.
macro_rules! tool_calls_json {
    ($message:literal) => {
        concat!(
            "(SELECT jsonb_agg(jsonb_build_object(
                 'id', t.id, 'provider_call_id', t.provider_call_id, 'name', t.name,
                 'arguments', t.arguments, 'status', t.status, 'result', t.result
             ) ORDER BY t.position)
             FROM tool_calls t WHERE t.message_id = ",
            $message,
            ")"
        )
    };
}
pub(super) use tool_calls_json;

/// A conversation's newest messages before a sequence, newest first, each assistant message
/// with its tool calls in the order the model made them.
const MESSAGES_BEFORE: &str = concat!(
    "SELECT m.id, m.role, m.content,
         CASE WHEN m.role = 'assistant' THEN ",
    tool_calls_json!("m.id"),
    " END AS tool_calls
     FROM messages m JOIN conversations c ON c.id = m.conversation_id
     WHERE c.user_id = $1 AND m.conversation_id = $2 AND m.sequence < $3
     ORDER BY m.sequence DESC
     LIMIT $4"
);

/// The path of a user's conversation from message `$3` up towards its root, `$3` first: at most
/// `$4` messages, each assistant message with its tool calls in the order the model made them.
/// Every message on it was committed before any message that follows it.
const BRANCH_UP_TO: &str = concat!(
    "WITH RECURSIVE path AS (
         SELECT m.id, m.parent_id, m.role, m.content, 1 AS depth
         FROM messages m JOIN conversations c ON c.id = m.conversation_id
         WHERE c.user_id = $1 AND m.conversation_id = $2 AND m.id = $3
         UNION ALL
         SELECT m.id, m.parent_id, m.role, m.content, p.depth + 1
         FROM path p JOIN messages m ON m.id = p.parent_id
         WHERE p.depth < $4 AND m.conversation_id = $2
     )
     SELECT p.id, p.role, p.content,
         CASE WHEN p.role = 'assistant' THEN ",
    tool_calls_json!("p.id"),
    " END AS tool_calls
     FROM path p
     ORDER BY p.depth"
);

#[derive(QueryableByName)]
struct ContextRow {
    #[diesel(sql_type = SqlUuid)]
    id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    role: Stored<Role>,
    #[diesel(sql_type = Text)]
    content: String,
    #[diesel(sql_type = Nullable<Jsonb>)]
    tool_calls: Option<serde_json::Value>,
}

/// A tool call as [`MESSAGES_BEFORE`] and the replay of a turn give it, aggregated as JSON.
#[derive(serde::Deserialize)]
pub(super) struct JsonToolCall {
    id: uuid::Uuid,
    provider_call_id: String,
    name: String,
    arguments: serde_json::Value,
    status: String,
    result: Option<serde_json::Value>,
    /// Given by the replay only.
    #[serde(default)]
    pub answer_index: Option<i32>,
}

impl JsonToolCall {
    /// The calls of message `message`, as its aggregate gives them.
    pub(super) fn parse_all(
        message: uuid::Uuid,
        json: Option<serde_json::Value>,
    ) -> Result<Vec<Self>, StoreError> {
        match json {
            None => Ok(Vec::new()),
            Some(json) => serde_json::from_value(json).map_err(|e| {
                StoreError::Corrupt(format!("the tool calls of message {message}: {e}"))
            }),
        }
    }

    pub(super) fn into_tool_call(self) -> Result<ToolCall, StoreError> {
        let status = self.status.parse::<ToolCallStatus>().map_err(|_| {
            StoreError::Corrupt(format!(
                "tool call {} has status {:?}",
                self.id, self.status
            ))
        })?;
        Ok(ToolCall {
            id: ToolCallId::from_uuid(self.id),
            provider_call_id: self.provider_call_id,
            name: self.name,
            arguments: self.arguments,
            status,
            result: self.result,
        })
    }
}

/// A message of the model's context, as a statement aggregates it into JSON: `id`, `role`,
/// `content` and, for an assistant's, `tool_calls` as [`tool_calls_json`] gives them.
#[derive(serde::Deserialize)]
pub(super) struct JsonContextMessage {
    id: uuid::Uuid,
    role: Role,
    content: String,
    tool_calls: Option<serde_json::Value>,
}

impl JsonContextMessage {
    pub(super) fn into_recent(self) -> Result<RecentMessage, StoreError> {
        ContextRow {
            id: self.id,
            role: Stored(self.role),
            content: self.content,
            tool_calls: self.tool_calls,
        }
        .into_recent()
    }
}

impl ContextRow {
    fn into_recent(self) -> Result<RecentMessage, StoreError> {
        let tool_calls = JsonToolCall::parse_all(self.id, self.tool_calls)?
            .into_iter()
            .map(JsonToolCall::into_tool_call)
            .collect::<Result<_, StoreError>>()?;
        Ok(RecentMessage {
            id: MessageId::from_uuid(self.id),
            role: self.role.0,
            content: self.content,
            tool_calls,
        })
    }
}

const BEFORE: Operation = Operation::new("SELECT", "SELECT messages");
const BRANCH: Operation = Operation::new("SELECT", "SELECT messages");

impl Store {
    /// The newest `limit` of the messages before `sequence` in the user's conversation, oldest
    /// first, with their tool calls and results: the model's context for the message at
    /// `sequence`. Every message before it was committed before it was (see
    /// [`APPEND_USER_MESSAGE`]), so nothing is missing and nothing later is included.
    pub async fn messages_before(
        &self,
        user: UserId,
        conversation: ConversationId,
        sequence: Revision,
        limit: usize,
    ) -> Result<Vec<RecentMessage>, StoreError> {
        self.run(BEFORE, async |conn| {
            let rows = fixed(MESSAGES_BEFORE)
                .bind::<SqlUuid, _>(user.as_uuid())
                .bind::<SqlUuid, _>(conversation.as_uuid())
                .bind::<BigInt, _>(sequence)
                .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
                .load::<ContextRow>(conn)
                .await?;
            rows.into_iter()
                .rev()
                .map(ContextRow::into_recent)
                .collect()
        })
        .await
    }

    /// The newest `limit` messages of the branch that ends at `leaf` in the user's
    /// conversation, `leaf` included, oldest first, with their tool calls and results: the
    /// model's context for a message that follows `leaf`. Empty if the conversation holds no
    /// such message.
    pub async fn branch_up_to(
        &self,
        user: UserId,
        conversation: ConversationId,
        leaf: MessageId,
        limit: usize,
    ) -> Result<Vec<RecentMessage>, StoreError> {
        self.run(BRANCH, async |conn| {
            let rows = fixed(BRANCH_UP_TO)
                .bind::<SqlUuid, _>(user.as_uuid())
                .bind::<SqlUuid, _>(conversation.as_uuid())
                .bind::<SqlUuid, _>(leaf.as_uuid())
                .bind::<Integer, _>(i32::try_from(limit).unwrap_or(i32::MAX))
                .load::<ContextRow>(conn)
                .await?;
            rows.into_iter()
                .rev()
                .map(ContextRow::into_recent)
                .collect()
        })
        .await
    }
}
