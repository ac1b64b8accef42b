//! What a token must say to be accepted, and why one is refused.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};

/// Why a caller was not authenticated. Each message tells the client developer what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send the metadata `authorization: Bearer <JWT>`")]
    Missing,
    #[error("the authorization metadata must have the form `Bearer <JWT>`")]
    NotBearer,
    #[error("the access token is not a well-formed JWT")]
    Malformed,
    #[error("unsigned tokens (alg: none) are not accepted")]
    Unsigned,
    #[error("the access token is signed with {found}, but its key is for {expected}")]
    WrongAlgorithm { found: String, expected: String },
    #[error(
        "the access token's signing key (kid) is not one the identity provider publishes; obtain a new token"
    )]
    UnknownKey,
    #[error("the identity provider's signing keys cannot be fetched; try again later")]
    KeysUnavailable,
    #[error("the access token's signature is not valid")]
    BadSignature,
    #[error("the access token has expired; obtain a new one")]
    Expired,
    #[error("the access token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the access token lacks the required claim `{0}`")]
    MissingClaim(String),
    #[error("the access token was issued by an issuer this service does not accept")]
    WrongIssuer,
    #[error("the access token is not meant for this service (aud)")]
    WrongAudience,
    #[error("the access token's `sub` claim must be 1 to 255 printable characters")]
    BadSubject,
}

/// What every token must say besides being signed: its issuer, its audience, and times that
/// hold within the leeway.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) leeway: Duration,
}

impl ClaimRules {
    /// The library's checks for tokens signed with `algorithm`: `exp`, `nbf`, `iss` and `aud`
    /// (a string or an array, as RFC 7519 allows) from the token itself.
    pub fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        validation
    }
}
