//! `chat.v1.ChatService`: turns streamed to the client, resumed, cancelled and continued with the
//! client's tool results.

use std::pin::Pin;

use secrecy::SecretString;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{
    ApiError, Caller, convert,
    proto::{
        CancelTurnRequest, CancelTurnResponse, Disconnect, GetUsageRequest, GetUsageResponse,
        ListModelsRequest, ListModelsResponse, MessageAccepted, MessageCompleted, MessageDelta,
        Model, RegenerateReplyRequest, RegenerateReplyResponse, ResumeTurnRequest,
        ResumeTurnResponse, SendMessageRequest, SendMessageResponse, SubmitToolResultsRequest,
        SubmitToolResultsResponse, ToolDefinition, chat_service_server::ChatService,
        regenerate_reply_response::Event as RegeneratedEvent,
        resume_turn_response::Event as ResumedEvent, send_message_response::Event,
        submit_tool_results_response::Event as ContinuationEvent,
    },
    request_id,
};
use crate::{
    chat::{
        ChatError, ClientTool, Completion, GivenToolResult, RegenerateRequest, Sequenced,
        ToolResultsRequest, TurnEvent, TurnRequest, TurnStream, Turns, UsageReports,
    },
    domain::{ConversationId, MessageId, Placement, RequestKey},
};

/// `chat.v1.ChatService`.
pub struct ChatApi {
    caller: Caller,
    turns: Turns,
    usage: UsageReports,
}

