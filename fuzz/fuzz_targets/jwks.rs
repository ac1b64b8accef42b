//! A JSON Web Key Set from an identity provider, whatever it holds: only asymmetric keys are
//! ever taken (the set is public, so a symmetric key in it is anyone's), each with an algorithm
//! that fits its kind and curve, and never more keys than the set lists.
#![no_main]

use chat_service::api::jwks::published_keys;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Whether a key of type `kty` (and curve `crv`) may verify with `algorithm`.
fn fits(kty: &str, crv: Option<&str>, algorithm: Algorithm) -> bool {
    use Algorithm::*;
    match (kty, crv, algorithm) {
        ("RSA", _, RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => true,
        ("EC", Some("P-256"), ES256) | ("EC", Some("P-384"), ES384) => true,
        ("OKP", Some("Ed25519"), EdDSA) => true,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = published_keys(data) else {
        return;
    };
    let Ok(document) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let listed = document["keys"].as_array().cloned().unwrap_or_default();
    assert!(keys.len() <= listed.len());
    for key in &keys {
        assert!(
            !matches!(
                key.algorithm,
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            ),
            "took a symmetric key from a public set"
        );
        // One of the listed keys with the same `kid` is of a kind the algorithm fits.
        let candidates = listed
            .iter()
            .filter(|jwk| jwk["kid"].as_str() == key.kid.as_deref())
            .collect::<Vec<_>>();
        assert!(
            candidates.iter().any(|jwk| fits(
                jwk["kty"].as_str().unwrap_or_default(),
                jwk["crv"].as_str(),
                key.algorithm
            )),
            "{:?} taken for a key that does not fit it: {candidates:?}",
            key.algorithm
        );
    }
});
