//! The gRPC edge: authentication, protobuf <-> domain, and failures as statuses.

pub mod auth;
mod codec;
mod chat_service;
mod conversation_service;
mod convert;
mod error;
pub mod proto;

use tonic::Request;

pub use auth::{AuthError, AuthSettings, Authenticator, JwtKey, jwks};
pub use chat_service::ChatApi;
pub use conversation_service::ConversationApi;
pub use error::ApiError;

use std::sync::Arc;

use crate::{
    chat::{Admission, Identities, MAX_TOOL_RESULTS_BYTES},
    domain::{Subject, ToolSpec, UserId},
};

/// The largest encoded `ChatService` request a valid one can be: a `SendMessageRequest` with its
/// content at the longest allowed (four bytes a character) and tool definitions at the most they
/// may take together, or a `SubmitToolResultsRequest` with results at the most they may take, plus
/// ids and the encoding's framing. Anything larger is refused from its length prefix, before it
/// is buffered.
pub fn max_send_message_bytes(max_message_chars: usize) -> usize {
    max_message_chars
        .saturating_mul(4)
        .saturating_add(ToolSpec::MAX_CLIENT_TOOLS_BYTES)
        .saturating_add(MAX_TOOL_RESULTS_BYTES)
        .saturating_add(4096)
}

/// Every `ConversationService` request is small: ids, a title of at most 200 characters, a page
/// token.
pub const MAX_CONVERSATION_REQUEST_BYTES: usize = 4 * 1024;

/// No response is larger than what gRPC clients accept by default.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The metadata key of the correlation id, in requests and responses.
pub const REQUEST_ID: &str = "x-request-id";

/// The request's correlation id. The server's RPC layer puts one on every request (the
/// client's or a new one); a request that bypassed it gets a new one here.
pub fn request_id<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Turns the subject the server authenticated into the user it acts for, and counts the request
/// against that user's rate.
#[derive(Clone)]
pub struct Caller {
    identities: Identities,
    admission: Arc<Admission>,
}

impl Caller {
    pub fn new(identities: Identities, admission: Arc<Admission>) -> Self {
        Self {
            identities,
            admission,
        }
    }

    pub async fn user<T>(&self, request: &Request<T>) -> Result<UserId, ApiError> {
        // Authentication happened before the request's body was read (the server's
        // authentication layer); a request without a subject never got past it.
        let subject = request
            .extensions()
            .get::<Subject>()
            .ok_or(AuthError::Missing)?;
        let user = self.identities.user_for(subject).await?;
        self.admission.admit_request(user)?;
        Ok(user)
    }
}
