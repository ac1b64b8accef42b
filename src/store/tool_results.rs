//! Results of tools the client runs, given for a reply that awaits them.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    Conn, Operation, Store, StoreError,
    models::ToolCallRow,
    schema::{conversations, messages, tool_calls},
    statement::statement,
    turns::{RevisionRow, lock_conversation},
};
use crate::domain::{
    ConversationId, MessageId, MessageStatus, Revision, ToolCall, ToolCallStatus, UserId,
};

/// One result the client gives.
#[derive(Debug, Clone)]
pub struct GivenResult {
    /// The provider's id of the call it answers.
    pub provider_call_id: String,
    pub status: ToolCallStatus,
    pub result: serde_json::Value,
}

/// What became of results given for a message.
#[derive(Debug)]
pub enum Submitted {
    /// Stored: the message is complete, and the conversation at this revision takes messages
    /// again. The message's calls, every one now with its result.
    Stored {
        revision: Revision,
        calls: Vec<ToolCall>,
        /// The catalog's name of the model that wrote the message, if it was recorded: the
        /// reply goes on with it.
        model: Option<String>,
    },
    /// The user has no such conversation.
    NoConversation,
    /// The conversation awaits no results for that message (none at all, or for another one).
    NotAwaited,
    /// The results came after the wait was over.
    Overdue,
    /// Calls of the service's own tools in the same round have no result yet: the reply that
    /// runs them has not ended.
    StillRunning,
    /// The results do not answer exactly the calls that await them: nothing was stored.
    Mismatch {
        /// Ids given that no awaiting call has, or given twice.
        unexpected: Vec<String>,
        /// Awaiting calls given no result.
        missing: Vec<String>,
    },
}

const SUBMIT: Operation = Operation::new("UPDATE", "UPDATE tool_calls messages conversations");

impl Store {
    /// Stores the results of the calls that the user's message awaits, completes the message and
    /// ends the conversation's wait, all at once, at `now`. The conversation's revision moves on,
    /// so that no replica takes the calls it remembers without their results for current.
    pub async fn submit_tool_results(
        &self,
        user: UserId,
        conversation: ConversationId,
        message: MessageId,
        results: &[GivenResult],
        now: DateTime<Utc>,
    ) -> Result<Submitted, StoreError> {
        self.run(SUBMIT, async |conn| {
            conn.transaction::<Submitted, StoreError, _>(async |conn| {
                let Some(state) = lock_conversation(&*conn, user, conversation).await? else {
                    return Ok(Submitted::NoConversation);
                };
                let (awaited, client_calls) = awaited_calls(conn, conversation).await?;
                if awaited != Some(*message.as_uuid()) {
                    return Ok(Submitted::NotAwaited);
                }
                if !state.awaits_tool_results(now) {
                    return Ok(Submitted::Overdue);
                }
                let (mut calls, model) = message_calls(conn, message).await?;
                if let Some(mismatch) = mismatch(&calls, &client_calls, results) {
                    return Ok(mismatch);
                }
                let service_pending = calls.iter().any(|call| {
                    call.status == ToolCallStatus::Requested
                        && !client_calls.contains(&call.provider_call_id)
                });
                if service_pending {
                    return Ok(Submitted::StillRunning);
                }
                write_results(conn, &mut calls, results).await?;
                let revision = end_wait(conn, conversation, message, now).await?;
                Ok(Submitted::Stored {
                    revision,
                    calls,
                    model,
                })
            })
            .await
        })
        .await
    }
}

