//! Full-text search over a user's conversations: the query a client types, the place where the
//! next page of results starts, and the snippet that shows why a conversation matched.

use super::{
    conversation::Conversation,
    ids::{ConversationId, MessageId},
};

/// What a client searches for, as a web search box takes it: words, "a phrase" in quotes, `or`
/// between alternatives, `-word` to leave out. PostgreSQL reads it (`websearch_to_tsquery`), and
/// accepts any text; this only keeps out what it cannot hold or what no person types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSearchQuery {
    #[error("must not be empty: give the words to look for")]
    Empty,
    #[error("must be at most {} characters", SearchQuery::MAX_CHARS)]
    TooLong,
    #[error("must not contain control characters such as line breaks or NUL")]
    ControlCharacter,
}

impl SearchQuery {
    pub const MAX_CHARS: usize = 500;

    pub fn parse(text: &str) -> Result<Self, InvalidSearchQuery> {
        let text = text.trim();
        if text.is_empty() {
            return Err(InvalidSearchQuery::Empty);
        }
        if text.chars().count() > Self::MAX_CHARS {
            return Err(InvalidSearchQuery::TooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(InvalidSearchQuery::ControlCharacter);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the next page of search results starts: after this conversation, in (rank desc, id
/// desc) order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchCursor {
    pub rank: f32,
    pub conversation: ConversationId,
}

/// One conversation that matched, with the message of it that matched best.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub conversation: Conversation,
    pub message: MessageId,
    /// How well the message matched; higher is better.
    pub rank: f32,
    pub snippet: Vec<SnippetPart>,
}

/// A piece of a snippet: text around the match, or a word that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnippetPart {
    pub text: String,
    pub highlighted: bool,
}

/// Marks the start of a matching word in a snippet as the database writes it. Control
/// characters never reach a snippet otherwise: they are taken out of the text before it is
/// marked.
pub const MATCH_START: char = '\u{2}';
/// Marks the end of a matching word.
pub const MATCH_END: char = '\u{3}';

/// Splits a snippet marked with [`MATCH_START`] and [`MATCH_END`] into its parts, in order.
/// Parts are never empty; a mark without its partner ends or starts a part all the same.
pub fn snippet_parts(marked: &str) -> Vec<SnippetPart> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut highlighted = false;
    for c in marked.chars() {
        let opens = match c {
            MATCH_START => true,
            MATCH_END => false,
            _ => {
                text.push(c);
                continue;
            }
        };
        if !text.is_empty() {
            parts.push(SnippetPart {
                text: std::mem::take(&mut text),
                highlighted,
            });
        }
        highlighted = opens;
    }
    if !text.is_empty() {
        parts.push(SnippetPart { text, highlighted });
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(text: &str, highlighted: bool) -> SnippetPart {
        SnippetPart {
            text: text.to_owned(),
            highlighted,
        }
    }

    #[test]
    fn marks_split_a_snippet_into_plain_and_highlighted_parts() {
        assert_eq!(
            snippet_parts("the \u{2}quick\u{3} \u{2}brown\u{3} fox"),
            [
                part("the ", false),
                part("quick", true),
                part(" ", false),
                part("brown", true),
                part(" fox", false),
            ]
        );
        assert_eq!(snippet_parts("\u{2}all\u{3}"), [part("all", true)]);
        assert_eq!(snippet_parts("no match"), [part("no match", false)]);
        assert_eq!(snippet_parts(""), []);
        // A stray mark still alternates, and never makes an empty part.
        assert_eq!(
            snippet_parts("a\u{3}\u{2}\u{2}b"),
            [part("a", false), part("b", true)]
        );
    }

    #[test]
    fn queries_are_trimmed_and_bounded() {
        assert_eq!(
            SearchQuery::parse("  \"red fox\" or wolf -dog ").map(|q| q.as_str().to_owned()),
            Ok("\"red fox\" or wolf -dog".to_owned())
        );
        assert_eq!(SearchQuery::parse(" \t "), Err(InvalidSearchQuery::Empty));
        assert!(SearchQuery::parse(&"é".repeat(500)).is_ok());
        assert_eq!(
            SearchQuery::parse(&"é".repeat(501)),
            Err(InvalidSearchQuery::TooLong)
        );
        assert_eq!(
            SearchQuery::parse("a\0b"),
            Err(InvalidSearchQuery::ControlCharacter)
        );
    }
}
