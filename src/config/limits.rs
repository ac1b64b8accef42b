//! CHAT_USER_REQUESTS_PER_SECOND, CHAT_USER_REQUEST_BURST, CHAT_MAX_STREAMS_PER_USER,
//! CHAT_MAX_STREAMS, CHAT_GET_CONVERSATION_MESSAGES, CHAT_MAX_CONVERSATIONS_PER_USER,
//! CHAT_MAX_MESSAGES_PER_CONVERSATION, CHAT_MAX_SIBLINGS, CHAT_USAGE_PERIOD, CHAT_BUDGET_TOKENS,
//! CHAT_BUDGET_COST

use std::num::NonZeroU32;

use clap::Args;

use super::{ConfigError, invalid};
use crate::{
    chat::{LimitSettings, StorageLimits},
    domain::{Budget, UsagePeriod},
};

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Requests a user may make per second on average, on this replica.
    #[arg(
        long,
        env = "CHAT_USER_REQUESTS_PER_SECOND",
        default_value_t = NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
        global = true
    )]
    pub user_requests_per_second: NonZeroU32,

    /// Requests a user may make at once after a quiet moment, on this replica.
    #[arg(
        long,
        env = "CHAT_USER_REQUEST_BURST",
        default_value_t = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
        global = true
    )]
    pub user_request_burst: NonZeroU32,

    /// Replies a user may be receiving at once, on this replica.
    #[arg(
        long,
        env = "CHAT_MAX_STREAMS_PER_USER",
        default_value_t = 4,
        global = true
    )]
    pub max_streams_per_user: u32,

    /// Replies this replica streams at once.
    #[arg(
        long,
        env = "CHAT_MAX_STREAMS",
        default_value_t = 10_000,
        global = true
    )]
    pub max_streams: u32,

    /// How many of its newest messages GetConversation returns at most; older ones are read
    /// with ListMessages.
    #[arg(
        long,
        env = "CHAT_GET_CONVERSATION_MESSAGES",
        default_value_t = 1000,
        global = true
    )]
    pub get_conversation_messages: usize,

    /// Conversations a user may keep.
    #[arg(
        long,
        env = "CHAT_MAX_CONVERSATIONS_PER_USER",
        default_value_t = 10_000,
        global = true
    )]
    pub max_conversations_per_user: i64,

    /// A conversation takes no more user messages once it holds this many; the reply to the last
    /// one is still stored.
    #[arg(
        long,
        env = "CHAT_MAX_MESSAGES_PER_CONVERSATION",
        default_value_t = 10_000,
        global = true
    )]
    pub max_messages_per_conversation: i64,

    /// Messages that may follow one message: its edits, or the replies regenerated for it.
    #[arg(long, env = "CHAT_MAX_SIBLINGS", default_value_t = 32, global = true)]
    pub max_siblings: i64,

    /// The period usage is reported in (GetUsage, `chat-service usage`): day, week (from
    /// Monday) or month, each starting at midnight UTC.
    #[arg(long, env = "CHAT_USAGE_PERIOD", default_value = "day", value_parser = usage_period, global = true)]
    pub usage_period: UsagePeriod,

    /// Tokens (input and output) a user may spend in a period (CHAT_USAGE_PERIOD), unless they
    /// have a budget of their own; unset: no limit.
    #[arg(long, env = "CHAT_BUDGET_TOKENS", global = true)]
    pub budget_tokens: Option<u64>,

    /// What a user may spend in a period at the catalog's prices, in the prices' unit (e.g.
    /// 5.00), unless they have a budget of their own; unset: no limit.
    #[arg(long, env = "CHAT_BUDGET_COST", value_parser = cost_micros, global = true)]
    pub budget_cost: Option<i64>,
}

/// A cost in the unit of the catalog's prices, as millionths of it.
pub fn cost_micros(text: &str) -> Result<i64, String> {
    let cost: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an amount: give one like 5 or 2.50"))?;
    if !(0.0..=9.0e12).contains(&cost) {
        return Err(format!(
            "{text:?} is not an amount from 0 to 9,000,000,000,000"
        ));
    }
    // Within range, checked above; `as` rounds towards zero after the rounding.
    Ok((cost * 1e6).round() as i64)
}

/// A period's name, as settings and the command line give it.
pub fn usage_period(text: &str) -> Result<UsagePeriod, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a period: give day, week or month"))
}

impl LimitArgs {
    pub fn into_settings(self) -> Result<LimitSettings, ConfigError> {
        if self.max_streams_per_user == 0 {
            return Err(invalid("CHAT_MAX_STREAMS_PER_USER", "must be at least 1"));
        }
        if self.max_streams == 0 {
            return Err(invalid("CHAT_MAX_STREAMS", "must be at least 1"));
        }
        if self.get_conversation_messages == 0 {
            return Err(invalid(
                "CHAT_GET_CONVERSATION_MESSAGES",
                "must be at least 1",
            ));
        }
        if self.max_conversations_per_user < 1 {
            return Err(invalid(
                "CHAT_MAX_CONVERSATIONS_PER_USER",
                "must be at least 1",
            ));
        }
        if self.max_messages_per_conversation < 1 {
            return Err(invalid(
                "CHAT_MAX_MESSAGES_PER_CONVERSATION",
                "must be at least 1",
            ));
        }
        if self.max_siblings < 1 {
            return Err(invalid("CHAT_MAX_SIBLINGS", "must be at least 1"));
        }
        Ok(LimitSettings {
            conversation_window: self.get_conversation_messages,
            storage: StorageLimits {
                conversations_per_user: self.max_conversations_per_user,
                messages_per_conversation: self.max_messages_per_conversation,
                siblings_per_message: self.max_siblings,
            },
            user_requests_per_second: self.user_requests_per_second,
            user_request_burst: self.user_request_burst,
            streams_per_user: self.max_streams_per_user,
            streams_per_replica: self.max_streams,
            usage_period: self.usage_period,
            budget: Budget {
                tokens: self
                    .budget_tokens
                    .map(|tokens| i64::try_from(tokens).unwrap_or(i64::MAX)),
                cost_micros: self.budget_cost,
                period: self.usage_period,
            },
        })
    }
}
