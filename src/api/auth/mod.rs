//! Bearer-token authentication: who is calling, proven by a JWT.

use std::{path::PathBuf, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Header, errors::ErrorKind};
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};

mod claims;
pub mod jwks;
mod mint;
mod verified;

pub use self::{
    claims::{AuthError, ClaimRules},
    mint::{MintError, mint_token},
};
use self::{
    jwks::{JwksKeys, JwksSettings, VerifyingKey},
    verified::{VerifiedTokens, unix_now},
};
use crate::domain::Subject;

/// Which tokens the service accepts.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub key: JwtKey,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// How far `exp` and `nbf` may be off, for clocks that disagree a little.
    pub leeway: Duration,
}

/// What verifies access tokens.
#[derive(Debug, Clone)]
pub enum JwtKey {
    /// A fixed, publicly known secret, for trying the service out. Refused in production.
    Development,
    Hs256Secret(SecretSlice<u8>),
    /// An RS256, ES256 or EdDSA (Ed25519) public key in PEM, as read from the file at start-up.
    PublicKeyPem {
        path: PathBuf,
        pem: Vec<u8>,
    },
    /// The keys an identity provider publishes as a JSON Web Key Set.
    Jwks(JwksSettings),
}

/// The publicly known key of development mode. Anyone can mint tokens with it, which is why
/// production refuses it.
pub const DEVELOPMENT_SECRET: &[u8] = b"chat-service development secret: never use in production";

/// A key that cannot verify tokens. Names the setting that holds it.
#[derive(Debug, thiserror::Error)]
pub enum InvalidKey {
    #[error(
        "invalid setting CHAT_JWT_PUBLIC_KEY_FILE: {0} holds no RSA, EC (P-256) or Ed25519 public key in PEM"
    )]
    Pem(String),
    #[error("CHAT_JWT_JWKS_URL: cannot make an HTTP client: {0}")]
    Client(String),
}

/// What the service reads of a verified token. The library checks `exp`, `nbf`, `iss` and `aud`
/// (a string or an array, as RFC 7519 allows) from the token itself.
#[derive(Debug, Deserialize)]
struct VerifiedClaims {
    sub: String,
    /// Checked by the library; read to know how long the token may be remembered.
    exp: Option<f64>,
}

/// What a minted token says.
#[derive(Debug, Serialize)]
struct Claims {
    sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Verifies access tokens against the configured key or key set and claims.
#[derive(Clone)]
pub struct Authenticator {
    keys: Keys,
}

#[derive(Clone)]
enum Keys {
    /// With the tokens it verified lately, and the leeway their expiry is checked with.
    Fixed(Arc<VerifyingKey>, Arc<VerifiedTokens>, Duration),
    Published(Arc<JwksKeys>),
}

impl Authenticator {
    pub fn new(config: &AuthSettings) -> Result<Self, InvalidKey> {
        let rules = ClaimRules {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
        };
        let (key, algorithm) = match &config.key {
            JwtKey::Development => (
                DecodingKey::from_secret(DEVELOPMENT_SECRET),
                Algorithm::HS256,
            ),
            JwtKey::Hs256Secret(secret) => (
                DecodingKey::from_secret(secret.expose_secret()),
                Algorithm::HS256,
            ),
            JwtKey::PublicKeyPem { path, pem } => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                    (key, Algorithm::ES256)
                } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
                    (key, Algorithm::EdDSA)
                } else {
                    return Err(InvalidKey::Pem(path.display().to_string()));
                }
            }
            JwtKey::Jwks(settings) => {
                let keys = JwksKeys::new(settings.clone(), rules)
                    .map_err(|e| InvalidKey::Client(e.to_string()))?;
                return Ok(Self {
                    keys: Keys::Published(Arc::new(keys)),
                });
            }
        };
        let validation = rules.validation(algorithm);
        Ok(Self {
            keys: Keys::Fixed(
                Arc::new(VerifyingKey {
                    key,
                    algorithm,
                    validation,
                }),
                Arc::default(),
                config.leeway,
            ),
        })
    }

    /// Fetches the identity provider's keys, when there are any to fetch, so that the first
    /// requests need not wait for them. A failure is logged; requests fetch again.
    pub async fn prefetch(&self) {
        if let Keys::Published(keys) = &self.keys {
            keys.prefetch().await;
        }
    }

    /// The subject of the bearer token in a request's HTTP headers, before its body is read.
    pub async fn authenticate_headers(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Subject, AuthError> {
        if let Some(verdict) = self.authenticate_at_once(headers) {
            return verdict;
        }
        // Only a token whose key must be fetched first gets here.
        let token = bearer_token(headers)?;
        match &self.keys {
            Keys::Fixed(key, verified, leeway) => verify_remembered(token, key, verified, *leeway),
            Keys::Published(keys) => {
                let header = token_header(token)?;
                let key = keys.key_for(header.kid.as_deref()).await?;
                verify_with_header(token, &header, &key)
            }
        }
    }

    /// [`Authenticator::authenticate_headers`] when it needs to wait for nothing, which is
    /// always, except for a token whose key the identity provider's set must be fetched for.
    pub fn authenticate_at_once(
        &self,
        headers: &http::HeaderMap,
    ) -> Option<Result<Subject, AuthError>> {
        let token = match bearer_token(headers) {
            Ok(token) => token,
            Err(error) => return Some(Err(error)),
        };
        match &self.keys {
            Keys::Fixed(key, verified, leeway) => {
                Some(verify_remembered(token, key, verified, *leeway))
            }
            Keys::Published(keys) => {
                let header = match token_header(token) {
                    Ok(header) => header,
                    Err(error) => return Some(Err(error)),
                };
                let key = keys.known_key(header.kid.as_deref())?;
                Some(verify_with_header(token, &header, &key))
            }
        }
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::NotBearer)?;
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
        Ok(token)
    } else {
        Err(AuthError::NotBearer)
    }
}

