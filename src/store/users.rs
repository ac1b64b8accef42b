//! Users, created on first sight of their subject.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Operation, Store, StoreError, schema::users};
use crate::domain::{Subject, UserId};

impl Store {
    /// The user the subject names, if the service has seen it.
    pub async fn find_user(&self, subject: &Subject) -> Result<Option<UserId>, StoreError> {
        let operation = Operation::new("SELECT", "SELECT users");
        self.run(operation, async |conn| {
            let id = users::table
                .filter(users::subject.eq(subject.as_str()))
                .select(users::id)
                .first::<Uuid>(conn)
                .await
                .optional()?;
            Ok(id.map(UserId::from_uuid))
        })
        .await
    }

    /// The user the subject names, created on first sight.
    pub async fn ensure_user(&self, subject: &Subject) -> Result<UserId, StoreError> {
        let operation = Operation::new("SELECT/INSERT", "SELECT/INSERT users");
        self.run(operation, async |conn| ensure_user(conn, subject).await)
            .await
    }
}

async fn ensure_user(conn: &mut super::Conn, subject: &Subject) -> Result<UserId, StoreError> {
    let find = users::table
        .filter(users::subject.eq(subject.as_str()))
        .select(users::id);

    // Almost every call finds an existing user: one round trip.
    if let Some(id) = find.first::<Uuid>(conn).await.optional()? {
        return Ok(UserId::from_uuid(id));
    }
    let inserted = diesel::insert_into(users::table)
        .values((
            users::id.eq(UserId::generate().as_uuid()),
            users::subject.eq(subject.as_str()),
        ))
        .on_conflict(users::subject)
        .do_nothing()
        .returning(users::id)
        .get_result::<Uuid>(conn)
        .await
        .optional()?;
    match inserted {
        Some(id) => Ok(UserId::from_uuid(id)),
        // A concurrent first request for the same subject won the race.
        None => Ok(UserId::from_uuid(find.first::<Uuid>(conn).await?)),
    }
}
