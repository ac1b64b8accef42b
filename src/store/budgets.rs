//! Budgets: checked, and the user's budget taken by the turn, in the statement of a turn's first
//! flight that decides whether the turn starts; set per user by operators.
//!
//! A turn starts only while the user's spend in the period, as the per-day sums record it, is
//! below each limit of their budget, and while none of their other turns is being generated. The
//! second rule is what keeps turns admitted at once, on any replicas, from passing the budget
//! together: taking the budget updates the user's row, so two turns that take it at once wait
//! for each other, and the second sees the first's claim. The budget is passed by at most the
//! one turn that was admitted below it.

use std::{collections::HashSet, sync::Mutex};

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::RunQueryDsl;

use super::{Operation, Store, StoreError, statement::fixed};
use crate::domain::{Budget, BudgetKind, BudgetRefusal, UsagePeriod, UserId};

/// The user's budget, as CTEs of a statement: `budget` (no row without one), `spent` (the
/// period's spend against it), `claimed` (the user's row, if turn `$turn` took the budget) and
/// `verdict` (one row: `refusal` is `tokens` or `cost` when that is spent, `busy` when another
/// turn holds the budget, null when the turn may go). `$user` is the user, `$tokens`, `$cost`
/// and `$period` the service's default budget, `$now` the time of the turn, `$when` what else
/// must hold for the turn to start (the budget is taken only then).
///
/// A claim by a turn that cannot be seen holds for a minute: that turn is being committed (a
/// turn admitted at once, which this one must not pass), or its conversation was deleted since.
macro_rules! budget_ctes {
    ($user:literal, $tokens:literal, $cost:literal, $period:literal, $turn:literal,
     $now:literal, $when:literal) => {
        concat!(
            "budget AS MATERIALIZED (
                 SELECT l.tokens, l.cost_micros, l.period,
                        date_trunc(l.period, ", $now, " AT TIME ZONE 'UTC') AS since
                 FROM (SELECT CASE WHEN b.user_id IS NULL THEN ", $tokens, "::int8
                                   ELSE b.tokens END AS tokens,
                              CASE WHEN b.user_id IS NULL THEN ", $cost, "::int8
                                   ELSE b.cost_micros END AS cost_micros,
                              CASE WHEN b.user_id IS NULL THEN ", $period, "::text
                                   ELSE b.period END AS period
                       FROM (SELECT 1) AS one
                            LEFT JOIN user_budgets b ON b.user_id = ", $user, ") l
                 WHERE l.tokens IS NOT NULL OR l.cost_micros IS NOT NULL
             ), spent AS MATERIALIZED (
                 SELECT CASE WHEN s.tokens >= b.tokens THEN 'tokens'
                             WHEN s.cost >= b.cost_micros THEN 'cost' END AS kind,
                        CASE WHEN s.tokens >= b.tokens THEN b.tokens ELSE b.cost_micros END
                            AS spent_limit,
                        b.period,
                        (b.since + ('1 ' || b.period)::interval) AT TIME ZONE 'UTC' AS resets_at
                 FROM budget b,
                      LATERAL (SELECT COALESCE(sum(d.input_tokens + d.output_tokens), 0) AS tokens,
                                      COALESCE(sum(d.cost_micros), 0) AS cost
                               FROM usage_days d
                               WHERE d.user_id = ", $user, " AND d.day >= b.since::date) s
             ), claimed AS MATERIALIZED (
                 UPDATE users u SET budget_turn = ", $turn, ", budget_turn_at = ", $now, "
                 WHERE u.id = ", $user, " AND (", $when, ")
                   AND EXISTS (SELECT 1 FROM spent WHERE kind IS NULL)
                   AND (u.budget_turn IS NULL OR u.budget_turn = ", $turn, "
                        OR EXISTS (SELECT 1 FROM turns t
                                   WHERE t.id = u.budget_turn AND t.state <> 'generating')
                        OR (u.budget_turn_at < ", $now, " - interval '1 minute'
                            AND NOT EXISTS (SELECT 1 FROM turns t WHERE t.id = u.budget_turn)))
                 RETURNING u.id
             ), verdict AS MATERIALIZED (
                 SELECT CASE WHEN s.period IS NULL THEN NULL
                             WHEN s.kind IS NOT NULL THEN s.kind
                             WHEN (", $when, ") AND NOT EXISTS (SELECT 1 FROM claimed)
                                 THEN 'busy' END AS refusal,
                        s.spent_limit, s.period AS spent_period, s.resets_at
                 FROM (SELECT 1) AS one LEFT JOIN spent s ON true
             )"
        )
    };
}

/// The columns that answer a statement's [`budget_ctes!`], for [`BudgetColumns`].
macro_rules! budget_answer {
    () => {
        "(SELECT refusal FROM verdict) AS budget_refusal,
         (SELECT spent_limit FROM verdict) AS budget_limit,
         (SELECT spent_period FROM verdict) AS budget_period,
         (SELECT resets_at FROM verdict) AS budget_resets_at"
    };
}

/// What [`budget_answer!`] answers.
#[derive(QueryableByName, Debug)]
pub(super) struct BudgetColumns {
    #[diesel(sql_type = Nullable<Text>)]
    budget_refusal: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    budget_limit: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    budget_period: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    budget_resets_at: Option<DateTime<Utc>>,
}

