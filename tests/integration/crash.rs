//! The crash test: the real binary, many concurrent senders, SIGKILL in
//! the middle, restart, and check that every acknowledged message is there
//! exactly once and in order, and that retrying the unanswered sends
//! creates no duplicates. Ten crashes in a row on one data directory, with
//! the state's store checkpointed every few milliseconds, so that kills land
//! between the log's fsync and a round's batch, during batches, and during
//! checkpoints.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::Client;

const USERS: usize = 4;
const DEVICES_PER_USER: usize = 2;
const CONVERSATIONS: usize = 2;
/// Each cycle kills only after this many sends were answered.
const MIN_ACKS_PER_CYCLE: usize = 100;

struct Process {
    child: tokio::process::Child,
    base: String,
}

async fn spawn_server(data_dir: &Path, config: &Path) -> Process {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the confab binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next_line().await.unwrap().expect("the server prints its address");
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_string();
        }
    };
    Process { child, base }
}

/// A send whose answer we know (acked) or do not (unanswered).
#[derive(Clone, Debug)]
struct Sent {
    sender: usize,
    conversation: String,
    client_msg_id: String,
    body: String,
    acked: Option<Value>,
}

async fn sender_loop(client: Client, sender: usize, conversation: String, cycle: usize, acks: Arc<AtomicUsize>) -> Vec<Sent> {
    let mut sent = Vec::new();
    for number in 0.. {
        let client_msg_id = format!("c{cycle}-s{sender}-n{number}");
        let body = format!("cycle {cycle} sender {sender} number {number}");
        let request = client
            .http
            .post(format!("{}/v1/messages", client.base))
            .bearer_auth(client.token.as_ref().unwrap())
            .timeout(Duration::from_secs(5))
            .json(&json!({"conversationId": conversation, "clientMsgId": client_msg_id, "body": body}));
        // Only a missing answer (the server died) counts as unanswered; any
        // error status while it ran is a failure of the test.
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status();
                assert!(status.is_success() || status.is_server_error(), "cycle {cycle}: a send answered {status}");
                match status.is_success() {
                    true => response.json::<Value>().await.ok(),
                    false => None,
                }
            }
            Err(_) => None,
        };
        let failed = outcome.is_none();
        if !failed {
            acks.fetch_add(1, Ordering::Relaxed);
        }
        sent.push(Sent { sender, conversation: conversation.clone(), client_msg_id, body, acked: outcome });
        if failed {
            return sent; // The server is gone; the rest is unanswered.
        }
    }
    unreachable!()
}

