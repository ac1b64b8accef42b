//! Another reply to a user's message: a turn of its own, whose reply becomes a sibling of the
//! message's earlier replies and the conversation's leaf. It is resumed, cancelled, retried and
//! taken over like any turn.

use secrecy::SecretString;
use sha2::{Digest, Sha256};

use tokio::sync::oneshot;

use super::{
    context::recent_message,
    events::Accepted,
    offer::Offer,
    service::{ClientTool, TurnRequest, TurnStream, Turns},
    spawn::{LiveTurn, ReplyOrigin, SpawnedReply},
};
use crate::{
    chat::{ChatError, Limit, StreamPermit},
    domain::{FIRST_ATTEMPT, MessageId, Placement, RequestKey, TurnId, UserId, now},
    events::{CancelWatch, TurnKey},
    llm::ModelChoice,
    store::{NewRegeneration, RegenerateLimits, RegenerateRefused, Regenerating, StoreError},
};

/// `RegenerateReply`: answer one of the user's messages again.
pub struct RegenerateRequest {
    pub user: UserId,
    /// The user message to answer.
    pub message: MessageId,
    /// Correlates the turn's log lines with the request.
    pub request_id: String,
    /// When the request arrived: time to first token is measured from here.
    pub received_at: std::time::Instant,
    /// The caller's bearer token, for tool servers that act on the caller's behalf.
    pub bearer: Option<SecretString>,
    /// Tools the client runs itself, as it defined them.
    pub tools: Vec<ClientTool>,
    /// The client's id for the request: a retry with the same id is the same turn.
    pub request_key: Option<RequestKey>,
    /// Whether the turn goes on when the client goes away.
    pub detached: bool,
    /// The catalog's model to ask, as the client named it; `None`: the default.
    pub model: Option<String>,
}

/// What a regeneration asked, hashed: a retry must ask the same. Its first field can be no
/// conversation's id, so no `SendMessage` hashes alike.
fn regenerate_hash(message: MessageId, tools: &[ClientTool], model: Option<&str>) -> Vec<u8> {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(b"regenerate");
    field(message.to_string().as_bytes());
    for tool in tools {
        field(tool.name.as_bytes());
        field(tool.description.as_bytes());
        field(tool.parameters_json.as_bytes());
    }
    if let Some(model) = model {
        field(b"model");
        field(model.as_bytes());
    }
    hash.finalize().to_vec()
}

/// What the reply is made with, made before anything is written.
struct ReplyMakings {
    offer: Offer,
    /// Counts the reply against the user's and the replica's stream limits.
    permit: StreamPermit,
    cancel: CancelWatch,
    model: ModelChoice,
}

impl Turns {
    /// Starts a turn that answers the user's message again, and streams it. The message becomes
    /// the conversation's leaf as the turn starts, and the reply its newest child; the model
    /// sees the branch up to the message. A request whose id names a turn already follows it.
    ///
    /// As with a new message, one flight writes the turn and reads the context; the model is
    /// asked once its statement has answered, while the commit waits for the disk, and nothing
    /// of the reply reaches anyone before the commit is done.
    pub async fn regenerate(&self, request: RegenerateRequest) -> Result<TurnStream, ChatError> {
        let (new, makings) = self.make_regeneration(&request)?;
        let model = makings.model;
        let key = TurnKey {
            turn: new.turn,
            attempt: FIRST_ATTEMPT,
        };
        let (started_tx, started) = oneshot::channel();
        let storage = self.runtime.admission.storage();
        let limits = RegenerateLimits {
            max_revision: storage.messages_per_conversation,
            max_siblings: storage.siblings_per_message,
            history: self.settings.history_messages,
            budget: self.runtime.admission.budget(),
        };
        let commit = self.store.regenerate_reply(
            request.user,
            request.message,
            &new,
            limits,
            now(),
            started_tx,
        );
        let ask_model = self.ask_model_again(&request, key, started, makings);
        let (committed, reply) = tokio::join!(commit, ask_model);
        match committed {
            Ok(Ok(())) => {}
            // A retry of a request this service has seen is the same turn: found by the
            // statement itself, or, when its twin was let in first meanwhile, by the unique index.
            Ok(Err(RegenerateRefused::RequestKeyTaken)) | Err(StoreError::Duplicate(_)) => {
                drop(reply);
                return self
                    .retried_by_key(retry_of(request), new.request_hash)
                    .await;
            }
            Ok(Err(refused)) => return Err(self.regenerate_refusal(refused)),
            Err(error) => return Err(error.into()),
        }
        let Some((reply, accepted)) = reply else {
            self.end_unstarted(key).await;
            return Err(ChatError::Internal(
                "a committed regeneration was never heard of".to_owned(),
            ));
        };
        // The leaf moved back to the message: what this replica remembers is another branch.
        self.recent.forget(accepted.conversation_id);
        tracing::info!(
            request_id = %request.request_id,
            conversation_id = %accepted.conversation_id,
            user_id = %request.user,
            turn = %key.turn,
            model = %self.models.get(model).name,
            "a reply is regenerated"
        );
        Ok(reply.release(accepted))
    }

