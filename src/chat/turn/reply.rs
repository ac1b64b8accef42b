//! The task that carries one reply from the model to the client and into the database.

use std::{sync::Arc, time::Duration};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{
    TurnEvent,
    relay::{self, EventSender},
    telemetry::TurnTelemetry,
};
use crate::{
    chat::{ChatError, RecentContexts, StreamPermit},
    domain::{ConversationId, UserId},
    llm::ModelStream,
    store::Store,
};

pub(super) struct ReplyTask {
    pub store: Store,
    pub recent: Arc<RecentContexts>,
    pub user: UserId,
    pub conversation_id: ConversationId,
    /// The user message's time: the reply is stored after it.
    pub after: chrono::DateTime<chrono::Utc>,
    pub model_name: String,
    /// Cancelled when the shutdown grace period is over.
    pub shutdown: CancellationToken,
    /// How long the client may take nothing before it is cut off.
    pub stall_timeout: Duration,
    /// Counts the reply against its user's and the replica's stream limits while it runs.
    pub _permit: StreamPermit,
    /// Where the reply's last event goes when the client's stream has no room for it.
    pub last_word: Option<oneshot::Sender<Result<TurnEvent, ChatError>>>,
    /// Whether the client has stopped reading: nothing waits for it any more.
    pub stalled: bool,
}

impl ReplyTask {
    /// Waits for the user message's commit, relays the reply, stores what became of it, and
    /// reports the turn. Dropping `committed`'s sender instead aborts the model request.
    pub async fn run(
        mut self,
        model: ModelStream,
        committed: oneshot::Receiver<()>,
        sender: EventSender,
        mut telemetry: TurnTelemetry,
    ) {
        let Some(model) = relay::after_commit(model, committed, &mut telemetry).await else {
            return;
        };
        let relayed = relay::relay(
            model,
            &sender,
            &self.shutdown,
            self.stall_timeout,
            &mut telemetry,
        )
        .await;
        telemetry.model_ended(&relayed);
        self.stalled = matches!(relayed.ending, relay::Ending::Stalled);
        let usage = relayed.usage;
        let outcome = self.settle(relayed, &sender).await;
        telemetry.turn_ended(usage, outcome);
    }
}
