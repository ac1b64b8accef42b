//! `chat.v1.ConversationService`: a user's conversations and their messages.

use tonic::{Request, Response, Status};

use super::{
    ApiError, Caller, convert,
    proto::{
        ConversationMatch, CreateConversationRequest, CreateConversationResponse,
        DeleteConversationRequest, DeleteConversationResponse, GetConversationRequest,
        GetConversationResponse, ListConversationsRequest, ListConversationsResponse,
        ListMessagesRequest, ListMessagesResponse, SearchConversationsRequest,
        SearchConversationsResponse, SnippetPart, SwitchBranchRequest, SwitchBranchResponse,
        UpdateConversationRequest, UpdateConversationResponse,
        conversation_service_server::ConversationService,
    },
};
use crate::{
    chat::{Conversations, PageRequest},
    domain::{ConversationId, MessageId, PageSize, SearchHit, SearchQuery, Title},
};

/// `chat.v1.ConversationService`: decode, call one use case, encode.
pub struct ConversationApi {
    caller: Caller,
    conversations: Conversations,
}

impl ConversationApi {
    pub fn new(caller: Caller, conversations: Conversations) -> Self {
        Self {
            caller,
            conversations,
        }
    }
}

fn conversation_id(text: &str) -> Result<ConversationId, ApiError> {
    ConversationId::parse(text).map_err(|e| ApiError::invalid("conversation_id", e))
}

fn page_size(requested: i32) -> Result<PageSize, ApiError> {
    PageSize::parse(requested).map_err(|e| ApiError::invalid("page_size", e))
}

/// What an UpdateConversation asks for, read from its conversation and update mask (AIP-134).
struct Update {
    id: ConversationId,
    /// `None`: nothing to change.
    title: Option<Title>,
}

/// Fields of a conversation that only the server writes: named in a mask, they are ignored.
const OUTPUT_ONLY: [&str; 3] = ["id", "create_time", "update_time"];

fn update(request: &UpdateConversationRequest) -> Result<Update, ApiError> {
    let conversation = request.conversation.as_ref().ok_or_else(|| {
        ApiError::invalid("conversation", "is required: give its id and the new title")
    })?;
    let id = ConversationId::parse(&conversation.id)
        .map_err(|e| ApiError::invalid("conversation.id", e))?;
    let paths = request
        .update_mask
        .as_ref()
        .map_or(&[][..], |mask| mask.paths.as_slice());
    let title_named = if paths.is_empty() {
        // No mask: every field given a value.
        !conversation.title.is_empty()
    } else {
        let mut named = false;
        for path in paths {
            match path.as_str() {
                "title" | "*" => named = true,
                path if OUTPUT_ONLY.contains(&path) => {}
                path => {
                    return Err(ApiError::invalid(
                        "update_mask",
                        format!("names {path:?}, which cannot be updated: only title can"),
                    ));
                }
            }
        }
        named
    };
    if !title_named {
        return Ok(Update { id, title: None });
    }
    let title = Title::parse(&conversation.title)
        .map_err(|e| ApiError::invalid("conversation.title", e))?;
    if title.is_empty() {
        return Err(ApiError::invalid(
            "conversation.title",
            "must not be empty: give the new title",
        ));
    }
    Ok(Update {
        id,
        title: Some(title),
    })
}

fn conversation_match(hit: SearchHit) -> ConversationMatch {
    ConversationMatch {
        conversation: Some(convert::conversation(hit.conversation)),
        message_id: hit.message.to_string(),
        snippet: hit
            .snippet
            .into_iter()
            .map(|part| SnippetPart {
                text: part.text,
                highlighted: part.highlighted,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl ConversationService for ConversationApi {
    async fn create_conversation(
        &self,
        request: Request<CreateConversationRequest>,
    ) -> Result<Response<CreateConversationResponse>, Status> {
        let user = self.caller.user(&request).await?;
        let title =
            Title::parse(&request.get_ref().title).map_err(|e| ApiError::invalid("title", e))?;
        let conversation = self
            .conversations
            .create(user, title)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(CreateConversationResponse {
            conversation: Some(convert::conversation(conversation)),
        }))
    }

    async fn list_conversations(
        &self,
        request: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let user = self.caller.user(&request).await?;
        let message = request.get_ref();
        let page = PageRequest {
            size: page_size(message.page_size)?,
            token: &message.page_token,
        };
        let page = self
            .conversations
            .list(user, page)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListConversationsResponse {
            conversations: page.items.into_iter().map(convert::conversation).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<GetConversationResponse>, Status> {
        let user = self.caller.user(&request).await?;
        let id = conversation_id(&request.get_ref().conversation_id)?;
        let view = self
            .conversations
            .get(user, id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(GetConversationResponse {
            conversation: Some(convert::conversation(view.conversation)),
            messages: view
                .messages
                .into_iter()
                .map(convert::branch_message)
                .collect(),
            has_older_messages: view.has_older_messages,
        }))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let user = self.caller.user(&request).await?;
        let message = request.get_ref();
        let id = conversation_id(&message.conversation_id)?;
        let page = PageRequest {
            size: page_size(message.page_size)?,
            token: &message.page_token,
        };
        let page = self
            .conversations
            .list_messages(user, id, page)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListMessagesResponse {
            messages: page
                .items
                .into_iter()
                .map(convert::branch_message)
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_conversation(
        &self,
        request: Request<DeleteConversationRequest>,
    ) -> Result<Response<DeleteConversationResponse>, Status> {
        let user = self.caller.user(&request).await?;
        let id = conversation_id(&request.get_ref().conversation_id)?;
        self.conversations
            .delete(user, id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(DeleteConversationResponse {}))
    }

    async fn search_conversations(
        &self,
        request: Request<SearchConversationsRequest>,
    ) -> Result<Response<SearchConversationsResponse>, Status> {
        let user = self.caller.user(&request).await?;
        let message = request.get_ref();
        let query =
            SearchQuery::parse(&message.query).map_err(|e| ApiError::invalid("query", e))?;
        let page = PageRequest {
            size: page_size(message.page_size)?,
            token: &message.page_token,
        };
        let page = self
            .conversations
            .search(user, &query, page)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(SearchConversationsResponse {
            matches: page.items.into_iter().map(conversation_match).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_conversation(
        &self,
        request: Request<UpdateConversationRequest>,
    ) -> Result<Response<UpdateConversationResponse>, Status> {
        let user = self.caller.user(&request).await?;
        let update = update(request.get_ref())?;
        let conversation = match update.title {
            Some(title) => self.conversations.rename(user, update.id, title).await,
            None => self.conversations.conversation(user, update.id).await,
        }
        .map_err(ApiError::from)?;
        Ok(Response::new(UpdateConversationResponse {
            conversation: Some(convert::conversation(conversation)),
        }))
    }

    async fn switch_branch(
        &self,
        request: Request<SwitchBranchRequest>,
    ) -> Result<Response<SwitchBranchResponse>, Status> {
        let user = self.caller.user(&request).await?;
        let message = request.get_ref();
        let id = conversation_id(&message.conversation_id)?;
        let to = MessageId::parse(&message.message_id)
            .map_err(|e| ApiError::invalid("message_id", e))?;
        let view = self
            .conversations
            .switch_branch(user, id, to)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(SwitchBranchResponse {
            conversation: Some(convert::conversation(view.conversation)),
            messages: view
                .messages
                .into_iter()
                .map(convert::branch_message)
                .collect(),
            has_older_messages: view.has_older_messages,
        }))
    }
}
