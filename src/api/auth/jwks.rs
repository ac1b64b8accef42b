//! Verification keys published by an identity provider as a JSON Web Key Set (RFC 7517), the way
//! Keycloak, Auth0, Cognito and Google publish theirs: fetched over HTTPS, chosen by a token's
//! `kid`, kept for the lifetime the response gives, and fetched again when a token names a key
//! the set does not hold (the provider rotated its keys), at most once per short interval. When
//! the provider cannot be reached, the keys already known keep working.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet},
};

use super::claims::{AuthError, ClaimRules};

/// What to fetch, and how often at most.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// HTTPS, or HTTP to a loopback address.
    pub url: url::Url,
    /// Fetches closer together than this are not made, whatever tokens arrive.
    pub min_refresh_interval: Duration,
}

/// How long a set is kept when its response says nothing, and at most whatever it says.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A key set is a few kilobytes; a larger response is not one.
const MAX_BODY_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One key of the set, ready to verify the tokens it signed.
pub struct VerifyingKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
    pub validation: Validation,
}

type KeysByKid = HashMap<String, Arc<VerifyingKey>>;

#[derive(Default)]
struct KeySet {
    by_kid: KeysByKid,
    /// Keys published without a `kid`: usable only by tokens without one, when alone.
    unnamed: Vec<Arc<VerifyingKey>>,
    /// Until when the set is fresh; `None` before the first successful fetch.
    fresh_until: Option<Instant>,
    /// When a fetch was last started, successful or not.
    last_attempt: Option<Instant>,
}

/// Why a fetch failed: for the log.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("the response is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("the response is not a JSON Web Key Set: {0}")]
    NotAKeySet(serde_json::Error),
}

pub struct JwksKeys {
    settings: JwksSettings,
    rules: ClaimRules,
    client: reqwest::Client,
    keys: RwLock<KeySet>,
    /// Held while fetching, so that concurrent callers share one fetch.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksKeys {
    pub fn new(settings: JwksSettings, rules: ClaimRules) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .build()?;
        Ok(Self {
            settings,
            rules,
            client,
            keys: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The key that signed a token whose header names `kid`. A key the set does not hold makes
    /// the set be fetched again (unless it was, lately); a set past its lifetime is fetched
    /// again in the background while its keys go on serving.
    pub async fn key_for(
        self: &Arc<Self>,
        kid: Option<&str>,
    ) -> Result<Arc<VerifyingKey>, AuthError> {
        if let Some(key) = self.known_key(kid) {
            return Ok(key);
        }
        {
            let _fetching = self.fetching.lock().await;
            // Whoever held the lock may have just fetched what this token needs.
            if let Some((key, _)) = self.lookup(kid) {
                return Ok(key);
            }
            self.fetch_if_due().await;
        }
        match self.lookup(kid) {
            Some((key, _)) => Ok(key),
            None if self.read().fresh_until.is_none() => Err(AuthError::KeysUnavailable),
            None => Err(AuthError::UnknownKey),
        }
    }

    /// The key, if the set holds it, without waiting for anything. A set past its lifetime is
    /// fetched again in the background.
    pub fn known_key(self: &Arc<Self>, kid: Option<&str>) -> Option<Arc<VerifyingKey>> {
        let (key, stale) = self.lookup(kid)?;
        if stale && self.fetch_due() {
            let keys = self.clone();
            tokio::spawn(async move {
                if let Ok(_fetching) = keys.fetching.try_lock() {
                    keys.fetch_if_due().await;
                }
            });
        }
        Some(key)
    }

    /// Fetches the set now, as at start-up, so that the first requests need not wait for it,
    /// unless a request was quicker.
    pub async fn prefetch(&self) {
        let _fetching = self.fetching.lock().await;
        if self.read().last_attempt.is_none() {
            self.fetch_if_due().await;
        }
    }

    fn lookup(&self, kid: Option<&str>) -> Option<(Arc<VerifyingKey>, bool)> {
        let keys = self.read();
        let key = match kid {
            Some(kid) => keys.by_kid.get(kid)?.clone(),
            None => match keys.unnamed.as_slice() {
                [only] => only.clone(),
                _ => return None,
            },
        };
        let stale = keys.fresh_until.is_none_or(|until| Instant::now() >= until);
        Some((key, stale))
    }

    /// Whether no fetch started in the last minimum interval.
    fn fetch_due(&self) -> bool {
        self.read()
            .last_attempt
            .is_none_or(|last| last.elapsed() >= self.settings.min_refresh_interval)
    }

    /// Fetches the set unless a fetch started less than the minimum interval ago. The caller
    /// holds `fetching`. On failure the keys known so far stay.
    async fn fetch_if_due(&self) {
        if !self.fetch_due() {
            return;
        }
        self.write().last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok((published, lifetime)) => {
                let (by_kid, unnamed) = self.usable_keys(published);
                tracing::info!(
                    url = %self.settings.url,
                    keys = by_kid.len() + unnamed.len(),
                    lifetime_s = lifetime.as_secs(),
                    "fetched the identity provider's signing keys"
                );
                let mut keys = self.write();
                keys.by_kid = by_kid;
                keys.unnamed = unnamed;
                keys.fresh_until = Some(Instant::now() + lifetime);
            }
            Err(error) => tracing::warn!(
                url = %self.settings.url,
                error = %error,
                "could not fetch the identity provider's signing keys; the known ones stay in use"
            ),
        }
    }

    async fn fetch(&self) -> Result<(Vec<PublishedKey>, Duration), FetchError> {
        let response = self.client.get(self.settings.url.clone()).send().await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let lifetime = cache_lifetime(response.headers()).clamp(
            self.settings.min_refresh_interval.min(MAX_LIFETIME),
            MAX_LIFETIME,
        );
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let keys = published_keys(&body).map_err(FetchError::NotAKeySet)?;
        Ok((keys, lifetime))
    }

    /// The published keys by `kid`, and those without one, each with the validation of its
    /// algorithm.
    fn usable_keys(&self, published: Vec<PublishedKey>) -> (KeysByKid, Vec<Arc<VerifyingKey>>) {
        let mut by_kid = HashMap::new();
        let mut unnamed = Vec::new();
        for PublishedKey {
            kid,
            algorithm,
            key,
        } in published
        {
            let key = Arc::new(VerifyingKey {
                key,
                algorithm,
                validation: self.rules.validation(algorithm),
            });
            match kid {
                Some(kid) => {
                    by_kid.insert(kid, key);
                }
                None => unnamed.push(key),
            }
        }
        (by_kid, unnamed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeySet> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A key of a set that this service can verify with.
pub struct PublishedKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// The keys of a JSON Web Key Set's document that this service can verify with, in its order.
/// Symmetric keys are never taken: the set is public, so anyone could sign with them. Keys of a
/// kind not supported, or whose algorithm does not fit them, are skipped.
pub fn published_keys(document: &[u8]) -> Result<Vec<PublishedKey>, serde_json::Error> {
    let set: JwkSet = serde_json::from_slice(document)?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|jwk| {
            let Some(algorithm) = algorithm_of(&jwk) else {
                tracing::debug!(kid = ?jwk.common.key_id, "skipping a key of a kind not supported");
                return None;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                tracing::debug!(kid = ?jwk.common.key_id, "skipping a key that does not parse");
                return None;
            };
            Some(PublishedKey {
                kid: jwk.common.key_id,
                algorithm,
                key,
            })
        })
        .collect())
}

/// The algorithm a key verifies: the one it names, if it fits the key, or the usual one for
/// its kind. Only asymmetric keys.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let named = jwk
        .common
        .key_algorithm
        .and_then(|alg| alg.to_string().parse::<Algorithm>().ok());
    let fits = |algorithm: &Algorithm| match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            algorithm,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(params) => matches!(
            (&params.curve, algorithm),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(params) => {
            params.curve == EllipticCurve::Ed25519 && *algorithm == Algorithm::EdDSA
        }
        _ => false,
    };
    let usual = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(params) => {
            (params.curve == EllipticCurve::Ed25519).then_some(Algorithm::EdDSA)
        }
        _ => None,
    };
    match named {
        Some(algorithm) => fits(&algorithm).then_some(algorithm),
        None => usual,
    }
}

