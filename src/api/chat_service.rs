use std::pin::Pin;

use secrecy::SecretString;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    ApiError, Caller, convert,
    proto::{
        MessageAccepted, MessageCompleted, MessageDelta, SendMessageRequest, SendMessageResponse,
        SubmitToolResultsRequest, SubmitToolResultsResponse, ToolDefinition, Usage,
        chat_service_server::ChatService, send_message_response::Event,
        submit_tool_results_response::Event as ContinuationEvent,
    },
    request_id,
};
use crate::{
    chat::{
        ChatError, ClientTool, Completion, GivenToolResult, ToolResultsRequest, TurnEvent,
        TurnRequest, Turns,
    },
    domain::{ConversationId, MessageId},
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

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn event(event: Event) -> SendMessageResponse {
    SendMessageResponse { event: Some(event) }
}

fn encode(turn_event: TurnEvent) -> SendMessageResponse {
    let event = match turn_event {
        TurnEvent::Delta(text) => Event::Delta(MessageDelta { text }),
        TurnEvent::ToolCall(call) => Event::ToolCall(convert::tool_call(call)),
        TurnEvent::ToolResult(result) => Event::ToolResult(convert::tool_result(result)),
        TurnEvent::Completed(completion) => Event::Completed(completed(completion)),
    };
    SendMessageResponse { event: Some(event) }
}

fn encode_continuation(turn_event: TurnEvent) -> SubmitToolResultsResponse {
    let event = match turn_event {
        TurnEvent::Delta(text) => ContinuationEvent::Delta(MessageDelta { text }),
        TurnEvent::ToolCall(call) => ContinuationEvent::ToolCall(convert::tool_call(call)),
        TurnEvent::ToolResult(result) => {
            ContinuationEvent::ToolResult(convert::tool_result(result))
        }
        TurnEvent::Completed(completion) => ContinuationEvent::Completed(completed(completion)),
    };
    SubmitToolResultsResponse { event: Some(event) }
}

fn completed(completion: Completion) -> MessageCompleted {
    MessageCompleted {
        message: Some(convert::message(completion.message)),
        finish_reason: completion.finish_reason,
        model: completion.model,
        usage: completion.usage.map(|usage| Usage {
            input_tokens: i32::try_from(usage.input_tokens).unwrap_or(i32::MAX),
            output_tokens: i32::try_from(usage.output_tokens).unwrap_or(i32::MAX),
        }),
    }
}

/// The reply's events as the client reads them: the last one, when the stream had no room for
/// it, after everything else.
fn reply_stream<T>(
    events: tokio::sync::mpsc::Receiver<Result<TurnEvent, ChatError>>,
    last_word: tokio::sync::oneshot::Receiver<Result<TurnEvent, ChatError>>,
    encode: fn(TurnEvent) -> T,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static
where
    T: Send + 'static,
{
    let last_word = futures_util::stream::once(last_word).filter_map(Result::ok);
    ReceiverStream::new(events)
        .chain(last_word)
        .map(move |item| {
            item.map(encode)
                .map_err(|error| Status::from(ApiError::from(error)))
        })
}

fn client_tools(tools: Vec<ToolDefinition>) -> Vec<ClientTool> {
    tools
        .into_iter()
        .map(|tool| ClientTool {
            name: tool.name,
            description: tool.description,
            parameters_json: tool.parameters_json,
        })
        .collect()
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
    type SendMessageStream = EventStream<SendMessageResponse>;

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
            tools: client_tools(message.tools),
        };
        let started = self.turns.start(turn).await.map_err(ApiError::from)?;

        let accepted = event(Event::Accepted(MessageAccepted {
            conversation_id: started.conversation_id.to_string(),
            user_message: Some(convert::message(started.user_message)),
        }));
        let reply = reply_stream(started.events, started.last_word, encode);
        Ok(Response::new(Box::pin(
            tokio_stream::once(Ok(accepted)).chain(reply),
        )))
    }

    type SubmitToolResultsStream = EventStream<SubmitToolResultsResponse>;

    async fn submit_tool_results(
        &self,
        request: Request<SubmitToolResultsRequest>,
    ) -> Result<Response<Self::SubmitToolResultsStream>, Status> {
        let received_at = std::time::Instant::now();
        let user = self.caller.user(&request).await?;
        let request_id = request_id(&request);
        let bearer = bearer_token(&request);
        let message = request.into_inner();
        let conversation = ConversationId::parse(&message.conversation_id)
            .map_err(|e| ApiError::invalid("conversation_id", e))?;
        let message_id = MessageId::parse(&message.message_id)
            .map_err(|e| ApiError::invalid("message_id", e))?;
        if message.results.is_empty() {
            return Err(ApiError::from(ChatError::invalid(
                "results",
                "give one result for each call that awaits one",
            ))
            .into());
        }
        let results = message
            .results
            .into_iter()
            .map(|result| GivenToolResult {
                tool_call_id: result.tool_call_id,
                result_json: result.result_json,
                failed: result.failed,
            })
            .collect();
        let continuation = self
            .turns
            .submit_tool_results(ToolResultsRequest {
                user,
                conversation,
                message: message_id,
                results,
                tools: client_tools(message.tools),
                request_id,
                received_at,
                bearer,
            })
            .await
            .map_err(ApiError::from)?;
        let stored = continuation
            .results
            .into_iter()
            .map(|result| Ok(encode_continuation(TurnEvent::ToolResult(result))))
            .collect::<Vec<_>>();
        let reply = reply_stream(
            continuation.events,
            continuation.last_word,
            encode_continuation,
        );
        Ok(Response::new(Box::pin(
            tokio_stream::iter(stored).chain(reply),
        )))
    }
}
