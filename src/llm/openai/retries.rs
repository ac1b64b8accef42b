//! When a failed model request is tried again, and after how long.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use super::OpenAiSettings;

/// The longest a server may ask us to wait with `Retry-After`, and the longest backoff.
pub(super) const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The delay a 429 or 503 response asks for, in whole seconds (the HTTP-date form is ignored).
pub(super) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_DELAY))
}

/// The delays between attempts: `max_retries` of them, doubling from the base delay, each with
/// jitter (up to as much again) so that replicas hit by one outage do not retry in step.
pub(super) fn backoff(settings: &OpenAiSettings) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(settings.retry_base_delay)
        .with_max_delay(MAX_RETRY_DELAY)
        .with_factor(2.0)
        .with_max_times(usize::try_from(settings.max_retries).unwrap_or(usize::MAX))
        .with_jitter()
        .build()
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn settings(max_retries: u32) -> OpenAiSettings {
        OpenAiSettings {
            base_url: "http://localhost".to_owned(),
            api_key: None,
            model: "m".to_owned(),
            max_output_tokens: Some(100),
            connect_timeout: Duration::from_secs(1),
            first_token_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            total_timeout: Duration::from_secs(1),
            max_retries,
            retry_base_delay: Duration::from_millis(100),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_after_the_retries() {
        let delays: Vec<Duration> = backoff(&settings(3)).collect();
        assert_eq!(delays.len(), 3);
        for (attempt, delay) in delays.into_iter().enumerate() {
            let least = Duration::from_millis(100) * 2u32.pow(u32::try_from(attempt).unwrap());
            assert!(
                delay >= least && delay <= least * 2,
                "attempt {attempt}: {delay:?}"
            );
        }
        assert_eq!(backoff(&settings(0)).next(), None);
        assert!(backoff(&settings(40)).all(|delay| delay <= MAX_RETRY_DELAY * 2));
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let mut settings = settings(0);
        settings.api_key = Some(SecretString::from("sk-very-secret"));
        assert!(!format!("{settings:?}").contains("sk-very-secret"));
    }
}
