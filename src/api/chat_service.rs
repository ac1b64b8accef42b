use std::pin::Pin;

use secrecy::SecretString;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    ApiError, Caller, convert,
    proto::{
        MessageAccepted, MessageCompleted, MessageDelta, SendMessageRequest, SendMessageResponse,
        Usage, chat_service_server::ChatService, send_message_response::Event,
    },
    request_id,
};
use crate::{
    chat::{TurnEvent, TurnRequest, Turns},
    domain::ConversationId,
};

/// `chat.v1.ChatService`.
pub struct ChatApi {
    caller: Caller,
    turns: Turns,
}

impl ChatApi {
    pub fn new(caller: Caller, turns: Turns) -> Self {
        Self { caller, turns }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SendMessageResponse, Status>> + Send>>;

fn event(event: Event) -> SendMessageResponse {
    SendMessageResponse { event: Some(event) }
}

fn encode(turn_event: TurnEvent) -> SendMessageResponse {
    match turn_event {
        TurnEvent::Delta(text) => event(Event::Delta(MessageDelta { text })),
        TurnEvent::ToolCall(call) => event(Event::ToolCall(convert::tool_call(call))),
        TurnEvent::ToolResult(result) => event(Event::ToolResult(convert::tool_result(result))),
        TurnEvent::Completed(completion) => event(Event::Completed(MessageCompleted {
            message: Some(convert::message(completion.message)),
            finish_reason: completion.finish_reason,
            model: completion.model,
            usage: completion.usage.map(|usage| Usage {
                input_tokens: i32::try_from(usage.input_tokens).unwrap_or(i32::MAX),
                output_tokens: i32::try_from(usage.output_tokens).unwrap_or(i32::MAX),
            }),
        })),
    }
}

/// The caller's bearer token, already verified, for tool servers that act on its behalf.
fn bearer_token<T>(request: &Request<T>) -> Option<SecretString> {
    let header = request.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| SecretString::from(token.trim()))
}

#[tonic::async_trait]
impl ChatService for ChatApi {
    type SendMessageStream = EventStream;

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<Self::SendMessageStream>, Status> {
        let received_at = std::time::Instant::now();
        let user = self.caller.user(&request).await?;
        let request_id = request_id(&request);
        let bearer = bearer_token(&request);
        let message = request.into_inner();
        let conversation = match message.conversation_id.as_str() {
            "" => None,
            id => Some(
                ConversationId::parse(id).map_err(|e| ApiError::invalid("conversation_id", e))?,
            ),
        };
        let turn = TurnRequest {
            received_at,
            user,
            conversation,
            content: message.content,
            request_id,
            bearer,
        };
        let started = self.turns.start(turn).await.map_err(ApiError::from)?;

        let accepted = event(Event::Accepted(MessageAccepted {
            conversation_id: started.conversation_id.to_string(),
            user_message: Some(convert::message(started.user_message)),
        }));
        let reply = ReceiverStream::new(started.events);
        // The last event, when the stream had no room for it, comes after everything else.
        let last_word = futures_util::stream::once(started.last_word).filter_map(Result::ok);
        let reply = reply.chain(last_word).map(|item| {
            item.map(encode)
                .map_err(|error| Status::from(ApiError::from(error)))
        });
        Ok(Response::new(Box::pin(
            tokio_stream::once(Ok(accepted)).chain(reply),
        )))
    }
}
