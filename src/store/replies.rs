//! A turn's replies: each written, with its tool calls and what it awaits, and, for the last,
//! the turn's end, in one statement.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{
        Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
    },
};
use diesel_async::RunQueryDsl;

use super::{
    Conn,
    statement::{Binds, CacheKey, Fixed, statement},
};
use crate::domain::{Message, MessageId, Revision, ToolCallStatus, TurnId, UserId};

/// The parts of the statements that store a reply. With `$8`, the reply is one of that turn's
/// attempt `$9`, streamed in pieces of `$10` bytes, and with `$11` its last, which ends the turn
/// in that state with outcome `$12`. A reply of a turn is written only while the turn's attempt
/// is in state `$13`: a replica that took over a turn whose lease ran out has ended it, and the
/// replica that had it, if it still runs, must not write after that. The conversation's row is
/// locked before the turn's, in the order a deletion takes them; both locks return the rows'
/// latest state, even after waiting for another transaction.
///
/// Where the reply goes in the conversation's tree, `follows` says: the message it follows
/// (`id`, `depth`), and whether it becomes the leaf (`moves_leaf`). The statements come in two
/// kinds, so that a turn's usual reply pays for no search:
/// - **on the branch** ([`APPEND_REPLY`]): while the leaf has not jumped to another branch since
///   the reply's turn started, the reply follows the leaf and becomes the leaf. Turns taken at
///   once on one branch line up in the order they are written, as they always did. After a
///   jump, it writes nothing and answers `off_branch`;
/// - **off the branch** ([`APPEND_REPLY_OFF_BRANCH`]): the reply follows its own turn's newest
///   message, and becomes the leaf only if that message is the leaf.
macro_rules! reply_locks {
    ($($follows:tt)*) => {
        concat!(
            "WITH locked AS MATERIALIZED (
                 SELECT id, leaf_id, COALESCE(leaf_depth, -1) AS leaf_depth, leaf_jumps
                 FROM conversations WHERE id = $1 AND user_id = $2 FOR NO KEY UPDATE
             ), owned AS MATERIALIZED (
                 SELECT id, leaf_jumps, message_id FROM turns
                 WHERE id = $8 AND attempt = $9 AND state = $13 AND EXISTS (SELECT 1 FROM locked)
                 FOR NO KEY UPDATE
             ), follows AS MATERIALIZED (",
            $($follows)*,
            "), "
        )
    };
}

/// The leaf, while the reply's turn (if it has one) started on its branch.
macro_rules! on_branch {
    () => {
        "SELECT l.leaf_id AS id, l.leaf_depth AS depth, true AS moves_leaf FROM locked l
         WHERE NOT EXISTS (SELECT 1 FROM owned o WHERE o.leaf_jumps <> l.leaf_jumps)"
    };
}

/// The newest message of the reply's turn: its user message (the turn's id, unless the turn
/// regenerates a reply and names it), or its last round's reply.
macro_rules! off_branch {
    () => {
        "SELECT m.id, m.depth, m.id IS NOT DISTINCT FROM l.leaf_id AS moves_leaf
         FROM locked l, messages m
         WHERE m.conversation_id = $1
           AND (m.id = COALESCE((SELECT o.message_id FROM owned o), $8)
                OR (m.turn_id = $8 AND m.turn_attempt = $9))
         ORDER BY m.sequence DESC
         LIMIT 1"
    };
}

/// The conversation's row as a reply moves it forward, with `$extra` set too; only while the
/// reply's turn (if it has one) is the writer's, and the reply has its place.
macro_rules! reply_touches {
    ($extra:literal) => {
        reply_touches!(
            $extra,
            "
                   AND ($8::uuid IS NULL OR EXISTS (SELECT 1 FROM owned))"
        )
    };
    ($extra:literal, $owned:literal) => {
        concat!(
            "touched AS (
                 UPDATE conversations
                 SET updated_at = GREATEST(updated_at, $3), revision = revision + 1,
                     leaf_id = CASE WHEN (SELECT moves_leaf FROM follows) THEN $4 ELSE leaf_id END,
                     leaf_depth = CASE WHEN (SELECT moves_leaf FROM follows)
                                       THEN (SELECT depth FROM follows) + 1 ELSE leaf_depth END",
            $extra,
            "
                 WHERE id = $1 AND user_id = $2 AND EXISTS (SELECT 1 FROM follows)",
            $owned,
            "
                 RETURNING id, revision
             ), "
        )
    };
}

