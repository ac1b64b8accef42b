//! The migrations that make a conversation a tree, run on a database as the previous release
//! left it, while that release still writes: every stored conversation becomes one line, each
//! message following the one before it, and the service then goes on from its last message.

use chat_service::{
    api::proto::GetConversationRequest,
    store::{SearchConfig, run_migrations},
};

use super::{
    send_message::send_ok,
    support::{FakeLlm, TestApp, TestDatabase},
};

const MIGRATIONS_TABLE: &str = "CREATE TABLE __diesel_schema_migrations (
    version VARCHAR(50) PRIMARY KEY NOT NULL,
    run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)";

/// Every migration of the previous release, and the first of the tree's, which only changes the
/// catalog and can run while the previous release still writes.
const BEFORE_THE_TREE: [(&str, &str); 17] = [
    (
        "20261123000001",
        include_str!("../../migrations/2026-11-23-000001_create_chat_schema/up.sql"),
    ),
    (
        "20261123000002",
        include_str!("../../migrations/2026-11-23-000002_conversation_revision/up.sql"),
    ),
    (
        "20261126000003",
        include_str!("../../migrations/2026-11-26-000003_message_sequence/up.sql"),
    ),
    (
        "20261126000004",
        include_str!("../../migrations/2026-11-26-000004_number_existing_messages/up.sql"),
    ),
    (
        "20261126000005",
        include_str!("../../migrations/2026-11-26-000005_message_sequence_index/up.sql"),
    ),
    (
        "20261126000006",
        include_str!("../../migrations/2026-11-26-000006_require_message_sequence/up.sql"),
    ),
    (
        "20261126000007",
        include_str!("../../migrations/2026-11-26-000007_drop_chronological_index/up.sql"),
    ),
    (
        "20261126000008",
        include_str!("../../migrations/2026-11-26-000008_await_client_tool_results/up.sql"),
    ),
    (
        "20261126000009",
        include_str!("../../migrations/2026-11-26-000009_validate_message_status/up.sql"),
    ),
    (
        "20261127000010",
        include_str!("../../migrations/2026-11-27-000010_durable_turns/up.sql"),
    ),
    (
        "20261127000011",
        include_str!("../../migrations/2026-11-27-000011_validate_interrupted_status/up.sql"),
    ),
    (
        "20261206000012",
        include_str!("../../migrations/2026-12-06-000012_message_search_vector/up.sql"),
    ),
    (
        "20261206000013",
        include_str!("../../migrations/2026-12-06-000013_validate_title_source/up.sql"),
    ),
    (
        "20261206000014",
        include_str!("../../migrations/2026-12-06-000014_fill_search_vectors/up.sql"),
    ),
    (
        "20261206000015",
        include_str!("../../migrations/2026-12-06-000015_message_search_index/up.sql"),
    ),
    (
        "20261206000016",
        include_str!("../../migrations/2026-12-06-000016_search_words_from_writers/up.sql"),
    ),
    (
        "20261207000017",
        include_str!("../../migrations/2026-12-07-000017_message_tree/up.sql"),
    ),
];

const ALICE: &str = "01900000-0000-7000-8000-00000000a11c";
/// 12,000 messages, more than two batches, and a gap in their sequences where a round of tool
/// calls was cut short.
const LONG: &str = "01900000-0000-7000-8000-0000000000c1";
/// Three messages.
const SHORT: &str = "01900000-0000-7000-8000-0000000000c2";
/// None.
const EMPTY: &str = "01900000-0000-7000-8000-0000000000c3";
/// Created by the previous release after the migrations.
const LATER: &str = "01900000-0000-7000-8000-0000000000c4";

/// Alice's conversations as the previous release left them.
fn previous_data() -> String {
    format!(
        "INSERT INTO users (id, subject) VALUES ('{ALICE}', 'alice');
         INSERT INTO conversations (id, user_id, title, revision) VALUES
             ('{LONG}', '{ALICE}', 'long', 12002),
             ('{SHORT}', '{ALICE}', 'short', 3),
             ('{EMPTY}', '{ALICE}', 'empty', 0);
         INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
         SELECT gen_random_uuid(), '{LONG}', CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END,
                'line ' || g, 'complete', '2026-01-01 00:00:00+00',
                CASE WHEN g > 5000 THEN g + 2 ELSE g END
         FROM generate_series(1, 12000) g;
         INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
         VALUES
             (gen_random_uuid(), '{SHORT}', 'user', 'short 1', 'complete', now(), 1),
             (gen_random_uuid(), '{SHORT}', 'assistant', 'short 2', 'complete', now(), 2),
             (gen_random_uuid(), '{SHORT}', 'user', 'short 3', 'complete', now(), 3);"
    )
}

/// The previous release adding a reply: it knows nothing of the tree.
fn previous_reply(conversation: &str, content: &str) -> String {
    format!(
        "WITH touched AS (
             UPDATE conversations SET revision = revision + 1 WHERE id = '{conversation}'
             RETURNING id, revision
         )
         INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence,
                               search_vector)
         SELECT gen_random_uuid(), id, 'assistant', '{content}', 'complete', now(), revision,
                chat_search_vector('{content}')
         FROM touched"
    )
}

