//! Writes of a chat turn: the user's message when the turn starts, the reply when it ends.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    Conn, Operation, Store, StoreError,
    models::{NewToolCallRow, Stored},
    schema::{conversations, messages, tool_calls},
    statement::fixed,
};
use crate::domain::{
    Conversation, ConversationId, Message, MessageId, RecentHistory, RecentMessage, Revision, Role,
    Title, UserId,
};

#[derive(QueryableByName)]
struct RevisionRow {
    #[diesel(sql_type = BigInt)]
    revision: Revision,
}

/// Adds one message to a conversation and moves the conversation forward: its update time, its
/// revision, and its title if it has none yet. The UPDATE locks the conversation's row, so
/// concurrent turns of one conversation store their messages one after the other. With `$5`,
/// only if the conversation is still at that revision; with `$10`, only if its revision is below
/// that. Returns the new revision, or no row if the user has no such conversation (or one of
/// those conditions failed); then nothing is written.
const APPEND_MESSAGE: &str = "WITH touched AS (
         UPDATE conversations
         SET updated_at = GREATEST(updated_at, $3),
             title = CASE WHEN title = '' THEN $4 ELSE title END,
             revision = revision + 1
         WHERE id = $1 AND user_id = $2 AND ($5::int8 IS NULL OR revision = $5)
           AND ($10::int8 IS NULL OR revision < $10)
         RETURNING id, revision
     ), inserted AS (
         INSERT INTO messages (id, conversation_id, role, content, status, created_at)
         SELECT $6, id, $7, $8, $9, $3 FROM touched
     )
     SELECT revision FROM touched";

const START_CONVERSATION: Operation = Operation::new("INSERT", "INSERT conversations messages");
const APPEND: Operation = Operation::new("UPDATE", "UPDATE conversations INSERT messages");
const RECENT: Operation = Operation::new("SELECT", "SELECT messages");
const REVISION: Operation = Operation::new("SELECT", "SELECT conversations");

impl Store {
    /// Creates the conversation together with its first message, in one statement, unless the
    /// user already has `max_conversations`. Its revision is then 1. Whether it was created.
    pub async fn start_conversation(
        &self,
        user: UserId,
        conversation: &Conversation,
        first: &Message,
        max_conversations: i64,
    ) -> Result<bool, StoreError> {
        self.run(START_CONVERSATION, async |conn| {
            let created = fixed(
                "WITH created AS (
                     INSERT INTO conversations (id, user_id, title, created_at, updated_at, revision)
                     SELECT $1, $2, $3, $4, $4, 1
                     WHERE (SELECT count(*) FROM conversations WHERE user_id = $2) < $9
                     RETURNING id
                 )
                 INSERT INTO messages (id, conversation_id, role, content, status, created_at)
                 SELECT $5, id, $6, $7, $8, $4 FROM created",
            )
            .bind::<SqlUuid, _>(conversation.id.as_uuid())
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Text, _>(conversation.title.as_str())
            .bind::<Timestamptz, _>(first.create_time)
            .bind::<SqlUuid, _>(first.id.as_uuid())
            .bind::<Text, _>(<&str>::from(first.role))
            .bind::<Text, _>(&first.content)
            .bind::<Text, _>(<&str>::from(first.status))
            .bind::<BigInt, _>(max_conversations)
            .execute(conn)
            .await?;
            Ok(created > 0)
        })
        .await
    }

    /// Adds the user's message to one of their conversations, naming the conversation
    /// `title_if_unnamed` if it has no title yet, and returns the new revision. With `expected`,
    /// only if the conversation is still at that revision, and only while its revision is below
    /// `max_revision`. `None` if the user has no such conversation or a condition failed, in
    /// which case nothing is written ([`Store::revision`] tells which).
    pub async fn append_user_message(
        &self,
        user: UserId,
        message: &Message,
        title_if_unnamed: &Title,
        expected: Option<Revision>,
        max_revision: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        self.run(APPEND, async |conn| {
            let title = title_if_unnamed.as_str();
            append_message(conn, user, message, title, expected, Some(max_revision)).await
        })
        .await
    }

    /// The revision of the user's conversation, or `None` if there is no such conversation.
    pub async fn revision(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<Option<Revision>, StoreError> {
        self.run(REVISION, async |conn| {
            Ok(conversations::table
                .filter(conversations::id.eq(conversation.as_uuid()))
                .filter(conversations::user_id.eq(user.as_uuid()))
                .select(conversations::revision)
                .first::<Revision>(conn)
                .await
                .optional()?)
        })
        .await
    }

    /// The conversation's newest `limit` messages, oldest first: the model's context. `None` if
    /// the user has no such conversation.
    pub async fn recent_messages(
        &self,
        user: UserId,
        conversation: ConversationId,
        limit: usize,
    ) -> Result<Option<RecentHistory>, StoreError> {
        self.run(RECENT, async |conn| {
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
                .load::<(Revision, uuid::Uuid, Stored<Role>, String, DateTime<Utc>)>(conn)
                .await?;
            let Some(&(revision, ..)) = rows.as_slice().first() else {
                // With no message, ownership is still unknown, and so is the revision (a second
                // statement could see a later one).
                let owned =
                    super::conversations::owns_conversation(conn, user, conversation).await?;
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
        })
        .await
    }

    /// Stores the assistant's reply with its tool calls and moves the conversation's update
    /// time forward, atomically, and returns the new revision. `None` if the conversation was
    /// deleted meanwhile, in which case nothing is written.
    pub async fn store_reply(
        &self,
        user: UserId,
        reply: &Message,
    ) -> Result<Option<Revision>, StoreError> {
        let operation = Operation::new("INSERT", "INSERT messages tool_calls");
        self.run(operation, async |conn| {
            if reply.tool_calls.is_empty() {
                // The common case in one statement, atomic by itself: one round trip, not four.
                return append_message(conn, user, reply, "", None, None).await;
            }
            conn.transaction::<Option<Revision>, StoreError, _>(async |conn| {
                let Some(revision) = append_message(conn, user, reply, "", None, None).await?
                else {
                    return Ok(None);
                };
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
                        status: call.status.into(),
                        created_at: reply.create_time,
                    })
                    .collect();
                diesel::insert_into(tool_calls::table)
                    .values(calls)
                    .execute(conn)
                    .await?;
                Ok(Some(revision))
            })
            .await
        })
        .await
    }
}

/// [`APPEND_MESSAGE`] for `message`. An empty `title_if_unnamed` leaves the title as it is.
async fn append_message(
    conn: &mut Conn,
    user: UserId,
    message: &Message,
    title_if_unnamed: &str,
    expected: Option<Revision>,
    max_revision: Option<Revision>,
) -> Result<Option<Revision>, StoreError> {
    let row = fixed(APPEND_MESSAGE)
        .bind::<SqlUuid, _>(message.conversation_id.as_uuid())
        .bind::<SqlUuid, _>(user.as_uuid())
        .bind::<Timestamptz, _>(message.create_time)
        .bind::<Text, _>(title_if_unnamed)
        .bind::<Nullable<BigInt>, _>(expected)
        .bind::<SqlUuid, _>(message.id.as_uuid())
        .bind::<Text, _>(<&str>::from(message.role))
        .bind::<Text, _>(&message.content)
        .bind::<Text, _>(<&str>::from(message.status))
        .bind::<Nullable<BigInt>, _>(max_revision)
        .get_result::<RevisionRow>(conn)
        .await
        .optional()?;
    Ok(row.map(|row| row.revision))
}
