//! The service's vocabulary: identifiers, messages and paging, each parsed once at the edge so that
//! the rest of the code can rely on it being valid. Depends on nothing else in the crate.

mod archive;
mod content;
mod conversation;
mod history;
mod ids;
mod page;
mod search;
mod time;
mod tool;
mod tree;
mod turn;
mod usage;

pub use archive::{
    ArchivedConversation, ArchivedMessage, ArchivedParent, ArchivedToolCall, InvalidTree,
    TitleSource,
};
pub use content::{InvalidContent, MessageContent};
pub use conversation::{
    Conversation, InvalidTitle, Message, MessageStatus, Role, Title, ToolCall, ToolCallStatus,
};
pub use history::{RecentHistory, RecentMessage, Revision};
pub use ids::{ConversationId, InvalidId, MessageId, Subject, ToolCallId, TurnId, UserId};
pub use page::{
    ConversationCursor, InvalidPageSize, InvalidPageToken, MessageCursor, PageSize, PageTokenCodec,
};
pub use search::{
    InvalidSearchQuery, MATCH_END, MATCH_START, SearchCursor, SearchHit, SearchQuery, SnippetPart,
    snippet_parts,
};
pub use time::now;
pub use tool::{InvalidToolDefinition, ToolSpec};
pub use tree::{BranchMessage, Placement, Tree, TreeNode, TreePlace};
pub use turn::{Attempt, FIRST_ATTEMPT, InvalidRequestKey, RequestKey, TurnState};
pub use usage::{
    Budget, BudgetKind, BudgetRefusal, CallUsage, ModelSpend, PeriodSpan, PeriodUsage, Spend,
    TokenUsage, UsagePeriod,
};
