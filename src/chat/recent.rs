//! The newest messages of the conversations this replica has served lately, so that a turn can
//! send its request to the model without first reading them from the database.
//!
//! What is remembered can be out of date: another replica, or another turn, may have added to
//! the conversation. So each entry carries the conversation's revision. A turn stores its user
//! message first and learns its sequence; what is remembered serves only if it is at the
//! revision just before, and the turn reads the history from the database otherwise.

use std::{collections::HashMap, sync::Mutex};

use crate::domain::{ConversationId, RecentHistory, RecentMessage, Revision, UserId};

/// Beyond this many bytes of remembered text, entries are let go.
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// What an entry and each of its messages cost besides their text, roughly.
const ENTRY_OVERHEAD: usize = 128;
const MESSAGE_OVERHEAD: usize = 64;

pub struct RecentContexts {
    /// How many of a conversation's newest messages are kept: as many as a context takes.
    limit: usize,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_conversation: HashMap<ConversationId, Entry>,
    bytes: usize,
}

struct Entry {
    owner: UserId,
    revision: Revision,
    /// Oldest first, in the conversation's order.
    messages: Vec<RecentMessage>,
}

impl Entry {
    fn bytes(&self) -> usize {
        ENTRY_OVERHEAD
            + self
                .messages
                .iter()
                .map(|m| MESSAGE_OVERHEAD + m.content.len() + calls_bytes(m))
                .sum::<usize>()
    }
}

/// What a message's tool calls cost, roughly: their arguments and results as text.
fn calls_bytes(message: &RecentMessage) -> usize {
    message
        .tool_calls
        .iter()
        .map(|call| {
            let result = call.result.as_ref().map_or(0, |r| r.to_string().len());
            MESSAGE_OVERHEAD + call.arguments.to_string().len() + result
        })
        .sum()
}

/// A conversation's history as remembered, and the revision it was at.
pub struct Remembered {
    pub revision: Revision,
    /// Oldest first.
    pub messages: Vec<RecentMessage>,
}

