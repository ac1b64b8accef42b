//! Authentication before anything of a request's body is read: a client without a valid token
//! gets UNAUTHENTICATED at once and makes the server buffer and decode nothing. The subject of a
//! valid token travels on in the request's extensions, where the handlers find it.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tower::{Layer, Service};

use crate::api::{ApiError, Authenticator};

/// Requests to these services need a token; health and reflection do not.
const PROTECTED: &str = "/chat.v1.";

#[derive(Clone)]
pub struct AuthenticateLayer {
    authenticator: Authenticator,
}

impl AuthenticateLayer {
    pub fn new(authenticator: Authenticator) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    authenticator: Authenticator,
}

impl<S, B> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.uri().path().starts_with(PROTECTED) {
            return Box::pin(self.inner.call(request));
        }
        match self.authenticator.authenticate_at_once(request.headers()) {
            Some(Ok(subject)) => {
                request.extensions_mut().insert(subject);
                return Box::pin(self.inner.call(request));
            }
            // Answered without touching the body, which is dropped unread.
            Some(Err(error)) => {
                let status = tonic::Status::from(ApiError::from(error));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
            // The identity provider's keys must be fetched first.
            None => {}
        }
        // The inner service was made ready for this call; the clone takes its place for the
        // next one (tower's usual dance for services called from a future).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            match authenticator.authenticate_headers(request.headers()).await {
                Ok(subject) => {
                    request.extensions_mut().insert(subject);
                    inner.call(request).await
                }
                // Answered without touching the body, which is dropped unread.
                Err(error) => Ok(tonic::Status::from(ApiError::from(error)).into_http()),
            }
        })
    }
}
