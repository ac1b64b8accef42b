//! Paging as AIP-158 describes it: a bounded page size and an opaque, tamper-proof keyset cursor.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::{
    ids::{ConversationId, MessageId, UserId},
    search::{SearchCursor, SearchQuery},
};

/// How many items a page may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u8);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must not be negative (0 asks for the default of {}, the maximum is {})",
    PageSize::DEFAULT,
    PageSize::MAX
)]
pub struct InvalidPageSize;

impl PageSize {
    pub const DEFAULT: u8 = 20;
    pub const MAX: u8 = 100;

    /// 0 means the default; anything above the maximum is the maximum; negative is an error.
    pub fn parse(requested: i32) -> Result<Self, InvalidPageSize> {
        match requested {
            ..0 => Err(InvalidPageSize),
            0 => Ok(Self(Self::DEFAULT)),
            n => Ok(Self(
                u8::try_from(n).map_or(Self::MAX, |n| n.min(Self::MAX)),
            )),
        }
    }

    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

/// Where the next page of a user's conversations starts: after this one, in
/// (update_time desc, id desc) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationCursor {
    pub update_time: DateTime<Utc>,
    pub id: ConversationId,
}

/// Where the next page of a conversation's messages starts: after this message, in the
/// conversation's order. Messages never move, so the message alone marks the place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageCursor {
    pub after: MessageId,
}

/// What a page token belongs to. A token is valid only for the listing that produced it, so a
/// token taken from one user's or one conversation's listing is refused anywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageTokenScope<'a> {
    Conversations {
        user: UserId,
    },
    Messages {
        user: UserId,
        conversation: ConversationId,
    },
    /// A search's results: a token is good only for the query that produced it.
    Search {
        user: UserId,
        query: &'a str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "is not a page token this listing issued; pass the next_page_token of the previous response unchanged, or leave it empty for the first page"
)]
pub struct InvalidPageToken;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const PAYLOAD_LEN: usize = 1 + 8 + 16;

/// Turns cursors into opaque tokens and back. Tokens are signed with a key shared by all
/// replicas, so any replica accepts a token any other issued, and a client cannot forge one.
#[derive(Clone)]
pub struct PageTokenCodec {
    key: Vec<u8>,
}

impl std::fmt::Debug for PageTokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenCodec { .. }")
    }
}

