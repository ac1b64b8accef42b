//! What the model is shown of a conversation.

use std::sync::Arc;

use super::service::TurnSettings;
use crate::{
    domain::{Message, RecentMessage, Role, ToolCall, ToolCallStatus, ToolSpec},
    llm::{ContextMessage, ModelRequest, ModelToolCall},
};

/// The system prompt, then the newest messages of `history` (oldest first) that fit the
/// settings' budgets: at most `history_messages` of them and `history_chars` characters. The
/// newest message always goes, however long; empty messages (a reply cut off before its first
/// token) are left out, since models refuse them. An assistant message that called tools goes
/// with its calls and their results, in the model's format; `tools` are offered.
pub fn build_context(
    settings: &TurnSettings,
    history: Vec<RecentMessage>,
    tools: Arc<[ToolSpec]>,
) -> ModelRequest {
    let mut budget = settings.history_chars;
    let mut kept = Vec::new();
    for message in history.into_iter().rev().take(settings.history_messages) {
        if message.content.is_empty() && message.tool_calls.is_empty() {
            continue;
        }
        let chars = message.content.chars().count() + calls_chars(&message.tool_calls);
        if !kept.is_empty() && chars > budget {
            break;
        }
        budget = budget.saturating_sub(chars);
        kept.push(message);
    }
    let mut messages: Vec<ContextMessage> = settings
        .system_prompt
        .iter()
        .map(|prompt| ContextMessage::text(Role::System, prompt.clone()))
        .collect();
    for message in kept.into_iter().rev() {
        replay(message, &mut messages);
    }
    ModelRequest {
        messages,
        may_call_tools: !tools.is_empty(),
        tools,
    }
}

/// A stored message as the model reads it: an assistant message that called tools is followed
/// by one tool message per call. A call that never got its result (its turn was cut off) is
/// shown as failed, so that no call goes unanswered.
pub fn replay(message: RecentMessage, into: &mut Vec<ContextMessage>) {
    if message.tool_calls.is_empty() {
        into.push(ContextMessage::text(message.role, message.content));
        return;
    }
    let mut calling = ContextMessage::text(message.role, message.content);
    calling.tool_calls = message.tool_calls.iter().map(model_call).collect();
    into.push(calling);
    for call in message.tool_calls {
        let content = result_text(&call);
        into.push(ContextMessage::tool_result(call.provider_call_id, content));
    }
}

/// A stored call as the model made it.
pub fn model_call(call: &ToolCall) -> ModelToolCall {
    ModelToolCall {
        id: call.provider_call_id.clone(),
        name: call.name.clone(),
        // Arguments the model got wrong are stored as a JSON string of what it wrote.
        arguments: match &call.arguments {
            serde_json::Value::String(raw) => raw.clone(),
            other => other.to_string(),
        },
    }
}

/// A call's result as the model reads it: text as it is, anything else as JSON.
pub fn result_text(call: &ToolCall) -> String {
    match (&call.result, call.status) {
        (Some(serde_json::Value::String(text)), _) => text.clone(),
        (Some(result), _) => result.to_string(),
        (None, ToolCallStatus::Requested) | (None, _) => serde_json::json!({
            "error": {"kind": "no_result", "message": "the call was cut off before it had a result"}
        })
        .to_string(),
    }
}

/// What a message's tool calls add to its length, roughly: their arguments and results.
fn calls_chars(calls: &[ToolCall]) -> usize {
    calls
        .iter()
        .map(|call| {
            let result = call.result.as_ref().map_or(0, |r| r.to_string().len());
            call.name.len() + call.arguments.to_string().len() + result
        })
        .sum()
}

