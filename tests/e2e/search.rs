//! SearchConversations: PostgreSQL full-text search over the caller's own messages, best match
//! first, with snippets and pages bound to the query.

use std::collections::HashSet;

use chat_service::api::proto::{
    ConversationMatch, GetConversationRequest, SearchConversationsRequest,
};
use tonic::{Code, Status};

use super::{
    assert_bad_field,
    send_message::send_ok,
    support::{FakeLlm, Script, TestApp, app::without_user_limits},
};

/// One page of `user`'s results for `query`.
async fn search_page(
    app: &TestApp,
    user: &str,
    query: &str,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<ConversationMatch>, String), Status> {
    let request = app.request(
        user,
        SearchConversationsRequest {
            query: query.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        },
    );
    let page = app
        .conversations()
        .search_conversations(request)
        .await?
        .into_inner();
    Ok((page.matches, page.next_page_token))
}

/// The first page of `user`'s results for `query`.
async fn search(app: &TestApp, user: &str, query: &str) -> Vec<ConversationMatch> {
    search_page(app, user, query, 0, "")
        .await
        .unwrap_or_else(|e| panic!("{query:?}: {e:?}"))
        .0
}

/// The titles of the conversations found, in the order given.
fn titles(matches: &[ConversationMatch]) -> Vec<String> {
    matches
        .iter()
        .map(|m| m.conversation.clone().unwrap_or_default().title)
        .collect()
}

/// The snippet's highlighted words, in order.
fn highlighted(found: &ConversationMatch) -> Vec<String> {
    found
        .snippet
        .iter()
        .filter(|part| part.highlighted)
        .map(|part| part.text.clone())
        .collect()
}

/// Starts a conversation for `user` titled `title`: `said` by the user, `replied` by the model.
/// Returns its id.
async fn talk(
    app: &TestApp,
    fake: &FakeLlm,
    user: &str,
    title: &str,
    said: &str,
    replied: &str,
) -> String {
    let conversation = app.create_conversation(user, title).await;
    fake.script([Script::reply(&[replied])]);
    let turn = send_ok(app, user, &conversation, said).await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    conversation
}

