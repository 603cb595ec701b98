//! Sending, idempotency, validation, history pages, edits and deletes.

use serde_json::json;

use crate::harness::{assert_error, TestServer};

#[tokio::test]
async fn a_retry_with_the_same_client_msg_id_returns_the_original() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let first = alice.say(&dm, "retry-1", "hello").await;
    assert_eq!(first["seq"], 1);
    assert_eq!(first["senderId"], alice.user_id.as_str());
    assert_eq!(first["senderDeviceId"], alice.device_id.as_str());
    assert_eq!((first["edited"].clone(), first["deleted"].clone()), (json!(false), json!(false)));
    assert_eq!(first["attachments"], json!([]));
    // Even with a different body, a retry is the original message.
    let (status, again) = alice.post("/v1/messages", json!({"conversationId": dm, "clientMsgId": "retry-1", "body": "hello!!"})).await;
    assert_eq!(status, 200);
    assert_eq!(again, first);
    // Concurrent retries create exactly one message.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let alice = alice.clone();
        let dm = dm.clone();
        tasks.push(tokio::spawn(async move { alice.post("/v1/messages", json!({"conversationId": dm, "clientMsgId": "burst", "body": "once"})).await }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for task in tasks {
        let (status, message) = task.await.unwrap();
        assert!(status == 201 || status == 200, "{status} {message}");
        created += usize::from(status == 201);
        ids.insert(message["messageId"].as_str().unwrap().to_string());
    }
    assert_eq!((created, ids.len()), (1, 1));
    // The same clientMsgId from another user is another message.
    let from_bob = bob.say(&dm, "retry-1", "hi").await;
    assert_ne!(from_bob["messageId"], first["messageId"]);
    assert_eq!(alice.all_messages(&dm).await.len(), 3);
}

#[tokio::test]
async fn every_bad_field_of_a_send_is_refused_with_the_right_status() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let group = alice.conversation("group", &[]).await;
    let ok_body = "é".repeat(8192); // 16384 bytes exactly: allowed
    let (status, _) = alice.post("/v1/messages", json!({"conversationId": group, "clientMsgId": "max", "body": ok_body})).await;
    assert_eq!(status, 201);
    let cases = [
        (json!({"conversationId": group, "clientMsgId": "a", "body": ""}), 400, "`body`"),
        (json!({"conversationId": group, "clientMsgId": "a", "body": "x".repeat(16_385)}), 413, "`body`"),
        (json!({"conversationId": group, "clientMsgId": "a"}), 400, "`body`"),
        (json!({"conversationId": group, "clientMsgId": "a", "body": 12}), 400, "`body`"),
        (json!({"conversationId": group, "body": "x"}), 400, "`clientMsgId`"),
        (json!({"conversationId": group, "clientMsgId": "", "body": "x"}), 400, "`clientMsgId`"),
        (json!({"conversationId": group, "clientMsgId": "k".repeat(129), "body": "x"}), 400, "`clientMsgId`"),
        (json!({"clientMsgId": "a", "body": "x"}), 400, "`conversationId`"),
        (json!({"conversationId": group, "clientMsgId": "a", "body": "x", "attachments": "no"}), 400, "`attachments`"),
        (json!({"conversationId": group, "clientMsgId": "a", "body": "x", "attachments": [1]}), 400, "`attachments`"),
        (json!({"conversationId": group, "clientMsgId": "a", "body": "x", "attachments": [{"k": "v".repeat(5000)}]}), 413, "`attachments`"),
    ];
    for (request, status, field) in cases {
        let code = if status == 413 { "too_large" } else { "bad_request" };
        let message = assert_error(&alice.post("/v1/messages", request.clone()).await, status, code);
        assert!(message.contains(field), "{request} -> {message}");
    }
    // Invalid UTF-8 in the JSON text is refused, not stored.
    let mut raw = format!(r#"{{"conversationId": "{group}", "clientMsgId": "utf", "body": "a"#).into_bytes();
    raw.extend_from_slice(&[0xff, 0xfe]);
    raw.extend_from_slice(br#""}"#);
    assert_error(&alice.post_raw("/v1/messages", raw).await, 400, "bad_request");
    assert_error(&alice.post("/v1/messages", json!({"conversationId": "c_nope", "clientMsgId": "a", "body": "x"})).await, 404, "not_found");
    // Nothing bad was stored, and attachments round-trip.
    let (status, with_file) = alice
        .post("/v1/messages", json!({"conversationId": group, "clientMsgId": "file", "body": "see", "attachments": [{"url": "s3://b/k", "mime": "image/png"}]}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(with_file["attachments"], json!([{"url": "s3://b/k", "mime": "image/png"}]));
    assert_eq!(alice.all_messages(&group).await.len(), 2);
}

#[tokio::test]
async fn history_pages_cover_every_edge() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let group = alice.conversation("group", &[]).await;
    let empty = alice.get(&format!("/v1/conversations/{group}/messages")).await;
    assert_eq!(empty, (200, json!({"messages": [], "hasMore": false})));
    for index in 1..=250 {
        alice.say(&group, &format!("c{index}"), &format!("message {index}")).await;
    }
    let seqs = |body: &serde_json::Value| body["messages"].as_array().unwrap().iter().map(|message| message["seq"].as_u64().unwrap()).collect::<Vec<_>>();
    let (_, newest) = alice.get(&format!("/v1/conversations/{group}/messages")).await;
    assert_eq!(seqs(&newest), (201..=250).collect::<Vec<_>>(), "default: the 50 newest, ascending");
    assert_eq!(newest["hasMore"], true);
    let (_, page) = alice.get(&format!("/v1/conversations/{group}/messages?before=201&limit=200")).await;
    assert_eq!(seqs(&page), (1..=200).collect::<Vec<_>>());
    assert_eq!(page["hasMore"], false);
    let (_, page) = alice.get(&format!("/v1/conversations/{group}/messages?before=202&limit=200")).await;
    assert_eq!(seqs(&page), (2..=201).collect::<Vec<_>>());
    assert_eq!(page["hasMore"], true);
    let (_, page) = alice.get(&format!("/v1/conversations/{group}/messages?before=2")).await;
    assert_eq!((seqs(&page), page["hasMore"].clone()), (vec![1], json!(false)));
    let (_, page) = alice.get(&format!("/v1/conversations/{group}/messages?before=1")).await;
    assert_eq!((seqs(&page), page["hasMore"].clone()), (vec![], json!(false)));
    let (_, page) = alice.get(&format!("/v1/conversations/{group}/messages?before=0")).await;
    assert_eq!(seqs(&page), Vec::<u64>::new());
    let (_, page) = alice.get(&format!("/v1/conversations/{group}/messages?before=9999&limit=1")).await;
    assert_eq!((seqs(&page), page["hasMore"].clone()), (vec![250], json!(true)));
    for bad in ["limit=0", "limit=201", "limit=-1", "limit=x", "before=-5", "before=1.5"] {
        let message = assert_error(&alice.get(&format!("/v1/conversations/{group}/messages?{bad}")).await, 400, "bad_request");
        let field = bad.split('=').next().unwrap();
        assert!(message.contains(&format!("`{field}`")), "{bad} -> {message}");
    }
    let all = alice.all_messages(&group).await;
    assert_eq!(all.iter().map(|message| message["seq"].as_u64().unwrap()).collect::<Vec<_>>(), (1..=250).collect::<Vec<_>>());
    assert_eq!(all[99]["body"], "message 100");
}

#[tokio::test]
async fn edits_and_deletes_follow_their_permissions() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let group = alice.conversation("group", &[&bob]).await;
    let from_bob = bob.say(&group, "b1", "typo").await;
    let id = from_bob["messageId"].as_str().unwrap();

    let (status, edited) = bob.patch(&format!("/v1/messages/{id}"), json!({"body": "fixed"})).await;
    assert_eq!(status, 200);
    assert_eq!((edited["body"].clone(), edited["edited"].clone(), edited["seq"].clone()), (json!("fixed"), json!(true), json!(1)));
    assert_error(&alice.patch(&format!("/v1/messages/{id}"), json!({"body": "not mine"})).await, 403, "forbidden");
    assert_error(&carol.patch(&format!("/v1/messages/{id}"), json!({"body": "x"})).await, 404, "not_found");
    assert_error(&bob.patch(&format!("/v1/messages/{id}"), json!({"body": ""})).await, 400, "bad_request");
    assert_error(&bob.patch("/v1/messages/m_nope", json!({"body": "x"})).await, 404, "not_found");
    assert_error(&carol.delete(&format!("/v1/messages/{id}")).await, 404, "not_found");

    // Alice is the group's admin: she may delete bob's message.
    let (status, _) = alice.delete(&format!("/v1/messages/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = alice.delete(&format!("/v1/messages/{id}")).await;
    assert_eq!(status, 204, "deleting twice is harmless");
    assert_error(&bob.patch(&format!("/v1/messages/{id}"), json!({"body": "back"})).await, 409, "conflict");
    let history = bob.all_messages(&group).await;
    assert_eq!(history.len(), 1);
    assert_eq!((history[0]["deleted"].clone(), history[0]["body"].clone()), (json!(true), json!("")));

    // Bob, not an admin, may not delete alice's message.
    let from_alice = alice.say(&group, "a1", "mine").await;
    assert_error(&bob.delete(&format!("/v1/messages/{}", from_alice["messageId"].as_str().unwrap())).await, 403, "forbidden");
}
