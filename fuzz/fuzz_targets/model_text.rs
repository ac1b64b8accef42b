//! Text the service takes from the model and from PostgreSQL before a client sees it: a title
//! the model wrote, and a search snippet with its matches marked. A title is one line of at most
//! 80 characters, never blank; a snippet's parts are never empty, and together they are the
//! snippet without its marks.
#![no_main]

use chat_service::domain::{MATCH_END, MATCH_START, Title, snippet_parts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(title) = Title::from_model(text) {
        let title = title.as_str();
        assert!(!title.trim().is_empty());
        assert!(
            title.chars().count() <= Title::DERIVED_MAX_CHARS,
            "{title:?}"
        );
        assert!(!title.chars().any(char::is_control), "{title:?}");
    }
    let parts = snippet_parts(text);
    assert!(parts.iter().all(|part| !part.text.is_empty()));
    let joined: String = parts.iter().map(|part| part.text.as_str()).collect();
    let unmarked: String = text
        .chars()
        .filter(|&c| c != MATCH_START && c != MATCH_END)
        .collect();
    assert_eq!(joined, unmarked);
});
