//! What a user's model calls used, read from the per-day sums that each reply's statement keeps.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Bool, Date, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::RunQueryDsl;

use super::{Operation, Store, StoreError, replies::ADD_USAGE, statement::fixed};
use crate::domain::{CallUsage, ModelSpend, PeriodSpan, PeriodUsage, Spend, UserId};

const READ: Operation = Operation::new("SELECT", "SELECT usage_days");

/// A period's sums for one model: `current` tells the later period from the earlier.
const PERIODS: &str = "SELECT day >= $2 AS current, model,
         sum(calls)::int8 AS calls, sum(estimated_calls)::int8 AS estimated_calls,
         sum(input_tokens)::int8 AS input_tokens,
         sum(cached_input_tokens)::int8 AS cached_input_tokens,
         sum(output_tokens)::int8 AS output_tokens,
         sum(reasoning_tokens)::int8 AS reasoning_tokens,
         sum(cost_micros)::int8 AS cost_micros
     FROM usage_days
     WHERE user_id = $1 AND day >= $3 AND day < $4
     GROUP BY 1, 2
     ORDER BY 1, 2";

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Bool)]
    current: bool,
    #[diesel(sql_type = Text)]
    model: String,
    #[diesel(sql_type = BigInt)]
    calls: i64,
    #[diesel(sql_type = BigInt)]
    estimated_calls: i64,
    #[diesel(sql_type = BigInt)]
    input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    cached_input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    output_tokens: i64,
    #[diesel(sql_type = BigInt)]
    reasoning_tokens: i64,
    #[diesel(sql_type = BigInt)]
    cost_micros: i64,
}

impl Row {
    fn into_spend(self) -> ModelSpend {
        ModelSpend {
            model: self.model,
            spend: Spend {
                calls: self.calls,
                estimated_calls: self.estimated_calls,
                input_tokens: self.input_tokens,
                cached_input_tokens: self.cached_input_tokens,
                output_tokens: self.output_tokens,
                reasoning_tokens: self.reasoning_tokens,
                cost_micros: self.cost_micros,
            },
        }
    }
}

impl Store {
    /// The user's usage in `previous` and in `current`, the period that follows it: one
    /// statement over a few rows a day.
    pub async fn usage(
        &self,
        user: UserId,
        previous: PeriodSpan,
        current: PeriodSpan,
    ) -> Result<[PeriodUsage; 2], StoreError> {
        let rows = self
            .run(READ, async |mut conn| {
                let rows = fixed(PERIODS)
                    .bind::<SqlUuid, _>(user.as_uuid())
                    .bind::<Date, _>(current.start)
                    .bind::<Date, _>(previous.start)
                    .bind::<Date, _>(current.end)
                    .load::<Row>(&mut conn)
                    .await?;
                Ok(rows)
            })
            .await?;
        let (now, before): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|row| row.current);
        let spends = |rows: Vec<Row>| rows.into_iter().map(Row::into_spend).collect();
        Ok([
            PeriodUsage::of(previous, spends(before)),
            PeriodUsage::of(current, spends(now)),
        ])
    }
}

const ADD: Operation = Operation::new("INSERT", "INSERT usage_days");

impl Store {
    /// Adds a model call that wrote no message (a title, say) to the user's usage, at `at`, by
    /// the catalog's model `model`.
    pub async fn add_usage(
        &self,
        user: UserId,
        at: DateTime<Utc>,
        model: &str,
        usage: CallUsage,
    ) -> Result<(), StoreError> {
        let tokens = usage.tokens;
        let count = |tokens: u32| i32::try_from(tokens).unwrap_or(i32::MAX);
        self.run(ADD, async |mut conn| {
            fixed(ADD_USAGE)
                .bind::<SqlUuid, _>(user.as_uuid())
                .bind::<Timestamptz, _>(at)
                .bind::<Text, _>(model)
                .bind::<Integer, _>(count(tokens.input_tokens))
                .bind::<Integer, _>(count(tokens.cached_input_tokens))
                .bind::<Integer, _>(count(tokens.output_tokens))
                .bind::<Integer, _>(count(tokens.reasoning_tokens))
                .bind::<Bool, _>(tokens.estimated)
                .bind::<Nullable<BigInt>, _>(usage.cost_micros)
                .execute(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }
}
