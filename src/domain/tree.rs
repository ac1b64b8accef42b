//! A conversation as a tree: each message follows a parent (a first message follows none), an
//! edit or another reply starts a sibling, and the conversation's current leaf names the branch
//! that is shown and continued: the path from the root to it.

use std::collections::HashMap;

use super::{
    conversation::Message,
    history::Revision,
    ids::{InvalidId, MessageId},
};

/// Where a new user message goes in its conversation's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// After the current leaf: the conversation goes on.
    AfterLeaf,
    /// After this message: an edit of one of its children, or a new branch from it.
    After(MessageId),
    /// As another first message: an edit of the first.
    AsRoot,
}

impl Placement {
    /// The place a client names: empty for the leaf, the nil UUID for a first message, else the
    /// message the new one follows.
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        if text.is_empty() {
            return Ok(Self::AfterLeaf);
        }
        let parent = MessageId::parse(text)?;
        Ok(if parent.as_uuid().is_nil() {
            Self::AsRoot
        } else {
            Self::After(parent)
        })
    }

    /// Whether the client chose the place, rather than going on from the leaf.
    pub fn is_chosen(self) -> bool {
        self != Self::AfterLeaf
    }
}

/// A message's place among its siblings, and the message it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreePlace {
    /// `None` for a first message.
    pub parent: Option<MessageId>,
    /// Its place among the messages that follow the same parent, oldest first: from 0.
    pub sibling_index: u32,
    /// How many messages follow that parent, itself included: at least 1.
    pub sibling_count: u32,
    /// Those messages, oldest first, when there is more than one: what a switch to another
    /// version names. Empty for a message without siblings.
    pub siblings: Vec<MessageId>,
}

impl TreePlace {
    /// The place of a message in a conversation that was never branched: each message follows
    /// the one before it, and has no sibling.
    pub fn in_line(parent: Option<MessageId>) -> Self {
        Self {
            parent,
            sibling_index: 0,
            sibling_count: 1,
            siblings: Vec::new(),
        }
    }
}

/// A message as a branch shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchMessage {
    pub message: Message,
    pub place: TreePlace,
}

/// One message's links, as the store keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeNode {
    pub id: MessageId,
    pub parent: Option<MessageId>,
    /// Its place in the order the conversation's messages were written: a parent always comes
    /// before its children.
    pub sequence: Revision,
}

/// The links of every message of a conversation.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: HashMap<MessageId, TreeNode>,
    /// Each parent's children (`None`: the first messages), oldest first.
    children: HashMap<Option<MessageId>, Vec<MessageId>>,
}

impl Tree {
    pub fn new(mut nodes: Vec<TreeNode>) -> Self {
        nodes.sort_by_key(|node| node.sequence);
        let mut tree = Self::default();
        for node in nodes {
            tree.children.entry(node.parent).or_default().push(node.id);
            tree.nodes.insert(node.id, node);
        }
        tree
    }

    /// The path from the root to `leaf`, root first; empty if the conversation has no such
    /// message. A link to a message the tree lacks, or one that does not come earlier in the
    /// conversation's order, ends the path there, so that no store can make it loop.
    pub fn branch(&self, leaf: MessageId) -> Vec<MessageId> {
        let mut path = Vec::new();
        let mut next = self.nodes.get(&leaf);
        while let Some(node) = next {
            path.push(node.id);
            next = node
                .parent
                .and_then(|parent| self.nodes.get(&parent))
                .filter(|parent| parent.sequence < node.sequence);
        }
        path.reverse();
        path
    }

    /// The place of message `id`; `None` if the conversation has no such message.
    pub fn place(&self, id: MessageId) -> Option<TreePlace> {
        let node = self.nodes.get(&id)?;
        let siblings = self.children.get(&node.parent)?;
        let index = siblings.iter().position(|sibling| *sibling == id)?;
        Some(TreePlace {
            parent: node.parent,
            sibling_index: u32::try_from(index).unwrap_or(u32::MAX),
            sibling_count: u32::try_from(siblings.len()).unwrap_or(u32::MAX),
            siblings: match siblings.len() {
                1 => Vec::new(),
                _ => siblings.clone(),
            },
        })
    }

