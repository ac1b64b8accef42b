//! Writes of a chat turn: the user's message when the turn starts, the reply when it ends.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Bool, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::sync::oneshot;

use super::{
    Conn, Operation, Store, StoreError,
    models::{NewToolCallRow, Stored},
    schema::{conversations, messages, tool_calls},
    statement::fixed,
};
use crate::domain::{
    Conversation, ConversationId, Message, MessageId, RecentMessage, Revision, Role, Title,
    ToolCall, ToolCallId, ToolCallStatus, UserId,
};

#[derive(QueryableByName)]
pub(super) struct RevisionRow {
    #[diesel(sql_type = BigInt)]
    pub revision: Revision,
}

/// Adds one message to a conversation and moves the conversation forward: its update time, its
/// title if it has none yet, and its revision, which becomes the message's sequence. The UPDATE
/// locks the conversation's row until the transaction ends, so concurrent writes to one
/// conversation take their sequences one after the other, in the order they commit. With `$9`,
/// only while the revision is below that. With `$10`, a user's message: refused while the
/// conversation awaits tool results the client runs (until they are overdue at `$3`), and ending
/// the wait otherwise. Returns the new revision, or no row if the user has no such conversation
/// (or it is full, or waits); then nothing is written.
const APPEND_MESSAGE: &str = "WITH touched AS (
         UPDATE conversations
         SET updated_at = GREATEST(updated_at, $3),
             title = CASE WHEN title = '' THEN $4 ELSE title END,
             revision = revision + 1,
             awaiting_message = CASE WHEN $10 THEN NULL ELSE awaiting_message END,
             awaiting_calls = CASE WHEN $10 THEN NULL ELSE awaiting_calls END,
             awaiting_until = CASE WHEN $10 THEN NULL ELSE awaiting_until END
         WHERE id = $1 AND user_id = $2 AND ($9::int8 IS NULL OR revision < $9)
           AND (NOT $10 OR awaiting_until IS NULL OR awaiting_until <= $3)
         RETURNING id, revision
     ), inserted AS (
         INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
         SELECT $5, id, $6, $7, $8, $3, revision FROM touched
     )
     SELECT revision FROM touched";

/// A conversation's newest messages before a sequence, newest first, each assistant message
/// with its tool calls in the order the model made them.
const MESSAGES_BEFORE: &str = "SELECT m.id, m.role, m.content,
         CASE WHEN m.role = 'assistant' THEN (
             SELECT jsonb_agg(jsonb_build_object(
                 'id', t.id, 'provider_call_id', t.provider_call_id, 'name', t.name,
                 'arguments', t.arguments, 'status', t.status, 'result', t.result
             ) ORDER BY t.position)
             FROM tool_calls t WHERE t.message_id = m.id
         ) END AS tool_calls
     FROM messages m JOIN conversations c ON c.id = m.conversation_id
     WHERE c.user_id = $1 AND m.conversation_id = $2 AND m.sequence < $3
     ORDER BY m.sequence DESC
     LIMIT $4";

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

/// A tool call as [`MESSAGES_BEFORE`] gives it.
#[derive(serde::Deserialize)]
struct ContextToolCall {
    id: uuid::Uuid,
    provider_call_id: String,
    name: String,
    arguments: serde_json::Value,
    status: String,
    result: Option<serde_json::Value>,
}

