//! What a restart must keep: messages, idempotency, members, read cursors.

use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn a_retry_after_a_restart_returns_the_original_message() {
    let mut server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.conversation("group", &[&bob]).await;
    let original = alice.say(&group, "before-restart", "hello").await;
    for index in 0..20 {
        bob.say(&group, &format!("b{index}"), "filler").await;
    }
    bob.post(&format!("/v1/conversations/{group}/read"), json!({"lastReadMessageId": original["messageId"]})).await;
    let edited_id = original["messageId"].as_str().unwrap();
    alice.patch(&format!("/v1/messages/{edited_id}"), json!({"body": "hello, edited"})).await;
    let before_restart = alice.all_messages(&group).await;
    let (_, conversations_before) = bob.get("/v1/conversations").await;

    server.restart().await;
    let alice = alice.with_base(&server.base);
    let bob = bob.with_base(&server.base);
    let (status, retried) = alice.post("/v1/messages", json!({"conversationId": group, "clientMsgId": "before-restart", "body": "hello"})).await;
    assert_eq!(status, 200);
    assert_eq!(retried["messageId"], original["messageId"]);
    assert_eq!(retried["body"], "hello, edited");
    assert_eq!(alice.all_messages(&group).await, before_restart);
    let (_, conversations_after) = bob.get("/v1/conversations").await;
    assert_eq!(conversations_after, conversations_before);
    // New sends continue the sequence.
    let next = alice.say(&group, "after-restart", "still here").await;
    assert_eq!(next["seq"], 22);
}
