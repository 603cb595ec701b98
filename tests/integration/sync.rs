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

    // Delivery receipts (from the syncs above) are flushed by the receipts
    // pipeline on its own clock and may land anywhere in between: left out.
    let timed = |event: &&Value| event["type"] != "receipt.delivered";
    let (carol_events, carol_cursor) = sync_all(&carol, Some(carol_cursor), 100).await;
    let carol_view: Vec<String> = carol_events.iter().filter(timed).map(describe).collect();
    assert_eq!(
        carol_view,
        vec![
            format!("member \"{group}\" \"{}\" \"joined\"", carol.user_id),
            format!("\"message.new\" \"{group}\" 2"),
            format!("member \"{group}\" \"{}\" \"left\"", carol.user_id),
        ]
    );
    let (bob_events, bob_cursor) = sync_all(&bob, Some(bob_cursor), 100).await;
    assert_eq!(bob_events.iter().filter(timed).count(), 4, "{bob_events:?}");
    // Let the last delivered receipts land before checking "caught up".
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (_, bob_cursor) = sync_all(&bob, Some(bob_cursor), 100).await;
    let (_, carol_cursor) = sync_all(&carol, Some(carol_cursor), 100).await;
    // Caught up: nothing new.
    let (_, page) = bob.get(&format!("/v1/sync?cursor={bob_cursor}")).await;
    assert_eq!((page["events"].clone(), page["hasMore"].clone()), (json!([]), json!(false)));
    let (_, page) = carol.get(&format!("/v1/sync?cursor={carol_cursor}")).await;
    assert_eq!(page["events"], json!([]));
}

