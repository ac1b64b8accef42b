//! Full-text search over a user's messages, on PostgreSQL's own text search: each message's
//! words are kept in `messages.search_vector` (computed as each message is written, indexed with
//! GIN), and a query is read by `websearch_to_tsquery`, so that quotes, `or` and `-word` work as
//! in a web search box.

use chrono::{DateTime, Utc};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Float4, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Conn, Operation, Store, StoreError, statement::fixed};
use crate::domain::{
    Conversation, ConversationId, MessageId, SearchCursor, SearchHit, SearchQuery, Title, UserId,
    snippet_parts,
};

/// `tsvector`, as diesel knows the column's type.
#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
#[diesel(postgres_type(name = "tsvector"))]
pub struct Tsvector;

/// The name of a PostgreSQL text search configuration (`simple`, `english`, `pg_catalog.german`,
/// ...): how messages are split into words and which forms count as the same word. Only names
/// made of letters, digits and underscores, with at most one schema, are accepted, so that it
/// can be written into a `SET` statement as it is. Whether the database has it is checked at
/// start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchConfig(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not the name of a text search configuration: use a name such as simple or english, \
     optionally with its schema (pg_catalog.english)"
)]
pub struct InvalidSearchConfig(String);

impl SearchConfig {
    pub fn parse(text: &str) -> Result<Self, InvalidSearchConfig> {
        let is_name = |part: &str| {
            (1..=63).contains(&part.len())
                && part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let mut parts = text.split('.');
        let valid = parts.next().is_some_and(is_name)
            && parts.next().is_none_or(is_name)
            && parts.next().is_none();
        if valid {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(InvalidSearchConfig(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The statement that makes a connection index and search with this configuration.
    pub(super) fn set_statement(&self) -> String {
        // Only letters, digits, underscores and a dot: nothing to quote.
        format!("SET chat.search_config = '{}'", self.0)
    }
}

impl Default for SearchConfig {
    /// `simple`: every word of every language matches as written, lower-cased, without stemming.
    fn default() -> Self {
        Self("simple".to_owned())
    }
}

const SEARCH: Operation = Operation::new("SELECT", "SELECT messages conversations");

/// The user's conversations whose messages match `$2`, best match first, from after the cursor
/// (`$3`, `$4`), at most `$5`: each with its best message, its rank and a snippet whose matching
/// words are marked with STX and ETX. A conversation's rank is that of its best message; ties go
/// to the newer message. `best` is one of two ways to find the matching messages (below).
macro_rules! search_with {
    ($best:literal) => {
        concat!(
            "WITH query AS (SELECT websearch_to_tsquery(chat_search_config(), $2) AS q), ",
            $best,
            ", page AS (
                 SELECT * FROM best
                 WHERE $3::real IS NULL OR (rank, conversation_id) < ($3::real, $4::uuid)
                 ORDER BY rank DESC, conversation_id DESC
                 LIMIT $5
             )
             SELECT c.id, c.title, c.created_at, c.updated_at, page.message_id, page.rank,
                    ts_headline(chat_search_config(), translate(m.content, chr(2) || chr(3), ''),
                                query.q,
                                'StartSel=' || chr(2) || ', StopSel=' || chr(3)
                                || ', MaxWords=24, MinWords=12, MaxFragments=2, FragmentDelimiter=\" … \"')
                        AS snippet
             FROM page
             JOIN conversations AS c ON c.id = page.conversation_id
             JOIN messages AS m ON m.id = page.message_id, query
             ORDER BY page.rank DESC, page.conversation_id DESC"
        )
    };
}

/// [`search_with`] from the index: every user's messages that hold the words, then the user's
/// among them. Its cost grows with the matches in the whole database, so it is for words that
/// few messages hold. Materialized, so that PostgreSQL does not probe the index once per
/// conversation of the user instead, which it misjudges as cheap.
pub const SEARCH_FROM_THE_INDEX: &str = search_with!(
    "hits AS MATERIALIZED (
         SELECT m.conversation_id, m.id, m.sequence, m.search_vector
         FROM messages AS m, query WHERE m.search_vector @@ query.q
     ), best AS (
         SELECT DISTINCT ON (h.conversation_id)
                h.conversation_id, h.id AS message_id, ts_rank(h.search_vector, query.q) AS rank
         FROM hits AS h JOIN conversations AS c ON c.id = h.conversation_id, query
         WHERE c.user_id = $1
         ORDER BY h.conversation_id, rank DESC, h.sequence DESC
     )"
);

/// [`search_with`] from the user's own messages, each conversation's read through its sequence
/// index and checked against the words. Its cost grows with the user's messages, whatever the
/// database holds, so it is for words that many messages hold. The fence (`OFFSET 0`) keeps the
/// words' index out of the per-conversation reads.
pub const SEARCH_FROM_THE_USER: &str = search_with!(
    "best AS (
         SELECT DISTINCT ON (c.id)
                c.id AS conversation_id, m.id AS message_id, ts_rank(m.search_vector, query.q) AS rank
         FROM conversations AS c
         CROSS JOIN LATERAL (
             SELECT id, sequence, search_vector FROM messages WHERE conversation_id = c.id OFFSET 0
         ) AS m, query
         WHERE c.user_id = $1 AND m.search_vector @@ query.q
         ORDER BY c.id, rank DESC, m.sequence DESC
     )"
);

/// Which way in costs less: from the index when the messages of the whole database that hold
/// the words (PostgreSQL's estimate) are fewer than half the user's own messages, from the
/// user's messages otherwise. Both read about one row of the table per message they look at;
/// the index also reads the words' posting lists, which for a common word (or a rare one beside
/// a common one) are long, hence the half. Measured on 1,000,000 messages (BENCHMARKS.md).
fn from_the_index(matches_everywhere: Option<f64>, users_messages: i64) -> bool {
    // An estimate that could not be read: the user's own messages bound the cost.
    matches_everywhere.is_some_and(|matches| matches * 2.0 < users_messages as f64)
}

/// About how many messages the user has: each conversation's revision counts the writes that
/// added its messages.
const USERS_MESSAGES: &str =
    "SELECT COALESCE(sum(revision), 0)::bigint AS n FROM conversations WHERE user_id = $1";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// PostgreSQL's estimate of how many messages, of every user, hold the words of `query`: what
/// it would plan with, from the column's statistics.
const ESTIMATE: &str = "EXPLAIN (FORMAT JSON)
    SELECT 1 FROM messages WHERE search_vector @@ websearch_to_tsquery(chat_search_config(), ";

#[derive(QueryableByName)]
struct Plan {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    json: String,
}

/// The rows the top of an `EXPLAIN (FORMAT JSON)` plan expects.
fn planned_rows(plan: &str) -> Option<f64> {
    let plan: serde_json::Value = serde_json::from_str(plan).ok()?;
    plan.get(0)?.get("Plan")?.get("Plan Rows")?.as_f64()
}

/// `text` as an SQL string literal in the escape syntax (`E'…'`), which reads backslashes the
/// same whatever the server's standard_conforming_strings says: quotes and backslashes are
/// doubled. A query holds no NUL (see [`SearchQuery`]).
fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

#[derive(QueryableByName)]
struct HitRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    title: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
    #[diesel(sql_type = SqlUuid)]
    message_id: Uuid,
    #[diesel(sql_type = Float4)]
    rank: f32,
    #[diesel(sql_type = Text)]
    snippet: String,
}

impl From<HitRow> for SearchHit {
    fn from(row: HitRow) -> Self {
        Self {
            conversation: Conversation {
                id: ConversationId::from_uuid(row.id),
                title: Title::from_stored(row.title),
                create_time: row.created_at,
                update_time: row.updated_at,
            },
            message: MessageId::from_uuid(row.message_id),
            rank: row.rank,
            snippet: snippet_parts(&row.snippet),
        }
    }
}

impl Store {
    /// Up to `limit` of the user's conversations that match `query` after `after`, best first.
    pub async fn search_conversations(
        &self,
        user: UserId,
        query: &SearchQuery,
        after: Option<SearchCursor>,
        limit: usize,
    ) -> Result<Vec<SearchHit>, StoreError> {
        self.run(SEARCH, async |conn| {
            // Both asked in one round trip.
            let conn: &Conn = conn;
            let (mut for_estimate, mut for_count) = (conn, conn);
            let estimate = diesel::sql_query(format!("{ESTIMATE}{})", literal(query.as_str())))
                .get_result::<Plan>(&mut for_estimate);
            let users_messages = fixed(USERS_MESSAGES)
                .bind::<SqlUuid, _>(user.as_uuid())
                .get_result::<Count>(&mut for_count);
            let (estimate, users_messages) = futures_util::try_join!(estimate, users_messages)?;
            let search = if from_the_index(planned_rows(&estimate.json), users_messages.n) {
                SEARCH_FROM_THE_INDEX
            } else {
                SEARCH_FROM_THE_USER
            };
            let mut conn = conn;
            let rows = fixed(search)
                .bind::<SqlUuid, _>(user.as_uuid())
                .bind::<Text, _>(query.as_str())
                .bind::<Nullable<Float4>, _>(after.map(|c| c.rank))
                .bind::<Nullable<SqlUuid>, _>(after.map(|c| *c.conversation.as_uuid()))
                .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
                .load::<HitRow>(&mut conn)
                .await?;
            Ok(rows.into_iter().map(SearchHit::from).collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_read_from_the_top_of_the_plan() {
        let plan = r#"[{"Plan": {"Node Type": "Bitmap Heap Scan", "Plan Rows": 14728,
                       "Plans": [{"Plan Rows": 5}]}}]"#;
        assert_eq!(planned_rows(plan), Some(14728.0));
        assert_eq!(planned_rows("[]"), None);
        assert_eq!(planned_rows("not json"), None);
        assert_eq!(literal("it's"), "E'it''s'");
        // Few matches beside many own messages go through the index; anything else, or no
        // estimate, through the user's messages.
        assert!(from_the_index(Some(1_000.0), 10_000));
        assert!(!from_the_index(Some(5_000.0), 10_000));
        assert!(!from_the_index(Some(640_000.0), 10_000));
        assert!(!from_the_index(None, 10_000));
        assert!(!from_the_index(Some(0.0), 0));
        assert_eq!(literal(r"a\' OR true --"), r"E'a\\'' OR true --'");
    }

    #[test]
    fn configurations_are_plain_names() {
        for good in ["simple", "english", "pg_catalog.english", "My_Config2"] {
            assert!(SearchConfig::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "english'; DROP TABLE messages; --",
            "a.b.c",
            ".english",
            "english.",
            "2english",
            "eng lish",
            &"x".repeat(64),
        ] {
            assert!(SearchConfig::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            SearchConfig::parse("English").map(|c| c.set_statement()),
            Ok("SET chat.search_config = 'english'".to_owned())
        );
    }
}