/// `Cache-Control: max-age`, if the response has one; `no-cache` and `no-store` mean at once.
fn cache_lifetime(headers: &reqwest::header::HeaderMap) -> Duration {
    let mut lifetime = DEFAULT_LIFETIME;
    for value in headers.get_all(reqwest::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',').map(str::trim) {
            let directive = directive.to_ascii_lowercase();
            if directive == "no-cache" || directive == "no-store" {
                return Duration::ZERO;
            }
            if let Some(seconds) = directive.strip_prefix("max-age=")
                && let Ok(seconds) = seconds.trim_matches('"').parse::<u64>()
            {
                lifetime = Duration::from_secs(seconds);
            }
        }
    }
    lifetime
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{CACHE_CONTROL, HeaderMap, HeaderValue};

    fn headers(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn the_lifetime_comes_from_max_age() {
        assert_eq!(
            cache_lifetime(&headers("public, max-age=3600")),
            Duration::from_secs(3600)
        );
        assert_eq!(cache_lifetime(&headers("no-cache")), Duration::ZERO);
        assert_eq!(cache_lifetime(&HeaderMap::new()), DEFAULT_LIFETIME);
        assert_eq!(cache_lifetime(&headers("max-age=soon")), DEFAULT_LIFETIME);
    }

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn symmetric_keys_and_mismatched_algorithms_are_never_used() {
        let secret = jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}));
        assert_eq!(algorithm_of(&secret), None);
        let ed = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
                                    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(algorithm_of(&jwk(ed.clone())), Some(Algorithm::EdDSA));
        let mut claims_rs256 = ed;
        claims_rs256["alg"] = "RS256".into();
        assert_eq!(algorithm_of(&jwk(claims_rs256)), None);
    }
}
