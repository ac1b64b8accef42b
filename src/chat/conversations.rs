use std::sync::Arc;

use super::{ChatError, RecentContexts};
use crate::{
    domain::{
        Conversation, ConversationCursor, ConversationId, Message, MessageCursor, PageSize,
        PageTokenCodec, Title, UserId, now,
    },
    store::Store,
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

/// Reading and managing one user's conversations.
#[derive(Clone)]
pub struct Conversations {
    store: Store,
    /// Forgets what turns remember of a conversation that is deleted.
    recent: Arc<RecentContexts>,
    tokens: PageTokenCodec,
}

impl Conversations {
    pub fn new(store: Store, recent: Arc<RecentContexts>) -> Self {
        let tokens = PageTokenCodec::new(store.page_token_key());
        Self {
            store,
            recent,
            tokens,
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
        self.store.create_conversation(user, &conversation).await?;
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

    pub async fn get(
        &self,
        user: UserId,
        id: ConversationId,
    ) -> Result<(Conversation, Vec<Message>), ChatError> {
        self.store
            .conversation_with_messages(user, id)
            .await?
            .ok_or(ChatError::NotFound(CONVERSATION))
    }

    pub async fn list_messages(
        &self,
        user: UserId,
        id: ConversationId,
        page: PageRequest<'_>,
    ) -> Result<Page<Message>, ChatError> {
        let after = match page.token {
            "" => None,
            token => Some(
                self.tokens
                    .decode_messages(user, id, token)
                    .map_err(|e| ChatError::invalid(PAGE_TOKEN_FIELD, e))?,
            ),
        };
        let items = self
            .store
            .list_messages(user, id, after, page.size.get() + 1)
            .await?
            .ok_or(ChatError::NotFound(CONVERSATION))?;
        Ok(paginate(items, page.size, |last| {
            let cursor = MessageCursor {
                create_time: last.create_time,
                id: last.id,
            };
            self.tokens.encode_messages(user, id, &cursor)
        }))
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
