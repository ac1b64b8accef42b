//! What a model call cost, in tokens, and what a span of days of a user's calls cost.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc};

/// The tokens of one model call, as its provider reported them, or estimated where it did not.
/// Cached input is part of the input, and reasoning part of the output, as OpenAI counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TokenUsage {
    pub input_tokens: u32,
    #[serde(default)]
    pub cached_input_tokens: u32,
    pub output_tokens: u32,
    #[serde(default)]
    pub reasoning_tokens: u32,
    /// Counted by the service from the text's length: the provider reported nothing.
    #[serde(default)]
    pub estimated: bool,
}

/// Bytes of UTF-8 text per token, for a call whose provider reports no usage: about four
/// characters of English with OpenAI's tokenizers. Counted in bytes, so that measuring a long
/// context costs nothing.
const BYTES_PER_TOKEN: usize = 4;

impl TokenUsage {
    /// A call of `input_bytes` bytes of text answered with `output_bytes`, its provider silent.
    /// Rounded up, so that an estimate errs high.
    pub fn estimate(input_bytes: usize, output_bytes: usize) -> Self {
        let tokens =
            |bytes: usize| u32::try_from(bytes.div_ceil(BYTES_PER_TOKEN)).unwrap_or(u32::MAX);
        Self {
            input_tokens: tokens(input_bytes),
            cached_input_tokens: 0,
            output_tokens: tokens(output_bytes),
            reasoning_tokens: 0,
            estimated: true,
        }
    }

    /// The usage of two calls together; estimated if either was.
    #[must_use]
    pub fn plus(self, more: Self) -> Self {
        Self {
            input_tokens: self.input_tokens.saturating_add(more.input_tokens),
            cached_input_tokens: self
                .cached_input_tokens
                .saturating_add(more.cached_input_tokens),
            output_tokens: self.output_tokens.saturating_add(more.output_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_add(more.reasoning_tokens),
            estimated: self.estimated || more.estimated,
        }
    }

    /// Input and output: what a provider bills and a budget counts.
    pub fn total(&self) -> u64 {
        u64::from(self.input_tokens) + u64::from(self.output_tokens)
    }
}

/// What the model call that wrote a message used, and what that cost where the catalog has
/// the model's prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallUsage {
    pub tokens: TokenUsage,
    /// In millionths of the unit the catalog's prices are in.
    pub cost_micros: Option<i64>,
}

/// The span of days usage is reported (and budgeted) in, each starting at midnight UTC: a day, a
/// week from Monday, a calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum UsagePeriod {
    Day,
    Week,
    Month,
}

/// One period: from `start` to the day before `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodSpan {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl UsagePeriod {
    /// The period that holds `at`.
    pub fn holding(self, at: DateTime<Utc>) -> PeriodSpan {
        let day = at.date_naive();
        let start = match self {
            Self::Day => day,
            Self::Week => day - Days::new(u64::from(day.weekday().num_days_from_monday())),
            Self::Month => day.with_day(1).unwrap_or(day),
        };
        PeriodSpan {
            start,
            end: self.after(start),
        }
    }

    /// The period before `span`.
    pub fn before(self, span: PeriodSpan) -> PeriodSpan {
        let start = match self {
            Self::Day => span.start - Days::new(1),
            Self::Week => span.start - Days::new(7),
            Self::Month => span.start - Months::new(1),
        };
        PeriodSpan {
            start,
            end: span.start,
        }
    }

    fn after(self, start: NaiveDate) -> NaiveDate {
        match self {
            Self::Day => start + Days::new(1),
            Self::Week => start + Days::new(7),
            Self::Month => start + Months::new(1),
        }
    }
}

impl PeriodSpan {
    /// The instant the period starts, midnight UTC.
    pub fn start_time(&self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&self.start.and_time(chrono::NaiveTime::MIN))
    }

    /// The instant the next period starts.
    pub fn end_time(&self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&self.end.and_time(chrono::NaiveTime::MIN))
    }
}

/// What a user may spend in a period: tokens (input and output together), cost (in millionths
/// of the unit of the catalog's prices), or both; `None` is no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub tokens: Option<i64>,
    pub cost_micros: Option<i64>,
    pub period: UsagePeriod,
}

impl Budget {
    /// No limit at all, in `period`.
    pub fn unlimited(period: UsagePeriod) -> Self {
        Self {
            tokens: None,
            cost_micros: None,
            period,
        }
    }