impl RecentContexts {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            inner: Mutex::default(),
        }
    }

    /// The user's conversation's newest messages, if remembered.
    pub fn get(&self, user: UserId, conversation: ConversationId) -> Option<Remembered> {
        let entries = self.lock();
        let entry = entries.by_conversation.get(&conversation)?;
        (entry.owner == user).then(|| Remembered {
            revision: entry.revision,
            messages: entry.messages.clone(),
        })
    }

    /// Remembers a history as read from the database (or as a new conversation begins), unless
    /// what is remembered already is as new.
    pub fn remember(&self, user: UserId, conversation: ConversationId, history: RecentHistory) {
        let revision = history.revision;
        let mut messages = history.messages;
        let excess = messages.len().saturating_sub(self.limit);
        messages.drain(..excess);
        let entry = Entry {
            owner: user,
            revision,
            messages,
        };
        let mut entries = self.lock();
        if entries
            .by_conversation
            .get(&conversation)
            .is_some_and(|known| known.owner == user && known.revision >= revision)
        {
            return;
        }
        entries.bytes += entry.bytes();
        if let Some(old) = entries.by_conversation.insert(conversation, entry) {
            entries.bytes -= old.bytes();
        }
        entries.make_room();
    }

    /// Adds a message just stored by a write that took the conversation to `revision`: the
    /// message's sequence. If the entry was not at the revision before it, another write came
    /// in between: the entry is dropped rather than guessed at.
    pub fn record(
        &self,
        user: UserId,
        conversation: ConversationId,
        revision: Revision,
        message: RecentMessage,
    ) {
        let mut entries = self.lock();
        let Entries {
            by_conversation,
            bytes,
        } = &mut *entries;
        let Some(entry) = by_conversation.get_mut(&conversation) else {
            return;
        };
        if entry.owner != user || entry.revision + 1 != revision {
            if let Some(old) = by_conversation.remove(&conversation) {
                *bytes -= old.bytes();
            }
            return;
        }
        *bytes -= entry.bytes();
        entry.messages.push(message);
        let excess = entry.messages.len().saturating_sub(self.limit);
        entry.messages.drain(..excess);
        entry.revision = revision;
        *bytes += entry.bytes();
        entries.make_room();
    }

    pub fn forget(&self, conversation: ConversationId) {
        let mut entries = self.lock();
        if let Some(old) = entries.by_conversation.remove(&conversation) {
            entries.bytes -= old.bytes();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every update leaves the map consistent before it can panic, so a poisoned lock is
        // still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entries {
    /// Lets entries go, in no particular order, until the text fits the budget.
    fn make_room(&mut self) {
        while self.bytes > MAX_BYTES {
            let Some(&victim) = self.by_conversation.keys().next() else {
                self.bytes = 0;
                return;
            };
            if let Some(old) = self.by_conversation.remove(&victim) {
                self.bytes -= old.bytes();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageId, Role};

    fn message(text: &str) -> RecentMessage {
        RecentMessage {
            id: MessageId::generate(),
            role: Role::User,
            content: text.to_owned(),
            tool_calls: Vec::new(),
        }
    }

    fn texts(remembered: &Remembered) -> Vec<&str> {
        remembered
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect()
    }

    fn history(revision: Revision, messages: Vec<RecentMessage>) -> RecentHistory {
        RecentHistory { revision, messages }
    }

    #[test]
    fn only_the_owner_gets_an_entry() {
        let recent = RecentContexts::new(20);
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let conversation = ConversationId::generate();
        recent.remember(alice, conversation, history(1, vec![message("hi")]));
        assert!(recent.get(bob, conversation).is_none());
        let remembered = recent.get(alice, conversation).unwrap();
        assert_eq!((remembered.revision, texts(&remembered)), (1, vec!["hi"]));
    }

    #[test]
    fn an_older_history_does_not_replace_a_newer_one() {
        let recent = RecentContexts::new(20);
        let (user, conversation) = (UserId::generate(), ConversationId::generate());
        recent.remember(
            user,
            conversation,
            history(3, vec![message("a"), message("b")]),
        );
        recent.remember(user, conversation, history(2, vec![message("a")]));
        let remembered = recent.get(user, conversation).unwrap();
        assert_eq!(
            (remembered.revision, texts(&remembered)),
            (3, vec!["a", "b"])
        );
    }

    #[test]
    fn writes_in_sequence_are_added_and_the_oldest_fall_out() {
        let recent = RecentContexts::new(3);
        let (user, conversation) = (UserId::generate(), ConversationId::generate());
        recent.remember(
            user,
            conversation,
            history(2, vec![message("a"), message("b")]),
        );
        recent.record(user, conversation, 3, message("c"));
        recent.record(user, conversation, 4, message("d"));
        let remembered = recent.get(user, conversation).unwrap();
        assert_eq!(
            (remembered.revision, texts(&remembered)),
            (4, vec!["b", "c", "d"])
        );
    }

    #[test]
    fn a_write_that_skips_a_revision_drops_the_entry() {
        let recent = RecentContexts::new(20);
        let (user, conversation) = (UserId::generate(), ConversationId::generate());
        recent.remember(user, conversation, history(1, vec![message("a")]));
        recent.record(user, conversation, 3, message("b"));
        assert!(recent.get(user, conversation).is_none());
        // A later write does not bring it back.
        recent.record(user, conversation, 4, message("c"));
        assert!(recent.get(user, conversation).is_none());
    }

    #[test]
    fn forgotten_entries_are_gone_and_their_bytes_returned() {
        let recent = RecentContexts::new(20);
        let (user, conversation) = (UserId::generate(), ConversationId::generate());
        recent.remember(user, conversation, history(1, vec![message("a")]));
        recent.forget(conversation);
        assert!(recent.get(user, conversation).is_none());
        assert_eq!(recent.lock().bytes, 0);
    }

    #[test]
    fn memory_stays_within_its_budget() {
        let recent = RecentContexts::new(20);
        let user = UserId::generate();
        let big = "x".repeat(1024 * 1024);
        for _ in 0..100 {
            recent.remember(
                user,
                ConversationId::generate(),
                history(1, vec![message(&big)]),
            );
        }
        let entries = recent.lock();
        assert!(entries.bytes <= MAX_BYTES);
        assert!(!entries.by_conversation.is_empty());
        let counted: usize = entries.by_conversation.values().map(Entry::bytes).sum();
        assert_eq!(counted, entries.bytes);
    }
}