    /// The newest message among `id` and everything that follows it: the leaf a switch to `id`
    /// shows, with the latest turn taken below it. `None` if the conversation has no such message.
    pub fn newest_descendant(&self, id: MessageId) -> Option<MessageId> {
        let start = self.nodes.get(&id)?;
        let mut newest = start;
        let mut open = vec![start.id];
        while let Some(next) = open.pop() {
            for child in self.children.get(&Some(next)).into_iter().flatten() {
                let Some(node) = self.nodes.get(child) else {
                    continue;
                };
                // Children come later than their parent; anything else is not followed.
                if node.sequence <= self.nodes.get(&next).map_or(i64::MAX, |n| n.sequence) {
                    continue;
                }
                if node.sequence > newest.sequence {
                    newest = node;
                }
                open.push(node.id);
            }
        }
        Some(newest.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(count: usize) -> Vec<MessageId> {
        (0..count).map(|_| MessageId::generate()).collect()
    }

    fn node(id: MessageId, parent: Option<MessageId>, sequence: Revision) -> TreeNode {
        TreeNode {
            id,
            parent,
            sequence,
        }
    }

    /// u0 ─ a1 ─ u2 ─ a3
    ///         └─ u4 ─ a5      (u4 edits u2)
    ///              └─ a6      (a6 is another reply to u4)
    fn edited() -> (Tree, Vec<MessageId>) {
        let m = ids(7);
        let tree = Tree::new(vec![
            node(m[5], Some(m[4]), 6),
            node(m[0], None, 1),
            node(m[1], Some(m[0]), 2),
            node(m[2], Some(m[1]), 3),
            node(m[3], Some(m[2]), 4),
            node(m[4], Some(m[1]), 5),
            node(m[6], Some(m[4]), 7),
        ]);
        (tree, m)
    }

    #[test]
    fn a_place_is_the_leaf_a_message_or_the_root() {
        assert_eq!(Placement::parse(""), Ok(Placement::AfterLeaf));
        assert_eq!(
            Placement::parse("00000000-0000-0000-0000-000000000000"),
            Ok(Placement::AsRoot)
        );
        let id = MessageId::generate();
        assert_eq!(Placement::parse(&id.to_string()), Ok(Placement::After(id)));
        assert!(Placement::parse("not an id").is_err());
    }

    #[test]
    fn a_branch_is_the_path_from_the_root_to_its_leaf() {
        let (tree, m) = edited();
        assert_eq!(tree.branch(m[3]), [m[0], m[1], m[2], m[3]]);
        assert_eq!(tree.branch(m[6]), [m[0], m[1], m[4], m[6]]);
        assert!(tree.branch(MessageId::generate()).is_empty());
    }

    #[test]
    fn siblings_are_counted_oldest_first() {
        let (tree, m) = edited();
        assert_eq!(tree.place(m[0]), Some(TreePlace::in_line(None)));
        let place = |id| tree.place(id).map(|p| (p.sibling_index, p.sibling_count));
        assert_eq!(place(m[2]), Some((0, 2)));
        assert_eq!(place(m[4]), Some((1, 2)));
        assert_eq!(place(m[5]), Some((0, 2)));
        assert_eq!(place(m[6]), Some((1, 2)));
        assert_eq!(tree.place(m[4]).and_then(|p| p.parent), Some(m[1]));
        assert_eq!(tree.place(m[4]).map(|p| p.siblings), Some(vec![m[2], m[4]]));
    }

    #[test]
    fn a_switch_shows_the_newest_message_below() {
        let (tree, m) = edited();
        assert_eq!(tree.newest_descendant(m[2]), Some(m[3]));
        assert_eq!(tree.newest_descendant(m[4]), Some(m[6]));
        assert_eq!(tree.newest_descendant(m[1]), Some(m[6]));
        assert_eq!(tree.newest_descendant(m[6]), Some(m[6]));
        assert_eq!(tree.newest_descendant(MessageId::generate()), None);
    }

    #[test]
    fn links_that_do_not_go_back_in_order_are_not_followed() {
        let m = ids(2);
        // Each names the other as its parent: a store cannot do this, and the walk must end.
        let tree = Tree::new(vec![node(m[0], Some(m[1]), 1), node(m[1], Some(m[0]), 2)]);
        assert_eq!(tree.branch(m[1]), [m[0], m[1]]);
        assert_eq!(tree.newest_descendant(m[1]), Some(m[1]));
    }
}