/// How `results` fail to answer exactly the calls of `calls` that the client is to answer
/// (`client_calls`) and that await a result, if they do.
fn mismatch(
    calls: &[ToolCall],
    client_calls: &[String],
    results: &[GivenResult],
) -> Option<Submitted> {
    let awaiting: HashSet<&str> = calls
        .iter()
        .filter(|c| c.status == ToolCallStatus::Requested)
        .map(|c| c.provider_call_id.as_str())
        .filter(|id| client_calls.iter().any(|c| c == id))
        .collect();
    let mut seen = HashSet::new();
    let unexpected: Vec<String> = results
        .iter()
        .map(|r| r.provider_call_id.as_str())
        .filter(|id| !awaiting.contains(id) || !seen.insert(*id))
        .map(str::to_owned)
        .collect();
    let missing: Vec<String> = awaiting
        .iter()
        .copied()
        .filter(|id| !seen.contains(id))
        .map(str::to_owned)
        .collect();
    (!unexpected.is_empty() || !missing.is_empty()).then_some(Submitted::Mismatch {
        unexpected,
        missing,
    })
}

/// The message a conversation awaits results for, and the provider ids of the calls of the
/// client's tools among its calls.
async fn awaited_calls(
    conn: &mut Conn,
    conversation: ConversationId,
) -> QueryResult<(Option<uuid::Uuid>, Vec<String>)> {
    let (awaited, client_calls) = conversations::table
        .filter(conversations::id.eq(conversation.as_uuid()))
        .select((
            conversations::awaiting_message,
            conversations::awaiting_calls,
        ))
        .first::<(Option<uuid::Uuid>, Option<Vec<String>>)>(conn)
        .await?;
    Ok((awaited, client_calls.unwrap_or_default()))
}

/// The message's calls, in order, and the model that wrote it.
async fn message_calls(
    conn: &mut Conn,
    message: MessageId,
) -> Result<(Vec<ToolCall>, Option<String>), StoreError> {
    let rows = tool_calls::table
        .inner_join(messages::table)
        .filter(tool_calls::message_id.eq(message.as_uuid()))
        .select((ToolCallRow::as_select(), messages::model))
        .order(tool_calls::position)
        .load::<(ToolCallRow, Option<String>)>(conn)
        .await?;
    // (Diesel's prelude has a `first` of its own.)
    let model = <[_]>::first(&rows).and_then(|(_, model)| model.clone());
    let calls = rows
        .into_iter()
        .map(|(row, _)| ToolCall::try_from(row))
        .collect::<Result<_, _>>()?;
    Ok((calls, model))
}

/// Stores each result on its call, and on `calls` as they are returned.
async fn write_results(
    conn: &mut Conn,
    calls: &mut [ToolCall],
    results: &[GivenResult],
) -> QueryResult<()> {
    for given in results {
        let Some(call) = calls
            .iter_mut()
            .find(|c| c.provider_call_id == given.provider_call_id)
        else {
            continue;
        };
        diesel::update(tool_calls::table.filter(tool_calls::id.eq(call.id.as_uuid())))
            .set((
                tool_calls::status.eq(<&str>::from(given.status)),
                tool_calls::result.eq(Some(&given.result)),
            ))
            .execute(conn)
            .await?;
        call.status = given.status;
        call.result = Some(given.result.clone());
    }
    Ok(())
}

/// Completes the message and ends the conversation's wait, moving its revision on. Returns it.
async fn end_wait(
    conn: &mut Conn,
    conversation: ConversationId,
    message: MessageId,
    now: DateTime<Utc>,
) -> QueryResult<Revision> {
    diesel::update(messages::table.filter(messages::id.eq(message.as_uuid())))
        .set(messages::status.eq(<&str>::from(MessageStatus::Complete)))
        .execute(conn)
        .await?;
    let revision = statement!(
        "UPDATE conversations
         SET awaiting_message = NULL, awaiting_calls = NULL, awaiting_until = NULL,
             revision = revision + 1, updated_at = GREATEST(updated_at, $2)
         WHERE id = $1
         RETURNING revision",
    )
    .bind::<SqlUuid, _>(conversation.as_uuid())
    .bind::<Timestamptz, _>(now)
    .get_result::<RevisionRow>(conn)
    .await?
    .revision;
    Ok(revision)
}
