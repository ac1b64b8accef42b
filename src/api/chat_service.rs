use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{
    Caller,
    proto::{SendMessageRequest, SendMessageResponse, chat_service_server::ChatService},
};

/// `chat.v1.ChatService`.
pub struct ChatApi {
    caller: Caller,
}

impl ChatApi {
    pub fn new(caller: Caller) -> Self {
        Self { caller }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SendMessageResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ChatService for ChatApi {
    type SendMessageStream = EventStream;

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<Self::SendMessageStream>, Status> {
        self.caller.user(&request).await?;
        Err(Status::unimplemented("SendMessage is not available yet"))
    }
}
