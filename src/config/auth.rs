//! CHAT_JWT_SECRET, CHAT_JWT_PUBLIC_KEY_FILE, CHAT_JWT_JWKS_URL, CHAT_JWT_JWKS_MIN_REFRESH_INTERVAL,
//! CHAT_JWT_ISSUER, CHAT_JWT_AUDIENCE, CHAT_JWT_LEEWAY

use std::{path::PathBuf, time::Duration};

use clap::Args;
use secrecy::{ExposeSecret, SecretSlice, SecretString};

use super::{ConfigError, Environment, invalid, non_empty, secret};
use crate::api::{AuthSettings, JwtKey, jwks::JwksSettings};

/// HS256 secrets shorter than this are brute-forceable.
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HS256 shared secret that signs access tokens.
    #[arg(long, env = "CHAT_JWT_SECRET", value_parser = secret, hide_env_values = true, global = true)]
    pub jwt_secret: Option<SecretString>,

    /// PEM file with the RS256, ES256 or EdDSA (Ed25519) public key that verifies access tokens.
    #[arg(long, env = "CHAT_JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<PathBuf>,

    /// The identity provider's JSON Web Key Set (HTTPS; HTTP only to a loopback address), whose
    /// keys verify access tokens by their `kid`.
    #[arg(long, env = "CHAT_JWT_JWKS_URL", global = true)]
    pub jwt_jwks_url: Option<String>,

    /// The key set is fetched again at most this often, however many tokens name unknown keys.
    #[arg(long, env = "CHAT_JWT_JWKS_MIN_REFRESH_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub jwt_jwks_min_refresh_interval: Duration,

    /// Required `iss` claim, when set.
    #[arg(long, env = "CHAT_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set; a token's `aud` may be a string or an array.
    #[arg(long, env = "CHAT_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// How far a token's `exp` and `nbf` may be off, for clocks that disagree a little.
    #[arg(long, env = "CHAT_JWT_LEEWAY", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub jwt_leeway: Duration,
}

impl AuthArgs {
    /// `development_key_allowed`: whether the publicly known key may stand in for a real one.
    pub fn into_settings(
        self,
        env: Environment,
        development_key_allowed: bool,
    ) -> Result<AuthSettings, ConfigError> {
        let chosen = [
            self.jwt_secret.is_some(),
            self.jwt_public_key_file.is_some(),
            self.jwt_jwks_url.is_some(),
        ];
        if chosen.iter().filter(|set| **set).count() > 1 {
            return Err(several_keys());
        }
        let key = match self.jwt_jwks_url {
            Some(url) => JwtKey::Jwks(JwksSettings {
                url: jwks_url(&url)?,
                min_refresh_interval: self.jwt_jwks_min_refresh_interval,
            }),
            None => local_key(
                self.jwt_secret,
                self.jwt_public_key_file,
                env,
                development_key_allowed,
            )?,
        };
        Ok(AuthSettings {
            key,
            issuer: non_empty(self.jwt_issuer),
            audience: non_empty(self.jwt_audience),
            leeway: self.jwt_leeway,
        })
    }
}

/// The key that signs tokens when no identity provider's key set is named: a shared secret,
/// a public key from a file, or, where allowed, the publicly known development key.
fn local_key(
    secret: Option<SecretString>,
    public_key_file: Option<PathBuf>,
    env: Environment,
    development_key_allowed: bool,
) -> Result<JwtKey, ConfigError> {
    let key = match (secret, public_key_file) {
        (Some(_), Some(_)) => return Err(several_keys()),
        (Some(secret), None) if secret.expose_secret().len() < MIN_SECRET_BYTES => {
            return Err(invalid(
                "CHAT_JWT_SECRET",
                format!("must be at least {MIN_SECRET_BYTES} bytes"),
            ));
        }
        (Some(secret), None) => JwtKey::Hs256Secret(SecretSlice::from(
            secret.expose_secret().as_bytes().to_vec(),
        )),
        (None, Some(path)) => {
            let pem = std::fs::read(&path).map_err(|e| {
                invalid(
                    "CHAT_JWT_PUBLIC_KEY_FILE",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            JwtKey::PublicKeyPem { path, pem }
        }
        (None, None) if env == Environment::Production => {
            return Err(invalid(
                "CHAT_ENV",
                "production needs CHAT_JWT_SECRET, CHAT_JWT_PUBLIC_KEY_FILE or CHAT_JWT_JWKS_URL; the development key is refused",
            ));
        }
        (None, None) if !development_key_allowed => {
            return Err(invalid(
                "CHAT_JWT_SECRET",
                "a real model is configured (CHAT_LLM_BASE_URL) but no signing key: set \
                 CHAT_JWT_SECRET, CHAT_JWT_PUBLIC_KEY_FILE or CHAT_JWT_JWKS_URL, or set \
                 CHAT_ENV=development to accept tokens signed with the publicly known \
                 development key",
            ));
        }
        (None, None) => JwtKey::Development,
    };
    Ok(key)
}

/// The key set's address: HTTPS, since whoever can change the keys can sign any token, or HTTP to
/// this machine (a sidecar, a test).
fn jwks_url(text: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text)
        .map_err(|e| invalid("CHAT_JWT_JWKS_URL", format!("not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(invalid(
            "CHAT_JWT_JWKS_URL",
            "must be an https:// URL (http:// only to a loopback address)",
        )),
    }
}

fn several_keys() -> ConfigError {
    invalid(
        "CHAT_JWT_SECRET",
        "set one of CHAT_JWT_SECRET, CHAT_JWT_PUBLIC_KEY_FILE and CHAT_JWT_JWKS_URL, not several",
    )
}
