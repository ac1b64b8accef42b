//! Tokens this service signs itself, for development and tests: `chat-service token`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret;

use super::{AuthSettings, Claims, DEVELOPMENT_SECRET, JwtKey};
use crate::domain::Subject;

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(
        "tokens can only be minted with a shared secret (development mode or CHAT_JWT_SECRET); \
         with CHAT_JWT_PUBLIC_KEY_FILE or CHAT_JWT_JWKS_URL, ask the identity provider that holds \
         the private key"
    )]
    NoSecret,
    #[error("--user must be 1 to 255 printable characters")]
    BadSubject,
    #[error("could not sign the token: {0}")]
    Sign(String),
}

/// Mints an HS256 token for `subject` that this service accepts, valid for `ttl`.
pub fn mint_token(
    config: &AuthSettings,
    subject: &str,
    ttl: Duration,
) -> Result<String, MintError> {
    let secret = match &config.key {
        JwtKey::Development => DEVELOPMENT_SECRET,
        JwtKey::Hs256Secret(secret) => secret.expose_secret(),
        JwtKey::PublicKeyPem { .. } | JwtKey::Jwks(_) => return Err(MintError::NoSecret),
    };
    let subject = Subject::parse(subject).ok_or(MintError::BadSubject)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub: subject.as_str().to_owned(),
        exp: Some(now + ttl.as_secs()),
        iat: Some(now),
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| MintError::Sign(e.to_string()))
}
