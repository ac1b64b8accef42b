//! Use cases, written in domain terms only: no protobuf, no tonic.

mod admission;
mod conversations;
mod error;
mod identities;
mod recent;
mod turn;

pub use admission::{Admission, Limit, LimitSettings, StorageLimits, StreamPermit};
pub use conversations::{ConversationView, Conversations, Page, PageRequest, RESPONSE_TEXT_BYTES};
pub use error::{ChatError, FieldViolation};
pub use identities::Identities;
pub use recent::RecentContexts;
pub use turn::{
    ACCEPTED, Accepted, ClientTool, Completion, Continuation, GivenToolResult,
    MAX_TOOL_RESULTS_BYTES, Sequenced, ToolResult, ToolResultsRequest, TurnEvent, TurnRequest,
    TurnRuntime, TurnSettings, TurnStream, Turns,
};