/// The previous release starting a conversation with its first message.
fn previous_start(conversation: &str, content: &str) -> String {
    format!(
        "WITH created AS (
             INSERT INTO conversations (id, user_id, title, created_at, updated_at, revision)
             VALUES ('{conversation}', '{ALICE}', 'later', now(), now(), 1)
             RETURNING id
         )
         INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence,
                               search_vector)
         SELECT gen_random_uuid(), id, 'user', '{content}', 'complete', now(), 1,
                chat_search_vector('{content}')
         FROM created"
    )
}

/// Messages whose parent is not the message before them in their conversation's order, or whose
/// depth is not the number of messages before them.
const MISPLACED: &str = "SELECT count(*) AS n FROM messages m
    WHERE m.depth IS DISTINCT FROM
              (SELECT count(*) FROM messages p
               WHERE p.conversation_id = m.conversation_id AND p.sequence < m.sequence)
       OR m.parent_id IS DISTINCT FROM
              (SELECT p.id FROM messages p
               WHERE p.conversation_id = m.conversation_id AND p.sequence < m.sequence
               ORDER BY p.sequence DESC LIMIT 1)";

/// Conversations whose leaf is not their last message.
const LEAF_ASTRAY: &str = "SELECT count(*) AS n FROM conversations c
    WHERE c.leaf_id IS DISTINCT FROM
              (SELECT m.id FROM messages m WHERE m.conversation_id = c.id
               ORDER BY m.sequence DESC LIMIT 1)
       OR c.leaf_depth IS DISTINCT FROM
              (SELECT count(*) - 1 FROM messages m WHERE m.conversation_id = c.id
               HAVING count(*) > 0)
       OR c.leaf_jumps <> 0";

#[tokio::test]
async fn stored_conversations_become_lines_and_the_previous_release_keeps_them_so() {
    let db = TestDatabase::empty().await;
    db.run_sql(MIGRATIONS_TABLE).await;
    for (version, up) in BEFORE_THE_TREE {
        if version == "20261207000017" {
            db.run_sql(&previous_data()).await;
        }
        db.run_sql(up).await;
        db.run_sql(&format!(
            "INSERT INTO __diesel_schema_migrations (version) VALUES ('{version}')"
        ))
        .await;
    }
    // The previous release writes while the migrations run: before the stored messages are
    // placed, its message follows the one before it all the same.
    db.run_sql(&previous_reply(LONG, "written meanwhile")).await;
    assert_eq!(
        db.count("SELECT count(*) AS n FROM messages WHERE depth IS NULL")
            .await,
        12_003
    );

    let applied = run_migrations(&db.url, &SearchConfig::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        applied,
        [
            "20261207000018",
            "20261207000019",
            "20261207000020",
            "20261207000021",
            "20261207000022",
            "20261207000023",
            "20261207000024",
            "20261207000025"
        ]
    );
    // And after them.
    db.run_sql(&previous_reply(SHORT, "short 4")).await;
    db.run_sql(&previous_start(LATER, "later 1")).await;
    db.run_sql(&previous_reply(LATER, "later 2")).await;

    assert_eq!(db.count(MISPLACED).await, 0);
    assert_eq!(db.count(LEAF_ASTRAY).await, 0);
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) AS n FROM messages
             WHERE conversation_id = '{LONG}' AND depth = 12000 AND content = 'written meanwhile'"
        ))
        .await,
        1
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) AS n FROM conversations
             WHERE id = '{EMPTY}' AND leaf_id IS NULL AND leaf_depth IS NULL"
        ))
        .await,
        1
    );

    // The service goes on from there: the model sees the line, the new message follows its
    // last message, and the conversation reads as that line, each message with one sibling.
    let fake = FakeLlm::start().await;
    let url = db.url.clone();
    let app = TestApp::with_fake_llm(&fake, move |config| config.database.url = url).await;
    let turn = send_ok(&app, "alice", SHORT, "short 5").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    let sent: Vec<String> = fake.received()[0]
        .messages()
        .into_iter()
        .map(|(_, content)| content)
        .collect();
    assert_eq!(
        sent,
        ["short 1", "short 2", "short 3", "short 4", "short 5"]
    );
    assert_eq!(db.count(MISPLACED).await, 0);
    assert_eq!(db.count(LEAF_ASTRAY).await, 0);

    let shown = app
        .conversations()
        .get_conversation(app.request(
            "alice",
            GetConversationRequest {
                conversation_id: SHORT.to_owned(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .messages;
    let contents: Vec<&str> = shown.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        contents[..5],
        ["short 1", "short 2", "short 3", "short 4", "short 5"]
    );
    assert_eq!(shown.len(), 6, "and the reply");
    assert_eq!(shown[0].parent_id, uuid::Uuid::nil().to_string());
    for pair in shown.windows(2) {
        assert_eq!(pair[1].parent_id, pair[0].id);
    }
    assert!(
        shown
            .iter()
            .all(|m| (m.sibling_index, m.sibling_count) == (0, 1))
    );
}
