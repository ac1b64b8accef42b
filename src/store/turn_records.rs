//! Turns as records: found by id or by the client's request id, generated again after a
//! failure, ended, replayed, and taken over when the replica generating them stops.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{
        Array, BigInt, Bytea, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
    },
};
use diesel_async::RunQueryDsl;

use super::{
    Operation, Store, StoreError, TurnEnding,
    context::JsonToolCall,
    models::{Stored, stored_usage},
    statement::fixed,
};
use crate::domain::{
    Attempt, ConversationId, Message, MessageId, MessageStatus, Revision, Role, TurnId, TurnState,
    UserId,
};

/// A turn as stored, with the user message it answers.
#[derive(Debug, Clone)]
pub struct TurnRecord {
    pub id: TurnId,
    pub conversation_id: ConversationId,
    pub user_message: Message,
    /// The message the user message follows; `None` for a first message.
    pub parent: Option<MessageId>,
    /// The user message's place in its conversation.
    pub sequence: Revision,
    pub request_hash: Option<Vec<u8>>,
    pub state: TurnState,
    pub attempt: Attempt,
    /// How it ended, as the turn's use case wrote it.
    pub outcome: Option<serde_json::Value>,
}

impl TurnRecord {
    /// Whether the turn regenerates its message's reply, rather than being the turn the message
    /// started.
    pub fn regenerates(&self) -> bool {
        self.id.as_uuid() != self.user_message.id.as_uuid()
    }
}

/// A reply of a turn as stored, for replaying the turn's events.
#[derive(Debug, Clone)]
pub struct StoredReply {
    pub message: Message,
    /// The length in bytes of each piece its text was streamed in.
    pub deltas: Option<Vec<i32>>,
    /// For each of its calls, in order, its place among the results that were sent: negative
    /// for a call stored with its outcome, `None` for one whose result did not come in the turn.
    pub answer_order: Vec<Option<i32>>,
}

const FIND: Operation = Operation::new("SELECT", "SELECT turns");
const RETRY: Operation = Operation::new("UPDATE", "UPDATE turns");
const END: Operation = Operation::new("UPDATE", "UPDATE turns");
const REPLIES: Operation = Operation::new("SELECT", "SELECT messages");

/// A turn and its user message, found as the statement that uses it says (`$1` is the user).
macro_rules! find_turn {
    ($where:literal) => {
        concat!(
            "SELECT t.id, t.conversation_id, t.request_hash, t.state, t.attempt, t.outcome,
                 m.id AS message_id, m.parent_id, m.content, m.created_at, m.sequence
             FROM turns t JOIN messages m ON m.id = COALESCE(t.message_id, t.id)
             WHERE t.user_id = $1 AND ",
            $where
        )
    };
}

/// The turn whose id is `$2`.
const FIND_TURN: &str = find_turn!("t.id = $2");

/// The turn started by the request with the client's id `$2`.
const FIND_TURN_BY_REQUEST: &str = find_turn!("t.request_key = $2");

/// The newest turn answering user message `$2`: the one the message started, or the last that
/// regenerated its reply.
const FIND_TURN_ANSWERING: &str = find_turn!(
    "(t.id = $2 OR t.message_id = $2)
     ORDER BY t.message_id IS NOT NULL DESC, t.created_at DESC
     LIMIT 1"
);

#[derive(QueryableByName)]
struct TurnRow {
    #[diesel(sql_type = SqlUuid)]
    id: uuid::Uuid,
    #[diesel(sql_type = SqlUuid)]
    conversation_id: uuid::Uuid,
    #[diesel(sql_type = Nullable<Bytea>)]
    request_hash: Option<Vec<u8>>,
    #[diesel(sql_type = Text)]
    state: Stored<TurnState>,
    #[diesel(sql_type = Integer)]
    attempt: i32,
    #[diesel(sql_type = Nullable<Jsonb>)]
    outcome: Option<serde_json::Value>,
    #[diesel(sql_type = SqlUuid)]
    message_id: uuid::Uuid,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    parent_id: Option<uuid::Uuid>,
    #[diesel(sql_type = Text)]
    content: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    sequence: Revision,
}

