//! Domain values to their protobuf form.

use chrono::{DateTime, Utc};

use super::proto;
use crate::{
    chat::ToolResult,
    domain::{
        BranchMessage, Conversation, Message, MessageStatus, PeriodUsage, Role, Spend, TokenUsage,
        ToolCall, ToolCallStatus,
    },
};

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        // Always below 10^9, so it fits.
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn conversation(conversation: Conversation) -> proto::Conversation {
    proto::Conversation {
        id: conversation.id.to_string(),
        title: conversation.title.into_string(),
        create_time: Some(timestamp(conversation.create_time)),
        update_time: Some(timestamp(conversation.update_time)),
    }
}

pub fn message(message: Message) -> proto::Message {
    proto::Message {
        id: message.id.to_string(),
        conversation_id: message.conversation_id.to_string(),
        role: role(message.role).into(),
        content: message.content,
        create_time: Some(timestamp(message.create_time)),
        status: status(message.status).into(),
        tool_calls: message.tool_calls.into_iter().map(tool_call).collect(),
        parent_id: String::new(),
        sibling_index: 0,
        sibling_count: 0,
        sibling_ids: Vec::new(),
        model: message.model.unwrap_or_default(),
        usage: message
            .usage
            .map(|usage| self::usage(usage.tokens, usage.cost_micros)),
    }
}

/// Tokens, and what they cost where that is known.
pub fn usage(tokens: TokenUsage, cost_micros: Option<i64>) -> proto::Usage {
    let count = |tokens: u32| i32::try_from(tokens).unwrap_or(i32::MAX);
    proto::Usage {
        input_tokens: count(tokens.input_tokens),
        output_tokens: count(tokens.output_tokens),
        cached_input_tokens: count(tokens.cached_input_tokens),
        reasoning_tokens: count(tokens.reasoning_tokens),
        estimated: tokens.estimated,
        cost_micros,
    }
}

/// A period's usage, in all and by model.
pub fn period_usage(usage: PeriodUsage) -> proto::PeriodUsage {
    proto::PeriodUsage {
        start_time: Some(timestamp(usage.span.start_time())),
        end_time: Some(timestamp(usage.span.end_time())),
        total: Some(spend(usage.total)),
        models: usage
            .models
            .into_iter()
            .map(|model| proto::ModelSpend {
                model: model.model,
                spend: Some(spend(model.spend)),
            })
            .collect(),
    }
}

fn spend(spend: Spend) -> proto::Spend {
    proto::Spend {
        calls: spend.calls,
        estimated_calls: spend.estimated_calls,
        input_tokens: spend.input_tokens,
        cached_input_tokens: spend.cached_input_tokens,
        output_tokens: spend.output_tokens,
        reasoning_tokens: spend.reasoning_tokens,
        cost_micros: spend.cost_micros,
    }
}

/// A message as a branch shows it: with the message it follows (the nil UUID for a first
/// message) and its place among its siblings.
pub fn branch_message(shown: BranchMessage) -> proto::Message {
    let place = shown.place;
    proto::Message {
        parent_id: place
            .parent
            .map_or(uuid::Uuid::nil(), |parent| *parent.as_uuid())
            .to_string(),
        sibling_index: place.sibling_index,
        sibling_count: place.sibling_count,
        sibling_ids: place.siblings.iter().map(ToString::to_string).collect(),
        ..message(shown.message)
    }
}

pub fn tool_call(call: ToolCall) -> proto::ToolCall {
    proto::ToolCall {
        id: call.provider_call_id,
        name: call.name,
        arguments_json: call.arguments.to_string(),
        status: tool_call_status(call.status).into(),
        result_json: call.result.map(|r| r.to_string()).unwrap_or_default(),
    }
}

pub fn tool_result(result: ToolResult) -> proto::ToolResult {
    proto::ToolResult {
        tool_call_id: result.provider_call_id,
        status: tool_call_status(result.status).into(),
        result_json: result.result.to_string(),
    }
}

fn tool_call_status(status: ToolCallStatus) -> proto::ToolCallStatus {
    match status {
        ToolCallStatus::Requested => proto::ToolCallStatus::Requested,
        ToolCallStatus::Succeeded => proto::ToolCallStatus::Succeeded,
        ToolCallStatus::Failed => proto::ToolCallStatus::Failed,
    }
}

fn role(role: Role) -> proto::Role {
    match role {
        Role::User => proto::Role::User,
        Role::Assistant => proto::Role::Assistant,
        Role::System => proto::Role::System,
        Role::Tool => proto::Role::Tool,
    }
}

fn status(status: MessageStatus) -> proto::MessageStatus {
    match status {
        MessageStatus::Complete => proto::MessageStatus::Complete,
        MessageStatus::Cancelled => proto::MessageStatus::Cancelled,
        MessageStatus::AwaitingToolResults => proto::MessageStatus::AwaitingToolResults,
        MessageStatus::Interrupted => proto::MessageStatus::Interrupted,
    }
}
