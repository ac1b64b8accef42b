//! Use cases, written in domain terms only: no protobuf, no tonic.

mod limit;
mod error;
mod identities;
mod recent;
mod admission;
mod conversations;
mod titles;
mod usage;
mod turn;

pub use admission::{Admission, LimitSettings, StorageLimits, StreamPermit};
pub use conversations::{ConversationView, Conversations, Page, PageRequest, RESPONSE_TEXT_BYTES};
pub use error::{ChatError, FieldViolation};
pub use identities::Identities;
pub use limit::Limit;
pub use recent::RecentContexts;
pub use titles::Titler;
pub use turn::{
    ACCEPTED, Accepted, ClientTool, Completion, Continuation, GivenToolResult,
    MAX_TOOL_RESULTS_BYTES, RegenerateRequest, Sequenced, ToolResult, ToolResultsRequest,
    TurnEvent, TurnRequest, TurnRuntime, TurnSettings, TurnStream, Turns,
};
pub use usage::UsageReports;
