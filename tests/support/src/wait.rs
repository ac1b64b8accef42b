//! Waiting for states that announce themselves by no event a test could await.

use std::{future::Future, time::Duration};

/// Long enough for anything that is going to happen; a test that waits longer has failed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Checks `condition` a little at a time until it holds, failing after [`PATIENCE`].
pub async fn eventually<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
