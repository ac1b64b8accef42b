use super::ChatError;
use crate::{
    domain::{Subject, UserId},
    store::Store,
};

/// Maps authenticated subjects to the service's users, creating a user on first sight.
#[derive(Clone)]
pub struct Identities {
    store: Store,
}

impl Identities {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub async fn user_for(&self, subject: &Subject) -> Result<UserId, ChatError> {
        Ok(self.store.ensure_user(subject).await?)
    }
}