impl ChatApi {
    pub fn new(caller: Caller, turns: Turns, usage: UsageReports) -> Self {
        Self {
            caller,
            turns,
            usage,
        }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn encode(sequenced: Sequenced) -> SendMessageResponse {
    let event = match sequenced.event {
        TurnEvent::Accepted(accepted) => Event::Accepted(MessageAccepted {
            conversation_id: accepted.conversation_id.to_string(),
            user_message: Some(convert::message(accepted.user_message)),
        }),
        TurnEvent::Delta(text) => Event::Delta(MessageDelta { text }),
        TurnEvent::ToolCall(call) => Event::ToolCall(convert::tool_call(*call)),
        TurnEvent::ToolResult(result) => Event::ToolResult(convert::tool_result(*result)),
        TurnEvent::Completed(completion) => Event::Completed(completed(*completion)),
    };
    SendMessageResponse {
        event: Some(event),
        sequence: sequenced.sequence,
    }
}

fn encode_resumed(sequenced: Sequenced) -> ResumeTurnResponse {
    let SendMessageResponse { event, sequence } = encode(sequenced);
    let event = event.map(|event| match event {
        Event::Accepted(accepted) => ResumedEvent::Accepted(accepted),
        Event::Delta(delta) => ResumedEvent::Delta(delta),
        Event::ToolCall(call) => ResumedEvent::ToolCall(call),
        Event::ToolResult(result) => ResumedEvent::ToolResult(result),
        Event::Completed(completed) => ResumedEvent::Completed(completed),
    });
    ResumeTurnResponse { event, sequence }
}

fn encode_regenerated(sequenced: Sequenced) -> RegenerateReplyResponse {
    let SendMessageResponse { event, sequence } = encode(sequenced);
    let event = event.map(|event| match event {
        Event::Accepted(accepted) => RegeneratedEvent::Accepted(accepted),
        Event::Delta(delta) => RegeneratedEvent::Delta(delta),
        Event::ToolCall(call) => RegeneratedEvent::ToolCall(call),
        Event::ToolResult(result) => RegeneratedEvent::ToolResult(result),
        Event::Completed(completed) => RegeneratedEvent::Completed(completed),
    });
    RegenerateReplyResponse { event, sequence }
}

/// A continuation's events: those of SendMessage after accepted, which it has none of.
fn encode_continuation(sequenced: Sequenced) -> SubmitToolResultsResponse {
    let event = match sequenced.event {
        TurnEvent::Accepted(_) => None,
        TurnEvent::Delta(text) => Some(ContinuationEvent::Delta(MessageDelta { text })),
        TurnEvent::ToolCall(call) => Some(ContinuationEvent::ToolCall(convert::tool_call(*call))),
        TurnEvent::ToolResult(result) => {
            Some(ContinuationEvent::ToolResult(convert::tool_result(*result)))
        }
        TurnEvent::Completed(completion) => {
            Some(ContinuationEvent::Completed(completed(*completion)))
        }
    };
    SubmitToolResultsResponse { event }
}

fn completed(completion: Completion) -> MessageCompleted {
    MessageCompleted {
        message: Some(convert::message(completion.message)),
        finish_reason: completion.finish_reason,
        model: completion.model,
        // The reply's calls together; each message's own usage has its cost.
        usage: completion.usage.map(|tokens| convert::usage(tokens, None)),
    }
}

/// A turn's events as the client reads them, failures as statuses.
fn responses<T>(
    turn: TurnStream,
    encode: fn(Sequenced) -> T,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static
where
    T: Send + 'static,
{
    turn.map(move |item| {
        item.map(encode)
            .map_err(|error| Status::from(ApiError::from(error)))
    })
}

fn message_id(text: &str) -> Result<MessageId, ApiError> {
    MessageId::parse(text).map_err(|e| ApiError::invalid("message_id", e))
}

/// Whether the turn goes on when its stream breaks.
fn detached(on_disconnect: i32) -> Result<bool, ApiError> {
    match Disconnect::try_from(on_disconnect) {
        Ok(Disconnect::Unspecified | Disconnect::Cancel) => Ok(false),
        Ok(Disconnect::Continue) => Ok(true),
        Err(_) => Err(ApiError::invalid(
            "on_disconnect",
            "must be DISCONNECT_CANCEL or DISCONNECT_CONTINUE",
        )),
    }
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

/// The model a request names; empty names none.
fn chosen_model(name: String) -> Option<String> {
    (!name.is_empty()).then_some(name)
}

#[tonic::async_trait]
impl ChatService for ChatApi {
    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        self.caller.user(&request).await?;
        let models = self
            .turns
            .models()
            .iter()
            .map(|(model, is_default)| Model {
                name: model.name.to_string(),
                context_window_tokens: model.context_window,
                is_default,
            })
            .collect();
        Ok(Response::new(ListModelsResponse { models }))
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<GetUsageResponse>, Status> {
        let user = self.caller.user(&request).await?;
        let [previous, current] = self.usage.of(user).await.map_err(ApiError::from)?;
        Ok(Response::new(GetUsageResponse {
            current: Some(convert::period_usage(current)),
            previous: Some(convert::period_usage(previous)),
        }))
    }

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
        let placement = Placement::parse(&message.parent_message_id)
            .map_err(|e| ApiError::invalid("parent_message_id", e))?;
        let request_key = RequestKey::parse(message.request_id)
            .map_err(|e| ApiError::invalid("request_id", e))?;
        let detached = detached(message.on_disconnect)?;
        let turn = TurnRequest {
            received_at,
            user,
            conversation,
            content: message.content,
            request_id,
            bearer,
            tools: client_tools(message.tools),
            request_key,
            detached,
            placement,
            model: chosen_model(message.model),
        };
        let turn = self.turns.start(turn).await.map_err(ApiError::from)?;
        Ok(Response::new(Box::pin(responses(turn, encode))))
    }

    type ResumeTurnStream = EventStream<ResumeTurnResponse>;

    async fn resume_turn(
        &self,
        request: Request<ResumeTurnRequest>,
    ) -> Result<Response<Self::ResumeTurnStream>, Status> {
        let user = self.caller.user(&request).await?;
        let message = request.into_inner();
        let turn = message_id(&message.message_id)?;
        let events = self
            .turns
            .resume(user, turn, message.after_sequence)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(Box::pin(responses(events, encode_resumed))))
    }

    async fn cancel_turn(
        &self,
        request: Request<CancelTurnRequest>,
    ) -> Result<Response<CancelTurnResponse>, Status> {
        let user = self.caller.user(&request).await?;
        let turn = message_id(&request.get_ref().message_id)?;
        self.turns
            .cancel(user, turn)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(CancelTurnResponse {}))
    }

    type RegenerateReplyStream = EventStream<RegenerateReplyResponse>;

    async fn regenerate_reply(
        &self,
        request: Request<RegenerateReplyRequest>,
    ) -> Result<Response<Self::RegenerateReplyStream>, Status> {
        let received_at = std::time::Instant::now();
        let user = self.caller.user(&request).await?;
        let request_id = request_id(&request);
        let bearer = bearer_token(&request);
        let message = request.into_inner();
        let regenerate = RegenerateRequest {
            user,
            message: message_id(&message.message_id)?,
            request_id,
            received_at,
            bearer,
            tools: client_tools(message.tools),
            request_key: RequestKey::parse(message.request_id)
                .map_err(|e| ApiError::invalid("request_id", e))?,
            detached: detached(message.on_disconnect)?,
            model: chosen_model(message.model),
        };
        let turn = self
            .turns
            .regenerate(regenerate)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(Box::pin(responses(turn, encode_regenerated))))
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
        let message_id = message_id(&message.message_id)?;
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
            .map(|result| {
                Ok(encode_continuation(Sequenced {
                    sequence: 0,
                    event: TurnEvent::ToolResult(Box::new(result)),
                }))
            })
            .collect::<Vec<_>>();
        let reply = responses(continuation.events, encode_continuation);
        Ok(Response::new(Box::pin(
            tokio_stream::iter(stored).chain(reply),
        )))
    }
}