impl ContextRow {
    fn into_recent(self) -> Result<RecentMessage, StoreError> {
        let calls: Vec<ContextToolCall> = match self.tool_calls {
            None => Vec::new(),
            Some(json) => serde_json::from_value(json).map_err(|e| {
                StoreError::Corrupt(format!("the tool calls of message {}: {e}", self.id))
            })?,
        };
        let tool_calls = calls
            .into_iter()
            .map(|call| {
                let status = call.status.parse::<ToolCallStatus>().map_err(|_| {
                    StoreError::Corrupt(format!(
                        "tool call {} has status {:?}",
                        call.id, call.status
                    ))
                })?;
                Ok(ToolCall {
                    id: ToolCallId::from_uuid(call.id),
                    provider_call_id: call.provider_call_id,
                    name: call.name,
                    arguments: call.arguments,
                    status,
                    result: call.result,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(RecentMessage {
            id: MessageId::from_uuid(self.id),
            role: self.role.0,
            content: self.content,
            tool_calls,
        })
    }
}

const START_CONVERSATION: Operation = Operation::new("INSERT", "INSERT conversations messages");
const APPEND: Operation = Operation::new("UPDATE", "UPDATE conversations INSERT messages");
const BEFORE: Operation = Operation::new("SELECT", "SELECT messages");
const TOOL_RESULT: Operation = Operation::new("UPDATE", "UPDATE tool_calls");
const END_ROUND: Operation = Operation::new("UPDATE", "UPDATE conversations messages");

impl Store {
    /// Creates the conversation together with its first message, unless the user already has
    /// `max_conversations`. Returns the message's sequence, 1, or `None` if the user has as many
    /// as they may; [`StoreError::UnknownUser`] if the user is gone. `placed` hears the answer
    /// before the commit, as for [`Store::append_user_message`].
    pub async fn start_conversation(
        &self,
        user: UserId,
        conversation: &Conversation,
        first: &Message,
        max_conversations: i64,
        placed: oneshot::Sender<Option<Revision>>,
    ) -> Result<Option<Revision>, StoreError> {
        self.run_transaction_by_hand(START_CONVERSATION, async |conn| {
            let conn: &Conn = conn;
            // Sent together, in this order: BEGIN, the write, COMMIT (see `begin`).
            let write = async {
                let created =
                    insert_conversation(conn, user, conversation, first, max_conversations).await?;
                let sequence = created.then_some(1);
                let _ = placed.send(sequence);
                Ok::<_, diesel::result::Error>(sequence)
            };
            let ((), sequence, ()) = futures_util::try_join!(begin(conn), write, commit(conn))?;
            Ok(sequence)
        })
        .await
    }

    /// Adds the user's message to one of their conversations, naming the conversation
    /// `title_if_unnamed` if it has no title yet, while its revision is below `max_revision` and
    /// it awaits no tool results. Returns the new revision, which is the message's sequence, once
    /// committed; else nothing is written, and the conversation's state as it was locked says
    /// why (`None`: the user has no such conversation).
    ///
    /// `placed` hears the same answer as soon as the conversation's row is locked, before the
    /// message is written and committed: from then on nobody else can write to the
    /// conversation or delete it, so the answer stays true.
    pub async fn append_user_message(
        &self,
        user: UserId,
        message: &Message,
        title_if_unnamed: &Title,
        max_revision: Revision,
        placed: oneshot::Sender<Option<Revision>>,
    ) -> Result<Result<Revision, Option<ConversationState>>, StoreError> {
        let title = title_if_unnamed.as_str();
        self.run_transaction_by_hand(APPEND, async |conn| {
            let conn: &Conn = conn;
            // Sent together, in this order: BEGIN, the lock, the write, COMMIT (see `begin`).
            let lock = async {
                let state = lock_conversation(conn, user, message.conversation_id).await?;
                let next = state
                    .filter(|state| state.revision < max_revision)
                    .filter(|state| !state.awaits_tool_results(message.create_time))
                    .map(|state| state.revision + 1);
                let _ = placed.send(next);
                Ok::<_, diesel::result::Error>((next, state))
            };
            let write = append_message(conn, user, message, title, Some(max_revision), true);
            let ((), (expected, state), appended, ()) =
                futures_util::try_join!(begin(conn), lock, write, commit(conn))?;
            if appended != expected {
                // Only if the statements ran out of order, which `begin` rules out.
                return Err(StoreError::Corrupt(format!(
                    "the message was written at {appended:?}, not at {expected:?} as its lock said"
                )));
            }
            Ok(appended.ok_or(state))
        })
        .await
    }

    /// The newest `limit` of the messages before `sequence` in the user's conversation, oldest
    /// first, with their tool calls and results: the model's context for the message at
    /// `sequence`. Every message before it was committed before it was (see
    /// [`APPEND_MESSAGE`]), so nothing is missing and nothing later is included.
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

    /// Records what became of a tool call of one of the user's messages, unless it has a result
    /// already. `false` if there is no such call any more (its conversation was deleted), or it
    /// had a result.
    pub async fn store_tool_result(
        &self,
        user: UserId,
        call: ToolCallId,
        status: ToolCallStatus,
        result: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        self.run(TOOL_RESULT, async |conn| {
            let updated = fixed(
                "UPDATE tool_calls SET status = $3, result = $4
                 FROM messages, conversations
                 WHERE tool_calls.id = $1 AND tool_calls.status = 'requested'
                   AND messages.id = tool_calls.message_id
                   AND conversations.id = messages.conversation_id AND conversations.user_id = $2",
            )
            .bind::<SqlUuid, _>(call.as_uuid())
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Text, _>(<&str>::from(status))
            .bind::<Jsonb, _>(result)
            .execute(conn)
            .await?;
            Ok(updated > 0)
        })
        .await
    }

    /// Ends a round of tool calls that was cut short: the conversation's revision moves on, so
    /// that no replica takes what it remembers of the round (calls without their results) for
    /// current; and if the round was `awaiting` the client's results, the wait ends and the
    /// message is marked cancelled, so that the conversation takes messages again at once.
    pub async fn end_cut_round(
        &self,
        user: UserId,
        conversation: ConversationId,
        awaiting: Option<MessageId>,
    ) -> Result<(), StoreError> {
        self.run(END_ROUND, async |conn| {
            conn.transaction::<(), StoreError, _>(async |conn| {
                let waited = awaiting.map(|id| *id.as_uuid());
                let ended = fixed(
                    "UPDATE conversations
                     SET revision = revision + 1,
                         awaiting_message = CASE WHEN awaiting_message = $3 THEN NULL ELSE awaiting_message END,
                         awaiting_calls = CASE WHEN awaiting_message = $3 THEN NULL ELSE awaiting_calls END,
                         awaiting_until = CASE WHEN awaiting_message = $3 THEN NULL ELSE awaiting_until END
                     WHERE id = $1 AND user_id = $2",
                )
                .bind::<SqlUuid, _>(conversation.as_uuid())
                .bind::<SqlUuid, _>(user.as_uuid())
                .bind::<Nullable<SqlUuid>, _>(waited)
                .execute(conn)
                .await?;
                if let (Some(message), 1) = (waited, ended) {
                    diesel::update(
                        messages::table
                            .filter(messages::id.eq(message))
                            .filter(messages::status.eq(
                                <&str>::from(crate::domain::MessageStatus::AwaitingToolResults),
                            )),
                    )
                    .set(
                        messages::status
                            .eq(<&str>::from(crate::domain::MessageStatus::Cancelled)),
                    )
                    .execute(conn)
                    .await?;
                }
                Ok(())
            })
            .await
        })
        .await
    }

    /// Stores the assistant's reply with its tool calls and moves the conversation's update
    /// time forward, atomically, and returns the new revision. With `awaiting`, the reply awaits
    /// the results of those of its calls that the client runs, and the conversation takes no
    /// user message meanwhile. `None` if the conversation was deleted meanwhile, in which case
    /// nothing is written.
    pub async fn store_reply(
        &self,
        user: UserId,
        reply: &Message,
        awaiting: Option<&Awaiting>,
    ) -> Result<Option<Revision>, StoreError> {
        let operation = Operation::new("INSERT", "INSERT messages tool_calls");
        self.run(operation, async |conn| {
            if reply.tool_calls.is_empty() {
                // The common case in one statement, atomic by itself: one round trip, not four.
                return Ok(append_message(&*conn, user, reply, "", None, false).await?);
            }
            conn.transaction::<Option<Revision>, StoreError, _>(async |conn| {
                let Some(revision) = append_message(&*conn, user, reply, "", None, false).await?
                else {
                    return Ok(None);
                };
                if let Some(awaiting) = awaiting {
                    diesel::update(conversations::table)
                        .filter(conversations::id.eq(reply.conversation_id.as_uuid()))
                        .set((
                            conversations::awaiting_message.eq(Some(reply.id.as_uuid())),
                            conversations::awaiting_calls.eq(Some(&awaiting.calls)),
                            conversations::awaiting_until.eq(Some(awaiting.until)),
                        ))
                        .execute(conn)
                        .await?;
                }
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
                        result: call.result.as_ref(),
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
    mut conn: &Conn,
    user: UserId,
    message: &Message,
    title_if_unnamed: &str,
    max_revision: Option<Revision>,
    from_user: bool,
) -> QueryResult<Option<Revision>> {
    let row = fixed(APPEND_MESSAGE)
        .bind::<SqlUuid, _>(message.conversation_id.as_uuid())
        .bind::<SqlUuid, _>(user.as_uuid())
        .bind::<Timestamptz, _>(message.create_time)
        .bind::<Text, _>(title_if_unnamed)
        .bind::<SqlUuid, _>(message.id.as_uuid())
        .bind::<Text, _>(<&str>::from(message.role))
        .bind::<Text, _>(&message.content)
        .bind::<Text, _>(<&str>::from(message.status))
        .bind::<Nullable<BigInt>, _>(max_revision)
        .bind::<Bool, _>(from_user)
        .get_result::<RevisionRow>(&mut conn)
        .await
        .optional()?;
    Ok(row.map(|row| row.revision))
}

/// The conversation with its first message, in one statement, unless the user already has
/// `max_conversations`. Whether it was created.
async fn insert_conversation(
    mut conn: &Conn,
    user: UserId,
    conversation: &Conversation,
    first: &Message,
    max_conversations: i64,
) -> QueryResult<bool> {
    let created = fixed(
        "WITH created AS (
             INSERT INTO conversations (id, user_id, title, created_at, updated_at, revision)
             SELECT $1, $2, $3, $4, $4, 1
             WHERE (SELECT count(*) FROM conversations WHERE user_id = $2) < $9
             RETURNING id
         )
         INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
         SELECT $5, id, $6, $7, $8, $4, 1 FROM created",
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
    .execute(&mut conn)
    .await?;
    Ok(created > 0)
}

/// BEGIN. Polled together with the transaction's statements and its COMMIT, it travels with
/// them, so that the transaction costs no round trip of its own: a connection sends requests in
/// the order they are first polled, and `try_join!` polls in the order it is given. That holds
/// for a statement only once it is prepared on the connection; before, its first poll sends
/// only the preparation, and a COMMIT behind it would overtake it. So every connection prepares
/// these statements when it opens ([`prepare_turn_statements`]).
async fn begin(mut conn: &Conn) -> QueryResult<()> {
    conn.batch_execute("BEGIN").await
}

/// Locks the user's conversation's row until the transaction ends (the lock its UPDATE would
/// take, which a DELETE waits for), and returns its state; `None` if the user has no such
/// conversation.
pub(super) async fn lock_conversation(
    mut conn: &Conn,
    user: UserId,
    conversation: ConversationId,
) -> QueryResult<Option<ConversationState>> {
    let state = conversations::table
        .filter(conversations::id.eq(conversation.as_uuid()))
        .filter(conversations::user_id.eq(user.as_uuid()))
        .select((conversations::revision, conversations::awaiting_until))
        .for_no_key_update()
        .first::<(Revision, Option<DateTime<Utc>>)>(&mut conn)
        .await
        .optional()?;
    Ok(state.map(|(revision, awaiting_until)| ConversationState {
        revision,
        awaiting_until,
    }))
}

/// What a reply that called the client's tools waits for.
#[derive(Debug, Clone)]
pub struct Awaiting {
    /// The provider's ids of the calls the client is to answer.
    pub calls: Vec<String>,
    pub until: DateTime<Utc>,
}

/// Where a conversation stands, as a write to it needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationState {
    pub revision: Revision,
    /// Until when a reply in it awaits results of tools the client runs, if one does.
    pub awaiting_until: Option<DateTime<Utc>>,
}

impl ConversationState {
    /// Whether a user's message sent at `at` must wait for tool results first.
    pub fn awaits_tool_results(&self, at: DateTime<Utc>) -> bool {
        self.awaiting_until.is_some_and(|until| until > at)
    }
}

async fn commit(mut conn: &Conn) -> QueryResult<()> {
    conn.batch_execute("COMMIT").await
}

/// Prepares the statements that travel in one flight with their transaction (see [`begin`]),
/// by running each once where it can find nothing to change.
pub(super) async fn prepare_turn_statements(conn: &Conn) -> QueryResult<()> {
    let nobody = UserId::from_uuid(uuid::Uuid::nil());
    let nowhere = ConversationId::from_uuid(uuid::Uuid::nil());
    let message = Message {
        id: MessageId::from_uuid(uuid::Uuid::nil()),
        conversation_id: nowhere,
        role: Role::User,
        content: String::new(),
        status: crate::domain::MessageStatus::Complete,
        create_time: crate::domain::now(),
        tool_calls: Vec::new(),
    };
    let conversation = Conversation {
        id: nowhere,
        title: Title::from_stored(String::new()),
        create_time: message.create_time,
        update_time: message.create_time,
    };
    lock_conversation(conn, nobody, nowhere).await?;
    append_message(conn, nobody, &message, "", Some(0), true).await?;
    // No user may have fewer than 0 conversations: nothing is inserted.
    insert_conversation(conn, nobody, &conversation, &message, 0).await?;
    Ok(())
}
