//! `chat.v1.ConversationService`: a user's conversations and their messages.

use tonic::{Request, Response, Status};

use super::{
    ApiError, Caller, convert,
    proto::{
        CreateConversationRequest, CreateConversationResponse, DeleteConversationRequest,
        DeleteConversationResponse, GetConversationRequest, GetConversationResponse,
        ListConversationsRequest, ListConversationsResponse, ListMessagesRequest,
        ListMessagesResponse, conversation_service_server::ConversationService,
    },
};
use crate::{
    chat::{Conversations, PageRequest},
    domain::{ConversationId, PageSize, Title},
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
            messages: view.messages.into_iter().map(convert::message).collect(),
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
            messages: page.items.into_iter().map(convert::message).collect(),
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
}
