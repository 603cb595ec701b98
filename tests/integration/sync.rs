//! `/v1/sync`: every event once, in order, whatever the page size;
//! membership bounds what a user sees.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::harness::{assert_error, Client, TestServer};

/// Syncs from `cursor` with pages of `limit` until caught up.
async fn sync_all(client: &Client, cursor: Option<String>, limit: usize) -> (Vec<Value>, String) {
    let mut events = Vec::new();
    let mut cursor = cursor;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/sync?limit={limit}&cursor={cursor}"),
            None => format!("/v1/sync?limit={limit}"),
        };
        let (status, page) = client.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let batch = page["events"].as_array().unwrap().clone();
        assert!(batch.len() <= limit);
        for event in &batch {
            assert!(event["cursor"].is_string(), "every durable event carries its cursor");
        }
        events.extend(batch);
        cursor = Some(page["nextCursor"].as_str().unwrap().to_string());
        if page["hasMore"] == false {
            return (events, cursor.unwrap());
        }
    }
}

fn describe(event: &Value) -> String {
    match event["type"].as_str().unwrap() {
        "message.new" | "message.edit" => format!("{} {} {}", event["type"], event["message"]["conversationId"], event["message"]["seq"]),
        "message.delete" => format!("delete {} {}", event["conversationId"], event["seq"]),
        "receipt.read" => format!("read {} {} {}", event["conversationId"], event["userId"], event["seq"]),
        "conversation.member" => format!("member {} {} {}", event["conversationId"], event["userId"], event["change"]),
        other => panic!("unexpected event {other}"),
    }
}

#[tokio::test]
async fn paging_through_sync_sees_every_event_once_in_order() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let group = bob.conversation("group", &[&alice, &carol]).await;
    let mut last = Value::Null;
    for index in 0..30 {
        let conversation = if index % 3 == 0 { &group } else { &dm };
        last = alice.say(conversation, &format!("s{index}"), &format!("text {index}")).await;
        if index % 7 == 0 {
            bob.say(&group, &format!("b{index}"), "reply").await;
        }
    }
    let id = last["messageId"].as_str().unwrap();
    alice.patch(&format!("/v1/messages/{id}"), json!({"body": "edited"})).await;
    alice.delete(&format!("/v1/messages/{id}")).await;
    bob.post(&format!("/v1/conversations/{dm}/read"), json!({"lastReadMessageId": id})).await;

    let (everything, _) = sync_all(&bob, None, 1000).await;
    let described: Vec<String> = everything.iter().map(describe).collect();
    assert_eq!(described.iter().collect::<HashSet<_>>().len(), described.len(), "no event twice");
    let types: HashSet<&str> = everything.iter().map(|event| event["type"].as_str().unwrap()).collect();
    assert_eq!(types, HashSet::from(["message.new", "message.edit", "message.delete", "receipt.read", "conversation.member"]));
    // Within a conversation, messages come in seq order.
    for conversation in [&dm, &group] {
        let seqs: Vec<u64> = everything
            .iter()
            .filter(|event| event["type"] == "message.new" && event["message"]["conversationId"] == conversation.as_str())
            .map(|event| event["message"]["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }
    for limit in [1, 2, 3, 7] {
        let (paged, _) = sync_all(&bob, None, limit).await;
        assert_eq!(paged.iter().map(describe).collect::<Vec<_>>(), described, "page size {limit}");
    }
    // Resuming from any event's own cursor yields exactly the events after it.
    for position in [0, 1, 5, everything.len() - 1] {
        let cursor = everything[position]["cursor"].as_str().unwrap().to_string();
        let (rest, _) = sync_all(&bob, Some(cursor), 4).await;
        assert_eq!(rest.iter().map(describe).collect::<Vec<_>>(), described[position + 1..].to_vec(), "resume after {position}");
    }
    assert_error(&bob.get("/v1/sync?cursor=garbage").await, 400, "bad_request");
}

#[tokio::test]
async fn sync_from_the_latest_cursor_sees_only_new_events_and_respects_membership() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let group = alice.conversation("group", &[&bob]).await;
    alice.say(&group, "before-carol", "carol must not see this").await;
    let (_, carol_cursor) = sync_all(&carol, None, 100).await;
    let (_, bob_cursor) = sync_all(&bob, None, 100).await;

    alice.post(&format!("/v1/conversations/{group}/members"), json!({"userIds": [carol.user_id]})).await;
    alice.say(&group, "with-carol", "hello carol").await;
    alice.delete(&format!("/v1/conversations/{group}/members/{}", carol.user_id)).await;
    alice.say(&group, "after-carol", "carol is gone").await;

    let (carol_events, carol_cursor) = sync_all(&carol, Some(carol_cursor), 100).await;
    let carol_view: Vec<String> = carol_events.iter().map(describe).collect();
    assert_eq!(
        carol_view,
        vec![
            format!("member \"{group}\" \"{}\" \"joined\"", carol.user_id),
            format!("\"message.new\" \"{group}\" 2"),
            format!("member \"{group}\" \"{}\" \"left\"", carol.user_id),
        ]
    );
    let (bob_events, bob_cursor) = sync_all(&bob, Some(bob_cursor), 100).await;
    assert_eq!(bob_events.len(), 4, "{bob_events:?}");
    // Caught up: nothing new.
    let (_, page) = bob.get(&format!("/v1/sync?cursor={bob_cursor}")).await;
    assert_eq!((page["events"].clone(), page["hasMore"].clone()), (json!([]), json!(false)));
    let (_, page) = carol.get(&format!("/v1/sync?cursor={carol_cursor}")).await;
    assert_eq!(page["events"], json!([]));
}
