//! A turn's stored state, its attempts, and the client's id for a request.

/// Where a turn stands. Stored by its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum TurnState {
    /// A replica is generating the reply.
    Generating,
    /// The reply is stored, complete or awaiting the client's tool results.
    Completed,
    /// Stopped by the client (on purpose, by going away, or by not reading): what was streamed
    /// is stored as cancelled.
    Cancelled,
    /// The model or the database failed; no complete reply was stored.
    Failed,
    /// The replica generating it shut down or stopped.
    Interrupted,
}

impl TurnState {
    /// Whether a retry of the request generates the reply anew: nothing complete came of it.
    pub fn may_generate_again(self) -> bool {
        matches!(self, Self::Failed | Self::Interrupted)
    }
}

/// One try at generating a turn's reply, numbered from 1.
pub type Attempt = std::num::NonZeroI32;

pub const FIRST_ATTEMPT: Attempt = match Attempt::new(1) {
    Some(first) => first,
    None => Attempt::MAX,
};

/// A client's id for a request: a retry that carries it again is the same request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be at most 128 printable ASCII characters, without spaces")]
pub struct InvalidRequestKey;

impl RequestKey {
    pub const MAX_LEN: usize = 128;

    /// `None` for the empty text: no id given.
    pub fn parse(text: String) -> Result<Option<Self>, InvalidRequestKey> {
        if text.is_empty() {
            return Ok(None);
        }
        let printable = text.bytes().all(|byte| byte.is_ascii_graphic());
        if text.len() > Self::MAX_LEN || !printable {
            return Err(InvalidRequestKey);
        }
        Ok(Some(Self(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_short_printable_and_optional() {
        assert_eq!(RequestKey::parse(String::new()), Ok(None));
        assert_eq!(
            RequestKey::parse("retry-7f3a:1".into()).map(|key| key.map(|k| k.0)),
            Ok(Some("retry-7f3a:1".into()))
        );
        assert_eq!(RequestKey::parse("a b".into()), Err(InvalidRequestKey));
        assert_eq!(RequestKey::parse("é".into()), Err(InvalidRequestKey));
        assert_eq!(RequestKey::parse("x".repeat(129)), Err(InvalidRequestKey));
        assert!(RequestKey::parse("x".repeat(128)).is_ok());
    }

    #[test]
    fn only_a_failed_or_interrupted_turn_is_generated_again() {
        assert!(TurnState::Failed.may_generate_again());
        assert!(TurnState::Interrupted.may_generate_again());
        assert!(!TurnState::Generating.may_generate_again());
        assert!(!TurnState::Completed.may_generate_again());
        assert!(!TurnState::Cancelled.may_generate_again());
    }
}
