use std::time::Duration;

use futures_util::stream;

use super::{ChatModel, ModelEvent, ModelRequest, ModelStream, TokenUsage};
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

    fn reply(request: &ModelRequest) -> String {
        let last = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str());
        let quoted: Vec<&str> = last.split_whitespace().take(30).collect();
        format!(
            "This is the built-in development model, not a real one. You said: \"{}\". \
             Set CHAT_LLM_BASE_URL to talk to a real model.",
            quoted.join(" ")
        )
    }
}

impl ChatModel for DevModel {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn provider(&self) -> &'static str {
        "chat-service.dev"
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let reply = Self::reply(&request);
        let input_tokens = request
            .messages
            .iter()
            .map(|m| m.content.split_whitespace().count())
            .sum::<usize>();
        // Words keep the space that follows them, so the deltas concatenate to the reply.
        let words: Vec<String> = reply.split_inclusive(' ').map(str::to_owned).collect();
        let usage = TokenUsage {
            input_tokens: u32::try_from(input_tokens).unwrap_or(u32::MAX),
            output_tokens: u32::try_from(words.len()).unwrap_or(u32::MAX),
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
    use crate::llm::ContextMessage;

    #[tokio::test]
    async fn streams_a_deterministic_reply_word_by_word() {
        let request = ModelRequest {
            messages: vec![ContextMessage {
                role: Role::User,
                content: "Hello there".into(),
            }],
        };
        let events: Vec<_> = DevModel::new(Duration::ZERO)
            .stream(request.clone())
            .collect()
            .await;
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                Ok(ModelEvent::Delta(d)) => Some(d.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, DevModel::reply(&request));
        assert!(text.contains("\"Hello there\""));
        assert!(events.len() > 10);
        assert_eq!(
            events.last(),
            Some(&Ok(ModelEvent::Finished {
                reason: "stop".into()
            }))
        );
    }
}
