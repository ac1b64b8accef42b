//! Conversation queries: listing, reading in pages and deleting a user's conversations.

use std::sync::Arc;

use super::{Admission, ChatError, Identities, Limit, RecentContexts};
use crate::{
    domain::{
        BranchMessage, Conversation, ConversationCursor, ConversationId, Message, MessageCursor,
        MessageId, PageSize, PageTokenCodec, SearchCursor, SearchHit, SearchQuery, Title, UserId,
        now,
    },
    store::{MessagesPage, Store},
};

/// Which page of a listing the client asked for.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    pub size: PageSize,
    /// Empty for the first page.
    pub token: &'a str,
}

/// One page of a listing; `next_page_token` is empty on the last page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

const PAGE_TOKEN_FIELD: &str = "page_token";
const CONVERSATION: &str = "conversation";

/// At most this much text goes into one response, half of what gRPC clients accept by default
/// (4 MiB), so that no stored conversation can produce a response a client refuses.
pub const RESPONSE_TEXT_BYTES: usize = 2 * 1024 * 1024;

// A reply the model may write fits in one response.
const _: () = assert!(crate::llm::MAX_REPLY_BYTES <= RESPONSE_TEXT_BYTES);

/// A conversation with a window of its newest messages.
#[derive(Debug, Clone)]
pub struct ConversationView {
    pub conversation: Conversation,
    /// The newest of its current branch, oldest first.
    pub messages: Vec<BranchMessage>,
    /// Whether the conversation has messages older than the window.
    pub has_older_messages: bool,
}

/// Reading and managing one user's conversations.
#[derive(Clone)]
pub struct Conversations {
    store: Store,
    /// Forgets what turns remember of a conversation that is deleted.
    recent: Arc<RecentContexts>,
    tokens: PageTokenCodec,
    /// How many of its newest messages a conversation is read with.
    window: usize,
    /// Knows how many conversations a user may keep, and counts refusals.
    admission: Arc<Admission>,
    /// Told when a user turns out to be deleted, so that the next request starts afresh.
    identities: Identities,
}

impl Conversations {
    pub fn new(
        store: Store,
        recent: Arc<RecentContexts>,
        window: usize,
        admission: Arc<Admission>,
        identities: Identities,
    ) -> Self {
        let tokens = PageTokenCodec::new(store.page_token_key());
        Self {
            store,
            recent,
            tokens,
            window,
            admission,
            identities,
        }
    }

    pub async fn create(&self, user: UserId, title: Title) -> Result<Conversation, ChatError> {
        let time = now();
        let conversation = Conversation {
            id: ConversationId::generate(),
            title,
            create_time: time,
            update_time: time,
        };
        let limit = self.admission.storage().conversations_per_user;
        if !self
            .store
            .create_conversation(user, &conversation, limit)
            .await
            .map_err(|e| self.identities.unless_gone(user, e))?
        {
            return Err(self.admission.storage_refusal(Limit::UserConversations));
        }
        Ok(conversation)
    }

    pub async fn list(
        &self,
        user: UserId,
        page: PageRequest<'_>,
    ) -> Result<Page<Conversation>, ChatError> {
        let after = match page.token {
            "" => None,
            token => Some(
                self.tokens
                    .decode_conversations(user, token)
                    .map_err(|e| ChatError::invalid(PAGE_TOKEN_FIELD, e))?,
            ),
        };
        let items = self
            .store
            .list_conversations(user, after, page.size.get() + 1)
            .await?;
        Ok(paginate(items, page.size, |last| {
            let cursor = ConversationCursor {
                update_time: last.update_time,
                id: last.id,
            };
            self.tokens.encode_conversations(user, &cursor)
        }))
    }

    /// The conversation with its newest messages: at most `window` of them and
    /// [`RESPONSE_TEXT_BYTES`] of their text.
    pub async fn get(
        &self,
        user: UserId,
        id: ConversationId,
    ) -> Result<ConversationView, ChatError> {
        // One more than the window shows whether there are older messages.
        let (conversation, mut newest) = self
            .store
            .conversation_with_newest_messages(user, id, self.window.saturating_add(1))
            .await?
            .ok_or(ChatError::NotFound(CONVERSATION))?;
        let mut has_older_messages = newest.len() > self.window;
        newest.truncate(self.window);
        let kept = fitting(
            newest.iter().map(|m| &m.message),
            RESPONSE_TEXT_BYTES,
            false,
        );
        has_older_messages |= kept < newest.len();
        newest.truncate(kept);
        newest.reverse();
        Ok(ConversationView {
            conversation,
            messages: newest,
            has_older_messages,
        })
    }

    /// Makes the branch through `message` the current one, and returns the conversation as
    /// [`Conversations::get`] then does.
    pub async fn switch_branch(
        &self,
        user: UserId,
        id: ConversationId,
        message: MessageId,
    ) -> Result<ConversationView, ChatError> {
        match self.store.switch_branch(user, id, message).await? {
            None => return Err(ChatError::NotFound(CONVERSATION)),
            Some(false) => return Err(ChatError::NotFound("message")),
            Some(true) => {}
        }
        // What this replica remembers of the conversation is one line, which it is no longer.
        self.recent.forget(id);
        self.get(user, id).await
    }

