//! One order per conversation, decided when a message is committed, whichever replica writes it:
//! a turn's model sees exactly the messages committed before its own, and every listing shows
//! them in that order.

use chat_service::api::proto::GetConversationRequest;
use tokio::task::JoinSet;

use super::{
    send_message::{send, send_ok},
    support::{FakeLlm, TestApp, app::without_user_limits},
};

/// Each replica's model context holds up to this many messages: more than any test here writes,
/// so a context is the whole conversation before its message.
const HISTORY: usize = 64;
const CONCURRENT_TURNS: usize = 12;

/// `count` replicas of the service on one database, each with its own memory of conversations.
async fn replicas(fake: &FakeLlm, count: usize) -> Vec<TestApp> {
    let first = TestApp::with_fake_llm(fake, |config| {
        without_user_limits(config);
        config.turns.history_messages = HISTORY;
    })
    .await;
    let url = first.config.database.url.clone();
    let mut all = vec![first];
    for _ in 1..count {
        let url = url.clone();
        all.push(
            TestApp::with_fake_llm(fake, move |config| {
                without_user_limits(config);
                config.turns.history_messages = HISTORY;
                config.database.url = url;
            })
            .await,
        );
    }
    all
}

/// Alice talks on every replica, one turn after another (so that each replica remembers the
/// conversation), then takes [`CONCURRENT_TURNS`] turns at once, spread over the replicas.
/// Afterwards every model request must hold exactly the stored messages before its own.
async fn concurrent_turns_see_exactly_what_was_committed_before(replica_count: usize) {
    let fake = FakeLlm::start().await;
    let replicas = replicas(&fake, replica_count).await;
    let conversation = send_ok(&replicas[0], "alice", "", "opening")
        .await
        .conversation_id();
    for (index, replica) in replicas.iter().enumerate() {
        send_ok(replica, "alice", &conversation, &format!("warm-up {index}")).await;
    }

    let replicas = std::sync::Arc::new(replicas);
    let mut turns = JoinSet::new();
    for turn in 0..CONCURRENT_TURNS {
        let (replicas, conversation) = (replicas.clone(), conversation.clone());
        turns.spawn(async move {
            let replica = &replicas[turn % replicas.len()];
            send(
                replica,
                "alice",
                &conversation,
                &format!("concurrent {turn}"),
            )
            .await
        });
    }
    while let Some(turn) = turns.join_next().await {
        let turn = turn
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|status| panic!("refused: {status:?}"));
        assert!(turn.error.is_none(), "{:?}", turn.error);
    }

    let stored = replicas[0].db.messages(&conversation).await;
    let turn_count = 1 + replica_count + CONCURRENT_TURNS;
    assert_eq!(
        stored.len(),
        2 * turn_count,
        "every message and reply stored"
    );
    let sequences: Vec<i64> = stored.iter().map(|m| m.sequence).collect();
    let expected: Vec<i64> = (1..=i64::try_from(stored.len()).unwrap()).collect();
    assert_eq!(sequences, expected, "one place each, with no gap");
    let transcript: Vec<(String, String)> = stored
        .iter()
        .map(|m| (m.role.clone(), m.content.clone()))
        .collect();

    let requests = fake.received();
    assert_eq!(requests.len(), turn_count, "one model request per turn");
    for request in requests {
        let sent = request.messages();
        let own = sent.last().unwrap_or_else(|| panic!("an empty request"));
        let place = transcript
            .iter()
            .position(|message| message == own)
            .unwrap_or_else(|| panic!("{own:?} was not stored"));
        assert_eq!(
            sent,
            transcript[..=place],
            "the context of {own:?} is not what was committed before it"
        );
    }

    // Every replica lists the conversation in that same order.
    for replica in replicas.iter() {
        let listed: Vec<(String, String)> = replica
            .conversations()
            .get_conversation(replica.request(
                "alice",
                GetConversationRequest {
                    conversation_id: conversation.clone(),
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_inner()
            .messages
            .into_iter()
            .map(|m| (m.role().as_str_name().to_owned(), m.content))
            .collect();
        let expected: Vec<(String, String)> = transcript
            .iter()
            .map(|(role, content)| (format!("ROLE_{}", role.to_uppercase()), content.clone()))
            .collect();
        assert_eq!(listed, expected);
    }

    // The first replica's warm-up came straight after its own turn, so its context came from
    // memory; another replica's warm-up was its first sight of the conversation, so it came
    // from the database. Both ways were checked above.
    let mut metrics = String::new();
    for replica in replicas.iter() {
        metrics.push_str(&replica.scrape_metrics().await);
    }
    assert!(metrics.contains(r#"source="memory""#), "{metrics}");
    if replica_count > 1 {
        assert!(metrics.contains(r#"source="database""#), "{metrics}");
    }
}

// Several threads, so that the turns really run at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_turns_on_one_replica_see_exactly_what_came_before() {
    concurrent_turns_see_exactly_what_was_committed_before(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_turns_across_three_replicas_see_exactly_what_came_before() {
    concurrent_turns_see_exactly_what_was_committed_before(3).await;
}
