//! Another reply to a user's message: the conversation's leaf goes back to the message, and a
//! turn of its own starts, whose reply becomes a sibling of the replies before it.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Bytea, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::RunQueryDsl;
use tokio::sync::oneshot;

use super::{
    Conn, Operation, Store, StoreError,
    budgets::BudgetColumns,
    context::{JsonContextMessage, tool_calls_json},
    statement::statement,
    turns::{begin, commit},
};
use crate::domain::{
    Budget, BudgetRefusal, ConversationId, Message, MessageId, MessageStatus, RecentMessage,
    Revision, Role, TurnId, UserId,
};

const REGENERATE: Operation = Operation::new("UPDATE", "UPDATE conversations INSERT turns");

/// Starts turn `$8` on replica `$9`, with the client's request id and hash `$4`, `$5`, to answer
/// the user's message `$2` again, at `$3`: the message becomes its conversation's leaf (a jump,
/// unless it was the leaf), so that the reply follows it. Answers the message and the model's
/// context before it: the newest `$10` messages of the path up from its parent (`context`,
/// oldest first), read while the conversation's row is locked, as every write to it locks it
/// first. So the model is asked after this one statement, and its commit travels with it.
///
/// Refused (`refusal`), with nothing written, when:
/// - the request id is taken (`key_taken`): the request is a retry, whatever else holds now;
/// - the user has no such message (`missing`), or it is not a user's (`not_user`);
/// - a reply in the conversation awaits the client's tool results (`awaiting`, until
///   `awaiting_until`), or the conversation holds `$6` revisions (`full`);
/// - a turn on the path from the root to the message is still generating
///   (`branch_generating`): its reply would land beside or below the new one;
/// - `$7` messages follow the message already (`siblings_full`);
/// - the user's budget refuses the turn (`budget`; [`budget_ctes!`], the service's default
///   being `$11` tokens, `$12` cost, in `$13` periods), which it takes otherwise.
const REGENERATE_REPLY: &str = concat!(
    "WITH RECURSIVE locked AS MATERIALIZED (
         SELECT c.id, c.revision, c.awaiting_until FROM conversations c
         WHERE c.user_id = $1 AND c.id = (SELECT conversation_id FROM messages WHERE id = $2)
         FOR NO KEY UPDATE
     ), asked AS MATERIALIZED (
         SELECT m.id, m.conversation_id, m.parent_id, m.depth, m.role, m.content, m.created_at
         FROM messages m JOIN locked l ON l.id = m.conversation_id
         WHERE m.id = $2
     ), above (id, parent_id) AS (
         SELECT id, parent_id FROM asked
         UNION ALL
         SELECT m.id, m.parent_id FROM messages m JOIN above a ON m.id = a.parent_id
     ), refusal AS MATERIALIZED (
         SELECT CASE
             WHEN $4::text IS NOT NULL
                  AND EXISTS (SELECT 1 FROM turns WHERE user_id = $1 AND request_key = $4)
                 THEN 'key_taken'
             WHEN NOT EXISTS (SELECT 1 FROM asked) THEN 'missing'
             WHEN (SELECT role FROM asked) <> 'user' THEN 'not_user'
             WHEN (SELECT awaiting_until FROM locked) > $3 THEN 'awaiting'
             WHEN (SELECT revision FROM locked) >= $6 THEN 'full'
             WHEN EXISTS (SELECT 1 FROM above a JOIN turns t ON t.id = a.id
                          WHERE t.state = 'generating')
               OR EXISTS (SELECT 1 FROM above a JOIN turns t ON t.message_id = a.id
                          WHERE t.state = 'generating') THEN 'branch_generating'
             WHEN (SELECT count(*) FROM messages m, asked
                   WHERE m.conversation_id = asked.conversation_id
                     AND m.parent_id = asked.id) >= $7 THEN 'siblings_full'
         END AS reason
     ), ",
    budget_ctes!(
        "$1",
        "$11",
        "$12",
        "$13",
        "$8",
        "$3",
        "(SELECT reason FROM refusal) IS NULL"
    ),
    ", moved AS (
         UPDATE conversations c
         SET updated_at = GREATEST(c.updated_at, $3),
             leaf_jumps = c.leaf_jumps + CASE WHEN c.leaf_id IS DISTINCT FROM $2 THEN 1 ELSE 0 END,
             leaf_id = $2,
             leaf_depth = (SELECT depth FROM asked)
         FROM locked l
         WHERE c.id = l.id AND EXISTS (SELECT 1 FROM asked)
           AND (SELECT reason FROM refusal) IS NULL AND (SELECT refusal FROM verdict) IS NULL
         RETURNING c.id, c.leaf_jumps
     ), started AS (
         INSERT INTO turns (id, user_id, conversation_id, message_id, request_key, request_hash,
                            replica, created_at, leaf_jumps)
         SELECT $8, $1, id, $2, $4, $5, $9, $3, leaf_jumps FROM moved
     ), path (id, parent_id, role, content, steps) AS (
         SELECT m.id, m.parent_id, m.role, m.content, 1
         FROM asked a JOIN messages m ON m.id = a.parent_id
         WHERE $10 > 0 AND m.conversation_id = a.conversation_id
         UNION ALL
         SELECT m.id, m.parent_id, m.role, m.content, p.steps + 1
         FROM path p JOIN messages m ON m.id = p.parent_id
         WHERE p.steps < $10
     )
     SELECT COALESCE((SELECT reason FROM refusal),
                     CASE WHEN (SELECT refusal FROM verdict) IS NOT NULL THEN 'budget' END)
             AS refusal,
         (SELECT awaiting_until FROM locked) AS awaiting_until,
         a.conversation_id, a.content, a.created_at, ",
    budget_answer!(),
    ",
         CASE WHEN EXISTS (SELECT 1 FROM moved) THEN (
             SELECT jsonb_agg(jsonb_build_object(
                 'id', p.id, 'role', p.role, 'content', p.content,
                 'tool_calls', CASE WHEN p.role = 'assistant' THEN ",
    tool_calls_json!("p.id"),
    " END) ORDER BY p.steps DESC)
             FROM path p
         ) END AS context
     FROM (SELECT 1) AS one LEFT JOIN asked a ON true"
);

#[derive(QueryableByName)]
struct RegenerateRow {
    #[diesel(sql_type = Nullable<Text>)]
    refusal: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    awaiting_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    conversation_id: Option<uuid::Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    content: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    created_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    context: Option<serde_json::Value>,
    #[diesel(embed)]
    budget: BudgetColumns,
}

/// The turn that regenerates a reply.
#[derive(Debug, Clone)]
pub struct NewRegeneration {
    pub turn: TurnId,
    /// The client's id for the request, if it gave one.
    pub request_key: Option<String>,
    /// What the request asked, hashed, to tell a retry from another request with the same id.
    pub request_hash: Option<Vec<u8>>,
    /// The replica that generates it.
    pub replica: uuid::Uuid,
}

/// The user message whose reply is regenerated, as its turn starts.
#[derive(Debug, Clone)]
pub struct Regenerating {
    pub message: Message,
    /// The newest messages of its branch before it, oldest first, with their tool calls: the
    /// model's context, the message aside.
    pub context: Vec<RecentMessage>,
}

/// How far a conversation may grow, and how much of it the model sees, as a reply is
/// regenerated.
#[derive(Debug, Clone, Copy)]
pub struct RegenerateLimits {
    /// The conversation takes the reply only while its revision is below this.
    pub max_revision: Revision,
    /// The message takes another reply only while fewer messages follow it.
    pub max_siblings: i64,
    /// How many messages before it the model sees at most.
    pub history: usize,
    /// The service's default budget, for users without one of their own.
    pub budget: Budget,
}

/// Why a regeneration was refused; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegenerateRefused {
    /// The user has no such message.
    Missing,
    /// The message is not a user's: only a user's message is answered.
    NotUserMessage,
    /// A reply in the conversation awaits the client's tool results, until then.
    AwaitingToolResults(DateTime<Utc>),
    /// The conversation holds as much as it may.
    ConversationFull,
    /// A turn on the path to the message is still generating.
    BranchGenerating,
    /// As many messages as may follow the message do.
    SiblingsFull,
    /// The request id names a turn already: the request is a retry of it.
    RequestKeyTaken,
    /// The user's budget refuses the turn.
    Budget(BudgetRefusal),
}

