//! A bearer token is accepted only with a valid HS256 signature over its header and claims, and
//! the subject accepted is the one those claims name.
#![no_main]

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chat_service::api::auth::{AuthSettings, Authenticator, JwtKey};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

/// The secret the seed corpus's tokens were signed with.
const SECRET: &[u8] = b"fuzzing secret of the chat service";

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) else {
        return;
    };
    let settings = AuthSettings {
        key: JwtKey::Hs256Secret(SECRET.to_vec().into()),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(60),
    };
    let Ok(authenticator) = Authenticator::new(&settings) else {
        panic!("an HS256 secret is always a key");
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let Some(Ok(subject)) = authenticator.authenticate_at_once(&headers) else {
        return;
    };
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "accepted a token that is not three parts: {token:?}"
    );
    let signature = URL_SAFE_NO_PAD
        .decode(parts[2])
        .unwrap_or_else(|e| panic!("accepted a signature that is not base64url: {e}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap_or_else(|e| panic!("{e}"));
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    assert!(
        mac.verify_slice(&signature).is_ok(),
        "accepted a token whose signature is not the secret's: {token:?}"
    );
    let claims = URL_SAFE_NO_PAD
        .decode(parts[1])
        .unwrap_or_else(|e| panic!("accepted claims that are not base64url: {e}"));
    let claims: serde_json::Value = serde_json::from_slice(&claims)
        .unwrap_or_else(|e| panic!("accepted claims that are not JSON: {e}"));
    assert_eq!(claims["sub"].as_str(), Some(subject.as_str()));
});
