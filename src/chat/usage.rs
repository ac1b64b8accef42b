//! What users' model calls used, period by period.

use super::ChatError;
use crate::{
    domain::{PeriodSpan, PeriodUsage, Subject, TokenUsage, UsagePeriod, UserId, now},
    store::Store,
    telemetry::metrics::TokenCounters,
};

/// Counts a call's tokens in the metrics, by kind.
pub(crate) fn count_tokens(counters: &TokenCounters, tokens: &TokenUsage) {
    counters.record(
        tokens.input_tokens,
        tokens.cached_input_tokens,
        tokens.output_tokens,
        tokens.reasoning_tokens,
    );
}

/// Reports usage in the periods the service is set to.
#[derive(Clone)]
pub struct UsageReports {
    store: Store,
    period: UsagePeriod,
}

impl UsageReports {
    pub fn new(store: Store, period: UsagePeriod) -> Self {
        Self { store, period }
    }

    /// The store the reports read.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The user's usage in the period before the current one, then in the current one.
    pub async fn of(&self, user: UserId) -> Result<[PeriodUsage; 2], ChatError> {
        let (previous, current) = self.spans();
        Ok(self.store.usage(user, previous, current).await?)
    }

    /// [`UsageReports::of`] the user `subject` names; nothing used for a user never seen.
    pub async fn of_subject(&self, subject: &Subject) -> Result<[PeriodUsage; 2], ChatError> {
        match self.store.find_user(subject).await? {
            Some(user) => self.of(user).await,
            None => {
                let (previous, current) = self.spans();
                Ok([previous, current].map(|span| PeriodUsage::of(span, Vec::new())))
            }
        }
    }

    /// The period before the current one, and the current one.
    fn spans(&self) -> (PeriodSpan, PeriodSpan) {
        let current = self.period.holding(now());
        (self.period.before(current), current)
    }
}
