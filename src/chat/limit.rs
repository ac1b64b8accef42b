//! The limits that refuse a request: what each is called and what it means to a client.

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    UserRequestRate,
    UserStreams,
    ReplicaStreams,
    UserConversations,
    ConversationMessages,
    MessageSiblings,
}

impl Limit {
    /// A short name, for metrics and for the `subject` of a quota violation.
    pub fn label(self) -> &'static str {
        match self {
            Self::UserRequestRate => "user_request_rate",
            Self::UserStreams => "user_streams",
            Self::ReplicaStreams => "replica_streams",
            Self::UserConversations => "user_conversations",
            Self::ConversationMessages => "conversation_messages",
            Self::MessageSiblings => "message_siblings",
        }
    }

    /// What a client developer needs to know about it.
    pub fn description(self) -> &'static str {
        match self {
            Self::UserRequestRate => {
                "too many requests from this user (CHAT_USER_REQUESTS_PER_SECOND, CHAT_USER_REQUEST_BURST)"
            }
            Self::UserStreams => {
                "this user is already receiving as many replies as allowed at once (CHAT_MAX_STREAMS_PER_USER)"
            }
            Self::ReplicaStreams => {
                "this replica is streaming as many replies as it allows (CHAT_MAX_STREAMS); another replica may have room"
            }
            Self::UserConversations => {
                "this user has as many conversations as allowed (CHAT_MAX_CONVERSATIONS_PER_USER); delete one to start another"
            }
            Self::ConversationMessages => {
                "this conversation holds as many messages as allowed (CHAT_MAX_MESSAGES_PER_CONVERSATION); start a new one"
            }
            Self::MessageSiblings => {
                "as many messages as allowed follow this one already (CHAT_MAX_SIBLINGS): edit or regenerate another"
            }
        }
    }
}
