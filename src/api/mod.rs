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
