//! What one user, and this replica, may ask of the service at once: a request rate per user,
//! concurrent reply streams per user, and concurrent reply streams per replica. Checked as each
//! request arrives, before anything of it is written, and kept by each replica on its own.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ChatError, limit::Limit};
use crate::{
    domain::{Budget, BudgetRefusal, UsagePeriod, UserId},
    telemetry::metrics::Metrics,
};

#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Requests a user may make per second, on average...
    pub user_requests_per_second: NonZeroU32,
    /// ...and at once after a quiet moment.
    pub user_request_burst: NonZeroU32,
    /// Replies a user may be receiving at once.
    pub streams_per_user: u32,
    /// Replies this replica streams at once, whoever they are for.
    pub streams_per_replica: u32,
    /// How many of its newest messages GetConversation returns at most.
    pub conversation_window: usize,
    pub storage: StorageLimits,
    /// The period usage is reported in.
    pub usage_period: UsagePeriod,
    /// What a user without a budget of their own may spend in a period (`usage_period`).
    pub budget: Budget,
}

/// How much one user may keep. Checked as each conversation or message is written.
#[derive(Debug, Clone, Copy)]
pub struct StorageLimits {
    pub conversations_per_user: i64,
    /// A conversation takes no more user messages once it holds this many; the reply to the last
    /// one is still stored. Counted by the conversation's revision: the messages added since the
    /// service began counting them.
    pub messages_per_conversation: i64,
    /// A message the client names as the parent of a new one takes it only while fewer than
    /// this many follow it: its edits, or the replies regenerated for it.
    pub siblings_per_message: i64,
}

/// When a refused stream is worth trying again: replies take seconds.
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Every this many requests, users not seen for a while are let go from the rate limiter.
const FORGET_EVERY: u64 = 4096;

pub struct Admission {
    settings: LimitSettings,
    rate: DefaultKeyedRateLimiter<UserId>,
    checked: AtomicU64,
    user_streams: Mutex<HashMap<UserId, u32>>,
    replica_streams: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// A reply stream that counts against its user's and the replica's limits until it is dropped.
pub struct StreamPermit {
    admission: Arc<Admission>,
    user: UserId,
    _replica: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(settings: LimitSettings, metrics: Arc<Metrics>) -> Arc<Self> {
        let quota = Quota::per_second(settings.user_requests_per_second)
            .allow_burst(settings.user_request_burst);
        let replica = usize::try_from(settings.streams_per_replica).unwrap_or(usize::MAX);
        Arc::new(Self {
            rate: RateLimiter::keyed(quota),
            checked: AtomicU64::new(0),
            user_streams: Mutex::default(),
            replica_streams: Arc::new(Semaphore::new(replica)),
            settings,
            metrics,
        })
    }

