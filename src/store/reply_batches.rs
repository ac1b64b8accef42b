//! Replies written together. Turns that end at the same moment write their replies in one
//! transaction: one commit between them, and one pooled connection held through it, where each
//! alone would hold a connection of its own until its commit is on disk, while the turns that
//! are starting wait for a connection to write their user's message.
//!
//! A reply that finds a transaction free is written at once, alone, as before: batches form only
//! while every transaction the queue may run is busy, so they add no wait of their own.

use std::sync::Arc;

use futures_util::future::{join_all, try_join_all};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use super::{
    Conn, Operation, Store, StoreError,
    replies::{
        Awaiting, Branch, ReplyOf, ReplyStored, ReplyWritten, TurnEnding, append_reply,
        append_reply_with_calls,
    },
    turns::{begin, commit},
};
use crate::domain::{Attempt, Message, TurnId, TurnState, UserId};

/// The most replies one transaction writes. `try_join_all` sends fewer than 30 futures' statements
/// in the order it is given them, which the lock order below relies on.
const MAX_BATCH: usize = 16;

/// Replies waiting for a transaction; a turn beyond them waits for room.
const QUEUE: usize = 1024;

const WRITE: Operation = Operation::new("INSERT", "INSERT messages tool_calls");

/// Where replies wait to be written together.
#[derive(Clone)]
pub(super) struct ReplyQueue(mpsc::Sender<Pending>);

/// A reply waiting for its transaction, and who waits for its answer.
struct Pending {
    user: UserId,
    reply: Message,
    turn: Option<TurnOfReply>,
    answer: oneshot::Sender<Result<ReplyWritten, StoreError>>,
}

/// [`ReplyOf`], owned, for the writer's task.
struct TurnOfReply {
    turn: TurnId,
    attempt: Attempt,
    deltas: Vec<i32>,
    ends: Option<(TurnState, serde_json::Value)>,
    while_state: TurnState,
}

impl TurnOfReply {
    fn of(turn: &ReplyOf<'_>) -> Self {
        Self {
            turn: turn.turn,
            attempt: turn.attempt,
            deltas: turn.deltas.to_vec(),
            ends: turn.ends.map(|end| (end.state, end.outcome.clone())),
            while_state: turn.while_state,
        }
    }

    fn borrowed(&self) -> ReplyOf<'_> {
        ReplyOf {
            turn: self.turn,
            attempt: self.attempt,
            deltas: &self.deltas,
            ends: self.ends.as_ref().map(|(state, outcome)| TurnEnding {
                state: *state,
                outcome,
            }),
            while_state: self.while_state,
        }
    }
}

impl ReplyQueue {
    /// Starts the task that writes queued replies on `store`'s connections, in at most
    /// `transactions` transactions at a time. The task ends once every queue is dropped; `store`
    /// must not hold this queue, or it never would.
    pub(super) fn start(store: Store, transactions: usize) -> Self {
        let (sender, queue) = mpsc::channel(QUEUE);
        let slots = Arc::new(Semaphore::new(transactions.max(1)));
        tokio::spawn(write_batches(store, queue, slots));
        Self(sender)
    }

    async fn write(
        &self,
        user: UserId,
        reply: &Message,
        turn: Option<&ReplyOf<'_>>,
    ) -> Result<ReplyWritten, StoreError> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            user,
            reply: reply.clone(),
            turn: turn.map(TurnOfReply::of),
            answer,
        };
        self.0.send(pending).await.map_err(|_| writer_stopped())?;
        answered.await.map_err(|_| writer_stopped())?
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the writer of replies stopped".to_owned())
}

/// Takes the replies that wait whenever a transaction is free: one, at a quiet moment; all that
/// came meanwhile (up to [`MAX_BATCH`]), while every transaction was busy.
async fn write_batches(store: Store, mut queue: mpsc::Receiver<Pending>, slots: Arc<Semaphore>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let store = store.clone();
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        tokio::spawn(async move {
            store.write_batch(taken).await;
            drop(slot);
        });
    }
}

