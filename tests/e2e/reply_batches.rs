//! Replies of turns that end together are written in one transaction, each with its own answer;
//! a reply that fails in it fails alone. Driven through the store itself, whose queue of replies
//! the test fills while the one transaction it may run is held up by a row lock.

use std::{pin::Pin, task::Poll, time::Duration};

use chat_service::{
    domain::{
        Budget, Conversation, ConversationId, FIRST_ATTEMPT, Message, MessageId, MessageStatus,
        Placement, Role, Subject, Title, TurnState, UsagePeriod, UserId, now,
    },
    store::{
        DatabaseSettings, NewTurn, PoolSettings, ReplyOf, ReplyStored, SearchConfig, Store,
        StoreError, TurnEnding,
    },
};
use diesel_async::AsyncPgConnection;

use super::support::{
    database::{TestDatabase, execute},
    wait::eventually,
};

type Write<'a> = Pin<Box<dyn Future<Output = Result<ReplyStored, StoreError>> + Send + 'a>>;

/// A store whose pool of 4 connections lets replies use one transaction at a time.
async fn store(db: &TestDatabase) -> Store {
    let settings = DatabaseSettings {
        url: db.url.clone(),
        pool: PoolSettings {
            max_connections: 4,
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(30),
        },
        migrate_on_start: false,
        search_config: SearchConfig::default(),
    };
    Store::connect(&settings).await.unwrap()
}

/// A conversation of `user` with one user message, whose turn is generating: returns the
/// conversation and the turn (the user message's id).
async fn conversation_with_a_turn(store: &Store, user: UserId) -> (ConversationId, MessageId) {
    let time = now();
    let conversation = Conversation {
        id: ConversationId::generate(),
        title: Title::from_first_message("hello"),
        create_time: time,
        update_time: time,
    };
    let first = Message {
        id: MessageId::generate(),
        conversation_id: conversation.id,
        role: Role::User,
        content: "hello".to_owned(),
        status: MessageStatus::Complete,
        create_time: time,
        tool_calls: Vec::new(),
        model: None,
        usage: None,
    };
    let turn = NewTurn {
        request_key: None,
        request_hash: None,
        replica: uuid::Uuid::now_v7(),
        placement: Placement::AfterLeaf,
    };
    let (placed, _) = tokio::sync::oneshot::channel();
    store
        .start_conversation(
            user,
            &conversation,
            &first,
            (100, &Budget::unlimited(UsagePeriod::Day)),
            &turn,
            placed,
        )
        .await
        .unwrap();
    (conversation.id, first.id)
}

fn reply(conversation: ConversationId, id: MessageId) -> Message {
    Message {
        id,
        conversation_id: conversation,
        role: Role::Assistant,
        content: format!("the reply in {conversation}"),
        status: MessageStatus::Complete,
        create_time: now(),
        tool_calls: Vec::new(),
        model: Some("fake-model".to_owned()),
        usage: None,
    }
}

/// The reply that ends `turn`, completed.
fn write<'a>(
    store: &'a Store,
    user: UserId,
    reply: &'a Message,
    turn: MessageId,
    outcome: &'a serde_json::Value,
) -> Write<'a> {
    Box::pin(async move {
        let of = ReplyOf {
            turn: turn.into(),
            attempt: FIRST_ATTEMPT,
            deltas: &[1, 2],
            ends: Some(TurnEnding {
                state: TurnState::Completed,
                outcome,
            }),
            while_state: TurnState::Generating,
        };
        store.store_reply(user, reply, None, Some(&of)).await
    })
}