    /// Counts one request of `user` against its rate.
    pub fn admit_request(&self, user: UserId) -> Result<(), ChatError> {
        if self.checked.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.rate.retain_recent();
        }
        self.rate.check_key(&user).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.refuse(Limit::UserRequestRate, Some(wait))
        })
    }

    /// Admits one more reply stream for `user`, if both the user's and the replica's limits
    /// allow it.
    pub fn open_stream(self: &Arc<Self>, user: UserId) -> Result<StreamPermit, ChatError> {
        let mut streams = self.lock();
        let open = streams.entry(user).or_default();
        if *open >= self.settings.streams_per_user {
            if *open == 0 {
                streams.remove(&user);
            }
            return Err(self.refuse(Limit::UserStreams, Some(STREAM_RETRY_AFTER)));
        }
        let Ok(replica) = self.replica_streams.clone().try_acquire_owned() else {
            if *open == 0 {
                streams.remove(&user);
            }
            return Err(self.refuse(Limit::ReplicaStreams, Some(STREAM_RETRY_AFTER)));
        };
        *open += 1;
        Ok(StreamPermit {
            admission: self.clone(),
            user,
            _replica: replica,
        })
    }

    fn refuse(&self, limit: Limit, retry_after: Option<Duration>) -> ChatError {
        self.metrics.record_refusal(limit.label());
        ChatError::LimitReached { limit, retry_after }
    }

    /// What one user may keep.
    pub fn storage(&self) -> StorageLimits {
        self.settings.storage
    }

    /// The budget of a user without one of their own.
    pub fn budget(&self) -> Budget {
        self.settings.budget
    }

    /// Refuses a turn that the user's budget does not allow, counting the refusal.
    pub fn budget_refusal(&self, refusal: BudgetRefusal) -> ChatError {
        self.metrics
            .record_refusal(Limit::of_budget(&refusal).label());
        ChatError::BudgetRefused(refusal)
    }

    /// Refuses a write that a storage limit does not allow, counting the refusal. Retrying will
    /// not help until the user deletes something.
    pub fn storage_refusal(&self, limit: Limit) -> ChatError {
        self.refuse(limit, None)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, u32>> {
        // Every update leaves the map consistent, so a poisoned lock is still usable.
        self.user_streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut streams = self.admission.lock();
        if let Some(open) = streams.get_mut(&self.user) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(rate: u32, burst: u32, per_user: u32, per_replica: u32) -> Arc<Admission> {
        let settings = LimitSettings {
            user_requests_per_second: NonZeroU32::new(rate).unwrap(),
            user_request_burst: NonZeroU32::new(burst).unwrap(),
            streams_per_user: per_user,
            streams_per_replica: per_replica,
            conversation_window: 1000,
            storage: StorageLimits {
                conversations_per_user: 10,
                messages_per_conversation: 10,
                siblings_per_message: 10,
            },
            usage_period: UsagePeriod::Day,
            budget: Budget::unlimited(UsagePeriod::Day),
        };
        Admission::new(settings, Metrics::new())
    }

    fn refused_by(result: Result<impl Sized, ChatError>) -> Option<Limit> {
        match result {
            Err(ChatError::LimitReached { limit, .. }) => Some(limit),
            _ => None,
        }
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies_per_user() {
        let admission = admission(1, 3, 4, 100);
        let (alice, bob) = (UserId::generate(), UserId::generate());
        for _ in 0..3 {
            assert!(admission.admit_request(alice).is_ok());
        }
        let refused = admission.admit_request(alice);
        assert!(matches!(
            refused,
            Err(ChatError::LimitReached { limit: Limit::UserRequestRate, retry_after: Some(wait) })
                if wait > Duration::ZERO && wait <= Duration::from_secs(1)
        ));
        assert!(
            admission.admit_request(bob).is_ok(),
            "bob has his own bucket"
        );
    }

    #[test]
    fn streams_are_limited_per_user_and_come_back_when_they_end() {
        let admission = admission(100, 100, 2, 100);
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let first = admission.open_stream(alice);
        let second = admission.open_stream(alice);
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(
            refused_by(admission.open_stream(alice)),
            Some(Limit::UserStreams)
        );
        assert!(admission.open_stream(bob).is_ok());
        drop(first);
        assert!(admission.open_stream(alice).is_ok());
    }

    #[test]
    fn the_replica_limit_counts_everyone() {
        let admission = admission(100, 100, 4, 2);
        let held: Vec<_> = (0..2)
            .map(|_| admission.open_stream(UserId::generate()))
            .collect();
        assert!(held.iter().all(Result::is_ok));
        let carol = UserId::generate();
        assert_eq!(
            refused_by(admission.open_stream(carol)),
            Some(Limit::ReplicaStreams)
        );
        assert!(
            admission.lock().get(&carol).is_none(),
            "a refusal leaves no count"
        );
        drop(held);
        let carols = admission.open_stream(carol);
        assert!(carols.is_ok());
        assert_eq!(admission.lock().len(), 1, "only carol's count is left");
    }
}
