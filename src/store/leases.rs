//! Replicas' leases, and the turns whose replica's lease ran out: what lets another replica
//! take a stopped replica's turns over.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Integer, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::RunQueryDsl;

use super::{Operation, Store, StoreError, statement::fixed, turn_records::stored_attempt};
use crate::domain::{Attempt, ConversationId, TurnId, UserId};

/// A turn whose replica stopped, taken over to be ended.
#[derive(Debug, Clone, Copy)]
pub struct LapsedTurn {
    pub user: UserId,
    pub conversation_id: ConversationId,
    pub turn: TurnId,
    pub attempt: Attempt,
    /// The newest message's time: what the turn streamed is stored after it.
    pub after: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct LapsedRow {
    #[diesel(sql_type = SqlUuid)]
    id: uuid::Uuid,
    #[diesel(sql_type = SqlUuid)]
    user_id: uuid::Uuid,
    #[diesel(sql_type = SqlUuid)]
    conversation_id: uuid::Uuid,
    #[diesel(sql_type = Integer)]
    attempt: i32,
    #[diesel(sql_type = Timestamptz)]
    after: DateTime<Utc>,
}

const FIND: Operation = Operation::new("SELECT", "SELECT turns");
const LEASE: Operation = Operation::new("INSERT", "INSERT replicas");
const SWEEP: Operation = Operation::new("UPDATE", "UPDATE turns");

impl Store {
    /// Renews this replica's lease for `lease` from now, by the database's clock, which every
    /// replica shares: the turns it generates are alive as long as it is.
    pub async fn renew_lease(
        &self,
        replica: uuid::Uuid,
        lease: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.run(LEASE, async |conn| {
            fixed(
                "INSERT INTO replicas (id, lease_until)
                 VALUES ($1, now() + $2 * interval '1 millisecond')
                 ON CONFLICT (id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
            )
            .bind::<SqlUuid, _>(replica)
            .bind::<BigInt, _>(millis(lease))
            .execute(conn)
            .await?;
            Ok(())
        })
        .await
    }

    /// The turns `replica` has had generating for longer than `older_than`: those its reply
    /// tasks hold, and any that none does.
    pub async fn generating_on(
        &self,
        replica: uuid::Uuid,
        older_than: std::time::Duration,
    ) -> Result<Vec<(TurnId, Attempt)>, StoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = SqlUuid)]
            id: uuid::Uuid,
            #[diesel(sql_type = Integer)]
            attempt: i32,
        }
        self.run(FIND, async |conn| {
            let rows = fixed(
                "SELECT id, attempt FROM turns
                 WHERE state = 'generating' AND replica = $1
                   AND created_at < now() - $2 * interval '1 millisecond'",
            )
            .bind::<SqlUuid, _>(replica)
            .bind::<BigInt, _>(millis(older_than))
            .load::<Row>(conn)
            .await?;
            rows.into_iter()
                .map(|row| {
                    Ok((
                        TurnId::from_uuid(row.id),
                        stored_attempt(row.id, row.attempt)?,
                    ))
                })
                .collect()
        })
        .await
    }

    /// Gives up this replica's lease as it stops, once its turns have ended.
    pub async fn release_lease(&self, replica: uuid::Uuid) -> Result<(), StoreError> {
        self.run(LEASE, async |conn| {
            fixed("DELETE FROM replicas WHERE id = $1")
                .bind::<SqlUuid, _>(replica)
                .execute(conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Takes over up to `limit` turns still generating on other replicas whose lease ran out
    /// (or that hold none), marking them interrupted. Replicas whose lease ran out long ago are
    /// forgotten.
    pub async fn take_lapsed_turns(
        &self,
        replica: uuid::Uuid,
        limit: i64,
    ) -> Result<Vec<LapsedTurn>, StoreError> {
        self.run(SWEEP, async |conn| {
            let rows = fixed(
                "WITH lapsed AS (
                     SELECT t.id FROM turns t
                     WHERE t.state = 'generating' AND t.replica IS DISTINCT FROM $2
                       AND NOT EXISTS (SELECT 1 FROM replicas r
                                       WHERE r.id = t.replica AND r.lease_until > now())
                     LIMIT $1
                     FOR UPDATE OF t SKIP LOCKED
                 )
                 UPDATE turns t SET state = 'interrupted', ended_at = now()
                 FROM lapsed, messages m, conversations c
                 WHERE t.id = lapsed.id AND m.id = COALESCE(t.message_id, t.id)
                   AND c.id = t.conversation_id
                 RETURNING t.id, t.user_id, t.conversation_id, t.attempt,
                     GREATEST(c.updated_at, m.created_at) AS after",
            )
            .bind::<BigInt, _>(limit)
            .bind::<SqlUuid, _>(replica)
            .load::<LapsedRow>(conn)
            .await?;
            fixed("DELETE FROM replicas WHERE lease_until < now() - interval '1 hour'")
                .execute(conn)
                .await?;
            rows.into_iter()
                .map(|row| {
                    Ok(LapsedTurn {
                        user: UserId::from_uuid(row.user_id),
                        conversation_id: ConversationId::from_uuid(row.conversation_id),
                        turn: TurnId::from_uuid(row.id),
                        attempt: stored_attempt(row.id, row.attempt)?,
                        after: row.after,
                    })
                })
                .collect()
        })
        .await
    }
}

/// A duration as SQL multiplies `interval '1 millisecond'` by.
fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