/// Polls each write once, which queues its reply, and checks that none is answered yet.
async fn queue(writes: &mut [Write<'_>]) {
    std::future::poll_fn(|context| {
        for write in writes.iter_mut() {
            assert!(
                write.as_mut().poll(context).is_pending(),
                "a reply was written while the only transaction for replies was held up"
            );
        }
        Poll::Ready(())
    })
    .await;
}

/// Holds up the one transaction that may write replies: the reply in `conversation` waits for
/// the row the returned connection holds.
async fn hold_up_replies(db: &TestDatabase, conversation: ConversationId) -> AsyncPgConnection {
    let mut blocker = db.connect().await;
    execute(
        &mut blocker,
        &format!("BEGIN; SELECT 1 FROM conversations WHERE id = '{conversation}' FOR UPDATE"),
    )
    .await;
    blocker
}

async fn waits_for_the_lock(db: &TestDatabase) {
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND datname = current_database()";
    eventually("the first reply's write waits for the row", || async {
        db.count(waiting).await == 1
    })
    .await;
}

/// The transaction that wrote each message, by id.
async fn writers(db: &TestDatabase, messages: &[MessageId]) -> Vec<String> {
    let mut found = Vec::new();
    for id in messages {
        let n = db
            .count(&format!(
                "SELECT xmin::text::bigint AS n FROM messages WHERE id = '{id}'"
            ))
            .await;
        found.push(n.to_string());
    }
    found
}

/// Writes the first reply, held up by a lock on its conversation, and queues the others behind
/// it, then lets it go: the first is written alone, and the others wait together. Returns what
/// the others were answered.
async fn write_behind_a_held_up_reply(
    db: &TestDatabase,
    store: &Store,
    user: UserId,
    replies: &[Message],
    turns: &[(ConversationId, MessageId)],
    outcome: &serde_json::Value,
) -> Vec<Result<ReplyStored, StoreError>> {
    let mut blocker = hold_up_replies(db, turns[0].0).await;
    let first = tokio::spawn({
        let (store, reply, turn, outcome) = (
            store.clone(),
            replies[0].clone(),
            turns[0].1,
            outcome.clone(),
        );
        async move { write(&store, user, &reply, turn, &outcome).await }
    });
    waits_for_the_lock(db).await;
    let mut rest: Vec<Write<'_>> = (1..replies.len())
        .map(|i| write(store, user, &replies[i], turns[i].1, outcome))
        .collect();
    queue(&mut rest).await;
    execute(&mut blocker, "COMMIT").await;
    assert_eq!(first.await.unwrap().unwrap(), ReplyStored::At(2));
    futures_util::future::join_all(rest).await
}

/// Alice, with four conversations whose turns are generating.
async fn alice_with_four_turns(store: &Store) -> (UserId, Vec<(ConversationId, MessageId)>) {
    let user = store
        .ensure_user(&Subject::parse("alice").unwrap())
        .await
        .unwrap();
    let mut turns = Vec::new();
    for _ in 0..4 {
        turns.push(conversation_with_a_turn(store, user).await);
    }
    (user, turns)
}

#[tokio::test]
async fn replies_that_wait_together_share_one_transaction_and_each_hears_its_own_answer() {
    let db = TestDatabase::new().await;
    let store = store(&db).await;
    let (user, turns) = alice_with_four_turns(&store).await;
    let outcome = serde_json::json!({"finish_reason": "stop"});
    let replies: Vec<Message> = turns
        .iter()
        .map(|(conversation, _)| reply(*conversation, MessageId::generate()))
        .collect();
    // The third conversation is deleted before its reply comes: it is not written, and the
    // others are.
    db.run_sql(&format!(
        "DELETE FROM conversations WHERE id = '{}'",
        turns[2].0
    ))
    .await;

    let answers: Vec<_> =
        write_behind_a_held_up_reply(&db, &store, user, &replies, &turns, &outcome)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert_eq!(
        answers,
        [
            ReplyStored::At(2),
            ReplyStored::ConversationGone,
            ReplyStored::At(2)
        ]
    );
    let written = writers(&db, &[replies[0].id, replies[1].id, replies[3].id]).await;
    assert_eq!(
        written[1], written[2],
        "the replies that waited together: {written:?}"
    );
    assert_ne!(
        written[0], written[1],
        "the reply written alone: {written:?}"
    );
    let completed = db
        .count("SELECT count(*) AS n FROM turns WHERE state = 'completed'")
        .await;
    assert_eq!(completed, 3, "each written reply ended its turn");
    assert_eq!(
        db.count("SELECT count(*) AS n FROM messages WHERE role = 'assistant'")
            .await,
        3
    );
}

#[tokio::test]
async fn a_reply_that_fails_among_others_fails_alone() {
    let db = TestDatabase::new().await;
    let store = store(&db).await;
    let (user, turns) = alice_with_four_turns(&store).await;
    let outcome = serde_json::json!({"finish_reason": "stop"});
    let mut replies: Vec<Message> = turns
        .iter()
        .map(|(conversation, _)| reply(*conversation, MessageId::generate()))
        .collect();
    // The third reply reuses the id of a stored message: its insert fails, and with it the
    // transaction it shares.
    replies[2].id = turns[1].1;

    let mut answers = write_behind_a_held_up_reply(&db, &store, user, &replies, &turns, &outcome)
        .await
        .into_iter();
    assert_eq!(answers.next().unwrap().unwrap(), ReplyStored::At(2));
    let failed = answers.next().unwrap();
    assert!(
        matches!(failed, Err(StoreError::Duplicate(_))),
        "{failed:?}"
    );
    assert_eq!(answers.next().unwrap().unwrap(), ReplyStored::At(2));
    // Nothing of the failed reply is written: its conversation and turn are as they were.
    let conversation = turns[2].0;
    assert_eq!(
        db.count(&format!(
            "SELECT revision AS n FROM conversations WHERE id = '{conversation}'"
        ))
        .await,
        1
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) AS n FROM turns WHERE conversation_id = '{conversation}' \
             AND state = 'generating'"
        ))
        .await,
        1
    );
    assert_eq!(
        db.count("SELECT count(*) AS n FROM messages WHERE role = 'assistant'")
            .await,
        3
    );
}
