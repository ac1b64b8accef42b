//! One order per conversation, decided when a message is committed, whichever replica writes it:
//! a turn's model sees exactly the messages committed before its own, and every listing shows
//! them in that order.

use std::sync::Arc;

use chat_service::api::proto::{
    GetConversationRequest, SendMessageRequest, send_message_response::Event,
};
use tokio::task::JoinSet;

use super::support::{FakeLlm, TestDatabase, process::ServiceProcess};

/// Each replica's model context holds up to this many messages: more than any test here writes,
/// so a context is the whole conversation before its message.
const HISTORY: &str = "64";
const CONCURRENT_TURNS: usize = 12;

/// `count` replicas of the service, each a process of its own with its own memory of
/// conversations, on one database and one model.
async fn replicas(database: &TestDatabase, fake: &FakeLlm, count: usize) -> Vec<ServiceProcess> {
    let model = fake.base_url();
    let settings = [
        ("CHAT_LLM_BASE_URL", model.as_str()),
        ("CHAT_LLM_MODEL", "fake-model"),
        ("CHAT_HISTORY_MESSAGES", HISTORY),
        // One user takes many turns at once here, more than a real client may.
        ("CHAT_MAX_STREAMS_PER_USER", "1000"),
        ("CHAT_USER_REQUESTS_PER_SECOND", "1000"),
        ("CHAT_USER_REQUEST_BURST", "1000"),
    ];
    let mut all = Vec::new();
    for _ in 0..count {
        all.push(
            ServiceProcess::start(env!("CARGO_BIN_EXE_chat-service"), database, &settings).await,
        );
    }
    all
}

/// One turn of alice's, to its end; the conversation's id.
async fn turn(replica: &ServiceProcess, conversation: &str, content: &str) -> String {
    let request = replica.request(
        "alice",
        SendMessageRequest {
            conversation_id: conversation.to_owned(),
            content: content.to_owned(),
            ..Default::default()
        },
    );
    let mut stream = replica
        .chat()
        .send_message(request)
        .await
        .unwrap_or_else(|e| panic!("refused: {e:?}"))
        .into_inner();
    let (mut id, mut completed) = (String::new(), false);
    while let Some(response) = stream
        .message()
        .await
        .unwrap_or_else(|e| panic!("{content:?} failed: {e:?}"))
    {
        match response.event {
            Some(Event::Accepted(accepted)) => id = accepted.conversation_id,
            Some(Event::Completed(_)) => completed = true,
            _ => {}
        }
    }
    assert!(completed, "{content:?} did not complete");
    id
}

/// Alice talks on every replica, one turn after another (so that each replica remembers the
/// conversation), then takes [`CONCURRENT_TURNS`] turns at once, spread over the replicas.
/// Afterwards every model request must hold exactly the stored messages before its own.
async fn concurrent_turns_see_exactly_what_was_committed_before(replica_count: usize) {
    let fake = FakeLlm::start().await;
    let database = TestDatabase::new().await;
    let replicas = replicas(&database, &fake, replica_count).await;
    let conversation = turn(&replicas[0], "", "opening").await;
    for (index, replica) in replicas.iter().enumerate() {
        turn(replica, &conversation, &format!("warm-up {index}")).await;
    }

    let replicas = Arc::new(replicas);
    let mut turns = JoinSet::new();
    for index in 0..CONCURRENT_TURNS {
        let (replicas, conversation) = (replicas.clone(), conversation.clone());
        turns.spawn(async move {
            let replica = &replicas[index % replicas.len()];
            turn(replica, &conversation, &format!("concurrent {index}")).await
        });
    }
    while let Some(finished) = turns.join_next().await {
        finished.unwrap_or_else(|e| panic!("{e}"));
    }

    let stored = database.messages(&conversation).await;
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

#[tokio::test]
async fn concurrent_turns_on_one_replica_see_exactly_what_came_before() {
    concurrent_turns_see_exactly_what_was_committed_before(1).await;
}

#[tokio::test]
async fn concurrent_turns_across_three_replicas_see_exactly_what_came_before() {
    concurrent_turns_see_exactly_what_was_committed_before(3).await;
}
