//! A user's message text, checked once.

/// The text of a user's message, checked once: not blank, no NUL, and at most a configured number
/// of characters (Unicode scalar values, not bytes). Stored exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageContent(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidContent {
    #[error("must not be empty or only whitespace")]
    Blank,
    #[error("must be at most {max} characters, got {actual}")]
    TooLong { max: usize, actual: usize },
    #[error("must not contain the NUL character")]
    Nul,
}

impl MessageContent {
    pub fn parse(text: String, max_chars: usize) -> Result<Self, InvalidContent> {
        if text.trim().is_empty() {
            return Err(InvalidContent::Blank);
        }
        if text.contains('\0') {
            return Err(InvalidContent::Nul);
        }
        // Counting stops one past the limit: an oversized message costs no more than a valid one.
        let counted = text.chars().take(max_chars + 1).count();
        if counted > max_chars {
            return Err(InvalidContent::TooLong {
                max: max_chars,
                actual: text.chars().count(),
            });
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_characters_not_bytes() {
        let at_limit = "é".repeat(10);
        assert_eq!(
            MessageContent::parse(at_limit.clone(), 10).map(MessageContent::into_string),
            Ok(at_limit)
        );
        assert_eq!(
            MessageContent::parse("é".repeat(11), 10),
            Err(InvalidContent::TooLong {
                max: 10,
                actual: 11
            })
        );
    }

    #[test]
    fn blank_and_nul_are_refused_and_text_is_kept_as_sent() {
        assert_eq!(
            MessageContent::parse(" \n\t ".into(), 10),
            Err(InvalidContent::Blank)
        );
        assert_eq!(
            MessageContent::parse(String::new(), 10),
            Err(InvalidContent::Blank)
        );
        assert_eq!(
            MessageContent::parse("a\0b".into(), 10),
            Err(InvalidContent::Nul)
        );
        assert_eq!(
            MessageContent::parse(" hi ".into(), 10).map(MessageContent::into_string),
            Ok(" hi ".into())
        );
    }
}
