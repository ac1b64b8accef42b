//! CHAT_JWT_SECRET, CHAT_JWT_PUBLIC_KEY_FILE, CHAT_JWT_ISSUER, CHAT_JWT_AUDIENCE, CHAT_JWT_LEEWAY

use std::{path::PathBuf, time::Duration};

use clap::Args;
use secrecy::{ExposeSecret, SecretSlice, SecretString};

use super::{ConfigError, Environment, invalid, non_empty, secret};
use crate::api::{AuthSettings, JwtKey};

/// HS256 secrets shorter than this are brute-forceable.
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HS256 shared secret that signs access tokens.
    #[arg(long, env = "CHAT_JWT_SECRET", value_parser = secret, hide_env_values = true, global = true)]
    pub jwt_secret: Option<SecretString>,

    /// PEM file with the RS256 or ES256 public key that verifies access tokens.
    #[arg(long, env = "CHAT_JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<PathBuf>,

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
        let key = match (self.jwt_secret, self.jwt_public_key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "CHAT_JWT_SECRET",
                    "set either CHAT_JWT_SECRET or CHAT_JWT_PUBLIC_KEY_FILE, not both",
                ));
            }
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
                    "production needs CHAT_JWT_SECRET or CHAT_JWT_PUBLIC_KEY_FILE; the development key is refused",
                ));
            }
            (None, None) if !development_key_allowed => {
                return Err(invalid(
                    "CHAT_JWT_SECRET",
                    "a real model is configured (CHAT_LLM_BASE_URL) but no signing key: set \
                     CHAT_JWT_SECRET or CHAT_JWT_PUBLIC_KEY_FILE, or set CHAT_ENV=development to \
                     accept tokens signed with the publicly known development key",
                ));
            }
            (None, None) => JwtKey::Development,
        };
        Ok(AuthSettings {
            key,
            issuer: non_empty(self.jwt_issuer),
            audience: non_empty(self.jwt_audience),
            leeway: self.jwt_leeway,
        })
    }
}
