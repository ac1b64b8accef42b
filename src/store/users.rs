use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Store, StoreError, schema::users};
use crate::domain::{Subject, UserId};

impl Store {
    /// The user the subject names, created on first sight.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT/INSERT users", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT/INSERT"))]
    pub async fn ensure_user(&self, subject: &Subject) -> Result<UserId, StoreError> {
        let mut conn = self.connection().await?;
        let find = users::table
            .filter(users::subject.eq(subject.as_str()))
            .select(users::id);

        // Almost every call finds an existing user: one round trip.
        if let Some(id) = find.first::<Uuid>(&mut conn).await.optional()? {
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
            .get_result::<Uuid>(&mut conn)
            .await
            .optional()?;
        match inserted {
            Some(id) => Ok(UserId::from_uuid(id)),
            // A concurrent first request for the same subject won the race.
            None => Ok(UserId::from_uuid(find.first::<Uuid>(&mut conn).await?)),
        }
    }
}