/// [`REGENERATE_REPLY`] for `message`, started as `turn`.
async fn write_regeneration(
    mut conn: &Conn,
    user: UserId,
    message: MessageId,
    turn: &NewRegeneration,
    limits: RegenerateLimits,
    at: DateTime<Utc>,
) -> QueryResult<RegenerateRow> {
    statement!(REGENERATE_REPLY)
        .bind::<SqlUuid, _>(user.as_uuid())
        .bind::<SqlUuid, _>(message.as_uuid())
        .bind::<Timestamptz, _>(at)
        .bind::<Nullable<Text>, _>(turn.request_key.as_deref())
        .bind::<Nullable<Bytea>, _>(turn.request_hash.as_deref())
        .bind::<BigInt, _>(limits.max_revision)
        .bind::<BigInt, _>(limits.max_siblings)
        .bind::<SqlUuid, _>(turn.turn.as_uuid())
        .bind::<SqlUuid, _>(turn.replica)
        .bind::<Integer, _>(i32::try_from(limits.history).unwrap_or(i32::MAX))
        .bind::<Nullable<BigInt>, _>(limits.budget.tokens)
        .bind::<Nullable<BigInt>, _>(limits.budget.cost_micros)
        .bind::<Text, _>(<&str>::from(limits.budget.period))
        .get_result::<RegenerateRow>(&mut conn)
        .await
}

