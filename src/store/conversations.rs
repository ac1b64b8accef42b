//! Conversations and their messages as their owner reads, lists and deletes them.

use diesel::{
    dsl::exists,
    prelude::*,
    sql_types::{BigInt, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{
    Conn, Operation, Store, StoreError, branches,
    message_reads::{tool_calls_of, with_tool_calls},
    models::{ConversationRow, MessageRow, ToolCallRow},
    schema::{conversations, messages, tool_calls},
    statement::fixed,
};
use crate::domain::{
    BranchMessage, Conversation, ConversationCursor, ConversationId, Message, MessageCursor,
    MessageId, Title, TreePlace, UserId,
};

const CREATE: Operation = Operation::new("INSERT", "INSERT conversations");
const LIST: Operation = Operation::new("SELECT", "SELECT conversations");
const GET: Operation = Operation::new("SELECT", "SELECT conversations messages");
const LIST_MESSAGES: Operation = Operation::new("SELECT", "SELECT messages");
const DELETE: Operation = Operation::new("DELETE", "DELETE conversations");
const RENAME: Operation = Operation::new("UPDATE", "UPDATE conversations");
const TITLE_SOURCE: Operation = Operation::new("SELECT", "SELECT conversations");

/// How many messages may be written between two statements of one read before its tool calls
/// could miss one.
const CALLS_WINDOW_MARGIN: i64 = 64;

impl Store {
    /// Creates an empty conversation unless the user already has `max_conversations`. Whether
    /// it was created.
    pub async fn create_conversation(
        &self,
        user: UserId,
        conversation: &Conversation,
        max_conversations: i64,
    ) -> Result<bool, StoreError> {
        self.run(CREATE, async |conn| {
            let created = fixed(
                "INSERT INTO conversations (id, user_id, title, title_source, created_at, updated_at)
                 SELECT $1, $2, $3, CASE WHEN $3 = '' THEN 'derived' ELSE 'client' END, $4, $5
                 WHERE (SELECT count(*) FROM conversations WHERE user_id = $2) < $6",
            )
            .bind::<SqlUuid, _>(conversation.id.as_uuid())
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Text, _>(conversation.title.as_str())
            .bind::<Timestamptz, _>(conversation.create_time)
            .bind::<Timestamptz, _>(conversation.update_time)
            .bind::<BigInt, _>(max_conversations)
            .execute(conn)
            .await?;
            Ok(created > 0)
        })
        .await
    }

    /// Up to `limit` of the user's conversations after `after`, most recently updated first.
    pub async fn list_conversations(
        &self,
        user: UserId,
        after: Option<ConversationCursor>,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        self.run(LIST, async |conn| {
            let mut query = conversations::table
                .filter(conversations::user_id.eq(user.as_uuid()))
                .select(ConversationRow::as_select())
                .order((conversations::updated_at.desc(), conversations::id.desc()))
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .into_boxed();
            if let Some(cursor) = after {
                // The redundant `<=` bounds the index scan; the OR breaks ties on the id.
                query = query.filter(
                    conversations::updated_at.le(cursor.update_time).and(
                        conversations::updated_at
                            .lt(cursor.update_time)
                            .or(conversations::id.lt(*cursor.id.as_uuid())),
                    ),
                );
            }
            let rows = query.load::<ConversationRow>(conn).await?;
            Ok(rows.into_iter().map(Conversation::from).collect())
        })
        .await
    }

    /// The conversation with up to `newest` of the newest messages of its current branch,
    /// newest first, or `None` if the user has no such conversation.
    pub async fn conversation_with_newest_messages(
        &self,
        user: UserId,
        id: ConversationId,
        newest: usize,
    ) -> Result<Option<(Conversation, Vec<BranchMessage>)>, StoreError> {
        let window = i64::try_from(newest).unwrap_or(i64::MAX);
        self.run(GET, async |exclusive| {
            // The three queries are sent together and answered in one round trip; each is
            // limited to the user's own conversation by itself. They read the conversation as
            // one line, which it is unless its leaf ever jumped.
            let conn: &Conn = exclusive;
            let (mut for_conversation, mut for_messages, mut for_calls) = (conn, conn, conn);
            let conversation = conversations::table
                .filter(conversations::id.eq(id.as_uuid()))
                .filter(conversations::user_id.eq(user.as_uuid()))
                .select((
                    ConversationRow::as_select(),
                    conversations::leaf_id,
                    conversations::leaf_jumps,
                ))
                .load::<(ConversationRow, Option<Uuid>, i64)>(&mut for_conversation);
            let newest_ids = messages::table
                .inner_join(conversations::table)
                .filter(conversations::user_id.eq(user.as_uuid()))
                .filter(messages::conversation_id.eq(id.as_uuid()))
                .order(messages::sequence.desc())
                .limit(window);
            let rows = newest_ids
                .select(MessageRow::as_select())
                .load::<MessageRow>(&mut for_messages);
            // The calls are read by a statement of their own, which may see a few messages
            // written since the one above: a wider window still covers every message it read.
            let calls_window = newest_ids.limit(window.saturating_add(CALLS_WINDOW_MARGIN));
            let calls = tool_calls::table
                .filter(tool_calls::message_id.eq_any(calls_window.select(messages::id)))
                .select(ToolCallRow::as_select())
                .order((tool_calls::message_id, tool_calls::position))
                .load::<ToolCallRow>(&mut for_calls);
            let (conversation, rows, calls) = futures_util::try_join!(conversation, rows, calls)?;
            let Some((conversation, leaf, leaf_jumps)) = conversation.into_iter().next() else {
                return Ok(None);
            };
            let messages = match (leaf_jumps, leaf) {
                (0, _) | (_, None) => in_line(id, rows, calls)?,
                (_, Some(leaf)) => {
                    let leaf = MessageId::from_uuid(leaf);
                    branches::newest_on_branch(exclusive, id, leaf, newest).await?
                }
            };
            Ok(Some((Conversation::from(conversation), messages)))
        })
        .await
    }

    /// Up to `limit` messages of the current branch of the user's conversation after `after`,
    /// oldest first.
    pub async fn list_messages(
        &self,
        user: UserId,
        conversation: ConversationId,
        after: Option<MessageCursor>,
        limit: usize,
    ) -> Result<MessagesPage, StoreError> {
        self.run(LIST_MESSAGES, async |conn| {
            // Read as one line first: what every conversation that never branched is.
            let mut query = messages::table
                .inner_join(conversations::table)
                .filter(conversations::user_id.eq(user.as_uuid()))
                .filter(conversations::leaf_jumps.eq(0))
                .filter(messages::conversation_id.eq(conversation.as_uuid()))
                .select(MessageRow::as_select())
                .order(messages::sequence.asc())
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .into_boxed();
            if let Some(cursor) = after {
                // A cursor naming a message this conversation does not hold yields no rows.
                let earlier = diesel::alias!(messages as earlier);
                let cursor_sequence = earlier
                    .filter(earlier.field(messages::id).eq(*cursor.after.as_uuid()))
                    .filter(
                        earlier
                            .field(messages::conversation_id)
                            .eq(conversation.as_uuid()),
                    )
                    .select(earlier.field(messages::sequence))
                    .single_value();
                query = query.filter(messages::sequence.nullable().gt(cursor_sequence));
            }
            let rows = query.load::<MessageRow>(conn).await?;
            if !rows.is_empty() {
                let calls = tool_calls_of(conn, &rows).await?;
                return Ok(MessagesPage::Found(in_line(conversation, rows, calls)?));
            }
            // An empty page: the conversation may be missing, or branched, or read to its end.
            let leaf = conversations::table
                .filter(conversations::id.eq(conversation.as_uuid()))
                .filter(conversations::user_id.eq(user.as_uuid()))
                .select((conversations::leaf_id, conversations::leaf_jumps))
                .first::<(Option<Uuid>, i64)>(conn)
                .await
                .optional()?;
            let leaf = match leaf {
                None => return Ok(MessagesPage::NoConversation),
                Some((Some(leaf), jumps)) if jumps > 0 => MessageId::from_uuid(leaf),
                Some(_) => return Ok(MessagesPage::Found(Vec::new())),
            };
            let after = after.map(|cursor| cursor.after);
            Ok(
                match branches::branch_page(conn, conversation, leaf, after, limit).await? {
                    Some(page) => MessagesPage::Found(page),
                    None => MessagesPage::BranchChanged,
                },
            )
        })
        .await
    }

    /// Every message of the user's conversation, of every branch, in the order they were
    /// written, each with the message it follows; and the conversation's current leaf. `None`
    /// if the user has no such conversation.
    pub async fn every_message(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<Option<WholeConversation>, StoreError> {
        self.run(LIST_MESSAGES, async |conn| {
            let leaf = conversations::table
                .filter(conversations::id.eq(conversation.as_uuid()))
                .filter(conversations::user_id.eq(user.as_uuid()))
                .select(conversations::leaf_id)
                .first::<Option<Uuid>>(conn)
                .await
                .optional()?;
            let Some(leaf) = leaf else {
                return Ok(None);
            };
            let rows = messages::table
                .filter(messages::conversation_id.eq(conversation.as_uuid()))
                .select(MessageRow::as_select())
                .order(messages::sequence.asc())
                .load::<MessageRow>(conn)
                .await?;
            let parents: Vec<Option<MessageId>> = rows
                .iter()
                .map(|row| row.parent_id.map(MessageId::from_uuid))
                .collect();
            let calls = tool_calls_of(conn, &rows).await?;
            let messages = with_tool_calls(conversation, rows, calls)?;
            Ok(Some(WholeConversation {
                messages: messages.into_iter().zip(parents).collect(),
                leaf: leaf.map(MessageId::from_uuid),
            }))
        })
        .await
    }

    /// Gives the user's conversation the title the client chose, for good: the model will not
    /// replace it. The conversation as it now is, or `None` if the user has no such conversation.
    /// Its update time stays: renaming is not activity that reorders the user's list.
    pub async fn rename_conversation(
        &self,
        user: UserId,
        id: ConversationId,
        title: &Title,
    ) -> Result<Option<Conversation>, StoreError> {
        self.run(RENAME, async |conn| {
            let rows = fixed(
                "UPDATE conversations SET title = $3, title_source = 'client'
                 WHERE id = $1 AND user_id = $2
                 RETURNING id, title, created_at, updated_at",
            )
            .bind::<SqlUuid, _>(id.as_uuid())
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Text, _>(title.as_str())
            .load::<ConversationRow>(conn)
            .await?;
            Ok(rows.into_iter().next().map(Conversation::from))
        })
        .await
    }

    /// Whether the user's conversation still has the title derived from its first message: the
    /// one the model may replace.
    pub async fn has_derived_title(
        &self,
        user: UserId,
        id: ConversationId,
    ) -> Result<bool, StoreError> {
        self.run(TITLE_SOURCE, async |conn| {
            let derived = diesel::select(exists(
                conversations::table
                    .filter(conversations::id.eq(id.as_uuid()))
                    .filter(conversations::user_id.eq(user.as_uuid()))
                    .filter(conversations::title_source.eq("derived")),
            ))
            .get_result::<bool>(conn)
            .await?;
            Ok(derived)
        })
        .await
    }

    /// Gives the user's conversation the model's title, unless the client chose one meanwhile.
    /// Whether it did.
    pub async fn name_conversation(
        &self,
        user: UserId,
        id: ConversationId,
        title: &Title,
    ) -> Result<bool, StoreError> {
        self.run(RENAME, async |conn| {
            let named = fixed(
                "UPDATE conversations SET title = $3, title_source = 'model'
                 WHERE id = $1 AND user_id = $2 AND title_source = 'derived'",
            )
            .bind::<SqlUuid, _>(id.as_uuid())
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Text, _>(title.as_str())
            .execute(conn)
            .await?;
            Ok(named > 0)
        })
        .await
    }

    /// Deletes the conversation with its messages and their tool calls. `false` if the user had
    /// no such conversation.
    pub async fn delete_conversation(
        &self,
        user: UserId,
        id: ConversationId,
    ) -> Result<bool, StoreError> {
        self.run(DELETE, async |conn| {
            let deleted = diesel::delete(
                conversations::table
                    .filter(conversations::id.eq(id.as_uuid()))
                    .filter(conversations::user_id.eq(user.as_uuid())),
            )
            .execute(conn)
            .await?;
            Ok(deleted > 0)
        })
        .await
    }
}

/// A conversation's messages as one line: each follows the one before it, without siblings.
fn in_line(
    conversation: ConversationId,
    rows: Vec<MessageRow>,
    calls: Vec<ToolCallRow>,
) -> Result<Vec<BranchMessage>, StoreError> {
    let parents: Vec<Option<Uuid>> = rows.iter().map(|row| row.parent_id).collect();
    Ok(with_tool_calls(conversation, rows, calls)?
        .into_iter()
        .zip(parents)
        .map(|(message, parent)| BranchMessage {
            message,
            place: TreePlace::in_line(parent.map(MessageId::from_uuid)),
        })
        .collect())
}

/// Every message of a conversation, as an export writes it.
#[derive(Debug)]
pub struct WholeConversation {
    /// In the order they were written, each with the message it follows.
    pub messages: Vec<(Message, Option<MessageId>)>,
    pub leaf: Option<MessageId>,
}

/// A page of a conversation's messages, or why there is none.
#[derive(Debug)]
pub enum MessagesPage {
    /// Oldest first; empty past the end.
    Found(Vec<BranchMessage>),
    /// The user has no such conversation.
    NoConversation,
    /// The page's cursor is not on the conversation's current branch.
    BranchChanged,
}
