//! The gRPC edge: authentication, protobuf <-> domain, and failures as statuses.

pub mod auth;
mod chat_service;
mod conversation_service;
mod convert;
mod error;
pub mod proto;

use tonic::Request;

pub use auth::{AuthError, AuthSettings, Authenticator, JwtKey};
pub use chat_service::ChatApi;
pub use conversation_service::ConversationApi;
pub use error::ApiError;

use std::sync::Arc;

use crate::{
    chat::{Admission, Identities},
    domain::UserId,
};

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

/// Turns a request's credentials into the user it acts for, and counts the request against
/// that user's rate.
#[derive(Clone)]
pub struct Caller {
    authenticator: Authenticator,
    identities: Identities,
    admission: Arc<Admission>,
}

impl Caller {
    pub fn new(
        authenticator: Authenticator,
        identities: Identities,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            authenticator,
            identities,
            admission,
        }
    }

    pub async fn user<T>(&self, request: &Request<T>) -> Result<UserId, ApiError> {
        let subject = self.authenticator.authenticate(request.metadata())?;
        let user = self.identities.user_for(&subject).await?;
        self.admission.admit_request(user)?;
        Ok(user)
    }
}