/// One call's usage added to its user's day with its model: user `$user`, at `$at`, model
/// `$model` (null for none), input `$input` (`$cached` cached), output `$output` (`$reasoning`
/// reasoning), estimated if `$estimated`, cost `$cost` (null for none); one row from `$from`,
/// unless `$input` is null.
macro_rules! add_to_day {
    ($user:literal, $at:literal, $model:literal, $input:literal, $cached:literal,
     $output:literal, $reasoning:literal, $estimated:literal, $cost:literal, $from:literal) => {
        concat!(
            "INSERT INTO usage_days AS u (user_id, day, model, calls, estimated_calls, input_tokens,
                                         cached_input_tokens, output_tokens, reasoning_tokens,
                                         cost_micros)
             SELECT ", $user, ", (", $at, " AT TIME ZONE 'UTC')::date, COALESCE(", $model, ", ''), 1,
                    CASE WHEN ", $estimated, " THEN 1 ELSE 0 END, ", $input, ", ", $cached, ", ",
                    $output, ", ", $reasoning, ", COALESCE(", $cost, ", 0)
             ", $from, " WHERE ", $input, "::int4 IS NOT NULL
             ON CONFLICT (user_id, day, model) DO UPDATE
             SET calls = u.calls + 1,
                 estimated_calls = u.estimated_calls + EXCLUDED.estimated_calls,
                 input_tokens = u.input_tokens + EXCLUDED.input_tokens,
                 cached_input_tokens = u.cached_input_tokens + EXCLUDED.cached_input_tokens,
                 output_tokens = u.output_tokens + EXCLUDED.output_tokens,
                 reasoning_tokens = u.reasoning_tokens + EXCLUDED.reasoning_tokens,
                 cost_micros = u.cost_micros + EXCLUDED.cost_micros"
        )
    };
}

/// A call's usage, not a reply's, added to its user's day alone: [`add_to_day!`]'s parameters
/// in its order, `$1` to `$9`.
pub(super) const ADD_USAGE: &str =
    add_to_day!("$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "");

/// The reply's row and the turn's end, once the conversation moved forward.
///
/// The turn ends only from generating: `owned` locked it in state `$13`, and `touched` wrote
/// only if it did, so `$13` is the row's state. Saying so with `$13` rather than with the row's
/// `state` keeps the planner off `turns_generating_idx`, whose predicate a condition on the
/// row's state would match. Once `turns` was vacuumed while no turn was generating, its
/// statistics call that index empty, and the turn's end would be planned to read all of it:
/// every generating turn's entry, on every reply, instead of its own row by its key.
macro_rules! reply_writes {
    () => {
        concat!(
            reply_rows!(),
            ", ended AS (
             UPDATE turns SET state = $11, outcome = $12, ended_at = now()
             WHERE id = $8 AND attempt = $9 AND $13 = 'generating' AND $11::text IS NOT NULL
               AND EXISTS (SELECT 1 FROM touched)
         )"
        )
    };
}

/// The reply's row, and its call's usage added to its user's day, once the conversation moved
/// forward.
macro_rules! reply_rows {
    () => {
        concat!(
            "inserted AS (
             INSERT INTO messages (id, conversation_id, role, content, status, created_at,
                                   sequence, turn_id, turn_attempt, deltas, search_vector,
                                   parent_id, depth, model, usage)
             SELECT $4, id, $5, $6, $7, $3, revision, $8, $9, $10, chat_search_vector($6),
                    (SELECT id FROM follows), (SELECT depth FROM follows) + 1, $14,
                    CASE WHEN $15::int4 IS NOT NULL THEN jsonb_build_object(
                        'input_tokens', $15, 'cached_input_tokens', $16, 'output_tokens', $17,
                        'reasoning_tokens', $18, 'estimated', $19, 'cost_micros', $20) END
             FROM touched
         ), spent AS (",
            add_to_day!(
                "$2",
                "$3",
                "$14",
                "$15",
                "$16",
                "$17",
                "$18",
                "$19",
                "$20",
                "FROM touched"
            ),
            ")"
        )
    };
}

