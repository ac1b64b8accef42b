//! The branches of a conversation that is no longer one line: which messages its current branch
//! holds, where each stands among its siblings, and switching to another branch.
//!
//! A conversation that was never branched needs none of this: its messages in their order are
//! its branch, and every message has one sibling, itself. Only conversations whose leaf has
//! jumped (an edit, a regenerated reply, a switch) read their tree, whole, from the
//! conversation's messages: one index range, as a conversation's listing already reads.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{
    Conn, Operation, Store, StoreError,
    message_reads::{tool_calls_of, with_tool_calls},
    models::MessageRow,
    schema::{conversations, messages},
};
use crate::domain::{
    BranchMessage, ConversationId, Message, MessageId, Revision, Tree, TreeNode, UserId,
};

const SWITCH: Operation = Operation::new("UPDATE", "UPDATE conversations");

/// Every message's links in the conversation.
pub(super) async fn tree_of(conn: &mut Conn, conversation: ConversationId) -> QueryResult<Tree> {
    let nodes = messages::table
        .filter(messages::conversation_id.eq(conversation.as_uuid()))
        .select((messages::id, messages::parent_id, messages::sequence))
        .load::<(Uuid, Option<Uuid>, Revision)>(conn)
        .await?;
    Ok(Tree::new(
        nodes
            .into_iter()
            .map(|(id, parent, sequence)| TreeNode {
                id: MessageId::from_uuid(id),
                parent: parent.map(MessageId::from_uuid),
                sequence,
            })
            .collect(),
    ))
}

/// The messages `ids` of the conversation, with their tool calls, in the order of `ids`, each in
/// its place in `tree`.
async fn placed_messages(
    conn: &mut Conn,
    conversation: ConversationId,
    tree: &Tree,
    ids: &[MessageId],
) -> Result<Vec<BranchMessage>, StoreError> {
    let wanted: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
    let rows = messages::table
        .filter(messages::conversation_id.eq(conversation.as_uuid()))
        .filter(messages::id.eq_any(&wanted))
        .select(MessageRow::as_select())
        .load::<MessageRow>(conn)
        .await?;
    let calls = tool_calls_of(conn, &rows).await?;
    let mut by_id: HashMap<MessageId, Message> = with_tool_calls(conversation, rows, calls)?
        .into_iter()
        .map(|message| (message.id, message))
        .collect();
    ids.iter()
        .map(|id| {
            let message = by_id.remove(id);
            let place = tree.place(*id);
            match (message, place) {
                (Some(message), Some(place)) => Ok(BranchMessage { message, place }),
                _ => Err(StoreError::Corrupt(format!(
                    "message {id} is on the branch of conversation {conversation} but could not be read"
                ))),
            }
        })
        .collect()
}

/// Up to `newest` of the newest messages of the branch that ends at `leaf`, newest first.
pub(super) async fn newest_on_branch(
    conn: &mut Conn,
    conversation: ConversationId,
    leaf: MessageId,
    newest: usize,
) -> Result<Vec<BranchMessage>, StoreError> {
    let tree = tree_of(conn, conversation).await?;
    let branch = tree.branch(leaf);
    let skip = branch.len().saturating_sub(newest);
    let mut shown: Vec<MessageId> = branch[skip..].to_vec();
    shown.reverse();
    placed_messages(conn, conversation, &tree, &shown).await
}

/// A page of the branch that ends at `leaf`: up to `limit` messages after `after` (from its
/// first message without), oldest first. `None` if `after` is not on the branch.
pub(super) async fn branch_page(
    conn: &mut Conn,
    conversation: ConversationId,
    leaf: MessageId,
    after: Option<MessageId>,
    limit: usize,
) -> Result<Option<Vec<BranchMessage>>, StoreError> {
    let tree = tree_of(conn, conversation).await?;
    let branch = tree.branch(leaf);
    let start = match after {
        None => 0,
        Some(after) => match branch.iter().position(|id| *id == after) {
            Some(at) => at + 1,
            None => return Ok(None),
        },
    };
    let end = start.saturating_add(limit).min(branch.len());
    let page = branch.get(start..end).unwrap_or_default();
    placed_messages(conn, conversation, &tree, page)
        .await
        .map(Some)
}

impl Store {
    /// Makes the branch through `message` the current one of the user's conversation: its leaf
    /// becomes the newest message at or below `message`. `None` if the user has no such
    /// conversation; `Some(false)` if it holds no such message.
    pub async fn switch_branch(
        &self,
        user: UserId,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<Option<bool>, StoreError> {
        self.run(SWITCH, async |conn| {
            conn.transaction::<Option<bool>, StoreError, _>(async |conn| {
                // Held until the commit, so that no message is added meanwhile.
                let leaf = conversations::table
                    .filter(conversations::id.eq(conversation.as_uuid()))
                    .filter(conversations::user_id.eq(user.as_uuid()))
                    .select(conversations::leaf_id)
                    .for_no_key_update()
                    .first::<Option<Uuid>>(conn)
                    .await
                    .optional()?;
                let Some(leaf) = leaf else {
                    return Ok(None);
                };
                let tree = tree_of(conn, conversation).await?;
                let Some(new_leaf) = tree.newest_descendant(message) else {
                    return Ok(Some(false));
                };
                if Some(*new_leaf.as_uuid()) == leaf {
                    return Ok(Some(true));
                }
                let depth = tree.branch(new_leaf).len().saturating_sub(1);
                diesel::update(conversations::table.find(conversation.as_uuid()))
                    .set((
                        conversations::leaf_id.eq(new_leaf.as_uuid()),
                        conversations::leaf_depth.eq(i32::try_from(depth).unwrap_or(i32::MAX)),
                        conversations::leaf_jumps.eq(conversations::leaf_jumps + 1),
                    ))
                    .execute(conn)
                    .await?;
                Ok(Some(true))
            })
            .await
        })
        .await
    }
}
