//! What the model is shown of a conversation.

use super::TurnSettings;
use crate::{
    domain::Role,
    llm::{ContextMessage, ModelRequest},
};

/// The system prompt, then the newest messages of `history` (oldest first) that fit the
/// settings' budgets: at most `history_messages` of them and `history_chars` characters. The
/// newest message always goes, however long; empty messages (a reply cut off before its first
/// token) are left out, since models refuse them.
pub fn build_context(settings: &TurnSettings, history: Vec<(Role, String)>) -> ModelRequest {
    let mut budget = settings.history_chars;
    let mut kept = Vec::new();
    for (role, content) in history.into_iter().rev().take(settings.history_messages) {
        if content.is_empty() {
            continue;
        }
        let chars = content.chars().count();
        if !kept.is_empty() && chars > budget {
            break;
        }
        budget = budget.saturating_sub(chars);
        kept.push(ContextMessage { role, content });
    }
    let system = settings.system_prompt.iter().map(|prompt| ContextMessage {
        role: Role::System,
        content: prompt.clone(),
    });
    ModelRequest {
        messages: system.chain(kept.into_iter().rev()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(messages: usize, chars: usize, prompt: Option<&str>) -> TurnSettings {
        TurnSettings {
            max_message_chars: 10_000,
            history_messages: messages,
            history_chars: chars,
            system_prompt: prompt.map(str::to_owned),
            stream_stall_timeout: std::time::Duration::from_secs(30),
        }
    }

    fn history(texts: &[&str]) -> Vec<(Role, String)> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let role = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                (role, (*text).to_owned())
            })
            .collect()
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
        let request = build_context(
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
        let request = build_context(&settings(2, 1000, None), history(&["a", "b", "c", "d"]));
        assert_eq!(
            contents(&request),
            [(Role::User, "c"), (Role::Assistant, "d")]
        );
    }

    #[test]
    fn the_character_budget_stops_at_the_first_message_that_does_not_fit() {
        // Characters, not bytes: "é" is one.
        let request = build_context(&settings(20, 5, None), history(&["x", "éééé", "yy", "zzz"]));
        assert_eq!(
            contents(&request),
            [(Role::User, "yy"), (Role::Assistant, "zzz")],
            "\"zzz\" and \"yy\" use up the 5 characters, so \"éééé\" (4) does not fit"
        );
    }

    #[test]
    fn the_newest_message_goes_even_beyond_the_budget() {
        let long = "w".repeat(50);
        let request = build_context(&settings(20, 10, None), history(&["older", &long]));
        assert_eq!(contents(&request), [(Role::Assistant, long.as_str())]);
    }

    #[test]
    fn empty_messages_are_left_out_without_counting() {
        let request = build_context(&settings(3, 1000, None), history(&["a", "", "b", "c"]));
        assert_eq!(
            contents(&request),
            [(Role::User, "b"), (Role::Assistant, "c")],
            "the empty message takes one of the three places but is not sent"
        );
    }
}