impl Store {
    /// Stores the assistant's reply with its tool calls and moves the conversation's update
    /// time forward, atomically, and returns the new revision. With `awaiting`, the reply awaits
    /// the results of those of its calls that the client runs, and the conversation takes no
    /// user message meanwhile. Nothing is written if the conversation was deleted meanwhile, or
    /// if the reply's turn is no longer in the state `turn` expects. A reply without tool calls
    /// may share its transaction with other turns' replies.
    pub async fn store_reply(
        &self,
        user: UserId,
        reply: &Message,
        awaiting: Option<&Awaiting>,
        turn: Option<&ReplyOf<'_>>,
    ) -> Result<ReplyStored, StoreError> {
        let span = super::client_span(WRITE);
        let written = match &self.replies {
            Some(queue) if reply.tool_calls.is_empty() => {
                queue
                    .write(user, reply, turn)
                    .instrument(span.clone())
                    .await?
            }
            _ => {
                self.store_reply_alone(user, reply, awaiting, turn, Branch::On)
                    .instrument(span.clone())
                    .await?
            }
        };
        let written = match written {
            // Rare: the client moved to another branch while the turn generated.
            ReplyWritten::OffBranch => {
                self.store_reply_alone(user, reply, awaiting, turn, Branch::Off)
                    .instrument(span)
                    .await?
            }
            done @ ReplyWritten::Done(_) => done,
        };
        match written {
            ReplyWritten::Done(stored) => Ok(stored),
            ReplyWritten::OffBranch => Err(StoreError::Corrupt(format!(
                "reply {} found no message of its turn to follow",
                reply.id
            ))),
        }
    }

    /// One statement either way, atomic by itself: one round trip. Traced by the caller.
    async fn store_reply_alone(
        &self,
        user: UserId,
        reply: &Message,
        awaiting: Option<&Awaiting>,
        turn: Option<&ReplyOf<'_>>,
        branch: Branch,
    ) -> Result<ReplyWritten, StoreError> {
        self.on_connection(false, async |conn| {
            Ok(if reply.tool_calls.is_empty() {
                append_reply(&*conn, user, reply, turn, branch).await?
            } else {
                append_reply_with_calls(&*conn, user, reply, awaiting, turn, branch).await?
            })
        })
        .await
    }

    /// Writes the replies in one transaction and answers each. If the transaction fails, each is
    /// written again alone, so that one reply's failure is its own.
    async fn write_batch(&self, mut batch: Vec<Pending>) {
        if batch.len() > 1 {
            // In the order of their conversations, so that two batches lock the rows they share
            // in the same order, and never wait for each other in a circle.
            batch.sort_by_key(|pending| *pending.reply.conversation_id.as_uuid());
            match self.write_together(&batch).await {
                Ok(stored) => {
                    for (pending, stored) in batch.into_iter().zip(stored) {
                        let _ = pending.answer.send(Ok(stored));
                    }
                    return;
                }
                Err(error) => tracing::warn!(
                    replies = batch.len(),
                    error = %error,
                    "a batch of replies failed; writing each alone"
                ),
            }
        }
        join_all(batch.into_iter().map(|pending| async move {
            let turn = pending.turn.as_ref().map(TurnOfReply::borrowed);
            let stored = self
                .store_reply_alone(
                    pending.user,
                    &pending.reply,
                    None,
                    turn.as_ref(),
                    Branch::On,
                )
                .await;
            let _ = pending.answer.send(stored);
        }))
        .await;
    }

    /// BEGIN, each reply's statement and COMMIT, in one flight (see `begin`). Its connection is
    /// closed unless it committed, as [`Store::run_transaction_by_hand`]'s is. A usual last reply
    /// that its statement did not write (rare: its turn was taken over, its leaf jumped, its
    /// conversation was deleted) learns why from a statement of its own after the COMMIT, which
    /// writes no more than the first did ([`append_reply`]).
    async fn write_together(&self, batch: &[Pending]) -> Result<Vec<ReplyWritten>, StoreError> {
        self.on_connection(true, async |conn| {
            let conn: &Conn = conn;
            let turns: Vec<_> = batch
                .iter()
                .map(|pending| pending.turn.as_ref().map(TurnOfReply::borrowed))
                .collect();
            let writes = batch.iter().zip(&turns).map(|(pending, turn)| {
                append_reply(
                    conn,
                    pending.user,
                    &pending.reply,
                    turn.as_ref(),
                    Branch::On,
                )
            });
            let ((), stored, ()) =
                futures_util::try_join!(begin(conn), try_join_all(writes), commit(conn))?;
            Ok(stored)
        })
        .await
    }
}
