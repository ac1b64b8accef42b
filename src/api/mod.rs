//! The gRPC edge: authentication, protobuf <-> domain, and failures as statuses.

pub mod auth;
mod chat_service;
mod conversation_service;
mod convert;
mod error;
pub mod proto;

use tonic::Request;

pub use auth::{AuthError, Authenticator};
pub use chat_service::ChatApi;
pub use conversation_service::ConversationApi;
pub use error::ApiError;

use crate::{chat::Identities, domain::UserId};

/// The request's correlation id: the client's `x-request-id` (or `x-correlation-id`) when it
/// sent a usable one, otherwise a new UUID.
pub fn request_id<T>(request: &Request<T>) -> String {
    ["x-request-id", "x-correlation-id"]
        .iter()
        .filter_map(|key| request.metadata().get(*key)?.to_str().ok())
        .map(str::trim)
        .find(|id| !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Turns a request's credentials into the user it acts for.
#[derive(Clone)]
pub struct Caller {
    authenticator: Authenticator,
    identities: Identities,
}

impl Caller {
    pub fn new(authenticator: Authenticator, identities: Identities) -> Self {
        Self {
            authenticator,
            identities,
        }
    }

    pub async fn user<T>(&self, request: &Request<T>) -> Result<UserId, ApiError> {
        let subject = self.authenticator.authenticate(request.metadata())?;
        Ok(self.identities.user_for(&subject).await?)
    }
}