/// What became of the reply: its sequence, or why it was not written.
macro_rules! reply_answers {
    () => {
        " SELECT (SELECT revision FROM touched) AS revision,
             $8::uuid IS NOT NULL AND (SELECT revision FROM touched) IS NULL
                 AND EXISTS (SELECT 1 FROM locked) AND NOT EXISTS (SELECT 1 FROM owned)
                 AS taken_over,
             $8::uuid IS NOT NULL AND (SELECT revision FROM touched) IS NULL
                 AND EXISTS (SELECT 1 FROM messages WHERE id = $4) AS stored_before,
             (SELECT revision FROM touched) IS NULL AND EXISTS (SELECT 1 FROM owned)
                 AND NOT EXISTS (SELECT 1 FROM follows) AS off_branch"
    };
}

/// Adds the assistant's reply `$4` (role `$5`, text `$6`, status `$7`, at `$3`, by model `$14`)
/// to the user's conversation and moves the conversation forward: its update time and its
/// revision, which becomes the reply's sequence; of its turn as its `locked` and `owned` parts
/// say. With `$15`, the call that wrote it used `$15` input tokens (`$16` of them cached) and
/// `$17` output tokens (`$18` of them reasoning), estimated if `$19`, costing `$20`: kept with
/// the reply, and added to the user's day with that model. Returns the new revision, or none
/// if the user has no such conversation (or the turn is no longer the writer's, or the reply was
/// written already, by a try whose answer was lost); then nothing is written.
const APPEND_REPLY: &str = concat!(
    reply_locks!(on_branch!()),
    reply_touches!(""),
    reply_writes!(),
    reply_answers!()
);

/// [`APPEND_REPLY`] for a reply whose turn's branch stopped being current.
const APPEND_REPLY_OFF_BRANCH: &str = concat!(
    reply_locks!(off_branch!()),
    reply_touches!(""),
    reply_writes!(),
    reply_answers!()
);

/// [`APPEND_REPLY`] for the usual reply: the last of its turn, on its branch, written by the
/// replica generating it. It ends the turn as it locks it (`owned` is the turn's end), which
/// costs PostgreSQL a row lock and a statement's part less than locking first and ending after;
/// and it answers only the new revision. PostgreSQL sets up every part of a statement each time
/// it runs it, so the parts that say why nothing was written cost every reply, while they
/// answer only the rare one: when this writes nothing, [`APPEND_REPLY`] runs after it, finds
/// the same (a turn that stopped generating never generates again, and a leaf that jumped never
/// jumps back), and says why.
///
/// The turn must still be generating (`$13`), and the conversation's leaf must not have jumped
/// since the turn started; the conversation is locked first, as everywhere, since the turn's
/// condition reads its lock's answer.
const APPEND_LAST_REPLY: &str = concat!(
    "WITH locked AS MATERIALIZED (
         SELECT leaf_id, COALESCE(leaf_depth, -1) AS leaf_depth, leaf_jumps
         FROM conversations WHERE id = $1 AND user_id = $2 FOR NO KEY UPDATE
     ), owned AS MATERIALIZED (
         UPDATE turns SET state = $11, outcome = $12, ended_at = now()
         WHERE id = $8 AND attempt = $9 AND state = $13
           AND leaf_jumps = (SELECT leaf_jumps FROM locked)
         RETURNING id
     ), follows AS MATERIALIZED (
         SELECT leaf_id AS id, leaf_depth AS depth, true AS moves_leaf FROM locked
         WHERE EXISTS (SELECT 1 FROM owned)
     ), ",
    reply_touches!("", ""),
    reply_rows!(),
    " SELECT (SELECT revision FROM touched) AS revision"
);

