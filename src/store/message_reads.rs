//! Messages as the reads give them back: each with its tool calls, read in one more query.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{
    Conn, StoreError,
    models::{MessageRow, ToolCallRow},
    schema::tool_calls,
};
use crate::domain::{ConversationId, Message, Role, ToolCall};

/// The tool calls of the given messages, in the order the model made them.
pub(super) async fn tool_calls_of(
    conn: &mut Conn,
    rows: &[MessageRow],
) -> Result<Vec<ToolCallRow>, StoreError> {
    // Only assistant messages carry tool calls; skip the query when there are none.
    let candidates: Vec<Uuid> = rows
        .iter()
        .filter(|row| row.role.0 == Role::Assistant)
        .map(|row| row.id)
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    Ok(tool_calls::table
        .filter(tool_calls::message_id.eq_any(&candidates))
        .select(ToolCallRow::as_select())
        .order((tool_calls::message_id, tool_calls::position))
        .load::<ToolCallRow>(conn)
        .await?)
}

/// Messages with their tool calls attached.
pub(super) fn with_tool_calls(
    conversation: ConversationId,
    rows: Vec<MessageRow>,
    call_rows: Vec<ToolCallRow>,
) -> Result<Vec<Message>, StoreError> {
    let mut calls: HashMap<Uuid, Vec<ToolCall>> = HashMap::new();
    for row in call_rows {
        calls
            .entry(row.message_id)
            .or_default()
            .push(ToolCall::try_from(row)?);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let message_calls = calls.remove(&row.id).unwrap_or_default();
            row.into_message(conversation, message_calls)
        })
        .collect())
}
