//! CHAT_SYSTEM_PROMPT, CHAT_HISTORY_MESSAGES, CHAT_HISTORY_MAX_CHARS, CHAT_MAX_MESSAGE_CHARS,
//! CHAT_STREAM_STALL_TIMEOUT, CHAT_MAX_TOOL_ROUNDS, CHAT_TOOL_RESULTS_TIMEOUT, CHAT_TITLES,
//! CHAT_TITLE_MODEL

use std::time::Duration;

use clap::Args;

use super::{ConfigError, invalid};
use crate::chat::TurnSettings;

#[derive(Debug, Clone, Args)]
pub struct TurnArgs {
    /// Whether the model names each new conversation after its first reply, in the background
    /// (`true` or `false`). A title the client set is never replaced.
    #[arg(
        long,
        env = "CHAT_TITLES",
        default_value_t = true,
        action = clap::ArgAction::Set,
        global = true
    )]
    pub titles: bool,

    /// The model (a name of CHAT_MODELS's catalog) that writes titles; unset: the default.
    #[arg(long, env = "CHAT_TITLE_MODEL", global = true)]
    pub title_model: Option<String>,

    /// System prompt sent before the conversation.
    #[arg(long, env = "CHAT_SYSTEM_PROMPT", global = true)]
    pub system_prompt: Option<String>,

    /// How many of the newest messages are sent to the model.
    #[arg(
        long,
        env = "CHAT_HISTORY_MESSAGES",
        default_value_t = 20,
        global = true
    )]
    pub history_messages: usize,

    /// How many characters of history are sent to the model at most.
    #[arg(
        long,
        env = "CHAT_HISTORY_MAX_CHARS",
        default_value_t = 48_000,
        global = true
    )]
    pub history_max_chars: usize,

    /// The longest user message, in characters.
    #[arg(
        long,
        env = "CHAT_MAX_MESSAGE_CHARS",
        default_value_t = 10_000,
        global = true
    )]
    pub max_message_chars: usize,

    /// A client that takes no part of its reply for this long is cut off; its partial reply is
    /// stored as cancelled.
    #[arg(long, env = "CHAT_STREAM_STALL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub stream_stall_timeout: Duration,

    /// How many rounds of tool calls one reply may make; the model then answers without tools.
    #[arg(long, env = "CHAT_MAX_TOOL_ROUNDS", default_value_t = 8, global = true)]
    pub max_tool_rounds: u32,

    /// How long a reply that called the client's own tools waits for their results; meanwhile
    /// its conversation takes no new message.
    #[arg(long, env = "CHAT_TOOL_RESULTS_TIMEOUT", default_value = "15m", value_parser = humantime::parse_duration, global = true)]
    pub tool_results_timeout: Duration,
}

impl TurnArgs {
    /// The settings, with the lease (CHAT_TURN_LEASE, read with the events) at its default.
    pub fn into_settings(self) -> Result<TurnSettings, ConfigError> {
        if self.history_messages == 0 {
            return Err(invalid("CHAT_HISTORY_MESSAGES", "must be at least 1"));
        }
        if self.stream_stall_timeout.is_zero() {
            return Err(invalid(
                "CHAT_STREAM_STALL_TIMEOUT",
                "must be longer than zero",
            ));
        }
        if self.max_tool_rounds == 0 {
            return Err(invalid("CHAT_MAX_TOOL_ROUNDS", "must be at least 1"));
        }
        if self.tool_results_timeout > Duration::from_secs(7 * 24 * 3600) {
            return Err(invalid(
                "CHAT_TOOL_RESULTS_TIMEOUT",
                "must be at most 7 days",
            ));
        }
        if self.tool_results_timeout.is_zero() {
            return Err(invalid(
                "CHAT_TOOL_RESULTS_TIMEOUT",
                "must be longer than zero",
            ));
        }
        if self.max_message_chars == 0 {
            return Err(invalid("CHAT_MAX_MESSAGE_CHARS", "must be at least 1"));
        }
        Ok(TurnSettings {
            max_message_chars: self.max_message_chars,
            history_messages: self.history_messages,
            history_chars: self.history_max_chars,
            system_prompt: self.system_prompt.filter(|p| !p.trim().is_empty()),
            stream_stall_timeout: self.stream_stall_timeout,
            max_tool_rounds: self.max_tool_rounds,
            tool_results_timeout: self.tool_results_timeout,
            lease: Duration::from_secs(10),
            titles: self.titles,
            title_model: self.title_model.filter(|name| !name.is_empty()),
        })
    }
}
