//! Writes of a chat turn: the user's message when the turn starts, the reply when it ends.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    Store, StoreError,
    models::{NewMessageRow, NewToolCallRow, Stored},
    schema::{conversations, messages, tool_calls},
    statement::fixed,
};
use crate::domain::{Conversation, ConversationId, Message, MessageId, Role, Title, UserId};

/// A conversation's newest messages, as the model's context needs them, and the conversation's
/// revision when they were read.
#[derive(Debug, Clone)]
pub struct RecentHistory {
    /// `None` when the conversation has no message yet.
    pub revision: Option<Revision>,
    /// Oldest first.
    pub messages: Vec<RecentMessage>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecentMessage {
    pub id: MessageId,
    pub role: Role,
    pub content: String,
    pub create_time: DateTime<Utc>,
}

/// Advances by exactly one with every write that adds messages to a conversation, so that a
/// reader can tell whether anything was added since it looked. Only its changes carry meaning.
pub type Revision = i64;

#[derive(QueryableByName)]
struct RevisionRow {
    #[diesel(sql_type = BigInt)]
    revision: Revision,
}

impl Store {
    /// Creates the conversation together with its first message, in one statement. Its revision
    /// is then 1.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT conversations messages", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT"))]
    pub async fn start_conversation(
        &self,
        user: UserId,
        conversation: &Conversation,
        first: &Message,
    ) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        fixed(
            "WITH created AS (
                 INSERT INTO conversations (id, user_id, title, created_at, updated_at, revision)
                 VALUES ($1, $2, $3, $4, $4, 1)
                 RETURNING id
             )
             INSERT INTO messages (id, conversation_id, role, content, status, created_at)
             SELECT $5, id, 'user', $6, 'complete', $4 FROM created",
        )
        .bind::<SqlUuid, _>(conversation.id.as_uuid())
        .bind::<SqlUuid, _>(user.as_uuid())
        .bind::<Text, _>(conversation.title.as_str())
        .bind::<Timestamptz, _>(first.create_time)
        .bind::<SqlUuid, _>(first.id.as_uuid())
        .bind::<Text, _>(&first.content)
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Adds the user's message to one of their conversations, moving its update time forward and
    /// naming it if it has no title yet, in one statement, and returns the new revision. With
    /// `expected`, only if the conversation is still at that revision. `None` if the user has no
    /// such conversation (or it is at another revision), in which case nothing is written.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE conversations INSERT messages", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE"))]
    pub async fn append_user_message(
        &self,
        user: UserId,
        message: &Message,
        title_if_unnamed: &Title,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError> {
        let mut conn = self.connection().await?;
        // The UPDATE locks the conversation's row, so concurrent turns of one conversation
        // store their messages one after the other.
        let row = fixed(
            "WITH touched AS (
                 UPDATE conversations
                 SET updated_at = GREATEST(updated_at, $3),
                     title = CASE WHEN title = '' THEN $4 ELSE title END,
                     revision = revision + 1
                 WHERE id = $1 AND user_id = $2 AND ($7::int8 IS NULL OR revision = $7)
                 RETURNING id, revision
             ), inserted AS (
                 INSERT INTO messages (id, conversation_id, role, content, status, created_at)
                 SELECT $5, id, 'user', $6, 'complete', $3 FROM touched
             )
             SELECT revision FROM touched",
        )
        .bind::<SqlUuid, _>(message.conversation_id.as_uuid())
        .bind::<SqlUuid, _>(user.as_uuid())
        .bind::<Timestamptz, _>(message.create_time)
        .bind::<Text, _>(title_if_unnamed.as_str())
        .bind::<SqlUuid, _>(message.id.as_uuid())
        .bind::<Text, _>(&message.content)
        .bind::<Nullable<BigInt>, _>(expected)
        .get_result::<RevisionRow>(&mut conn)
        .await
        .optional()?;
        Ok(row.map(|row| row.revision))
    }

