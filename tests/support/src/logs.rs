//! Captures the service's log lines, so that tests can check what an operator would see.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use serde_json::Value;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static BUFFER: OnceLock<Buffer> = OnceLock::new();

/// Starts capturing JSON log lines for the whole test process (once).
pub fn capture() {
    BUFFER.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        // The service's own JSON lines, so that tests see what an operator would.
        let installed = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(chat_service::telemetry::json_logs(move || writer.clone()))
            .try_init();
        assert!(installed.is_ok(), "another subscriber was installed first");
        buffer
    });
}

/// Every captured line that mentions `needle`, parsed.
pub fn lines_containing(needle: &str) -> Vec<Value> {
    let Some(buffer) = BUFFER.get() else {
        return Vec::new();
    };
    let bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|line| line.contains(needle))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}")))
        .collect()
}

/// Whether any captured line contains `needle`.
pub fn any_line_contains(needle: &str) -> bool {
    BUFFER.get().is_some_and(|buffer| {
        let bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes).contains(needle)
    })
}
