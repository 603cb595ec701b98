//! Conversations and members: types, dms, permissions, membership checks.

use serde_json::json;

use crate::harness::{assert_error, TestServer};

#[tokio::test]
async fn a_dm_is_created_once_and_returned_after() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let (status, created) = alice.post("/v1/conversations", json!({"type": "dm", "memberIds": [bob.user_id]})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["type"], "dm");
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    assert_eq!(created["memberIds"], json!(expected));
    assert!(created["createdAt"].as_i64().unwrap() > 1_600_000_000_000);
    let (status, again) = bob.post("/v1/conversations", json!({"type": "dm", "memberIds": [alice.user_id]})).await;
    assert_eq!(status, 200);
    assert_eq!(again["conversationId"], created["conversationId"]);

    for (request, field) in [
        (json!({"type": "dm", "memberIds": []}), "`memberIds`"),
        (json!({"type": "dm", "memberIds": [alice.user_id]}), "`memberIds`"),
        (json!({"type": "room", "memberIds": []}), "`type`"),
        (json!({"type": "group", "memberIds": ["u_nobody"]}), "`memberIds`"),
        (json!({"type": "group", "memberIds": "x"}), "`memberIds`"),
        (json!({"type": "group", "memberIds": [], "title": "x".repeat(300)}), "`title`"),
        (json!({"memberIds": []}), "`type`"),
    ] {
        let message = assert_error(&alice.post("/v1/conversations", request.clone()).await, 400, "bad_request");
        assert!(message.contains(field), "{request} -> {message}");
    }
}

#[tokio::test]
async fn members_are_listed_added_and_removed_with_permissions() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let group = alice.conversation("group", &[&bob]).await;

    let (status, body) = bob.get(&format!("/v1/conversations/{group}/members")).await;
    assert_eq!(status, 200);
    let members = body["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    let alice_row = members.iter().find(|member| member["userId"] == alice.user_id.as_str()).unwrap();
    assert_eq!(alice_row["role"], "admin");
    assert_eq!(alice_row["lastReadSeq"], 0);
    assert_eq!(alice_row["lastDeliveredSeq"], 0);

    // Carol is not a member: she can neither read nor write.
    assert_error(&carol.get(&format!("/v1/conversations/{group}/members")).await, 403, "forbidden");
    assert_error(&carol.get(&format!("/v1/conversations/{group}/messages")).await, 403, "forbidden");
    assert_error(&carol.post("/v1/messages", json!({"conversationId": group, "clientMsgId": "x", "body": "hi"})).await, 403, "forbidden");
    assert_error(&carol.post(&format!("/v1/conversations/{group}/members"), json!({"userIds": [carol.user_id]})).await, 403, "forbidden");

    // In a group any member may add; only admins remove others; anyone may leave.
    let (status, _) = bob.post(&format!("/v1/conversations/{group}/members"), json!({"userIds": [carol.user_id]})).await;
    assert_eq!(status, 204);
    assert_error(&bob.delete(&format!("/v1/conversations/{group}/members/{}", carol.user_id)).await, 403, "forbidden");
    let (status, _) = carol.delete(&format!("/v1/conversations/{group}/members/{}", carol.user_id)).await;
    assert_eq!(status, 204);
    assert_error(&carol.get(&format!("/v1/conversations/{group}/messages")).await, 403, "forbidden");
    assert_error(&alice.delete(&format!("/v1/conversations/{group}/members/{}", carol.user_id)).await, 404, "not_found");
    let (status, _) = alice.delete(&format!("/v1/conversations/{group}/members/{}", bob.user_id)).await;
    assert_eq!(status, 204);

    // Dms never change members; in channels only admins add.
    let dm = alice.conversation("dm", &[&bob]).await;
    assert_error(&alice.post(&format!("/v1/conversations/{dm}/members"), json!({"userIds": [carol.user_id]})).await, 403, "forbidden");
    let channel = alice.conversation("channel", &[&bob]).await;
    assert_error(&bob.post(&format!("/v1/conversations/{channel}/members"), json!({"userIds": [carol.user_id]})).await, 403, "forbidden");
    let (status, _) = alice.post(&format!("/v1/conversations/{channel}/members"), json!({"userIds": [carol.user_id]})).await;
    assert_eq!(status, 204);
    let message = assert_error(&alice.post(&format!("/v1/conversations/{channel}/members"), json!({"userIds": ["u_ghost"]})).await, 400, "bad_request");
    assert!(message.contains("`userIds`"), "{message}");
    assert_error(&alice.get("/v1/conversations/c_unknown/members").await, 404, "not_found");
}