/// Replaces every ID (`u_…`, `c_…`, `m_…`, `d_…`) by its order of first
/// appearance, so that two servers' histories can be compared.
fn normalized(events: &[Value]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    events
        .iter()
        .map(|event| {
            let mut event = event.clone();
            event.as_object_mut().unwrap().remove("cursor");
            if let Some(message) = event.get_mut("message").and_then(Value::as_object_mut) {
                message.remove("ts");
            }
            let text = event.to_string();
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(at) = rest.find('"') {
                out.push_str(&rest[..=at]);
                rest = &rest[at + 1..];
                let end = rest.find('"').unwrap_or(rest.len());
                let token = &rest[..end];
                if ["u_", "c_", "m_", "d_"].iter().any(|prefix| token.starts_with(prefix)) && token.len() == 22 {
                    let position = seen.iter().position(|id| id == token).unwrap_or_else(|| {
                        seen.push(token.to_string());
                        seen.len() - 1
                    });
                    out.push_str(&format!("id{position}"));
                } else {
                    out.push_str(token);
                }
                out.push('"');
                rest = rest.get(end + 1..).unwrap_or("");
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// The events grouped by conversation (in order of first appearance), each
/// conversation's in sync order. Two servers interleave conversations of
/// different partitions by time, and events of one millisecond may come
/// in either order; within a conversation the order is the log's.
fn by_conversation(events: &[Value]) -> Vec<Value> {
    let conversation_of = |event: &Value| event["conversationId"].as_str().or_else(|| event["message"]["conversationId"].as_str()).unwrap_or("").to_string();
    let mut order: Vec<String> = Vec::new();
    for event in events {
        let conversation = conversation_of(event);
        if !order.contains(&conversation) {
            order.push(conversation);
        }
    }
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|event| order.iter().position(|conversation| *conversation == conversation_of(event)));
    sorted
}

/// One history, written to a server whose fanout calls conversations above
/// `large_above` members large.
async fn history_under_threshold(large_above: usize) -> (Vec<Value>, Vec<Value>, TestServer, Client, [tempfile::TempDir; 2]) {
    let definitions = tempfile::tempdir().unwrap();
    std::fs::write(
        definitions.path().join("fanout.toml"),
        format!("version = 1\n[[pipeline]]\nname = \"fanout\"\nsource = \"log\"\n[[pipeline.stage]]\nkind = \"fanout\"\nlarge_conversation_members = {large_above}\n"),
    )
    .unwrap();
    let temporary = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(temporary.path());
    config.pipelines_dir = Some(definitions.path().to_path_buf());
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let dave = server.user("dave").await;
    // A group that grows past the threshold, shrinks, and a dm that stays small.
    let group = alice.conversation("group", &[&bob]).await;
    let dm = alice.conversation("dm", &[&bob]).await;
    for index in 0..4 {
        alice.say(&group, &format!("g-small-{index}"), "while small").await;
        bob.say(&dm, &format!("d-{index}"), "dm").await;
    }
    alice.post(&format!("/v1/conversations/{group}/members"), json!({"userIds": [carol.user_id, dave.user_id]})).await;
    for index in 0..4 {
        let message = carol.say(&group, &format!("g-large-{index}"), "while large").await;
        bob.post(&format!("/v1/conversations/{group}/read"), json!({"lastReadMessageId": message["messageId"]})).await;
    }
    alice.delete(&format!("/v1/conversations/{group}/members/{}", dave.user_id)).await;
    alice.delete(&format!("/v1/conversations/{group}/members/{}", carol.user_id)).await;
    alice.say(&group, "g-small-again", "small again").await;
    let (bob_events, _) = sync_all(&bob, None, 1000).await;
    let (carol_events, _) = sync_all(&carol, None, 1000).await;
    (bob_events, carol_events, server, bob, [definitions, temporary])
}

#[tokio::test]
async fn sync_is_the_same_whatever_the_fanout_threshold() {
    let (bob_inboxed, carol_inboxed, _first, _, _first_dirs) = history_under_threshold(1_000).await;
    let (bob_scanned, carol_scanned, _second, bob, _second_dirs) = history_under_threshold(2).await;
    assert!(bob_inboxed.len() > 20, "{}", bob_inboxed.len());
    assert_eq!(normalized(&by_conversation(&bob_scanned)), normalized(&by_conversation(&bob_inboxed)), "bob's sync differs between thresholds");
    assert_eq!(normalized(&by_conversation(&carol_scanned)), normalized(&by_conversation(&carol_inboxed)), "carol's sync differs between thresholds");
    // Receipts are positions: bob read four times, sync serves his latest read once.
    let reads: Vec<&Value> = bob_scanned.iter().filter(|event| event["type"] == "receipt.read").collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["seq"], 8, "{reads:?}");
    // Paging across conversations keeps the order.
    let described: Vec<String> = bob_scanned.iter().map(describe).collect();
    for limit in [1, 2, 5] {
        let (paged, _) = sync_all(&bob, None, limit).await;
        assert_eq!(paged.iter().map(describe).collect::<Vec<_>>(), described, "page size {limit}");
    }
}

/// `historyVisibility`: in a `joined` group a new member reads only what
/// was sent since they joined; in a `shared` channel, everything. Groups
/// default to joined, channels to shared, and the objects say which.
#[tokio::test]
async fn history_visibility_decides_what_a_new_member_reads() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let (status, group) = alice.post("/v1/conversations", json!({"type": "group", "memberIds": [bob.user_id], "title": "g"})).await;
    assert_eq!(status, 201);
    assert_eq!(group["historyVisibility"], "joined");
    let group = group["conversationId"].as_str().unwrap().to_string();
    let (_, channel) = alice.post("/v1/conversations", json!({"type": "channel", "memberIds": [], "title": "c"})).await;
    assert_eq!(channel["historyVisibility"], "shared");
    let channel = channel["conversationId"].as_str().unwrap().to_string();
    let (status, body) = alice.post("/v1/conversations", json!({"type": "group", "memberIds": [], "historyVisibility": "everyone"})).await;
    assert_eq!(status, 400, "{body}");
    for conversation in [&group, &channel] {
        alice.say(conversation, &format!("{conversation}-1"), "before carol").await;
        alice.say(conversation, &format!("{conversation}-2"), "before carol too").await;
        alice.post(&format!("/v1/conversations/{conversation}/members"), json!({"userIds": [carol.user_id]})).await;
        alice.say(conversation, &format!("{conversation}-3"), "with carol").await;
    }
    let bodies =
        |messages: &Value| messages["messages"].as_array().unwrap().iter().map(|message| message["body"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let (_, page) = carol.get(&format!("/v1/conversations/{group}/messages")).await;
    assert_eq!(bodies(&page), vec!["with carol"]);
    assert_eq!(page["hasMore"], false);
    let (_, page) = bob.get(&format!("/v1/conversations/{group}/messages")).await;
    assert_eq!(bodies(&page), vec!["before carol", "before carol too", "with carol"]);
    let (_, page) = carol.get(&format!("/v1/conversations/{channel}/messages")).await;
    assert_eq!(bodies(&page), vec!["before carol", "before carol too", "with carol"]);
    let (_, list) = carol.get("/v1/conversations").await;
    let kinds: Vec<&str> = list["conversations"].as_array().unwrap().iter().map(|summary| summary["historyVisibility"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 2);
    assert!(kinds.contains(&"joined") && kinds.contains(&"shared"), "{list}");
}

/// A member who was removed reads nothing after their `left` event, and
/// what they read from before is shown as it was then: an edit made after
/// they left never reaches them, through sync or WebSocket replay. Added
/// back, they read again from then on.
#[tokio::test]
async fn former_members_see_nothing_after_they_left_not_even_later_edits() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.conversation("group", &[&bob]).await;
    let before = alice.say(&group, "b1", "the plan as it was").await;
    let message_id = before["messageId"].as_str().unwrap().to_string();
    let doomed = alice.say(&group, "b0", "to be deleted after bob left").await;
    alice.delete(&format!("/v1/conversations/{group}/members/{}", bob.user_id)).await;
    let (status, _) = alice.delete(&format!("/v1/messages/{}", doomed["messageId"].as_str().unwrap())).await;
    assert_eq!(status, 204);
    let (status, _) = alice.patch(&format!("/v1/messages/{message_id}"), json!({"body": "the secret new plan"})).await;
    assert_eq!(status, 200);
    alice.say(&group, "b2", "said after bob left").await;

    crate::harness::assert_error(&bob.get(&format!("/v1/conversations/{group}/messages")).await, 403, "forbidden");
    let (events, _) = sync_all(&bob, None, 100).await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(text.contains("the plan as it was"), "{text}");
    assert!(!text.contains("secret new plan") && !text.contains("said after bob left"), "{text}");
    assert!(!text.contains("to be deleted after bob left"), "a later delete is not undone: {text}");
    assert!(!text.contains("message.edit"), "{text}");
    let new = events.iter().find(|event| event["type"] == "message.new").unwrap();
    assert_eq!(new["message"]["edited"], false);
    assert_eq!(events.last().unwrap()["type"], "conversation.member", "sync stops at the left event");
    assert_eq!(events.last().unwrap()["change"], "left");

    // WebSocket replay from the start says the same.
    let start = confab_schemas::cursor::SyncCursor::start(3).encode();
    let mut ws = crate::ws::Ws::connect(&bob, Some(&start)).await;
    ws.send(json!({"type": "ping", "id": "end"})).await;
    let mut replayed = Vec::new();
    loop {
        let frame = ws.next_frame().await;
        if frame["type"] == "pong" {
            break;
        }
        replayed.push(frame);
    }
    let text = serde_json::to_string(&replayed).unwrap();
    assert!(text.contains("the plan as it was") && !text.contains("secret new plan") && !text.contains("said after bob left"), "{text}");

    // Added back: he reads what is sent from then on.
    alice.post(&format!("/v1/conversations/{group}/members"), json!({"userIds": [bob.user_id]})).await;
    alice.say(&group, "b3", "welcome back").await;
    let (events, _) = sync_all(&bob, None, 100).await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(text.contains("welcome back") && text.contains("the plan as it was"), "{text}");
    assert!(!text.contains("said after bob left") && !text.contains("secret new plan"), "{text}");
    let (_, page) = bob.get(&format!("/v1/conversations/{group}/messages")).await;
    let bodies: Vec<&str> = page["messages"].as_array().unwrap().iter().map(|message| message["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["welcome back"], "a joined group's pages start at the latest join");
}

/// In a `joined` group, an edit or delete of a message from before a
/// member joined does not reach them through sync: it would show the
/// message.
#[tokio::test]
async fn a_joined_member_does_not_see_edits_of_older_messages() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let carol = server.user("carol").await;
    let group = alice.conversation("group", &[]).await;
    let old = alice.say(&group, "old", "from before carol").await;
    let old_id = old["messageId"].as_str().unwrap().to_string();
    alice.post(&format!("/v1/conversations/{group}/members"), json!({"userIds": [carol.user_id]})).await;
    alice.patch(&format!("/v1/messages/{old_id}"), json!({"body": "edited while carol is here"})).await;
    alice.say(&group, "new", "for carol too").await;
    let (events, _) = sync_all(&carol, None, 100).await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(text.contains("for carol too"), "{text}");
    assert!(!text.contains("from before carol") && !text.contains("edited while carol is here"), "{text}");
}
