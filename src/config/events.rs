//! CHAT_REDIS_URL, CHAT_REDIS_GATES_READINESS, CHAT_TURN_LEASE

use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, invalid, secret};
use crate::events::EventSettings;

#[derive(Debug, Clone, Args)]
pub struct EventArgs {
    /// Redis (redis://[:password@]host:port[/db]), to carry turn events and cancellations
    /// between replicas: needed to resume or cancel a turn on another replica than the one
    /// generating it. Unset: events stay within each replica.
    #[arg(long, env = "CHAT_REDIS_URL", value_parser = secret, hide_env_values = true, global = true)]
    pub redis_url: Option<SecretString>,

    /// Report NOT_SERVING while Redis does not answer, as while the database does not. Off:
    /// turns complete without Redis, and only following them across replicas waits for it.
    #[arg(long, env = "CHAT_REDIS_GATES_READINESS", global = true)]
    pub redis_gates_readiness: bool,

    /// How long a replica's turns outlive it: a replica renews this lease while it runs, and
    /// the turns of one whose lease ran out are ended as interrupted by the others.
    #[arg(long, env = "CHAT_TURN_LEASE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub turn_lease: Duration,
}

impl EventArgs {
    pub fn into_settings(self) -> Result<(EventSettings, Duration), ConfigError> {
        if self.turn_lease < Duration::from_secs(1) || self.turn_lease > Duration::from_secs(600) {
            return Err(invalid(
                "CHAT_TURN_LEASE",
                "must be between 1 second and 10 minutes",
            ));
        }
        let redis_url = self
            .redis_url
            .filter(|url| !url.expose_secret().trim().is_empty());
        if let Some(url) = &redis_url
            && !url.expose_secret().starts_with("redis://")
        {
            return Err(invalid(
                "CHAT_REDIS_URL",
                "must be a redis:// URL (TLS is not supported)",
            ));
        }
        let settings = EventSettings {
            redis_url,
            idle_check: Duration::from_secs(2),
            retention: Duration::from_secs(60),
            gates_readiness: self.redis_gates_readiness,
        };
        Ok((settings, self.turn_lease))
    }
}
