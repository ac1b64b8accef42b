//! Which user an authenticated subject is, remembered for a while.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use super::ChatError;
use crate::{
    domain::{Subject, UserId},
    store::{Store, StoreError},
};

/// How long a subject's user id is remembered. Users are never renamed; the limit only bounds
/// how long a user deleted behind the service's back is still believed to exist.
const REMEMBER_FOR: Duration = Duration::from_secs(60);
/// Beyond this many remembered subjects the memory starts afresh, bounding its size.
const MAX_REMEMBERED: usize = 100_000;

/// Maps authenticated subjects to the service's users, creating a user on first sight. Recent
/// answers are remembered, so that most requests cost no database round trip for this.
#[derive(Clone)]
pub struct Identities {
    store: Store,
    known: Arc<RwLock<HashMap<String, (UserId, Instant)>>>,
}

impl Identities {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            known: Arc::default(),
        }
    }

    pub async fn user_for(&self, subject: &Subject) -> Result<UserId, ChatError> {
        if let Some(user) = self.remembered(subject) {
            return Ok(user);
        }
        let user = self.store.ensure_user(subject).await?;
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_REMEMBERED {
            known.clear();
        }
        known.insert(subject.as_str().to_owned(), (user, Instant::now()));
        Ok(user)
    }

    /// The error as the caller should see it. A write that found its user deleted (by an
    /// operator, behind the service's back) makes the service forget that user, so that the
    /// caller's next request creates it anew rather than failing for as long as it is
    /// remembered.
    pub fn unless_gone(&self, user: UserId, error: StoreError) -> ChatError {
        if !matches!(error, StoreError::UnknownUser) {
            return error.into();
        }
        // Rare enough that a scan of what is remembered costs nothing worth an index.
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.retain(|_, (remembered, _)| *remembered != user);
        ChatError::Unavailable("the caller's user was deleted while the request was served".into())
    }

    fn remembered(&self, subject: &Subject) -> Option<UserId> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        let (user, since) = known.get(subject.as_str())?;
        (since.elapsed() < REMEMBER_FOR).then_some(*user)
    }
}