impl PageTokenCodec {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into() }
    }

    pub fn encode_conversations(&self, user: UserId, cursor: &ConversationCursor) -> String {
        self.encode(
            PageTokenScope::Conversations { user },
            cursor.update_time.timestamp_micros(),
            *cursor.id.as_uuid(),
        )
    }

    pub fn decode_conversations(
        &self,
        user: UserId,
        token: &str,
    ) -> Result<ConversationCursor, InvalidPageToken> {
        let (micros, id) = self.decode(PageTokenScope::Conversations { user }, token)?;
        let update_time = DateTime::from_timestamp_micros(micros).ok_or(InvalidPageToken)?;
        Ok(ConversationCursor {
            update_time,
            id: ConversationId::from_uuid(id),
        })
    }

    pub fn encode_messages(
        &self,
        user: UserId,
        conversation: ConversationId,
        cursor: &MessageCursor,
    ) -> String {
        let scope = PageTokenScope::Messages { user, conversation };
        // The time field, which tokens from before messages had sequences filled with the
        // message's time, is not read any more; those tokens still work.
        self.encode(scope, 0, *cursor.after.as_uuid())
    }

    pub fn decode_messages(
        &self,
        user: UserId,
        conversation: ConversationId,
        token: &str,
    ) -> Result<MessageCursor, InvalidPageToken> {
        let scope = PageTokenScope::Messages { user, conversation };
        let (_, id) = self.decode(scope, token)?;
        Ok(MessageCursor {
            after: MessageId::from_uuid(id),
        })
    }

    pub fn encode_search(
        &self,
        user: UserId,
        query: &SearchQuery,
        cursor: &SearchCursor,
    ) -> String {
        let scope = PageTokenScope::Search {
            user,
            query: query.as_str(),
        };
        let rank = i64::from(cursor.rank.to_bits());
        self.encode(scope, rank, *cursor.conversation.as_uuid())
    }

    pub fn decode_search(
        &self,
        user: UserId,
        query: &SearchQuery,
        token: &str,
    ) -> Result<SearchCursor, InvalidPageToken> {
        let scope = PageTokenScope::Search {
            user,
            query: query.as_str(),
        };
        let (rank, id) = self.decode(scope, token)?;
        let rank = u32::try_from(rank)
            .map(f32::from_bits)
            .map_err(|_| InvalidPageToken)?;
        if !rank.is_finite() {
            return Err(InvalidPageToken);
        }
        Ok(SearchCursor {
            rank,
            conversation: ConversationId::from_uuid(id),
        })
    }

    /// A token: the version, the cursor's ordering key and id, and the tag that binds them to
    /// their scope.
    fn encode(&self, scope: PageTokenScope<'_>, key: i64, id: Uuid) -> String {
        let mut token = Vec::with_capacity(PAYLOAD_LEN + TAG_LEN);
        token.push(VERSION);
        token.extend_from_slice(&key.to_be_bytes());
        token.extend_from_slice(id.as_bytes());
        let tag = self.mac(scope, &token).finalize().into_bytes();
        token.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(token)
    }

    fn decode(
        &self,
        scope: PageTokenScope<'_>,
        token: &str,
    ) -> Result<(i64, Uuid), InvalidPageToken> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| InvalidPageToken)?;
        if bytes.len() != PAYLOAD_LEN + TAG_LEN || bytes[0] != VERSION {
            return Err(InvalidPageToken);
        }
        let (payload, tag) = bytes.split_at(PAYLOAD_LEN);
        self.mac(scope, payload)
            .verify_truncated_left(tag)
            .map_err(|_| InvalidPageToken)?;

        let key = i64::from_be_bytes(payload[1..9].try_into().map_err(|_| InvalidPageToken)?);
        let id = Uuid::from_slice(&payload[9..]).map_err(|_| InvalidPageToken)?;
        Ok((key, id))
    }

    fn mac(&self, scope: PageTokenScope<'_>, payload: &[u8]) -> Hmac<Sha256> {
        // Any key length is accepted by HMAC, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(b"chat.v1 page token\0");
        match scope {
            PageTokenScope::Conversations { user } => {
                mac.update(b"conversations\0");
                mac.update(user.as_uuid().as_bytes());
            }
            PageTokenScope::Messages { user, conversation } => {
                mac.update(b"messages\0");
                mac.update(user.as_uuid().as_bytes());
                mac.update(conversation.as_uuid().as_bytes());
            }
            PageTokenScope::Search { user, query } => {
                mac.update(b"search\0");
                mac.update(user.as_uuid().as_bytes());
                mac.update(query.as_bytes());
            }
        }
        mac.update(payload);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::now;

    fn codec() -> PageTokenCodec {
        PageTokenCodec::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn page_sizes_follow_aip_158() {
        assert_eq!(PageSize::parse(0).map(PageSize::get), Ok(20));
        assert_eq!(PageSize::parse(1).map(PageSize::get), Ok(1));
        assert_eq!(PageSize::parse(100).map(PageSize::get), Ok(100));
        assert_eq!(PageSize::parse(101).map(PageSize::get), Ok(100));
        assert_eq!(PageSize::parse(i32::MAX).map(PageSize::get), Ok(100));
        assert_eq!(PageSize::parse(-1), Err(InvalidPageSize));
    }

    #[test]
    fn tokens_round_trip_within_their_scope() {
        let user = UserId::generate();
        let cursor = ConversationCursor {
            update_time: now(),
            id: ConversationId::generate(),
        };
        let token = codec().encode_conversations(user, &cursor);
        assert_eq!(codec().decode_conversations(user, &token), Ok(cursor));

        let conversation = ConversationId::generate();
        let cursor = MessageCursor {
            after: MessageId::generate(),
        };
        let token = codec().encode_messages(user, conversation, &cursor);
        assert_eq!(
            codec().decode_messages(user, conversation, &token),
            Ok(cursor)
        );
    }

    #[test]
    fn message_tokens_from_before_sequences_still_work() {
        let (user, conversation, message) = (
            UserId::generate(),
            ConversationId::generate(),
            MessageId::generate(),
        );
        // As the previous release made them: the message's time in the time field.
        let scope = PageTokenScope::Messages { user, conversation };
        let old = codec().encode(scope, now().timestamp_micros(), *message.as_uuid());
        assert_eq!(
            codec().decode_messages(user, conversation, &old),
            Ok(MessageCursor { after: message })
        );
    }

    #[test]
    fn tokens_are_refused_outside_their_scope() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let conversation = ConversationId::generate();
        let cursor = ConversationCursor {
            update_time: now(),
            id: conversation,
        };
        let token = codec().encode_conversations(alice, &cursor);

        assert_eq!(
            codec().decode_conversations(bob, &token),
            Err(InvalidPageToken)
        );
        assert_eq!(
            codec().decode_messages(alice, conversation, &token),
            Err(InvalidPageToken)
        );
        let other_key = PageTokenCodec::new(b"another key".to_vec());
        assert_eq!(
            other_key.decode_conversations(alice, &token),
            Err(InvalidPageToken)
        );
    }

    #[test]
    fn search_tokens_hold_only_for_their_user_and_query() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let query = |text| SearchQuery::parse(text).unwrap_or_else(|e| panic!("{e}"));
        let cursor = SearchCursor {
            rank: 0.060_793_02,
            conversation: ConversationId::generate(),
        };
        let token = codec().encode_search(alice, &query("red fox"), &cursor);
        assert_eq!(
            codec().decode_search(alice, &query("red fox"), &token),
            Ok(cursor)
        );
        assert_eq!(
            codec().decode_search(alice, &query("red wolf"), &token),
            Err(InvalidPageToken)
        );
        assert_eq!(
            codec().decode_search(bob, &query("red fox"), &token),
            Err(InvalidPageToken)
        );
        assert_eq!(
            codec().decode_conversations(alice, &token),
            Err(InvalidPageToken)
        );
    }

    #[test]
    fn altered_or_malformed_tokens_are_refused() {
        let user = UserId::generate();
        let cursor = ConversationCursor {
            update_time: now(),
            id: ConversationId::generate(),
        };
        let token = codec().encode_conversations(user, &cursor);

        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap_or_default();
        bytes[3] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(&bytes);
        for bad in [
            altered.as_str(),
            "",
            "not base64!",
            "AAAA",
            &token[..token.len() - 1],
        ] {
            assert_eq!(
                codec().decode_conversations(user, bad),
                Err(InvalidPageToken),
                "{bad:?}"
            );
        }
    }
}