    /// Checks everything about the request that needs no database, and makes the turn's
    /// record and what its reply is made with. The request keeps its tools, so that a retry of
    /// a failed turn offers them again.
    fn make_regeneration(
        &self,
        request: &RegenerateRequest,
    ) -> Result<(NewRegeneration, ReplyMakings), ChatError> {
        let model = self.choose_model(request.model.as_deref())?;
        let offer = self.offer(request.tools.clone())?;
        // Held by the reply task until the reply ends.
        let permit = self.runtime.admission.open_stream(request.user)?;
        let turn = TurnId::generate();
        // Watched before the turn is committed, so that no cancel finds it unwatched.
        let cancel = self.runtime.events.watch_cancel(turn);
        let new = NewRegeneration {
            turn,
            request_key: request.request_key.as_ref().map(|k| k.as_str().to_owned()),
            request_hash: request.request_key.as_ref().map(|_| {
                regenerate_hash(request.message, &request.tools, request.model.as_deref())
            }),
            replica: self.runtime.replica,
        };
        Ok((
            new,
            ReplyMakings {
                offer,
                permit,
                cancel,
                model,
            },
        ))
    }

    /// Once the turn is written, starts its reply from the context the write read; `None` if
    /// nothing was written.
    async fn ask_model_again(
        &self,
        request: &RegenerateRequest,
        key: TurnKey,
        started: oneshot::Receiver<Regenerating>,
        makings: ReplyMakings,
    ) -> Option<(SpawnedReply, Accepted)> {
        let Regenerating {
            message,
            mut context,
        } = started.await.ok()?;
        context.push(recent_message(&message));
        let origin = ReplyOrigin {
            user: request.user,
            conversation_id: message.conversation_id,
            after: now(),
            request_id: &request.request_id,
            received_at: request.received_at,
            bearer: request.bearer.as_ref(),
            turn: Some(LiveTurn {
                key,
                detached: request.detached,
            }),
            cancel: Some(makings.cancel),
            model: makings.model,
        };
        let reply = self.spawn_reply(origin, context, makings.offer, makings.permit);
        let accepted = Accepted {
            conversation_id: message.conversation_id,
            user_message: message,
        };
        Some((reply, accepted))
    }

    /// What a client is told of a regeneration that was refused.
    fn regenerate_refusal(&self, refused: RegenerateRefused) -> ChatError {
        match refused {
            RegenerateRefused::Missing => ChatError::NotFound("message"),
            RegenerateRefused::NotUserMessage => ChatError::invalid(
                "message_id",
                "names a reply: give the id of the user's message it answers",
            ),
            RegenerateRefused::AwaitingToolResults(until) => {
                super::admit::awaiting_tool_results(until)
            }
            RegenerateRefused::ConversationFull => self
                .runtime
                .admission
                .storage_refusal(Limit::ConversationMessages),
            RegenerateRefused::BranchGenerating => ChatError::FailedPrecondition(
                "a reply to this message, or to one before it on its branch, is still being \
                 generated: wait for its turn to end, or cancel it with CancelTurn"
                    .to_owned(),
            ),
            RegenerateRefused::SiblingsFull => self
                .runtime
                .admission
                .storage_refusal(Limit::MessageSiblings),
            RegenerateRefused::Budget(refusal) => self.runtime.admission.budget_refusal(refusal),
            RegenerateRefused::RequestKeyTaken => {
                ChatError::Internal("a retry taken for a refused regeneration".to_owned())
            }
        }
    }
}

/// The request as a retry of the turn its id names sees it: what it carries besides what it
/// asked, which the turn's stored hash stands for.
fn retry_of(request: RegenerateRequest) -> TurnRequest {
    TurnRequest {
        user: request.user,
        conversation: None,
        content: String::new(),
        request_id: request.request_id,
        received_at: request.received_at,
        bearer: request.bearer,
        tools: request.tools,
        request_key: request.request_key,
        detached: request.detached,
        placement: Placement::AfterLeaf,
        model: request.model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regeneration_hashes_apart_from_other_messages_and_tools() {
        let tool = ClientTool {
            name: "a".into(),
            description: String::new(),
            parameters_json: String::new(),
        };
        let message = MessageId::generate();
        let base = regenerate_hash(message, std::slice::from_ref(&tool), None);
        assert_eq!(
            base,
            regenerate_hash(message, std::slice::from_ref(&tool), None)
        );
        assert_ne!(base, regenerate_hash(message, &[], None));
        assert_ne!(
            base,
            regenerate_hash(message, std::slice::from_ref(&tool), Some("fast"))
        );
        assert_ne!(
            base,
            regenerate_hash(MessageId::generate(), std::slice::from_ref(&tool), None)
        );
    }
}