/// The statement that stores a reply with its calls, placed as `$follows` says.
macro_rules! with_calls {
    ($($follows:tt)*) => {
        concat!(
            reply_locks!($($follows)*),
            reply_touches!(
                ",
                     awaiting_message = CASE WHEN $21::text[] IS NULL THEN awaiting_message ELSE $4 END,
                     awaiting_calls = COALESCE($21, awaiting_calls),
                     awaiting_until = CASE WHEN $21::text[] IS NULL THEN awaiting_until ELSE $22 END"
            ),
            reply_writes!(),
            ", calls AS (
                 INSERT INTO tool_calls (id, message_id, position, provider_call_id, name,
                                         arguments, status, result, created_at, answer_index)
                 SELECT c.id, $4, (c.position - 1)::int4, c.provider_call_id, c.name, c.arguments,
                        c.status, c.result, $3, c.answer_index
                 FROM touched,
                      unnest($23::uuid[], $24::text[], $25::text[], $26::jsonb[], $27::text[],
                             $28::jsonb[], $29::int4[])
                          WITH ORDINALITY AS c(id, provider_call_id, name, arguments, status,
                                               result, answer_index, position)
             )",
            reply_answers!()
        )
    };
}

/// [`APPEND_REPLY`] for a reply that called tools, with its calls: ids `$23`, the provider's
/// ids `$24`, names `$25`, arguments `$26`, statuses `$27`, results `$28` and answer indexes
/// `$29`, in the order the model made them. With `$21`, the reply awaits the results of those
/// calls (by the provider's ids) that the client runs, until `$22`, and the conversation takes
/// no user message meanwhile. One statement, so one round trip, atomic by itself.
const APPEND_REPLY_WITH_CALLS: &str = with_calls!(on_branch!());

/// [`APPEND_REPLY_WITH_CALLS`] for a reply whose turn's branch stopped being current.
const APPEND_REPLY_WITH_CALLS_OFF_BRANCH: &str = with_calls!(off_branch!());

/// What [`APPEND_REPLY`] answers.
#[derive(QueryableByName)]
struct ReplyRow {
    #[diesel(sql_type = Nullable<BigInt>)]
    revision: Option<Revision>,
    #[diesel(sql_type = Bool)]
    taken_over: bool,
    #[diesel(sql_type = Bool)]
    stored_before: bool,
    #[diesel(sql_type = Bool)]
    off_branch: bool,
}

/// What [`APPEND_LAST_REPLY`] answers.
#[derive(QueryableByName)]
struct LastReplyRow {
    #[diesel(sql_type = Nullable<BigInt>)]
    revision: Option<Revision>,
}

/// Where a reply is written: on its turn's branch, as usual, or off it, once the first try found
/// that the leaf jumped to another branch since the turn started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Branch {
    On,
    Off,
}

/// What one write of a reply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplyWritten {
    /// What the caller is told.
    Done(ReplyStored),
    /// Nothing, on its branch: the leaf jumped to another since its turn started. It is to be
    /// written off the branch.
    OffBranch,
}

/// [`APPEND_REPLY`] (or [`APPEND_REPLY_OFF_BRANCH`], or first [`APPEND_LAST_REPLY`] for the
/// usual reply) for `reply`, of `turn` if it has one.
pub(super) async fn append_reply(
    mut conn: &Conn,
    user: UserId,
    reply: &Message,
    turn: Option<&ReplyOf<'_>>,
    branch: Branch,
) -> QueryResult<ReplyWritten> {
    if branch == Branch::On && turn.is_some_and(ReplyOf::ends_generating) {
        let row = bind_reply(statement!(APPEND_LAST_REPLY), user, reply, turn)
            .get_result::<LastReplyRow>(&mut conn)
            .await?;
        if let Some(revision) = row.revision {
            return Ok(ReplyWritten::Done(ReplyStored::At(revision)));
        }
    }
    let row = match branch {
        Branch::On => {
            bind_reply(statement!(APPEND_REPLY), user, reply, turn)
                .get_result::<ReplyRow>(&mut conn)
                .await?
        }
        Branch::Off => {
            bind_reply(statement!(APPEND_REPLY_OFF_BRANCH), user, reply, turn)
                .get_result::<ReplyRow>(&mut conn)
                .await?
        }
    };
    Ok(row.into())
}

