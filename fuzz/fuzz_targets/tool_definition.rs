//! A tool a client defines (its `ToolDefinition`, given here as JSON) is accepted only within its
//! limits: a name models accept, a bounded description, and parameters that are one JSON object
//! of bounded size.
#![no_main]

use chat_service::domain::ToolSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(definition) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let field = |name: &str| definition[name].as_str().unwrap_or_default().to_owned();
    let (name, description, parameters) = (
        field("name"),
        field("description"),
        field("parameters_json"),
    );
    let Ok(spec) = ToolSpec::parse_client(name.clone(), description.clone(), &parameters) else {
        return;
    };
    assert_eq!(spec.name, name);
    assert!(!name.is_empty() && name.len() <= ToolSpec::MAX_NAME_CHARS);
    assert!(
        name.bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
    );
    assert_eq!(spec.description, description);
    assert!(description.chars().count() <= ToolSpec::MAX_DESCRIPTION_CHARS);
    assert!(parameters.len() <= ToolSpec::MAX_PARAMETERS_BYTES);
    assert!(spec.parameters.is_object());
});
