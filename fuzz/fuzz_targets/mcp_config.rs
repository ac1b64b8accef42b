//! A `CHAT_MCP_CONFIG` file, whatever it holds: every server accepted has a name that can prefix
//! a tool's, an HTTP(S) URL, and headers that are valid, hidden from logs and never one the MCP
//! transport sets itself.
#![no_main]

use chat_service::config::parse_mcp_config;
use libfuzzer_sys::fuzz_target;

const RESERVED: [&str; 6] = [
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "host",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(servers) = parse_mcp_config(text) else {
        return;
    };
    let mut names: Vec<&str> = servers.iter().map(|server| server.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), servers.len(), "a server name twice");
    for server in &servers {
        assert!((1..=32).contains(&server.name.len()));
        assert!(
            server
                .name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
        );
        assert!(server.url.starts_with("http://") || server.url.starts_with("https://"));
        for (name, value) in &server.headers {
            assert!(!RESERVED.contains(&name.as_str()), "{name} configured");
            assert!(value.is_sensitive(), "the value of {name} could be logged");
        }
    }
});