#[tokio::test]
async fn the_conversation_list_counts_unread_without_deleted_messages() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.conversation("group", &[&bob]).await;
    let quiet = bob.conversation("group", &[&alice]).await;
    let mut ids = Vec::new();
    for index in 0..5 {
        ids.push(alice.say(&group, &format!("m{index}"), &format!("hello {index}")).await["messageId"].as_str().unwrap().to_string());
    }
    let (status, _) = alice.delete(&format!("/v1/messages/{}", ids[3])).await;
    assert_eq!(status, 204);

    let (_, body) = bob.get("/v1/conversations").await;
    let list = body["conversations"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["conversationId"], group.as_str(), "most recently active first");
    assert_eq!(list[0]["lastSeq"], 5);
    assert_eq!(list[0]["lastReadSeq"], 0);
    assert_eq!(list[0]["unreadCount"], 4);
    assert_eq!(list[0]["lastMessage"]["seq"], 5);
    assert_eq!(list[1]["conversationId"], quiet.as_str());
    assert_eq!(list[1]["unreadCount"], 0);
    assert_eq!(list[1]["lastMessage"], serde_json::Value::Null);

    // The sender has read what they sent.
    let (_, body) = alice.get("/v1/conversations").await;
    let mine = body["conversations"].as_array().unwrap().iter().find(|row| row["conversationId"] == group.as_str()).unwrap().clone();
    assert_eq!(mine["unreadCount"], 0);

    // Reading up to the second message leaves 2 unread (the 4th is deleted).
    let (status, _) = bob.post(&format!("/v1/conversations/{group}/read"), json!({"lastReadMessageId": ids[1]})).await;
    assert_eq!(status, 204);
    let (_, body) = bob.get("/v1/conversations").await;
    assert_eq!(body["conversations"][0]["unreadCount"], 2);
    assert_eq!(body["conversations"][0]["lastReadSeq"], 2);
    // A read cursor never moves back.
    let (status, _) = bob.post(&format!("/v1/conversations/{group}/read"), json!({"lastReadMessageId": ids[0]})).await;
    assert_eq!(status, 204);
    let (_, members) = alice.get(&format!("/v1/conversations/{group}/members")).await;
    let bob_row = members["members"].as_array().unwrap().iter().find(|member| member["userId"] == bob.user_id.as_str()).unwrap().clone();
    assert_eq!(bob_row["lastReadSeq"], 2);
    assert!(bob_row["lastDeliveredSeq"].as_u64().unwrap() >= 2);
    let message = assert_error(&bob.post(&format!("/v1/conversations/{group}/read"), json!({"lastReadMessageId": "m_nope"})).await, 400, "bad_request");
    assert!(message.contains("`lastReadMessageId`"));
}

/// Blocks: a blocked user cannot open a dm with the blocker, add them to a
/// conversation, or write in their dm; shared groups go on as usual.
#[tokio::test]
async fn a_blocked_user_cannot_reach_the_blocker() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let mallory = server.user("mallory").await;
    let bob = server.user("bob").await;
    let dm = mallory.conversation("dm", &[&alice]).await;
    let group = bob.conversation("group", &[&alice, &mallory]).await;
    let (status, _) = alice.client_put(&format!("/v1/me/blocks/{}", mallory.user_id)).await;
    assert_eq!(status, 204);
    let (_, blocks) = alice.get("/v1/me/blocks").await;
    assert_eq!(blocks["userIds"], serde_json::json!([mallory.user_id]));
    crate::harness::assert_error(&alice.client_put("/v1/me/blocks/u_nobody").await, 404, "not_found");

    let refused = mallory.post("/v1/messages", serde_json::json!({"conversationId": dm, "clientMsgId": "x1", "body": "hey"})).await;
    crate::harness::assert_error(&refused, 403, "forbidden");
    let refused = mallory.post("/v1/conversations", serde_json::json!({"type": "group", "memberIds": [alice.user_id]})).await;
    crate::harness::assert_error(&refused, 403, "forbidden");
    let other = mallory.conversation("group", &[]).await;
    let refused = mallory.post(&format!("/v1/conversations/{other}/members"), serde_json::json!({"userIds": [alice.user_id]})).await;
    crate::harness::assert_error(&refused, 403, "forbidden");
    // In a group they share, messages go on as usual.
    mallory.say(&group, "g1", "still in the group").await;
    // The blocker may still write; unblocking lifts it all.
    alice.say(&dm, "a1", "I can still write").await;
    let (status, _) = alice.delete(&format!("/v1/me/blocks/{}", mallory.user_id)).await;
    assert_eq!(status, 204);
    mallory.say(&dm, "x2", "unblocked").await;
}
