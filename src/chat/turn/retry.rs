//! A request whose id names a turn already is a retry of it: it follows the turn while it is
//! generated or once it has ended, and generates it again, as its next attempt, if it failed.

use sha2::{Digest, Sha256};

use super::{
    context::recent_message,
    events::Accepted,
    service::{ClientTool, TurnRequest, TurnStream, Turns},
    spawn::{LiveTurn, ReplyOrigin},
    state::RecordState,
};
use crate::{
    chat::ChatError,
    domain::{ConversationId, Placement, RecentMessage, UserId},
    events::TurnKey,
    store::TurnRecord,
};

/// What a request asked, hashed: a retry must ask the same.
pub(super) fn request_hash(
    conversation: Option<ConversationId>,
    content: &str,
    tools: &[ClientTool],
    placement: Placement,
    model: Option<&str>,
) -> Vec<u8> {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(
        conversation
            .map(|id| id.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    field(content.as_bytes());
    for tool in tools {
        field(tool.name.as_bytes());
        field(tool.description.as_bytes());
        field(tool.parameters_json.as_bytes());
    }
    // A request that goes on from the leaf hashes as it did before the tree: the hashes of the
    // turns stored then still match their retries.
    match placement {
        Placement::AfterLeaf => {}
        Placement::After(parent) => {
            field(b"after");
            field(parent.to_string().as_bytes());
        }
        Placement::AsRoot => field(b"as root"),
    }
    // Likewise for a request that names no model.
    if let Some(model) = model {
        field(b"model");
        field(model.as_bytes());
    }
    hash.finalize().to_vec()
}

impl Turns {
    /// The turn a request's id names, as its retry gets it (see [`Turns::retried`]).
    pub(super) async fn retried_by_key(
        &self,
        request: TurnRequest,
        hash: Option<Vec<u8>>,
    ) -> Result<TurnStream, ChatError> {
        let (Some(key), Some(hash)) = (&request.request_key, hash) else {
            return Err(ChatError::Internal(
                "a request id taken by a request without one".into(),
            ));
        };
        let record = self
            .store
            .find_turn_by_request(request.user, key.as_str())
            .await?
            // Its conversation was deleted since the id was found taken.
            .ok_or(ChatError::NotFound("conversation"))?;
        self.retried(request, record, &hash).await
    }

    /// The turn a request with a known id started, as its retry gets it: followed while it
    /// is generated or once it has ended, generated again if it failed.
    pub(super) async fn retried(
        &self,
        request: TurnRequest,
        record: TurnRecord,
        hash: &[u8],
    ) -> Result<TurnStream, ChatError> {
        if record.request_hash.as_deref() != Some(hash) {
            return Err(ChatError::invalid(
                "request_id",
                "was used for a different request: a retry must send the same conversation_id, \
                 content and tools",
            ));
        }
        if !RecordState::of(&record).may_generate_again() {
            tracing::info!(
                request_id = %request.request_id,
                turn = %record.id,
                state = <&str>::from(record.state),
                "a retried request follows its turn"
            );
            return self.follow(request.user, record, 0);
        }
        self.generate_again(request, record).await
    }

    /// Refuses the retry of a turn whose conversation has had another message since.
    async fn refuse_if_moved_on(&self, user: UserId, record: &TurnRecord) -> Result<(), ChatError> {
        if self
            .store
            .has_later_user_message(user, record.conversation_id, record.sequence)
            .await?
        {
            return Err(ChatError::FailedPrecondition(
                "the conversation has moved on since this message: send it again with a new \
                 request_id"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// The newest messages of the branch up to the turn's message, the message aside, whichever
    /// branch is current now.
    async fn branch_before(
        &self,
        user: UserId,
        record: &TurnRecord,
    ) -> Result<Vec<RecentMessage>, ChatError> {
        let Some(parent) = record.parent else {
            return Ok(Vec::new());
        };
        Ok(self
            .store
            .branch_up_to(
                user,
                record.conversation_id,
                parent,
                self.settings.history_messages,
            )
            .await?)
    }

    /// Generates the reply to a stored message again, as its next attempt; follows the turn
    /// instead if another retry took it first.
    async fn generate_again(
        &self,
        mut request: TurnRequest,
        record: TurnRecord,
    ) -> Result<TurnStream, ChatError> {
        let user = request.user;
        let turn = record.id;
        // Everything that can refuse the retry comes first: once the turn is taken, a reply
        // task must end it.
        // A regenerated reply goes beside the message's others, wherever the conversation went.
        if !record.regenerates() {
            self.refuse_if_moved_on(user, &record).await?;
        }
        let model = self.choose_model(request.model.as_deref())?;
        let offer = self.offer(std::mem::take(&mut request.tools))?;
        let permit = self.runtime.admission.open_stream(user)?;
        let mut context = self.branch_before(user, &record).await?;
        context.push(recent_message(&record.user_message));
        // Watched before the turn is taken, so that no cancel finds it unwatched.
        let cancel = self.runtime.events.watch_cancel(turn);
        let replica = self.runtime.replica;
        let Some(attempt) = self
            .store
            .retry_turn(user, turn, record.attempt, replica)
            .await?
        else {
            let record = self
                .store
                .find_turn(user, turn)
                .await?
                .ok_or(ChatError::NotFound("turn"))?;
            return self.follow(user, record, 0);
        };
        let key = TurnKey { turn, attempt };
        let origin = ReplyOrigin {
            user,
            conversation_id: record.conversation_id,
            // After everything in the conversation now, the earlier attempt's replies included.
            after: crate::domain::now(),
            request_id: &request.request_id,
            received_at: request.received_at,
            bearer: request.bearer.as_ref(),
            turn: Some(LiveTurn {
                key,
                detached: request.detached,
            }),
            cancel: Some(cancel),
            model,
        };
        let reply = self.spawn_reply(origin, context, offer, permit);
        tracing::info!(
            request_id = %request.request_id,
            turn = %turn,
            attempt = attempt.get(),
            "a retried request generates its turn again"
        );
        Ok(reply.release(Accepted {
            conversation_id: record.conversation_id,
            user_message: record.user_message,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MessageId;

    #[test]
    fn the_hash_tells_apart_what_a_retry_must_repeat() {
        let tool = |name: &str| ClientTool {
            name: name.into(),
            description: String::new(),
            parameters_json: String::new(),
        };
        let id = ConversationId::generate();
        let hash = |conversation, content, tools: &[ClientTool], placement| {
            request_hash(conversation, content, tools, placement, None)
        };
        let leaf = Placement::AfterLeaf;
        let base = hash(Some(id), "hello", &[tool("a")], leaf);
        assert_eq!(base, hash(Some(id), "hello", &[tool("a")], leaf));
        assert_ne!(base, hash(None, "hello", &[tool("a")], leaf));
        assert_ne!(base, hash(Some(id), "hello!", &[tool("a")], leaf));
        assert_ne!(base, hash(Some(id), "hello", &[tool("b")], leaf));
        assert_ne!(base, hash(Some(id), "hello", &[], leaf));
        let parent = MessageId::generate();
        let after = hash(Some(id), "hello", &[tool("a")], Placement::After(parent));
        assert_ne!(base, after);
        assert_ne!(
            after,
            hash(Some(id), "hello", &[tool("a")], Placement::AsRoot)
        );
        assert_ne!(
            after,
            hash(
                Some(id),
                "hello",
                &[tool("a")],
                Placement::After(MessageId::generate())
            )
        );
        // A model named is part of the request; naming none hashes as before models existed.
        let named = request_hash(Some(id), "hello", &[tool("a")], leaf, Some("fast"));
        assert_ne!(base, named);
        assert_ne!(
            named,
            request_hash(Some(id), "hello", &[tool("a")], leaf, Some("strong"))
        );
    }
}