/// [`APPEND_REPLY_WITH_CALLS`] (or its twin off the branch) for `reply`, of `turn` if it has
/// one, awaiting the client's results of `awaiting` if given.
pub(super) async fn append_reply_with_calls(
    mut conn: &Conn,
    user: UserId,
    reply: &Message,
    awaiting: Option<&Awaiting>,
    turn: Option<&ReplyOf<'_>>,
    branch: Branch,
) -> QueryResult<ReplyWritten> {
    let row = match branch {
        Branch::On => {
            bind_calls(
                statement!(APPEND_REPLY_WITH_CALLS),
                user,
                reply,
                awaiting,
                turn,
            )
            .get_result::<ReplyRow>(&mut conn)
            .await?
        }
        Branch::Off => {
            let statement = statement!(APPEND_REPLY_WITH_CALLS_OFF_BRANCH);
            bind_calls(statement, user, reply, awaiting, turn)
                .get_result::<ReplyRow>(&mut conn)
                .await?
        }
    };
    Ok(row.into())
}

/// `statement`, one of those that store a reply with its calls, with all its parameters.
fn bind_calls<'a, K: CacheKey>(
    statement: Fixed<(), K>,
    user: UserId,
    reply: &'a Message,
    awaiting: Option<&'a Awaiting>,
    turn: Option<&'a ReplyOf<'a>>,
) -> Fixed<impl Binds + Send + 'a, K> {
    let calls = &reply.tool_calls;
    bind_reply(statement, user, reply, turn)
        .bind::<Nullable<Array<Text>>, _>(awaiting.map(|awaiting| &awaiting.calls))
        .bind::<Nullable<Timestamptz>, _>(awaiting.map(|awaiting| awaiting.until))
        .bind::<Array<SqlUuid>, _>(calls.iter().map(|c| *c.id.as_uuid()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            calls
                .iter()
                .map(|c| &c.provider_call_id)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(calls.iter().map(|c| &c.name).collect::<Vec<_>>())
        .bind::<Array<Jsonb>, _>(calls.iter().map(|c| &c.arguments).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            calls
                .iter()
                .map(|c| <&str>::from(c.status))
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Jsonb>>, _>(
            calls.iter().map(|c| c.result.as_ref()).collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Integer>>, _>(
            calls
                .iter()
                .map(|c| {
                    // A call stored with its outcome (failed without being run): no result event
                    // follows, and later results number themselves from 0.
                    (c.status != ToolCallStatus::Requested)
                        .then_some(super::models::SETTLED_WHEN_STORED)
                })
                .collect::<Vec<_>>(),
        )
}

/// `statement`, one of the reply's, with the reply's and its turn's parameters `$1` to `$20`.
fn bind_reply<'a, K: CacheKey>(
    statement: Fixed<(), K>,
    user: UserId,
    reply: &'a Message,
    turn: Option<&'a ReplyOf<'a>>,
) -> Fixed<impl Binds + Send + 'a, K> {
    let ends = turn.and_then(|turn| turn.ends);
    let tokens = reply.usage.map(|usage| usage.tokens);
    statement
        .bind::<SqlUuid, _>(reply.conversation_id.as_uuid())
        .bind::<SqlUuid, _>(*user.as_uuid())
        .bind::<Timestamptz, _>(reply.create_time)
        .bind::<SqlUuid, _>(reply.id.as_uuid())
        .bind::<Text, _>(<&str>::from(reply.role))
        .bind::<Text, _>(&reply.content)
        .bind::<Text, _>(<&str>::from(reply.status))
        .bind::<Nullable<SqlUuid>, _>(turn.map(|turn| *turn.turn.as_uuid()))
        .bind::<Nullable<Integer>, _>(turn.map(|turn| turn.attempt.get()))
        .bind::<Nullable<Array<Integer>>, _>(turn.map(|turn| turn.deltas))
        .bind::<Nullable<Text>, _>(ends.map(|end| <&str>::from(end.state)))
        .bind::<Nullable<Jsonb>, _>(ends.map(|end| end.outcome))
        .bind::<Nullable<Text>, _>(turn.map(|turn| <&str>::from(turn.while_state)))
        .bind::<Nullable<Text>, _>(reply.model.as_deref())
        .bind::<Nullable<Integer>, _>(tokens.map(|t| clamp(t.input_tokens)))
        .bind::<Nullable<Integer>, _>(tokens.map(|t| clamp(t.cached_input_tokens)))
        .bind::<Nullable<Integer>, _>(tokens.map(|t| clamp(t.output_tokens)))
        .bind::<Nullable<Integer>, _>(tokens.map(|t| clamp(t.reasoning_tokens)))
        .bind::<Nullable<Bool>, _>(tokens.map(|t| t.estimated))
        .bind::<Nullable<BigInt>, _>(reply.usage.and_then(|usage| usage.cost_micros))
}

/// A count of tokens as a column of `integer` holds it: no call comes near 2³¹.
fn clamp(tokens: u32) -> i32 {
    i32::try_from(tokens).unwrap_or(i32::MAX)
}

impl From<ReplyRow> for ReplyWritten {
    fn from(row: ReplyRow) -> Self {
        Self::Done(match row {
            ReplyRow {
                revision: Some(revision),
                ..
            } => ReplyStored::At(revision),
            ReplyRow {
                stored_before: true,
                ..
            } => ReplyStored::StoredBefore,
            ReplyRow {
                taken_over: true, ..
            } => ReplyStored::TurnTakenOver,
            ReplyRow {
                off_branch: true, ..
            } => return Self::OffBranch,
            ReplyRow { .. } => ReplyStored::ConversationGone,
        })
    }
}

/// The turn a reply belongs to, and how it was streamed.
#[derive(Debug, Clone, Copy)]
pub struct ReplyOf<'a> {
    pub turn: TurnId,
    pub attempt: crate::domain::Attempt,
    /// The length in bytes of each piece of its text as it was streamed.
    pub deltas: &'a [i32],
    /// How the turn ends, when this reply is its last: stored with it, in the same statement.
    pub ends: Option<TurnEnding<'a>>,
    /// The state the turn's attempt must still be in for the reply to be written: generating,
    /// for the replica generating it; interrupted, for one that took it over.
    pub while_state: crate::domain::TurnState,
}

