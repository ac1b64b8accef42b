//! A request id is accepted only as 1 to 128 printable ASCII characters without spaces, kept
//! exactly; an empty one is no id.
#![no_main]

use chat_service::domain::RequestKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: String| {
    match RequestKey::parse(text.clone()) {
        Ok(None) => assert!(text.is_empty()),
        Ok(Some(key)) => {
            assert_eq!(key.as_str(), text);
            assert!(text.len() <= RequestKey::MAX_LEN);
            assert!(text.bytes().all(|byte| byte.is_ascii_graphic()));
        }
        Err(_) => assert!(
            text.len() > RequestKey::MAX_LEN || !text.bytes().all(|byte| byte.is_ascii_graphic())
        ),
    }
});
