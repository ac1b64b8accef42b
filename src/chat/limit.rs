//! The limits that refuse a request: what each is called and what it means to a client.

use crate::domain::{BudgetKind, BudgetRefusal};

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    UserRequestRate,
    UserStreams,
    ReplicaStreams,
    UserConversations,
    ConversationMessages,
    MessageSiblings,
    TokenBudget,
    CostBudget,
    BudgetTurn,
}

impl Limit {
    /// The limit a budget's refusal stands for.
    pub fn of_budget(refusal: &BudgetRefusal) -> Self {
        match refusal {
            BudgetRefusal::Spent {
                kind: BudgetKind::Tokens,
                ..
            } => Self::TokenBudget,
            BudgetRefusal::Spent {
                kind: BudgetKind::Cost,
                ..
            } => Self::CostBudget,
            BudgetRefusal::Busy => Self::BudgetTurn,
        }
    }

    /// A short name, for metrics and for the `subject` of a quota violation.
    pub fn label(self) -> &'static str {
        match self {
            Self::UserRequestRate => "user_request_rate",
            Self::UserStreams => "user_streams",
            Self::ReplicaStreams => "replica_streams",
            Self::UserConversations => "user_conversations",
            Self::ConversationMessages => "conversation_messages",
            Self::MessageSiblings => "message_siblings",
            Self::TokenBudget => "token_budget",
            Self::CostBudget => "cost_budget",
            Self::BudgetTurn => "budget_turn",
        }
    }

    /// What a client developer needs to know about it.
    pub fn description(self) -> &'static str {
        match self {
            Self::UserRequestRate => {
                "too many requests from this user (CHAT_USER_REQUESTS_PER_SECOND, CHAT_USER_REQUEST_BURST)"
            }
            Self::UserStreams => {
                "this user is already receiving as many replies as allowed at once (CHAT_MAX_STREAMS_PER_USER)"
            }
            Self::ReplicaStreams => {
                "this replica is streaming as many replies as it allows (CHAT_MAX_STREAMS); another replica may have room"
            }
            Self::UserConversations => {
                "this user has as many conversations as allowed (CHAT_MAX_CONVERSATIONS_PER_USER); delete one to start another"
            }
            Self::ConversationMessages => {
                "this conversation holds as many messages as allowed (CHAT_MAX_MESSAGES_PER_CONVERSATION); start a new one"
            }
            Self::MessageSiblings => {
                "as many messages as allowed follow this one already (CHAT_MAX_SIBLINGS): edit or regenerate another"
            }
            Self::TokenBudget => {
                "this user's token budget for the period is used up (CHAT_BUDGET_TOKENS, or the user's own budget)"
            }
            Self::CostBudget => {
                "this user's cost budget for the period is used up (CHAT_BUDGET_COST, or the user's own budget)"
            }
            Self::BudgetTurn => {
                "under a budget, a user's replies are generated one at a time, so that together they never pass it: another reply of this user is being generated"
            }
        }
    }
}