impl Store {
    /// Starts `turn` to answer the user's `message` again, within `limits`, at `at`: the
    /// message becomes its conversation's leaf. Returns once committed: `Ok(())`, or why nothing
    /// was written. A twin request racing this one with the same id is
    /// [`StoreError::Duplicate`].
    ///
    /// `started` hears the message and the model's context as soon as they are final, before
    /// the commit; it is dropped unheard when nothing is written. BEGIN, the statement and
    /// COMMIT travel in one flight, and the commit's wait for the disk overlaps the model's
    /// request.
    pub async fn regenerate_reply(
        &self,
        user: UserId,
        message: MessageId,
        turn: &NewRegeneration,
        limits: RegenerateLimits,
        at: DateTime<Utc>,
        started: oneshot::Sender<Regenerating>,
    ) -> Result<Result<(), RegenerateRefused>, StoreError> {
        self.run_transaction_by_hand(REGENERATE, async |conn| {
            let conn: &Conn = conn;
            // Sent together, in this order: BEGIN, the statement, COMMIT (see `begin`).
            let write = async {
                let row = write_regeneration(conn, user, message, turn, limits, at).await?;
                Ok::<_, diesel::result::Error>(match regenerated(row, message) {
                    Ok(Ok(regenerating)) => {
                        let _ = started.send(regenerating);
                        Ok(Ok(()))
                    }
                    refused_or_corrupt => refused_or_corrupt.map(|refused| refused.map(|_| ())),
                })
            };
            let ((), written, ()) = futures_util::try_join!(begin(conn), write, commit(conn))?;
            written
        })
        .await
    }
}

/// Prepares [`REGENERATE_REPLY`], which travels in one flight with its transaction (see
/// `begin`), by running it once where it finds nothing to change.
pub(super) async fn prepare_regenerate_statement(conn: &Conn) -> QueryResult<()> {
    let nowhere = uuid::Uuid::nil();
    let turn = NewRegeneration {
        turn: TurnId::from_uuid(nowhere),
        request_key: None,
        request_hash: None,
        replica: nowhere,
    };
    let limits = RegenerateLimits {
        max_revision: 0,
        max_siblings: 0,
        history: 0,
        budget: Budget::unlimited(crate::domain::UsagePeriod::Day),
    };
    let nobody = UserId::from_uuid(nowhere);
    let no_message = MessageId::from_uuid(nowhere);
    write_regeneration(
        conn,
        nobody,
        no_message,
        &turn,
        limits,
        crate::domain::now(),
    )
    .await?;
    Ok(())
}

fn regenerated(
    row: RegenerateRow,
    id: MessageId,
) -> Result<Result<Regenerating, RegenerateRefused>, StoreError> {
    let refused = match row.refusal.as_deref() {
        None => None,
        Some("missing") => Some(RegenerateRefused::Missing),
        Some("not_user") => Some(RegenerateRefused::NotUserMessage),
        Some("full") => Some(RegenerateRefused::ConversationFull),
        Some("branch_generating") => Some(RegenerateRefused::BranchGenerating),
        Some("siblings_full") => Some(RegenerateRefused::SiblingsFull),
        Some("key_taken") => Some(RegenerateRefused::RequestKeyTaken),
        Some("budget") => match row.budget.refusal()? {
            Some(refusal) => Some(RegenerateRefused::Budget(refusal)),
            None => {
                return Err(StoreError::Corrupt(
                    "a budget's refusal without why".to_owned(),
                ));
            }
        },
        Some("awaiting") => match row.awaiting_until {
            Some(until) => Some(RegenerateRefused::AwaitingToolResults(until)),
            None => return Err(StoreError::Corrupt("a wait without its end".to_owned())),
        },
        Some(other) => {
            return Err(StoreError::Corrupt(format!(
                "a regeneration refused for {other:?}"
            )));
        }
    };
    if let Some(refused) = refused {
        return Ok(Err(refused));
    }
    let (Some(conversation), Some(content), Some(created_at)) =
        (row.conversation_id, row.content, row.created_at)
    else {
        return Err(StoreError::Corrupt(format!(
            "message {id} was regenerated but not read"
        )));
    };
    let context = match row.context {
        None => Vec::new(),
        Some(json) => serde_json::from_value::<Vec<JsonContextMessage>>(json)
            .map_err(|e| StoreError::Corrupt(format!("the context before message {id}: {e}")))?
            .into_iter()
            .map(JsonContextMessage::into_recent)
            .collect::<Result<_, _>>()?,
    };
    Ok(Ok(Regenerating {
        message: Message {
            id,
            conversation_id: ConversationId::from_uuid(conversation),
            role: Role::User,
            content,
            status: MessageStatus::Complete,
            create_time: created_at,
            tool_calls: Vec::new(),
            model: None,
            usage: None,
        },
        context,
    }))
}