#[tokio::test]
async fn acknowledged_sends_survive_ten_sigkills_exactly_once_and_in_order() {
    let cycles: usize = std::env::var("CONFAB_CRASH_CYCLES").ok().and_then(|text| text.parse().ok()).unwrap_or(10);
    let temporary = tempfile::tempdir().unwrap();
    let data_dir = temporary.path().join("data");
    let config = temporary.path().join("confab.toml");
    // Checkpoints every few ms, so that kills land in them too; caches of
    // one conversation and four messages, so that sends race evictions.
    let settings = "[log]\npartitions = 3\n[state]\ncheckpoint_interval_ms = 5\nconversations_cached_max = 1\nrecent_messages_per_conversation = 4\n[gateway.rate_limits]\nenabled = false\n";
    std::fs::write(&config, settings).unwrap();
    let mut server = spawn_server(&data_dir, &config).await;

    // Users, their devices, and conversations everyone is in.
    let anonymous = Client { http: reqwest::Client::new(), base: server.base.clone(), token: None, user_id: String::new(), device_id: String::new() };
    let mut devices = Vec::new();
    for user in 0..USERS {
        let name = format!("user{user}");
        let (status, _) = anonymous.post("/v1/users", json!({"username": name, "password": "password123"})).await;
        assert_eq!(status, 201);
        for _ in 0..DEVICES_PER_USER {
            devices.push(anonymous.login(&name, "password123").await);
        }
    }
    let others: Vec<&str> = devices.iter().step_by(DEVICES_PER_USER).skip(1).map(|device| device.user_id.as_str()).collect();
    let mut conversations = Vec::new();
    for _ in 0..CONVERSATIONS {
        let (status, body) = devices[0].post("/v1/conversations", json!({"type": "group", "memberIds": others})).await;
        assert_eq!(status, 201);
        conversations.push(body["conversationId"].as_str().unwrap().to_string());
    }

    let mut acknowledged: HashMap<String, Value> = HashMap::new();
    for cycle in 0..cycles {
        let mut tasks = Vec::new();
        let acks = Arc::new(AtomicUsize::new(0));
        for (index, device) in devices.iter().enumerate() {
            for conversation in &conversations {
                let sender = index * CONVERSATIONS + conversations.iter().position(|c| c == conversation).unwrap();
                tasks.push(tokio::spawn(sender_loop(device.with_base(&server.base), sender, conversation.clone(), cycle, acks.clone())));
            }
        }
        // Kill at a random moment once enough sends were answered (on a
        // loaded machine that takes longer; the moment stays random).
        let enough = tokio::time::timeout(Duration::from_secs(60), async {
            while acks.load(Ordering::Relaxed) < MIN_ACKS_PER_CYCLE {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(enough.await.is_ok(), "cycle {cycle}: fewer than {MIN_ACKS_PER_CYCLE} sends were answered in a minute");
        tokio::time::sleep(Duration::from_millis(fastrand::u64(..400))).await;
        server.child.start_kill().unwrap(); // SIGKILL
        server.child.wait().await.unwrap();
        let mut sent: Vec<Sent> = Vec::new();
        for task in tasks {
            sent.extend(task.await.unwrap());
        }
        server = spawn_server(&data_dir, &config).await;
        let base = server.base.clone();
        let reader = devices[0].with_base(&base);

        // Every acknowledged message is there, once, with its seq and id.
        for item in sent.iter().filter(|item| item.acked.is_some()) {
            acknowledged.insert(item.client_msg_id.clone(), item.acked.clone().unwrap());
        }
        let acked_this_cycle = sent.iter().filter(|item| item.acked.is_some()).count();
        let unanswered = sent.len() - acked_this_cycle;
        eprintln!("cycle {cycle}: {acked_this_cycle} sends acknowledged, {unanswered} unanswered at the kill");
        assert!(acked_this_cycle >= MIN_ACKS_PER_CYCLE, "cycle {cycle}: only {acked_this_cycle} sends were acknowledged before the kill");
        check_history(&reader, &conversations, &acknowledged, cycle).await;

        // Per sender, acknowledged sends are in the order they were sent.
        let mut last_seq: HashMap<usize, u64> = HashMap::new();
        for item in &sent {
            if let Some(message) = &item.acked {
                let seq = message["seq"].as_u64().unwrap();
                let previous = last_seq.insert(item.sender, seq).unwrap_or(0);
                assert!(seq > previous, "cycle {cycle}: sender {} went back from seq {previous} to {seq}", item.sender);
            }
        }

        // Retrying the unanswered sends creates no duplicates; retrying an acked one returns it.
        for item in sent.iter().filter(|item| item.acked.is_none()) {
            let device = devices[item.sender / CONVERSATIONS].with_base(&base);
            let (status, message) =
                device.post("/v1/messages", json!({"conversationId": item.conversation, "clientMsgId": item.client_msg_id, "body": item.body})).await;
            assert!(status == 201 || status == 200, "cycle {cycle}: retry answered {status} {message}");
            assert_eq!(message["body"], item.body.as_str());
            acknowledged.insert(item.client_msg_id.clone(), message);
        }
        if let Some(item) = sent.iter().find(|item| item.acked.is_some()) {
            let device = devices[item.sender / CONVERSATIONS].with_base(&base);
            let (status, message) =
                device.post("/v1/messages", json!({"conversationId": item.conversation, "clientMsgId": item.client_msg_id, "body": item.body})).await;
            assert_eq!(status, 200);
            assert_eq!(&message, item.acked.as_ref().unwrap());
        }
        check_history(&reader, &conversations, &acknowledged, cycle).await;
    }

    // The Delta history was being written while each kill landed: it still
    // holds every message exactly once.
    let admin = devices[0].with_base(&server.base);
    let auditor = devices[DEVICES_PER_USER].with_base(&server.base);
    let (status, _) = admin.post("/v1/admin/roles", json!({"userId": auditor.user_id, "role": "compliance"})).await;
    assert_eq!(status, 204);
    let sql = "SELECT count(*) AS created, count(DISTINCT message_id) AS distinct_ids FROM message_events WHERE event_type = 'created'";
    let mut last = Value::Null;
    for _ in 0..300 {
        let (status, body) = auditor.post("/v1/admin/sql", json!({"sql": sql})).await;
        assert_eq!(status, 200, "{body}");
        last = body["rows"][0].clone();
        if last[0].as_u64() == Some(acknowledged.len() as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, json!([acknowledged.len(), acknowledged.len()]), "the history has every message exactly once");
    server.child.start_kill().unwrap();
}

/// Seqs are 1..=n without gaps, no clientMsgId twice, every acked message present as acked.
async fn check_history(reader: &Client, conversations: &[String], acknowledged: &HashMap<String, Value>, cycle: usize) {
    let mut seen = HashSet::new();
    let mut by_client_id: HashMap<String, Value> = HashMap::new();
    for conversation in conversations {
        let messages = reader.all_messages(conversation).await;
        for (index, message) in messages.iter().enumerate() {
            assert_eq!(message["seq"].as_u64().unwrap(), index as u64 + 1, "cycle {cycle}: a gap or disorder in seqs");
            let key = (message["senderId"].as_str().unwrap().to_string(), message["clientMsgId"].as_str().unwrap().to_string());
            assert!(seen.insert(key.clone()), "cycle {cycle}: {key:?} is in the history twice");
            by_client_id.insert(key.1, message.clone());
        }
    }
    for (client_msg_id, acked) in acknowledged {
        let stored = by_client_id.get(client_msg_id).unwrap_or_else(|| panic!("cycle {cycle}: acknowledged `{client_msg_id}` is missing"));
        assert_eq!(stored, acked, "cycle {cycle}: `{client_msg_id}` differs from its acknowledgement");
    }
}
