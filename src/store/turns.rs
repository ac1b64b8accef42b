//! What the writes of a turn share: the transaction they travel in, the conversation's lock,
//! the statements prepared ahead, and the results of the tools a reply runs.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Integer, Jsonb, Nullable, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};

use super::{
    Conn, Operation, Store, StoreError,
    schema::{conversations, messages},
    statement::{fixed, statement},
};
use crate::domain::{ConversationId, MessageId, Revision, ToolCallId, ToolCallStatus, UserId};

#[derive(QueryableByName)]
pub(super) struct RevisionRow {
    #[diesel(sql_type = BigInt)]
    pub revision: Revision,
}

const TOOL_RESULT: Operation = Operation::new("UPDATE", "UPDATE tool_calls");
const END_ROUND: Operation = Operation::new("UPDATE", "UPDATE conversations messages");

impl Store {
    /// Records what became of a tool call of one of the user's messages, unless it has a result
    /// already. `false` if there is no such call any more (its conversation was deleted), or it
    /// had a result.
    pub async fn store_tool_result(
        &self,
        user: UserId,
        call: ToolCallId,
        status: ToolCallStatus,
        result: &serde_json::Value,
        answer_index: Option<i32>,
    ) -> Result<bool, StoreError> {
        self.run(TOOL_RESULT, async |conn| {
            let updated = statement!(
                "UPDATE tool_calls SET status = $3, result = $4, answer_index = $5
                 FROM messages, conversations
                 WHERE tool_calls.id = $1 AND tool_calls.status = 'requested'
                   AND messages.id = tool_calls.message_id
                   AND conversations.id = messages.conversation_id AND conversations.user_id = $2",
            )
            .bind::<SqlUuid, _>(call.as_uuid())
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Text, _>(<&str>::from(status))
            .bind::<Jsonb, _>(result)
            .bind::<Nullable<Integer>, _>(answer_index)
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
}

/// BEGIN. Polled together with the transaction's statements and its COMMIT, it travels with
/// them, so that the transaction costs no round trip of its own: a connection sends requests in
/// the order they are first polled, and `try_join!` polls in the order it is given. That holds
/// for a statement only once it is prepared on the connection; before, its first poll sends
/// only the preparation, and a COMMIT behind it would overtake it. So every connection prepares
/// these statements when it opens ([`prepare_turn_statements`]).
pub(super) async fn begin(mut conn: &Conn) -> QueryResult<()> {
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
        .select((
            conversations::revision,
            conversations::awaiting_until,
            conversations::leaf_id,
            conversations::leaf_jumps,
        ))
        .for_no_key_update()
        .first::<(Revision, Option<DateTime<Utc>>, Option<uuid::Uuid>, i64)>(&mut conn)
        .await
        .optional()?;
    Ok(state.map(
        |(revision, awaiting_until, leaf, leaf_jumps)| ConversationState {
            revision,
            awaiting_until,
            leaf: leaf.map(MessageId::from_uuid),
            leaf_jumps,
        },
    ))
}

pub(super) async fn commit(mut conn: &Conn) -> QueryResult<()> {
    conn.batch_execute("COMMIT").await
}

/// Where a conversation stands, as a write to it needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationState {
    pub revision: Revision,
    /// Until when a reply in it awaits results of tools the client runs, if one does.
    pub awaiting_until: Option<DateTime<Utc>>,
    /// Its current leaf: the message a new one goes on from.
    pub leaf: Option<MessageId>,
    /// How many times its leaf jumped to another branch: 0 while it is one line.
    pub leaf_jumps: i64,
}

impl ConversationState {
    /// Whether a user's message sent at `at` must wait for tool results first.
    pub fn awaits_tool_results(&self, at: DateTime<Utc>) -> bool {
        self.awaiting_until.is_some_and(|until| until > at)
    }
}
