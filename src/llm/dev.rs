//! The built-in development model, used when no real one is configured.

use std::time::Duration;

use futures_util::stream;

use super::{
    ChatModel, ContextMessage, ModelEvent, ModelRequest, ModelStream, ModelToolCall, TokenUsage,
};
use crate::domain::Role;

/// A deterministic stand-in for a real model, so that the service runs on a machine without
/// one: it streams a fixed reply that quotes the user's message, one word at a time.
#[derive(Debug, Clone)]
pub struct DevModel {
    delay: Duration,
}

impl DevModel {
    pub const NAME: &'static str = "dev";

    /// `delay` is the pause before each word.
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }

    /// What the model says, or the tool it calls. A user message `/tool NAME {ARGUMENTS}` calls
    /// the tool NAME, when it is offered; the next round answers with what it returned.
    fn answer(request: &ModelRequest) -> Answer {
        let Some(last) = request.messages.last() else {
            return Answer::Text(Self::quote(""));
        };
        if last.role == Role::Tool {
            return Answer::Text(Self::report_results(request));
        }
        let said = if last.role == Role::User {
            last.content.as_str()
        } else {
            ""
        };
        let Some(command) = said.trim_start().strip_prefix("/tool ") else {
            return Answer::Text(Self::quote(said));
        };
        let command = command.trim();
        let (name, arguments) = command
            .split_once(char::is_whitespace)
            .map_or((command, "{}"), |(name, arguments)| {
                (name, arguments.trim())
            });
        if !request.may_call_tools || !request.tools.iter().any(|tool| tool.name == name) {
            return Answer::Text(format!(
                "The built-in development model cannot call {name}: no tool of that name is offered."
            ));
        }
        Answer::Call(ModelToolCall {
            id: "call_1".to_owned(),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        })
    }

    fn quote(said: &str) -> String {
        let quoted: Vec<&str> = said.split_whitespace().take(30).collect();
        format!(
            "This is the built-in development model, not a real one. You said: \"{}\". \
             Set CHAT_LLM_BASE_URL to talk to a real model.",
            quoted.join(" ")
        )
    }

    /// Says what each tool of the last round returned.
    fn report_results(request: &ModelRequest) -> String {
        let results: Vec<&ContextMessage> = request
            .messages
            .iter()
            .rev()
            .take_while(|m| m.role == Role::Tool)
            .collect();
        let calls = request
            .messages
            .iter()
            .rev()
            .find(|m| !m.tool_calls.is_empty())
            .map_or(&[][..], |m| m.tool_calls.as_slice());
        results
            .iter()
            .rev()
            .map(|result| {
                let name = calls
                    .iter()
                    .find(|call| Some(&call.id) == result.tool_call_id.as_ref())
                    .map_or("the tool", |call| call.name.as_str());
                format!("{name} returned: {}", result.content)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What the development model does with a request.
enum Answer {
    Text(String),
    Call(ModelToolCall),
}

impl ChatModel for DevModel {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn provider(&self) -> &'static str {
        "chat-service.dev"
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let input_tokens = request
            .messages
            .iter()
            .map(|m| m.content.split_whitespace().count())
            .sum::<usize>();
        let input_tokens = u32::try_from(input_tokens).unwrap_or(u32::MAX);
        let reply = match Self::answer(&request) {
            Answer::Text(reply) => reply,
            Answer::Call(call) => {
                let usage = TokenUsage {
                    input_tokens,
                    output_tokens: 1,
                    ..TokenUsage::default()
                };
                return Box::pin(stream::iter([
                    Ok(ModelEvent::ToolCall(call)),
                    Ok(ModelEvent::Usage(usage)),
                    Ok(ModelEvent::Finished {
                        reason: "tool_calls".to_owned(),
                    }),
                ]));
            }
        };
        // Words keep the space that follows them, so the deltas concatenate to the reply.
        let words: Vec<String> = reply.split_inclusive(' ').map(str::to_owned).collect();
        let usage = TokenUsage {
            input_tokens,
            output_tokens: u32::try_from(words.len()).unwrap_or(u32::MAX),
            ..TokenUsage::default()
        };
        let delay = self.delay;
        let deltas = stream::unfold(words.into_iter(), move |mut words| async move {
            let word = words.next()?;
            tokio::time::sleep(delay).await;
            Some((Ok(ModelEvent::Delta(word)), words))
        });
        let tail = stream::iter([
            Ok(ModelEvent::Usage(usage)),
            Ok(ModelEvent::Finished {
                reason: "stop".to_owned(),
            }),
        ]);
        Box::pin(futures_util::StreamExt::chain(deltas, tail))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::{domain::ToolSpec, llm::LlmError};

    fn request(messages: Vec<ContextMessage>, tools: &[&str]) -> ModelRequest {
        ModelRequest {
            messages,
            tools: tools
                .iter()
                .map(|name| ToolSpec {
                    name: (*name).to_owned(),
                    description: String::new(),
                    parameters: serde_json::json!({"type": "object"}),
                })
                .collect(),
            may_call_tools: true,
        }
    }

    async fn events(request: ModelRequest) -> Vec<Result<ModelEvent, LlmError>> {
        DevModel::new(Duration::ZERO)
            .stream(request)
            .collect()
            .await
    }

    fn text(events: &[Result<ModelEvent, LlmError>]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                Ok(ModelEvent::Delta(d)) => Some(d.as_str()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn streams_a_deterministic_reply_word_by_word() {
        let request = request(vec![ContextMessage::text(Role::User, "Hello there")], &[]);
        let events = events(request.clone()).await;
        let text = text(&events);
        assert_eq!(text, DevModel::quote("Hello there"));
        assert!(text.contains("\"Hello there\""));
        assert!(events.len() > 10);
        assert_eq!(
            events.last(),
            Some(&Ok(ModelEvent::Finished {
                reason: "stop".into()
            }))
        );
    }

    #[tokio::test]
    async fn a_tool_command_calls_the_tool_then_reports_its_result() {
        let asked = ContextMessage::text(Role::User, "/tool add_task {\"title\":\"buy milk\"}");
        let calling_round = events(request(vec![asked.clone()], &["add_task"])).await;
        let call = ModelToolCall {
            id: "call_1".into(),
            name: "add_task".into(),
            arguments: "{\"title\":\"buy milk\"}".into(),
        };
        assert_eq!(
            calling_round.first(),
            Some(&Ok(ModelEvent::ToolCall(call.clone())))
        );
        assert_eq!(
            calling_round.last(),
            Some(&Ok(ModelEvent::Finished {
                reason: "tool_calls".into()
            }))
        );

        let mut calling = ContextMessage::text(Role::Assistant, "");
        calling.tool_calls = vec![call];
        let result = ContextMessage::tool_result("call_1", "{\"id\":1}");
        let answering_round = events(request(vec![asked, calling, result], &["add_task"])).await;
        assert_eq!(text(&answering_round), "add_task returned: {\"id\":1}");
    }

    #[tokio::test]
    async fn a_tool_that_is_not_offered_is_not_called() {
        let asked = ContextMessage::text(Role::User, "/tool add_task {}");
        let events = events(request(vec![asked], &["list_tasks"])).await;
        assert!(text(&events).contains("cannot call add_task"));
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Ok(ModelEvent::ToolCall(_))))
        );
    }
}