    /// Whether it limits anything.
    pub fn limits_anything(&self) -> bool {
        self.tokens.is_some() || self.cost_micros.is_some()
    }
}

/// What a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum BudgetKind {
    Tokens,
    Cost,
}

/// Why a user's budget refused a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetRefusal {
    /// The period's spend has reached the limit of `kind`, `limit`; the next period starts at
    /// `resets_at`.
    Spent {
        kind: BudgetKind,
        limit: i64,
        period: UsagePeriod,
        resets_at: DateTime<Utc>,
    },
    /// Another of the user's turns is being generated: under a budget, one is at a time.
    Busy,
}

/// What a user's calls to one model cost in a period.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelSpend {
    /// The catalog's name of the model; empty for calls whose model is not known.
    pub model: String,
    pub spend: Spend,
}

/// Calls and their tokens, summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spend {
    pub calls: i64,
    /// Of `calls`, those whose usage the service estimated.
    pub estimated_calls: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    /// In millionths of the unit the catalog's prices are in; 0 where it has none.
    pub cost_micros: i64,
}

impl Spend {
    #[must_use]
    pub fn plus(self, more: Self) -> Self {
        Self {
            calls: self.calls.saturating_add(more.calls),
            estimated_calls: self.estimated_calls.saturating_add(more.estimated_calls),
            input_tokens: self.input_tokens.saturating_add(more.input_tokens),
            cached_input_tokens: self
                .cached_input_tokens
                .saturating_add(more.cached_input_tokens),
            output_tokens: self.output_tokens.saturating_add(more.output_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_add(more.reasoning_tokens),
            cost_micros: self.cost_micros.saturating_add(more.cost_micros),
        }
    }
}

/// A user's spend in one period, in all and by model (in the order of their names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodUsage {
    pub span: PeriodSpan,
    pub total: Spend,
    pub models: Vec<ModelSpend>,
}

impl PeriodUsage {
    /// The period's usage from its rows by model.
    pub fn of(span: PeriodSpan, models: Vec<ModelSpend>) -> Self {
        let total = models
            .iter()
            .fold(Spend::default(), |total, model| total.plus(model.spend));
        Self {
            span,
            total,
            models,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap_or_default()
    }

    #[test]
    fn periods_start_at_midnight_utc_on_a_monday_or_the_first() {
        // A Thursday, late in the day.
        let thursday = at("2026-12-10T23:59:59Z");
        let span = |start, end| PeriodSpan {
            start: date(start),
            end: date(end),
        };
        assert_eq!(
            UsagePeriod::Day.holding(thursday),
            span("2026-12-10", "2026-12-11")
        );
        assert_eq!(
            UsagePeriod::Week.holding(thursday),
            span("2026-12-07", "2026-12-14")
        );
        assert_eq!(
            UsagePeriod::Month.holding(thursday),
            span("2026-12-01", "2027-01-01")
        );
        assert_eq!(
            UsagePeriod::Month.before(UsagePeriod::Month.holding(at("2027-03-31T00:00:00Z"))),
            span("2027-02-01", "2027-03-01")
        );
        assert_eq!(
            UsagePeriod::Week.before(UsagePeriod::Week.holding(thursday)),
            span("2026-11-30", "2026-12-07")
        );
        assert_eq!(
            UsagePeriod::Day.holding(thursday).end_time(),
            at("2026-12-11T00:00:00Z")
        );
    }

    #[test]
    fn an_estimate_rounds_up_and_says_so() {
        let estimate = TokenUsage::estimate(9, 4);
        assert_eq!((estimate.input_tokens, estimate.output_tokens), (3, 1));
        assert!(estimate.estimated);
        assert_eq!(TokenUsage::estimate(0, 0).total(), 0);
    }

    #[test]
    fn usage_adds_up_and_stays_estimated() {
        let reported = TokenUsage {
            input_tokens: 10,
            cached_input_tokens: 4,
            output_tokens: 2,
            reasoning_tokens: 1,
            estimated: false,
        };
        let sum = reported.plus(TokenUsage::estimate(4, 4));
        assert_eq!(
            sum,
            TokenUsage {
                input_tokens: 11,
                cached_input_tokens: 4,
                output_tokens: 3,
                reasoning_tokens: 1,
                estimated: true,
            }
        );
        let most = TokenUsage {
            input_tokens: u32::MAX,
            ..TokenUsage::default()
        };
        assert_eq!(most.plus(reported).input_tokens, u32::MAX);
    }
}