    /// The conversation's newest `limit` messages, oldest first: the model's context. `None` if
    /// the user has no such conversation.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT messages", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT"))]
    pub async fn recent_messages(
        &self,
        user: UserId,
        conversation: ConversationId,
        limit: usize,
    ) -> Result<Option<RecentHistory>, StoreError> {
        let mut conn = self.connection().await?;
        // The revision comes from the same statement, so it is the one these messages are at.
        let rows = messages::table
            .inner_join(conversations::table)
            .filter(conversations::user_id.eq(user.as_uuid()))
            .filter(messages::conversation_id.eq(conversation.as_uuid()))
            .select((
                conversations::revision,
                messages::id,
                messages::role,
                messages::content,
                messages::created_at,
            ))
            .order((messages::created_at.desc(), messages::id.desc()))
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .load::<(Revision, uuid::Uuid, Stored<Role>, String, DateTime<Utc>)>(&mut conn)
            .await?;
        let Some(&(revision, ..)) = rows.as_slice().first() else {
            // With no message, ownership is still unknown, and so is the revision (a second
            // statement could see a later one).
            let owned =
                super::conversations::owns_conversation(&mut conn, user, conversation).await?;
            return Ok(owned.then(|| RecentHistory {
                revision: None,
                messages: Vec::new(),
            }));
        };
        let messages = rows
            .into_iter()
            .rev()
            .map(|(_, id, role, content, create_time)| RecentMessage {
                id: MessageId::from_uuid(id),
                role: role.0,
                content,
                create_time,
            })
            .collect();
        Ok(Some(RecentHistory {
            revision: Some(revision),
            messages,
        }))
    }

    /// Stores the assistant's reply with its tool calls and moves the conversation's update
    /// time forward, in one transaction, and returns the new revision. `None` if the
    /// conversation was deleted meanwhile, in which case nothing is written.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT messages tool_calls", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT"))]
    pub async fn store_reply(
        &self,
        user: UserId,
        reply: &Message,
    ) -> Result<Option<Revision>, StoreError> {
        let mut conn = self.connection().await?;
        if reply.tool_calls.is_empty() {
            // The common case in one statement, atomic by itself: one round trip, not four.
            let stored = fixed(
                "WITH touched AS (
                     UPDATE conversations
                     SET updated_at = GREATEST(updated_at, $3), revision = revision + 1
                     WHERE id = $1 AND user_id = $2
                     RETURNING id, revision
                 ), inserted AS (
                     INSERT INTO messages (id, conversation_id, role, content, status, created_at)
                     SELECT $4, id, 'assistant', $5, $6, $3 FROM touched
                 )
                 SELECT revision FROM touched",
            )
            .bind::<SqlUuid, _>(reply.conversation_id.as_uuid())
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Timestamptz, _>(reply.create_time)
            .bind::<SqlUuid, _>(reply.id.as_uuid())
            .bind::<Text, _>(&reply.content)
            .bind::<Text, _>(reply.status.as_str())
            .get_result::<RevisionRow>(&mut conn)
            .await
            .optional()?;
            return Ok(stored.map(|row| row.revision));
        }
        conn.transaction::<Option<Revision>, StoreError, _>(async |conn| {
            let touched = fixed(
                "UPDATE conversations
                     SET updated_at = GREATEST(updated_at, $3), revision = revision + 1
                     WHERE id = $1 AND user_id = $2
                     RETURNING revision",
            )
            .bind::<SqlUuid, _>(reply.conversation_id.as_uuid())
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Timestamptz, _>(reply.create_time)
            .get_result::<RevisionRow>(conn)
            .await
            .optional()?;
            let Some(touched) = touched else {
                return Ok(None);
            };
            diesel::insert_into(messages::table)
                .values(NewMessageRow::new(reply))
                .execute(conn)
                .await?;
            let calls: Vec<NewToolCallRow<'_>> = reply
                .tool_calls
                .iter()
                .enumerate()
                .map(|(position, call)| NewToolCallRow {
                    id: *call.id.as_uuid(),
                    message_id: *reply.id.as_uuid(),
                    position: i32::try_from(position).unwrap_or(i32::MAX),
                    provider_call_id: &call.provider_call_id,
                    name: &call.name,
                    arguments: &call.arguments,
                    status: call.status.as_str(),
                    created_at: reply.create_time,
                })
                .collect();
            diesel::insert_into(tool_calls::table)
                .values(calls)
                .execute(conn)
                .await?;
            Ok(Some(touched.revision))
        })
        .await
    }
}
