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

/// A log damaged in the middle (not a torn tail) stops the start with a
/// clear error; `confab log repair` cuts it, keeping a copy, and the server
/// starts again with everything before the damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_stops_the_start_until_repaired() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(temporary.path());
    config.log.partitions = 1;
    let server = TestServer::start_with(config.clone()).await;
    let alice = server.user("alice").await;
    let group = alice.conversation("group", &[]).await;
    for index in 0..20 {
        alice.say(&group, &format!("m{index}"), "a message worth keeping").await;
    }
    drop(alice);
    server.stop().await;

    let partition = temporary.path().join("log").join("p-0000");
    let segment = std::fs::read_dir(&partition)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();

    let error = match confab::server::start(config.clone()).await {
        Ok(_) => panic!("a log damaged in the middle must not open"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("not a torn tail") && error.contains("confab log repair"), "{error}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_confab")).args(["log", "repair", "--data-dir"]).arg(temporary.path()).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("partition 0: replaced 1 unreadable records") && text.contains("kept in"), "{text}");
    assert!(std::fs::read_dir(temporary.path().join("log").join("repair")).unwrap().count() == 1);
    // Everything derived from the log still lines up: a new login's device
    // is applied (its offset is after every old one), and the messages are there.
    let server = TestServer::start_with(config).await;
    let alice = server.client().login("alice", "password123").await;
    let (status, _) = alice.get("/v1/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(alice.all_messages(&group).await.len(), 20);
    alice.say(&group, "after", "after the repair").await;
}