/// A message as the model's context keeps it.
pub fn recent_message(message: &Message) -> RecentMessage {
    RecentMessage {
        id: message.id,
        role: message.role,
        content: message.content.clone(),
        tool_calls: message.tool_calls.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageId, ToolCallId};

    fn settings(messages: usize, chars: usize, prompt: Option<&str>) -> TurnSettings {
        TurnSettings {
            titles: false,
            title_model: None,
            max_message_chars: 10_000,
            history_messages: messages,
            history_chars: chars,
            system_prompt: prompt.map(str::to_owned),
            stream_stall_timeout: std::time::Duration::from_secs(30),
            max_tool_rounds: 8,
            lease: std::time::Duration::from_secs(10),
            tool_results_timeout: std::time::Duration::from_secs(900),
        }
    }

    fn history(texts: &[&str]) -> Vec<RecentMessage> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let role = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                RecentMessage {
                    id: MessageId::generate(),
                    role,
                    content: (*text).to_owned(),
                    tool_calls: Vec::new(),
                }
            })
            .collect()
    }

    fn build(settings: &TurnSettings, history: Vec<RecentMessage>) -> ModelRequest {
        build_context(settings, history, Arc::from([]))
    }

    fn contents(request: &ModelRequest) -> Vec<(Role, &str)> {
        request
            .messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect()
    }

    #[test]
    fn the_system_prompt_comes_first_and_the_history_keeps_its_order() {
        let request = build(
            &settings(20, 1000, Some("Be brief.")),
            history(&["hi", "hello", "how are you?"]),
        );
        assert_eq!(
            contents(&request),
            [
                (Role::System, "Be brief."),
                (Role::User, "hi"),
                (Role::Assistant, "hello"),
                (Role::User, "how are you?"),
            ]
        );
    }

    #[test]
    fn only_the_newest_messages_go() {
        let request = build(&settings(2, 1000, None), history(&["a", "b", "c", "d"]));
        assert_eq!(
            contents(&request),
            [(Role::User, "c"), (Role::Assistant, "d")]
        );
    }

    #[test]
    fn the_character_budget_stops_at_the_first_message_that_does_not_fit() {
        // Characters, not bytes: "é" is one.
        let request = build(&settings(20, 5, None), history(&["x", "éééé", "yy", "zzz"]));
        assert_eq!(
            contents(&request),
            [(Role::User, "yy"), (Role::Assistant, "zzz")],
            "\"zzz\" and \"yy\" use up the 5 characters, so \"éééé\" (4) does not fit"
        );
    }

    #[test]
    fn the_newest_message_goes_even_beyond_the_budget() {
        let long = "w".repeat(50);
        let request = build(&settings(20, 10, None), history(&["older", &long]));
        assert_eq!(contents(&request), [(Role::Assistant, long.as_str())]);
    }

    #[test]
    fn empty_messages_are_left_out_without_counting() {
        let request = build(&settings(3, 1000, None), history(&["a", "", "b", "c"]));
        assert_eq!(
            contents(&request),
            [(Role::User, "b"), (Role::Assistant, "c")],
            "the empty message takes one of the three places but is not sent"
        );
    }

    fn call(id: &str, status: ToolCallStatus, result: Option<serde_json::Value>) -> ToolCall {
        ToolCall {
            id: ToolCallId::generate(),
            provider_call_id: id.to_owned(),
            name: "add_task".to_owned(),
            arguments: serde_json::json!({"title": "milk"}),
            status,
            result,
        }
    }

    #[test]
    fn tool_calls_are_replayed_with_their_results_and_none_goes_unanswered() {
        let mut messages = history(&["add milk", ""]);
        messages[1].tool_calls = vec![
            call(
                "call_a",
                ToolCallStatus::Succeeded,
                Some(serde_json::json!({"id": 7})),
            ),
            call("call_b", ToolCallStatus::Requested, None),
        ];
        messages.push(RecentMessage {
            id: MessageId::generate(),
            role: Role::Assistant,
            content: "Added.".to_owned(),
            tool_calls: Vec::new(),
        });
        let request = build(&settings(20, 1000, None), messages);
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Tool,
                Role::Assistant
            ]
        );
        let calling = &request.messages[1];
        assert_eq!(calling.tool_calls.len(), 2);
        assert_eq!(calling.tool_calls[0].arguments, r#"{"title":"milk"}"#);
        assert_eq!(request.messages[2].tool_call_id.as_deref(), Some("call_a"));
        assert_eq!(request.messages[2].content, r#"{"id":7}"#);
        assert_eq!(request.messages[3].tool_call_id.as_deref(), Some("call_b"));
        assert!(request.messages[3].content.contains("no_result"));
    }
}