impl BudgetColumns {
    /// Whether the turn may go, as far as the budget is concerned.
    pub fn admits(&self) -> bool {
        self.budget_refusal.is_none()
    }

    /// Whether a budget applies to the user at all (their own, or the service's default).
    pub fn applies(&self) -> bool {
        self.budget_period.is_some()
    }

    /// Why the budget refused the turn, if it did.
    pub fn refusal(&self) -> Result<Option<BudgetRefusal>, StoreError> {
        let Some(refusal) = self.budget_refusal.as_deref() else {
            return Ok(None);
        };
        if refusal == "busy" {
            return Ok(Some(BudgetRefusal::Busy));
        }
        let corrupt = || StoreError::Corrupt(format!("a budget answered {self:?}"));
        let kind = refusal.parse::<BudgetKind>().map_err(|_| corrupt())?;
        let period = self
            .budget_period
            .as_deref()
            .and_then(|period| period.parse::<UsagePeriod>().ok())
            .ok_or_else(corrupt)?;
        Ok(Some(BudgetRefusal::Spent {
            kind,
            limit: self.budget_limit.ok_or_else(corrupt)?,
            period,
            resets_at: self.budget_resets_at.ok_or_else(corrupt)?,
        }))
    }
}

/// The users this replica has found to have a budget of their own, so that a turn of anyone
/// else, while the service sets no default budget, is locked by a statement without the
/// budget's parts (the plain twin of the turn's lock). That statement still looks for a budget
/// of the user's own and, finding one, refuses the turn's write; the turn is then locked again
/// with the budget, and the user remembered here. So what this replica knows decides only what
/// a turn costs, never whether a budget holds. A user leaves the set when a turn finds no budget
/// that applies to them. It holds only users an operator gave a budget.
#[derive(Default)]
pub(super) struct OwnBudgets(Mutex<HashSet<UserId>>);

impl OwnBudgets {
    /// Whether `user` was last seen with a budget of their own. If the set cannot be read,
    /// yes: the statement with the budget is right for everyone.
    pub fn has(&self, user: UserId) -> bool {
        self.0.lock().map_or(true, |users| users.contains(&user))
    }

    /// Remembers whether `user` has a budget of their own.
    pub fn note(&self, user: UserId, has: bool) {
        if let Ok(mut users) = self.0.lock() {
            match has {
                true => users.insert(user),
                false => users.remove(&user),
            };
        }
    }
}

const SET: Operation = Operation::new("INSERT", "INSERT user_budgets");
const CLEAR: Operation = Operation::new("DELETE", "DELETE user_budgets");
const READ: Operation = Operation::new("SELECT", "SELECT user_budgets");

#[derive(QueryableByName)]
struct BudgetRow {
    #[diesel(sql_type = Nullable<BigInt>)]
    tokens: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    cost_micros: Option<i64>,
    #[diesel(sql_type = Text)]
    period: String,
}

impl Store {
    /// Gives the user a budget of their own, in place of the service's default.
    pub async fn set_budget(&self, user: UserId, budget: Budget) -> Result<(), StoreError> {
        let period: &str = budget.period.into();
        self.run(SET, async |mut conn| {
            fixed(
                "INSERT INTO user_budgets (user_id, tokens, cost_micros, period)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id) DO UPDATE
                 SET tokens = EXCLUDED.tokens, cost_micros = EXCLUDED.cost_micros,
                     period = EXCLUDED.period, updated_at = now()",
            )
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Nullable<BigInt>, _>(budget.tokens)
            .bind::<Nullable<BigInt>, _>(budget.cost_micros)
            .bind::<Text, _>(period)
            .execute(&mut conn)
            .await?;
            Ok(())
        })
        .await
    }

    /// Takes the user's own budget away: the service's default applies again. Whether they had
    /// one.
    pub async fn clear_budget(&self, user: UserId) -> Result<bool, StoreError> {
        self.run(CLEAR, async |mut conn| {
            let deleted = fixed("DELETE FROM user_budgets WHERE user_id = $1")
                .bind::<SqlUuid, _>(user.as_uuid())
                .execute(&mut conn)
                .await?;
            Ok(deleted > 0)
        })
        .await
    }

    /// The user's own budget, if they have one.
    pub async fn budget_of(&self, user: UserId) -> Result<Option<Budget>, StoreError> {
        let row = self
            .run(READ, async |mut conn| {
                let row = fixed(
                    "SELECT tokens, cost_micros, period FROM user_budgets WHERE user_id = $1",
                )
                .bind::<SqlUuid, _>(user.as_uuid())
                .get_result::<BudgetRow>(&mut conn)
                .await
                .optional()?;
                Ok(row)
            })
            .await?;
        row.map(|row| {
            let period = row.period.parse::<UsagePeriod>().map_err(|_| {
                StoreError::Corrupt(format!("a budget has the period {:?}", row.period))
            })?;
            Ok(Budget {
                tokens: row.tokens,
                cost_micros: row.cost_micros,
                period,
            })
        })
        .transpose()
    }
}
