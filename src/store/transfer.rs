//! A user's conversations read whole for export, and written whole on import.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{
    Operation, Store, StoreError,
    models::{ConversationRow, Stored},
    schema::{conversations, messages, tool_calls},
};
use crate::domain::{
    ArchivedConversation, Conversation, ConversationId, MessageId, TitleSource, ToolCallId, UserId,
};

const LIST: Operation = Operation::new("SELECT", "SELECT conversations");
const READ: Operation = Operation::new("SELECT", "SELECT conversations");
const IMPORT: Operation = Operation::new("INSERT", "INSERT conversations messages tool_calls");

/// Rows written by one statement of an import: few enough that their bind values stay far
/// below PostgreSQL's limit of 65,535 a statement.
const ROWS_PER_INSERT: usize = 1_000;

#[derive(Queryable, Selectable)]
#[diesel(table_name = conversations, check_for_backend(diesel::pg::Pg))]
struct SourcedConversationRow {
    #[diesel(embed)]
    conversation: ConversationRow,
    title_source: Stored<TitleSource>,
}

#[derive(Insertable)]
#[diesel(table_name = messages)]
struct ImportedMessageRow<'a> {
    id: Uuid,
    conversation_id: Uuid,
    role: &'static str,
    content: &'a str,
    status: &'static str,
    created_at: chrono::DateTime<chrono::Utc>,
    sequence: i64,
    parent_id: Option<Uuid>,
    depth: i32,
    model: Option<&'a str>,
}

#[derive(Insertable)]
#[diesel(table_name = tool_calls)]
struct ImportedToolCallRow<'a> {
    id: Uuid,
    message_id: Uuid,
    position: i32,
    provider_call_id: &'a str,
    name: &'a str,
    arguments: &'a serde_json::Value,
    result: Option<&'a serde_json::Value>,
    status: &'static str,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl Store {
    /// The user's conversations, oldest first.
    pub async fn conversation_ids(&self, user: UserId) -> Result<Vec<ConversationId>, StoreError> {
        self.run(LIST, async |conn| {
            let ids = conversations::table
                .filter(conversations::user_id.eq(user.as_uuid()))
                .order((conversations::created_at, conversations::id))
                .select(conversations::id)
                .load::<Uuid>(conn)
                .await?;
            Ok(ids.into_iter().map(ConversationId::from_uuid).collect())
        })
        .await
    }

    /// The user's conversation and who named it, or `None` if there is no such conversation.
    pub async fn conversation_with_title_source(
        &self,
        user: UserId,
        id: ConversationId,
    ) -> Result<Option<(Conversation, TitleSource)>, StoreError> {
        self.run(READ, async |conn| {
            let row = conversations::table
                .filter(conversations::id.eq(id.as_uuid()))
                .filter(conversations::user_id.eq(user.as_uuid()))
                .select(SourcedConversationRow::as_select())
                .first::<SourcedConversationRow>(conn)
                .await
                .optional()?;
            Ok(row.map(|row| (Conversation::from(row.conversation), row.title_source.0)))
        })
        .await
    }

    /// Stores `archived` as a new conversation of the user, with new ids, in one transaction:
    /// all of it or nothing. Returns its id.
    pub async fn import_conversation(
        &self,
        user: UserId,
        archived: &ArchivedConversation,
    ) -> Result<ConversationId, StoreError> {
        let id = ConversationId::generate();
        let message_ids: Vec<Uuid> = archived
            .messages
            .iter()
            .map(|_| *MessageId::generate().as_uuid())
            .collect();
        let parents = archived
            .parents()
            .map_err(|e| StoreError::Corrupt(format!("an archived conversation: {e}")))?;
        let messages = message_rows(id, archived, &message_ids, &parents);
        let leaf = archived
            .leaf
            .or(messages.len().checked_sub(1))
            .and_then(|at| messages.get(at))
            .map(|leaf| (leaf.id, leaf.depth));
        // A conversation that is not one line is read as a tree.
        let branched = parents
            .iter()
            .enumerate()
            .any(|(at, parent)| *parent != at.checked_sub(1))
            || leaf.is_some_and(|(id, _)| Some(id) != messages.last().map(|m| m.id));
        let calls = tool_call_rows(archived, &message_ids);
        self.run_transaction_by_hand(IMPORT, async |conn| {
            diesel::sql_query("BEGIN").execute(conn).await?;
            diesel::insert_into(conversations::table)
                .values((
                    conversations::id.eq(id.as_uuid()),
                    conversations::user_id.eq(user.as_uuid()),
                    conversations::title.eq(archived.title.as_str()),
                    conversations::title_source.eq(<&str>::from(archived.title_source)),
                    conversations::created_at.eq(archived.create_time),
                    conversations::updated_at.eq(archived.update_time),
                    conversations::revision
                        .eq(i64::try_from(archived.messages.len()).unwrap_or(i64::MAX)),
                    conversations::leaf_id.eq(leaf.map(|(id, _)| id)),
                    conversations::leaf_depth.eq(leaf.map(|(_, depth)| depth)),
                    conversations::leaf_jumps.eq(i64::from(branched)),
                ))
                .execute(conn)
                .await?;
            for chunk in messages.chunks(ROWS_PER_INSERT) {
                diesel::insert_into(messages::table)
                    .values(chunk)
                    .execute(conn)
                    .await?;
            }
            for chunk in calls.chunks(ROWS_PER_INSERT) {
                diesel::insert_into(tool_calls::table)
                    .values(chunk)
                    .execute(conn)
                    .await?;
            }
            diesel::sql_query("COMMIT").execute(conn).await?;
            Ok(id)
        })
        .await
    }
}

/// The archived conversation's messages as rows of the conversation `id`, numbered from 1 in
/// order, with the given ids, each after the parent `parents` names (by index, always an
/// earlier one).
fn message_rows<'a>(
    id: ConversationId,
    archived: &'a ArchivedConversation,
    message_ids: &[Uuid],
    parents: &[Option<usize>],
) -> Vec<ImportedMessageRow<'a>> {
    let mut rows: Vec<ImportedMessageRow<'a>> = Vec::with_capacity(archived.messages.len());
    for ((message, &message_id), (sequence, parent)) in archived
        .messages
        .iter()
        .zip(message_ids)
        .zip((1..).zip(parents))
    {
        let parent = parent.and_then(|at| rows.get(at));
        rows.push(ImportedMessageRow {
            id: message_id,
            conversation_id: *id.as_uuid(),
            role: message.role.into(),
            content: &message.content,
            status: message.status.into(),
            created_at: message.create_time,
            sequence,
            parent_id: parent.map(|parent| parent.id),
            depth: parent.map_or(0, |parent| parent.depth.saturating_add(1)),
            model: message.model.as_deref(),
        });
    }
    rows
}

/// The tool calls of the archived conversation's messages, in each message's order.
fn tool_call_rows<'a>(
    archived: &'a ArchivedConversation,
    message_ids: &[Uuid],
) -> Vec<ImportedToolCallRow<'a>> {
    archived
        .messages
        .iter()
        .zip(message_ids)
        .flat_map(|(message, &message_id)| {
            message
                .tool_calls
                .iter()
                .zip(0..)
                .map(move |(call, position)| ImportedToolCallRow {
                    id: *ToolCallId::generate().as_uuid(),
                    message_id,
                    position,
                    provider_call_id: &call.provider_call_id,
                    name: &call.name,
                    arguments: &call.arguments,
                    result: call.result.as_ref(),
                    status: call.status.into(),
                    created_at: message.create_time,
                })
        })
        .collect()
}