#[tokio::test]
async fn search_finds_only_the_callers_conversations_best_first_with_the_matching_message() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, without_user_limits).await;
    let once = talk(
        &app,
        &fake,
        "alice",
        "once",
        "We flew to Lisbon in May and stayed near the river for a week or so",
        "Noted: a week by the river.",
    )
    .await;
    talk(
        &app,
        &fake,
        "alice",
        "thrice",
        "Lisbon, Lisbon, Lisbon!",
        "You like Lisbon.",
    )
    .await;
    talk(
        &app,
        &fake,
        "alice",
        "german",
        "Die Straßenbahn fährt durch die Altstadt",
        "Linie 28 ist berühmt.",
    )
    .await;
    talk(
        &app,
        &fake,
        "alice",
        "russian",
        "Поезд в Лиссабон уходит утром",
        "Хорошей поездки!",
    )
    .await;
    talk(
        &app,
        &fake,
        "alice",
        "madrid",
        "Madrid in winter",
        "Cold but sunny.",
    )
    .await;
    // Bob's words: some of alice's, and one only he wrote.
    talk(
        &app,
        &fake,
        "bob",
        "bob's",
        "Lisbon trams and a zebra crossing",
        "Mind the zebra.",
    )
    .await;

    // Best first: the conversation that says it most, then the one that says it once; never
    // bob's.
    let found = search(&app, "alice", "lisbon").await;
    assert_eq!(titles(&found), ["thrice", "once"]);
    // The matching message is named, and its words are highlighted as written.
    let first = &found[1];
    assert_eq!(highlighted(first), ["Lisbon"]);
    let snippet: String = first.snippet.iter().map(|p| p.text.as_str()).collect();
    assert!(snippet.contains("flew to Lisbon in May"), "{snippet}");
    let conversation = app
        .conversations()
        .get_conversation(app.request(
            "alice",
            GetConversationRequest {
                conversation_id: once.clone(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let message = conversation
        .messages
        .iter()
        .find(|m| m.id == first.message_id)
        .unwrap_or_else(|| panic!("{} is not a message of {once}", first.message_id));
    assert!(message.content.starts_with("We flew to Lisbon"));
    // In the reply of the "thrice" conversation too, but one message stands for it.
    assert_eq!(highlighted(&found[0]), ["Lisbon", "Lisbon", "Lisbon"]);

    // Words of other languages match as written, lower-cased.
    assert_eq!(
        titles(&search(&app, "alice", "straßenbahn").await),
        ["german"]
    );
    assert_eq!(
        titles(&search(&app, "alice", "ЛИССАБОН").await),
        ["russian"]
    );
    assert_eq!(titles(&search(&app, "alice", "berühmt").await), ["german"]);

    // A web search box's syntax: a phrase, `or`, and a word left out.
    assert_eq!(
        titles(&search(&app, "alice", "\"near the river\"").await),
        ["once"]
    );
    assert!(search(&app, "alice", "\"river the near\"").await.is_empty());
    let either = titles(&search(&app, "alice", "madrid or straßenbahn").await);
    assert_eq!(
        either.iter().collect::<HashSet<_>>(),
        HashSet::from([&"madrid".to_owned(), &"german".to_owned()])
    );
    assert_eq!(
        titles(&search(&app, "alice", "lisbon -river").await),
        ["thrice"]
    );

    // Words only bob wrote find nothing for alice, and everything for bob.
    assert!(search(&app, "alice", "zebra").await.is_empty());
    assert!(search(&app, "alice", "zebra or crossing").await.is_empty());
    assert_eq!(titles(&search(&app, "bob", "zebra").await), ["bob's"]);
    assert_eq!(titles(&search(&app, "bob", "lisbon").await), ["bob's"]);

    // Nothing but punctuation finds nothing, and is no error; nor do quotes and backslashes.
    assert!(search(&app, "alice", "!!! ???").await.is_empty());
    assert!(search(&app, "alice", r"o'clock \' -- \").await.is_empty());
}

#[tokio::test]
async fn pages_of_results_hold_every_match_once_and_only_for_their_query() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, without_user_limits).await;
    let mut expected = HashSet::new();
    for n in 0..25 {
        // Some say it more often than others, so that ranks differ and tie.
        let said = format!("harbour {}number {n}", "harbour ".repeat(n % 3));
        expected.insert(talk(&app, &fake, "alice", &format!("c{n}"), &said, "ok").await);
    }

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    let mut tokens = Vec::new();
    loop {
        let (matches, next) = search_page(&app, "alice", "harbour", 10, &token)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        sizes.push(matches.len());
        seen.extend(
            matches
                .into_iter()
                .map(|m| m.conversation.unwrap_or_default().id),
        );
        if next.is_empty() {
            break;
        }
        tokens.push(next.clone());
        token = next;
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(seen.len(), 25);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), expected);

    // A token is good only for the query and the user it was given for.
    let token = &tokens[0];
    let refused = |result: Result<(Vec<ConversationMatch>, String), Status>| {
        let status = result
            .err()
            .unwrap_or_else(|| panic!("a foreign token was accepted"));
        assert_bad_field(&status, "page_token");
    };
    refused(search_page(&app, "alice", "harbour or number", 10, token).await);
    refused(search_page(&app, "bob", "harbour", 10, token).await);
    refused(search_page(&app, "alice", "harbour", 10, "forged").await);
}

#[tokio::test]
async fn bad_queries_are_invalid_arguments() {
    let app = TestApp::spawn().await;
    for query in ["", "   ", "line\nbreak", &"x".repeat(501)] {
        let status = search_page(&app, "alice", query, 0, "")
            .await
            .err()
            .unwrap_or_else(|| panic!("{query:?} was accepted"));
        assert_bad_field(&status, "query");
    }
    let status = search_page(&app, "alice", "words", -1, "")
        .await
        .err()
        .unwrap_or_else(|| panic!("a negative page size was accepted"));
    assert_bad_field(&status, "page_size");
    // Without a token, nobody's search runs.
    let unauthenticated = app
        .conversations()
        .search_conversations(SearchConversationsRequest {
            query: "words".to_owned(),
            ..Default::default()
        })
        .await
        .err()
        .map(|status| status.code());
    assert_eq!(unauthenticated, Some(Code::Unauthenticated));
}

#[tokio::test]
async fn a_stemming_configuration_matches_other_forms_of_a_word() {
    let fake = FakeLlm::start().await;
    let english = TestApp::with_fake_llm(&fake, |config| {
        config.database.search_config =
            chat_service::store::SearchConfig::parse("english").unwrap_or_else(|e| panic!("{e}"));
    })
    .await;
    talk(
        &english,
        &fake,
        "alice",
        "runs",
        "She runs every morning",
        "Good habit.",
    )
    .await;
    assert_eq!(
        titles(&search(&english, "alice", "running").await),
        ["runs"]
    );
    // Stop words carry no meaning there.
    assert_eq!(
        titles(&search(&english, "alice", "the morning").await),
        ["runs"]
    );

    // The default, `simple`, matches words as written.
    let simple = TestApp::with_fake_llm(&fake, |_| {}).await;
    talk(
        &simple,
        &fake,
        "alice",
        "runs",
        "She runs every morning",
        "Good habit.",
    )
    .await;
    assert!(search(&simple, "alice", "running").await.is_empty());
    assert_eq!(titles(&search(&simple, "alice", "runs").await), ["runs"]);

    // The stored messages are indexed anew in another configuration as README says: their text
    // written again by a session that names it. `simple` queries then meet English stems.
    assert!(search(&simple, "alice", "run").await.is_empty());
    simple
        .db
        .run_sql("SET chat.search_config = 'english'; UPDATE messages SET content = content")
        .await;
    assert_eq!(titles(&search(&simple, "alice", "run").await), ["runs"]);
}

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct Found {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    message_id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    snippet: String,
}

/// What one of the two ways in finds for `subject`'s `query`, all pages in one.
async fn found_by(
    app: &TestApp,
    statement: &'static str,
    subject: &str,
    query: &str,
) -> Vec<Found> {
    use diesel::sql_types::{BigInt, Float4, Nullable, Text, Uuid as SqlUuid};
    use diesel_async::RunQueryDsl;
    let mut conn = app.db.connect().await;
    let subject_id = app
        .db
        .count(&format!(
            "SELECT count(*) AS n FROM users WHERE subject = '{subject}'"
        ))
        .await;
    assert_eq!(subject_id, 1, "{subject} is a user");
    diesel::sql_query(statement.replace("$1", "(SELECT id FROM users WHERE subject = $1)"))
        .bind::<Text, _>(subject)
        .bind::<Text, _>(query)
        .bind::<Nullable<Float4>, _>(None::<f32>)
        .bind::<Nullable<SqlUuid>, _>(None::<uuid::Uuid>)
        .bind::<BigInt, _>(1000)
        .load::<Found>(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn both_ways_in_find_the_same_matches_and_only_the_callers() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, without_user_limits).await;
    for n in 0..6 {
        let said = format!("harbour {}boats {n}", "harbour ".repeat(n % 3));
        talk(
            &app,
            &fake,
            "alice",
            &format!("c{n}"),
            &said,
            "A harbour reply",
        )
        .await;
    }
    talk(&app, &fake, "bob", "bob's", "harbour boats", "harbour").await;
    for query in [
        "harbour",
        "boats -harbour",
        "\"harbour boats\"",
        "harbour or nothing",
    ] {
        let from_the_index = found_by(
            &app,
            chat_service::store::SEARCH_FROM_THE_INDEX,
            "alice",
            query,
        )
        .await;
        let from_the_user = found_by(
            &app,
            chat_service::store::SEARCH_FROM_THE_USER,
            "alice",
            query,
        )
        .await;
        assert_eq!(from_the_index, from_the_user, "{query}");
        // What the service answered is what both find.
        let answered: Vec<String> = search(&app, "alice", query)
            .await
            .into_iter()
            .map(|m| m.message_id)
            .collect();
        let expected: Vec<String> = from_the_user
            .iter()
            .map(|f| f.message_id.to_string())
            .collect();
        assert_eq!(answered, expected, "{query}");
    }
    assert_eq!(
        found_by(
            &app,
            chat_service::store::SEARCH_FROM_THE_USER,
            "alice",
            "harbour"
        )
        .await
        .len(),
        6
    );
    let bobs = found_by(
        &app,
        chat_service::store::SEARCH_FROM_THE_USER,
        "bob",
        "harbour",
    )
    .await;
    assert_eq!(bobs.len(), 1);
    let bobs = found_by(
        &app,
        chat_service::store::SEARCH_FROM_THE_INDEX,
        "bob",
        "harbour",
    )
    .await;
    assert_eq!(bobs.len(), 1);
}