impl ReplyOf<'_> {
    /// Whether the reply ends its turn as the replica generating it: the usual last reply.
    fn ends_generating(&self) -> bool {
        self.ends.is_some() && self.while_state == crate::domain::TurnState::Generating
    }
}

/// What became of a write of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStored {
    /// Stored, taking the conversation to this revision: the reply's sequence.
    At(Revision),
    /// Not stored: the conversation was deleted meanwhile.
    ConversationGone,
    /// Not stored: another replica took the turn over, its lease having run out, and ended it.
    TurnTakenOver,
    /// Stored already, by an earlier try whose answer was lost: its place is not known here.
    StoredBefore,
}

/// How a turn ended, as its record keeps it.
#[derive(Debug, Clone, Copy)]
pub struct TurnEnding<'a> {
    pub state: crate::domain::TurnState,
    pub outcome: &'a serde_json::Value,
}

/// What a reply that called the client's tools waits for.
#[derive(Debug, Clone)]
pub struct Awaiting {
    /// The provider's ids of the calls the client is to answer.
    pub calls: Vec<String>,
    pub until: DateTime<Utc>,
}

/// Prepares [`APPEND_REPLY`], which travels in one flight with its transaction when replies are
/// written together (see `begin`), by running it once where it can find nothing to change.
pub(super) async fn prepare_reply_statement(conn: &Conn) -> QueryResult<()> {
    let nowhere = uuid::Uuid::nil();
    let reply = Message {
        id: MessageId::from_uuid(nowhere),
        conversation_id: crate::domain::ConversationId::from_uuid(nowhere),
        role: crate::domain::Role::Assistant,
        content: String::new(),
        status: crate::domain::MessageStatus::Complete,
        create_time: crate::domain::now(),
        tool_calls: Vec::new(),
        model: None,
        usage: None,
    };
    let turn = ReplyOf {
        turn: TurnId::from_uuid(nowhere),
        attempt: crate::domain::FIRST_ATTEMPT,
        deltas: &[],
        ends: None,
        while_state: crate::domain::TurnState::Generating,
    };
    // And the usual last reply's statement, which finds no turn to end.
    let outcome = serde_json::Value::Null;
    let last = ReplyOf {
        ends: Some(TurnEnding {
            state: crate::domain::TurnState::Completed,
            outcome: &outcome,
        }),
        ..turn
    };
    for turn in [turn, last] {
        append_reply(
            conn,
            UserId::from_uuid(nowhere),
            &reply,
            Some(&turn),
            Branch::On,
        )
        .await?;
    }
    Ok(())
}