    pub async fn list_messages(
        &self,
        user: UserId,
        id: ConversationId,
        page: PageRequest<'_>,
    ) -> Result<Page<BranchMessage>, ChatError> {
        let after = match page.token {
            "" => None,
            token => Some(
                self.tokens
                    .decode_messages(user, id, token)
                    .map_err(|e| ChatError::invalid(PAGE_TOKEN_FIELD, e))?,
            ),
        };
        let mut items = match self
            .store
            .list_messages(user, id, after, page.size.get() + 1)
            .await?
        {
            MessagesPage::Found(items) => items,
            MessagesPage::NoConversation => return Err(ChatError::NotFound(CONVERSATION)),
            MessagesPage::BranchChanged => {
                return Err(ChatError::FailedPrecondition(
                    "the conversation's current branch changed since this page token was \
                     issued: list its messages again from the first page"
                        .to_owned(),
                ));
            }
        };
        // A page whose text would not fit ends early; its token continues after what it holds.
        let kept = fitting(items.iter().map(|m| &m.message), RESPONSE_TEXT_BYTES, true)
            .min(page.size.get());
        let more = kept < items.len();
        items.truncate(kept);
        let next_page_token = match items.last() {
            Some(last) if more => {
                let cursor = MessageCursor {
                    after: last.message.id,
                };
                self.tokens.encode_messages(user, id, &cursor)
            }
            _ => String::new(),
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// The user's conversations that match `query`, best first, a page at a time.
    pub async fn search(
        &self,
        user: UserId,
        query: &SearchQuery,
        page: PageRequest<'_>,
    ) -> Result<Page<SearchHit>, ChatError> {
        let after = match page.token {
            "" => None,
            token => Some(
                self.tokens
                    .decode_search(user, query, token)
                    .map_err(|e| ChatError::invalid(PAGE_TOKEN_FIELD, e))?,
            ),
        };
        let hits = self
            .store
            .search_conversations(user, query, after, page.size.get() + 1)
            .await?;
        Ok(paginate(hits, page.size, |last| {
            let cursor = SearchCursor {
                rank: last.rank,
                conversation: last.conversation.id,
            };
            self.tokens.encode_search(user, query, &cursor)
        }))
    }

    /// Gives the conversation the client's title, which the model will not replace.
    pub async fn rename(
        &self,
        user: UserId,
        id: ConversationId,
        title: Title,
    ) -> Result<Conversation, ChatError> {
        self.store
            .rename_conversation(user, id, &title)
            .await?
            .ok_or(ChatError::NotFound(CONVERSATION))
    }

    /// The conversation as it is, without its messages.
    pub async fn conversation(
        &self,
        user: UserId,
        id: ConversationId,
    ) -> Result<Conversation, ChatError> {
        self.store
            .conversation_with_newest_messages(user, id, 0)
            .await?
            .map(|(conversation, _)| conversation)
            .ok_or(ChatError::NotFound(CONVERSATION))
    }

    pub async fn delete(&self, user: UserId, id: ConversationId) -> Result<(), ChatError> {
        let deleted = self.store.delete_conversation(user, id).await?;
        self.recent.forget(id);
        if deleted {
            Ok(())
        } else {
            Err(ChatError::NotFound(CONVERSATION))
        }
    }
}

/// Cuts a list fetched with one extra item into a page, issuing a token only when that extra
/// item proved there is more.
fn paginate<T>(
    mut items: Vec<T>,
    size: PageSize,
    token_after: impl FnOnce(&T) -> String,
) -> Page<T> {
    let next_page_token = if items.len() > size.get() {
        items.truncate(size.get());
        items.last().map(token_after).unwrap_or_default()
    } else {
        String::new()
    };
    Page {
        items,
        next_page_token,
    }
}

/// How many of `messages`, from the first, fit in `budget` bytes of text. With `at_least_one`, the
/// first always counts, so that a reader paging through makes progress whatever its size.
fn fitting<'a>(
    messages: impl IntoIterator<Item = &'a Message>,
    budget: usize,
    at_least_one: bool,
) -> usize {
    let mut used = 0usize;
    let mut count = 0;
    for message in messages {
        used = used.saturating_add(text_bytes(message));
        if used > budget && !(at_least_one && count == 0) {
            break;
        }
        count += 1;
    }
    count
}

/// The bytes a message's text takes in a response: its content and its tool calls, with their
/// results.
fn text_bytes(message: &Message) -> usize {
    let calls: usize = message
        .tool_calls
        .iter()
        .map(|call| {
            let result = call.result.as_ref().map_or(0, |r| r.to_string().len());
            call.name.len()
                + call.provider_call_id.len()
                + call.arguments.to_string().len()
                + result
        })
        .sum();
    message.content.len() + calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageId, MessageStatus, Role};

    fn message(bytes: usize) -> Message {
        Message {
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            role: Role::User,
            content: "x".repeat(bytes),
            status: MessageStatus::Complete,
            create_time: now(),
            tool_calls: Vec::new(),
            model: None,
            usage: None,
        }
    }

    #[test]
    fn messages_are_kept_while_their_text_fits() {
        let messages: Vec<Message> = [40, 40, 40].map(message).into();
        assert_eq!(fitting(&messages, 100, false), 2);
        assert_eq!(fitting(&messages, 120, false), 3);
        assert_eq!(fitting(&messages, 39, false), 0);
    }

    #[test]
    fn a_reader_paging_through_always_gets_one() {
        let messages: Vec<Message> = [500, 10].map(message).into();
        assert_eq!(fitting(&messages, 100, true), 1);
        assert_eq!(fitting(&[], 100, true), 0);
    }
}