impl TurnRow {
    fn into_record(self) -> Result<TurnRecord, StoreError> {
        let attempt = stored_attempt(self.id, self.attempt)?;
        let conversation_id = ConversationId::from_uuid(self.conversation_id);
        Ok(TurnRecord {
            id: TurnId::from_uuid(self.id),
            conversation_id,
            parent: self.parent_id.map(MessageId::from_uuid),
            user_message: Message {
                id: MessageId::from_uuid(self.message_id),
                conversation_id,
                role: Role::User,
                content: self.content,
                status: MessageStatus::Complete,
                create_time: self.created_at,
                tool_calls: Vec::new(),
                model: None,
                usage: None,
            },
            sequence: self.sequence,
            request_hash: self.request_hash,
            state: self.state.0,
            attempt,
            outcome: self.outcome,
        })
    }
}

#[derive(QueryableByName)]
struct AttemptRow {
    #[diesel(sql_type = Integer)]
    attempt: i32,
}

#[derive(QueryableByName)]
struct ReplyRow {
    #[diesel(sql_type = SqlUuid)]
    id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    content: String,
    #[diesel(sql_type = Text)]
    status: Stored<MessageStatus>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Array<Integer>>)]
    deltas: Option<Vec<i32>>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    tool_calls: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Text>)]
    model: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    usage: Option<serde_json::Value>,
}

impl Store {
    /// The user's turn `turn`, if there is one.
    pub async fn find_turn(
        &self,
        user: UserId,
        turn: TurnId,
    ) -> Result<Option<TurnRecord>, StoreError> {
        self.find_turn_where(user, FIND_TURN, *turn.as_uuid()).await
    }

    /// The user's newest turn answering `message`, if there is one: the one the message
    /// started, or the last that regenerated its reply.
    pub async fn find_turn_answering(
        &self,
        user: UserId,
        message: MessageId,
    ) -> Result<Option<TurnRecord>, StoreError> {
        self.find_turn_where(user, FIND_TURN_ANSWERING, *message.as_uuid())
            .await
    }

    /// The user's turn started by the request with the client's id `key`, if there is one.
    pub async fn find_turn_by_request(
        &self,
        user: UserId,
        key: &str,
    ) -> Result<Option<TurnRecord>, StoreError> {
        self.run(FIND, async |conn| {
            let row = fixed(FIND_TURN_BY_REQUEST)
                .bind::<SqlUuid, _>(user.as_uuid())
                .bind::<Text, _>(key)
                .get_result::<TurnRow>(conn)
                .await
                .optional()?;
            row.map(TurnRow::into_record).transpose()
        })
        .await
    }

    /// A turn found by `statement`, whose `$2` is `id`.
    async fn find_turn_where(
        &self,
        user: UserId,
        statement: &'static str,
        id: uuid::Uuid,
    ) -> Result<Option<TurnRecord>, StoreError> {
        self.run(FIND, async |conn| {
            let row = fixed(statement)
                .bind::<SqlUuid, _>(user.as_uuid())
                .bind::<SqlUuid, _>(id)
                .get_result::<TurnRow>(conn)
                .await
                .optional()?;
            row.map(TurnRow::into_record).transpose()
        })
        .await
    }

    /// Takes a turn that failed or was interrupted at `attempt` to generate it again on
    /// `replica`. The new attempt, or `None` if the turn is no longer at that attempt in such a
    /// state (another replica took it first).
    pub async fn retry_turn(
        &self,
        user: UserId,
        turn: TurnId,
        attempt: Attempt,
        replica: uuid::Uuid,
    ) -> Result<Option<Attempt>, StoreError> {
        self.run(RETRY, async |conn| {
            let row = fixed(
                "UPDATE turns SET state = 'generating', attempt = attempt + 1, replica = $4,
                     outcome = NULL, ended_at = NULL
                 WHERE id = $1 AND user_id = $2 AND attempt = $3
                   AND state IN ('failed', 'interrupted')
                 RETURNING attempt",
            )
            .bind::<SqlUuid, _>(turn.as_uuid())
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Integer, _>(attempt.get())
            .bind::<SqlUuid, _>(replica)
            .get_result::<AttemptRow>(conn)
            .await
            .optional()?;
            Ok(row.and_then(|row| Attempt::new(row.attempt)))
        })
        .await
    }

