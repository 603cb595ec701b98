//! The state rebuilt by replaying the log equals the state that was served,
//! and the state holds its records against retention.

use std::sync::Arc;

use confab_ingest::{Caller, Ingest, Limits, NewConversation, NewMessage};
use confab_log::{FileLog, Log, LogConfig};
use confab_schemas::events::ConversationType;

fn open(dir: &std::path::Path, retention: Option<u64>) -> (Arc<FileLog>, Ingest) {
    let config = LogConfig { partitions: 2, segment_max_bytes: 4_096, retention_max_bytes: retention, ..LogConfig::default() };
    let log = Arc::new(FileLog::open(dir, config).unwrap());
    let ingest = Ingest::open(log.clone(), Limits::default()).unwrap();
    (log, ingest)
}

#[tokio::test]
async fn a_replay_serves_what_was_served_and_retention_spares_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (log, ingest) = open(dir.path(), Some(1));
    let alice = ingest.create_user("alice", None, "hash".into()).await.unwrap();
    let bob = ingest.create_user("bob", None, "hash".into()).await.unwrap();
    let alice_device = ingest.create_device(&alice.user_id, None, None).await.unwrap();
    let caller = Caller { user_id: alice.user_id.clone(), device_id: alice_device };
    let request = NewConversation { conversation_type: ConversationType::Group, member_ids: vec![bob.user_id.clone()], title: Some("t".into()) };
    let (conversation, _) = ingest.create_conversation(&caller, request).await.unwrap();
    for index in 0..200 {
        let message = NewMessage {
            conversation_id: conversation.conversation_id.clone(),
            client_msg_id: format!("k{index}"),
            body: "x".repeat(100),
            attachments: Vec::new(),
        };
        ingest.send_message(&caller, message).await.unwrap();
    }
    let (served, _) = ingest.history(&caller, &conversation.conversation_id, None, 200).unwrap();
    let listed = format!("{:?}", ingest.list_conversations(&caller));
    for partition in 0..log.partition_count() {
        assert_eq!(log.earliest(partition).unwrap(), 0, "retention must not remove records the state needs");
    }
    drop(ingest);
    log.close();
    drop(log);

    let (_log, replayed) = open(dir.path(), Some(1));
    let (history, _) = replayed.history(&caller, &conversation.conversation_id, None, 200).unwrap();
    assert_eq!(history, served);
    assert_eq!(format!("{:?}", replayed.list_conversations(&caller)), listed);
    let retry = NewMessage { conversation_id: conversation.conversation_id.clone(), client_msg_id: "k7".into(), body: "x".into(), attachments: Vec::new() };
    let (original, created) = replayed.send_message(&caller, retry).await.unwrap();
    assert!(!created);
    assert_eq!(original.seq, 8);
}