/// A token's header, which names its key and algorithm.
fn token_header(token: &str) -> Result<Header, AuthError> {
    jsonwebtoken::decode_header(token).map_err(|_| match header_algorithm(token) {
        Some(alg) if alg.eq_ignore_ascii_case("none") => AuthError::Unsigned,
        _ => AuthError::Malformed,
    })
}

/// Checks a token that names `key` against it: the algorithm must be the key's.
fn verify_with_header(
    token: &str,
    header: &Header,
    key: &VerifyingKey,
) -> Result<Subject, AuthError> {
    if header.alg != key.algorithm {
        return Err(AuthError::WrongAlgorithm {
            found: format!("{:?}", header.alg),
            expected: format!("{:?}", key.algorithm),
        });
    }
    verify(token, key)
}

fn verify(token: &str, key: &VerifyingKey) -> Result<Subject, AuthError> {
    check(token, key).map(|(subject, _)| subject)
}

/// [`verify`], once for each token until it expires (or for five minutes at most).
fn verify_remembered(
    token: &str,
    key: &VerifyingKey,
    verified: &VerifiedTokens,
    leeway: Duration,
) -> Result<Subject, AuthError> {
    let now = unix_now();
    if let Some(subject) = verified.find(token, now) {
        return Ok(subject);
    }
    let (subject, expires) = check(token, key)?;
    verified.remember(token, &subject, expires, leeway, now);
    Ok(subject)
}

/// Who a token names, and when it expires, if it passes its check against `key`.
fn check(token: &str, key: &VerifyingKey) -> Result<(Subject, Option<f64>), AuthError> {
    let data = jsonwebtoken::decode::<VerifiedClaims>(token, &key.key, &key.validation)
        .map_err(|e| explain(token, key.algorithm, e.kind()))?;
    let subject = Subject::parse(&data.claims.sub).ok_or(AuthError::BadSubject)?;
    Ok((subject, data.claims.exp))
}

fn explain(token: &str, algorithm: Algorithm, kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        _ => match header_algorithm(token) {
            Some(alg) if alg.eq_ignore_ascii_case("none") => AuthError::Unsigned,
            Some(alg) if alg != format!("{algorithm:?}") => AuthError::WrongAlgorithm {
                found: alg,
                expected: format!("{algorithm:?}"),
            },
            _ => AuthError::Malformed,
        },
    }
}

/// The `alg` a token's header claims, read without trusting anything else in it.
fn header_algorithm(token: &str) -> Option<String> {
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthSettings {
        AuthSettings {
            key: JwtKey::Development,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(60),
        }
    }

    fn headers(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            value.parse().unwrap_or_else(|e| panic!("{e}")),
        );
        headers
    }

    #[tokio::test]
    async fn minted_tokens_are_accepted() {
        let auth = Authenticator::new(&config()).unwrap_or_else(|e| panic!("{e}"));
        let token = mint_token(&config(), "alice", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        let subject = auth
            .authenticate_headers(&headers(&format!("Bearer {token}")))
            .await;
        assert_eq!(
            subject.map(|s| s.as_str().to_owned()),
            Ok("alice".to_owned())
        );
    }

    #[tokio::test]
    async fn a_token_that_passed_once_passes_again_and_no_other_rides_on_it() {
        let auth = Authenticator::new(&config()).unwrap_or_else(|e| panic!("{e}"));
        let token = mint_token(&config(), "alice", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..2 {
            let subject = auth.authenticate_at_once(&headers(&format!("Bearer {token}")));
            assert_eq!(
                subject.map(|s| s.map(|s| s.as_str().to_owned())),
                Some(Ok("alice".to_owned()))
            );
        }
        // The same claims with a signature that is not the key's.
        let (signed, signature) = token.rsplit_once('.').unwrap_or_else(|| panic!("a JWT"));
        let other = if signature.starts_with('A') { "B" } else { "A" };
        let forged = format!("{signed}.{other}{}", &signature[1..]);
        assert_eq!(
            auth.authenticate_at_once(&headers(&format!("Bearer {forged}"))),
            Some(Err(AuthError::BadSignature))
        );
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let key = JwtKey::Hs256Secret(SecretSlice::from(b"do-not-print-this-secret".to_vec()));
        assert!(!format!("{key:?}").contains("do-not-print"));
    }

    #[tokio::test]
    async fn the_scheme_must_be_bearer() {
        let auth = Authenticator::new(&config()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            auth.authenticate_headers(&http::HeaderMap::new()).await,
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate_headers(&headers("Basic abc")).await,
            Err(AuthError::NotBearer)
        );
        assert_eq!(
            auth.authenticate_headers(&headers("Bearer ")).await,
            Err(AuthError::NotBearer)
        );
        assert_eq!(
            auth.authenticate_headers(&headers("Bearer a.b.c")).await,
            Err(AuthError::Malformed)
        );
    }

    #[tokio::test]
    async fn issuer_and_audience_are_enforced_when_configured() {
        let strict = AuthSettings {
            issuer: Some("idp".into()),
            audience: Some("chat".into()),
            ..config()
        };
        let auth = Authenticator::new(&strict).unwrap_or_else(|e| panic!("{e}"));
        let plain = mint_token(&config(), "alice", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            auth.authenticate_headers(&headers(&format!("Bearer {plain}")))
                .await
                .is_err()
        );
        let good =
            mint_token(&strict, "alice", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            auth.authenticate_headers(&headers(&format!("Bearer {good}")))
                .await
                .is_ok()
        );
    }
}