    /// Records how the turn's `attempt` ended, if it is still in state `from`: a replica that
    /// took it over for a lapsed lease may have ended it first; the replica that took it over
    /// settles it from `Interrupted`.
    pub async fn end_turn(
        &self,
        turn: TurnId,
        attempt: Attempt,
        from: TurnState,
        end: TurnEnding<'_>,
    ) -> Result<(), StoreError> {
        self.run(END, async |conn| {
            fixed(
                "UPDATE turns SET state = $3, outcome = $4, ended_at = coalesce(ended_at, now())
                 WHERE id = $1 AND attempt = $2 AND state = $5",
            )
            .bind::<SqlUuid, _>(turn.as_uuid())
            .bind::<Integer, _>(attempt.get())
            .bind::<Text, _>(<&str>::from(end.state))
            .bind::<Jsonb, _>(end.outcome)
            .bind::<Text, _>(<&str>::from(from))
            .execute(conn)
            .await?;
            Ok(())
        })
        .await
    }

    /// The replies stored by the turn's `attempt`, in order, with their tool calls.
    pub async fn turn_replies(
        &self,
        user: UserId,
        record: &TurnRecord,
    ) -> Result<Vec<StoredReply>, StoreError> {
        self.run(REPLIES, async |conn| {
            let rows = fixed(
                "SELECT m.id, m.content, m.status, m.created_at, m.deltas,
                     (SELECT jsonb_agg(jsonb_build_object(
                         'id', t.id, 'provider_call_id', t.provider_call_id, 'name', t.name,
                         'arguments', t.arguments, 'status', t.status, 'result', t.result,
                         'answer_index', t.answer_index
                      ) ORDER BY t.position)
                      FROM tool_calls t WHERE t.message_id = m.id) AS tool_calls,
                     m.model, m.usage
                 FROM messages m JOIN conversations c ON c.id = m.conversation_id
                 WHERE c.user_id = $1 AND m.conversation_id = $2 AND m.sequence > $3
                   AND m.turn_id = $4 AND m.turn_attempt = $5
                 ORDER BY m.sequence",
            )
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<SqlUuid, _>(record.conversation_id.as_uuid())
            .bind::<BigInt, _>(record.sequence)
            .bind::<SqlUuid, _>(record.id.as_uuid())
            .bind::<Integer, _>(record.attempt.get())
            .load::<ReplyRow>(conn)
            .await?;
            rows.into_iter()
                .map(|row| stored_reply(row, record.conversation_id))
                .collect()
        })
        .await
    }

    /// Whether the user wrote in the conversation after the message at `sequence`.
    pub async fn has_later_user_message(
        &self,
        user: UserId,
        conversation: ConversationId,
        sequence: Revision,
    ) -> Result<bool, StoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            later: bool,
        }
        self.run(FIND, async |conn| {
            let row = fixed(
                "SELECT EXISTS (
                     SELECT 1 FROM messages m JOIN conversations c ON c.id = m.conversation_id
                     WHERE c.user_id = $1 AND m.conversation_id = $2 AND m.sequence > $3
                       AND m.role = 'user'
                 ) AS later",
            )
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<SqlUuid, _>(conversation.as_uuid())
            .bind::<BigInt, _>(sequence)
            .get_result::<Row>(conn)
            .await?;
            Ok(row.later)
        })
        .await
    }
}

/// A turn's attempt as stored; the table's check keeps it at 1 or more.
pub(super) fn stored_attempt(turn: uuid::Uuid, attempt: i32) -> Result<Attempt, StoreError> {
    Attempt::new(attempt)
        .ok_or_else(|| StoreError::Corrupt(format!("turn {turn} has attempt {attempt}")))
}

fn stored_reply(row: ReplyRow, conversation_id: ConversationId) -> Result<StoredReply, StoreError> {
    let calls = JsonToolCall::parse_all(row.id, row.tool_calls)?;
    let answer_order = calls.iter().map(|call| call.answer_index).collect();
    let tool_calls = calls
        .into_iter()
        .map(JsonToolCall::into_tool_call)
        .collect::<Result<_, StoreError>>()?;
    Ok(StoredReply {
        message: Message {
            id: MessageId::from_uuid(row.id),
            conversation_id,
            role: Role::Assistant,
            content: row.content,
            status: row.status.0,
            create_time: row.created_at,
            tool_calls,
            model: row.model,
            usage: stored_usage(row.usage),
        },
        deltas: row.deltas,
        answer_order,
    })
}
