//! Tokens verified lately. A client sends the same token with every request until it expires,
//! and the token's bytes fix everything its check reads (signature, expiry, issuer, audience,
//! subject), so a token that passed need not be checked again until it expires.
//!
//! Only tokens checked against a key fixed at start-up are remembered: an identity provider may
//! drop a key from the set it publishes, and the tokens that key signed must stop passing then.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::domain::Subject;

/// The most tokens remembered. Past it, the expired are forgotten, then all if none had
/// expired: a flood of valid tokens costs their checks, as it would without this, and memory
/// stays bounded (about 300 bytes a token).
const MAX_TOKENS: usize = 4096;

/// The longest a token is remembered, however late it expires.
const MAX_REMEMBERED: Duration = Duration::from_secs(300);

/// Tokens that passed their check, with whom each names.
#[derive(Default)]
pub(super) struct VerifiedTokens {
    tokens: Mutex<HashMap<Box<str>, Pass>>,
}

struct Pass {
    subject: Subject,
    /// The last second (since the Unix epoch) at which the token passes without a new check.
    until: u64,
}

impl VerifiedTokens {
    /// Who `token` names, if it passed its check and still passes at `now`.
    pub(super) fn find(&self, token: &str, now: u64) -> Option<Subject> {
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        let pass = tokens.get(token)?;
        (now <= pass.until).then(|| pass.subject.clone())
    }

    /// Remembers that `token`, which names `subject`, passed its check at `now`. It expires at
    /// `expires` (its `exp`), and passes until `leeway` after that, as the check allows.
    pub(super) fn remember(
        &self,
        token: &str,
        subject: &Subject,
        expires: Option<f64>,
        leeway: Duration,
        now: u64,
    ) {
        let Some(expires) = expires.filter(|exp| exp.is_finite() && *exp >= 0.0) else {
            return;
        };
        // Whole seconds, as the check compares them; a fraction of a second is dropped.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let expires = expires as u64;
        let until = expires
            .saturating_add(leeway.as_secs())
            .min(now.saturating_add(MAX_REMEMBERED.as_secs()));
        if until < now {
            return;
        }
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if tokens.len() >= MAX_TOKENS {
            tokens.retain(|_, pass| now <= pass.until);
            if tokens.len() >= MAX_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(
            token.into(),
            Pass {
                subject: subject.clone(),
                until,
            },
        );
    }
}

/// Seconds since the Unix epoch, as a token's times count them.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Subject {
        Subject::parse("alice").unwrap_or_else(|| panic!("a valid subject"))
    }

    #[test]
    fn a_token_passes_until_its_expiry_and_leeway_then_no_more() {
        let verified = VerifiedTokens::default();
        let leeway = Duration::from_secs(60);
        verified.remember("t", &alice(), Some(1_000.0), leeway, 990);
        assert_eq!(verified.find("t", 990), Some(alice()));
        assert_eq!(verified.find("t", 1_060), Some(alice()));
        assert_eq!(verified.find("t", 1_061), None);
        assert_eq!(verified.find("other", 990), None);
    }

    #[test]
    fn a_token_is_checked_again_after_the_longest_time_remembered() {
        let verified = VerifiedTokens::default();
        let limit = MAX_REMEMBERED.as_secs();
        verified.remember("t", &alice(), Some(1e12), Duration::ZERO, 0);
        assert_eq!(verified.find("t", limit), Some(alice()));
        assert_eq!(verified.find("t", limit + 1), None);
    }

    #[test]
    fn a_token_without_a_usable_expiry_is_not_remembered() {
        let verified = VerifiedTokens::default();
        for expires in [None, Some(f64::NAN), Some(-1.0), Some(100.0)] {
            verified.remember("t", &alice(), expires, Duration::ZERO, 200);
            assert_eq!(verified.find("t", 200), None, "{expires:?}");
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let verified = VerifiedTokens::default();
        for i in 0..=MAX_TOKENS {
            verified.remember(&i.to_string(), &alice(), Some(2e9), Duration::ZERO, 0);
        }
        let held = verified
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert!(held <= MAX_TOKENS, "{held}");
        assert_eq!(verified.find(&MAX_TOKENS.to_string(), 0), Some(alice()));
    }
}
