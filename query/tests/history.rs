//! The history tables match the log: creates, edits, deletes, members,
//! receipts and audit rows, exactly once across a restart of the sink.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use confab_log::{FileLog, Log, LogConfig};
use confab_query::{HistorySink, HistoryStore, SinkConfig, SqlEngine};
use confab_schemas::events::{ConversationType, DeliveryReceipt, LogEvent};
use deltalake::arrow::util::display::array_value_to_string;

async fn append(log: &FileLog, events: Vec<LogEvent>) {
    let payloads = events.iter().map(LogEvent::encode).collect();
    log.append(0, payloads).unwrap().durable().await.unwrap();
}

fn message(seq: u64, body: &str, ts: i64) -> LogEvent {
    LogEvent::MessageCreated {
        message_id: format!("m_{seq}"),
        conversation_id: "c_1".into(),
        seq,
        sender_id: "u_alice".into(),
        device_id: "d_1".into(),
        client_msg_id: format!("k{seq}"),
        body: body.into(),
        attachments: Vec::new(),
        ts,
        mentions: Default::default(),
        trace: None,
    }
}

/// Rows of a query as strings.
async fn rows(engine: &SqlEngine, sql: &str) -> Vec<Vec<String>> {
    let output = engine.query(sql).await.unwrap();
    let mut rows = Vec::new();
    for batch in &output.batches {
        for row in 0..batch.num_rows() {
            rows.push(batch.columns().iter().map(|column| array_value_to_string(column, row).unwrap()).collect());
        }
    }
    rows
}

async fn wait_for_rows(engine: &SqlEngine, sql: &str, expected: usize) -> Vec<Vec<String>> {
    for _ in 0..100 {
        let found = rows(engine, sql).await;
        if found.len() >= expected {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("`{sql}` never reached {expected} rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tables_match_the_log_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FileLog::open(dir.path().join("log"), LogConfig::default()).unwrap());
    let store = HistoryStore::new(dir.path().join("history").to_str().unwrap(), HashMap::new()).unwrap();
    let config = SinkConfig { flush_rows: 1_000, flush_interval_ms: 50, compact_every_commits: 3, ..SinkConfig::default() };
    let day = 1_796_016_352_289; // 2026-11-30
    append(
        &log,
        vec![
            LogEvent::ConversationCreated {
                conversation_id: "c_1".into(),
                conversation_type: ConversationType::Group,
                title: Some("team".into()),
                creator_id: "u_alice".into(),
                member_ids: vec!["u_bob".into()],
                ts: day,
                history_visibility: None,
            },
            message(1, "hello bob", day + 1),
            message(2, "secret plan", day + 2),
        ],
    )
    .await;
    let sink = HistorySink::start(store.clone(), log.clone(), config.clone()).await.unwrap();
    let engine = SqlEngine::new(store.clone(), confab_query::SqlConfig::default(), dir.path().join("sql-spill")).unwrap();
    wait_for_rows(&engine, "SELECT * FROM message_events", 2).await;
    sink.shutdown().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = chrono::Utc::now().to_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // More events while the sink is down; then a new sink picks up exactly where the tables are.
    append(
        &log,
        vec![
            LogEvent::MessageEdited {
                message_id: "m_1".into(),
                conversation_id: "c_1".into(),
                seq: 1,
                body: "hello, bob".into(),
                sender_id: Some("u_alice".into()),
                by: "u_alice".into(),
                device_id: "d_1".into(),
                ts: day + 3,
                mentions: Default::default(),
            },
            LogEvent::MessageDeleted {
                message_id: "m_2".into(),
                conversation_id: "c_1".into(),
                seq: 2,
                sender_id: Some("u_alice".into()),
                by: "u_alice".into(),
                device_id: "d_1".into(),
                ts: day + 4,
            },
            LogEvent::MemberRemoved { conversation_id: "c_1".into(), user_id: "u_bob".into(), by: "u_alice".into(), ts: day + 5 },
            LogEvent::DeliveryReceipts {
                conversation_id: "c_1".into(),
                receipts: vec![DeliveryReceipt { user_id: "u_bob".into(), device_id: "d_2".into(), seq: 2 }],
                ts: day + 6,
            },
            LogEvent::Audited { actor_id: "u_carol".into(), action: "sql.query".into(), details: "{\"sql\":\"SELECT 1\"}".into(), ts: day + 7 },
        ],
    )
    .await;
    let sink = HistorySink::start(store.clone(), log.clone(), config.clone()).await.unwrap();
    let events = wait_for_rows(&engine, "SELECT message_id, event_type, body, sender_id, day FROM message_events ORDER BY log_offset", 4).await;
    assert_eq!(
        events,
        vec![
            vec!["m_1", "created", "hello bob", "u_alice", "2026-11-30"],
            vec!["m_2", "created", "secret plan", "u_alice", "2026-11-30"],
            vec!["m_1", "edited", "hello, bob", "u_alice", "2026-11-30"],
            vec!["m_2", "deleted", "", "u_alice", "2026-11-30"],
        ]
    );
    let latest = rows(&engine, "SELECT message_id, body, edited, deleted FROM messages ORDER BY seq").await;
    assert_eq!(latest, vec![vec!["m_1", "hello, bob", "true", "false"], vec!["m_2", "", "false", "true"]]);
    wait_for_rows(&engine, "SELECT * FROM audit", 1).await;
    let members = rows(&engine, "SELECT user_id, change FROM membership_events ORDER BY log_offset, user_id").await;
    assert_eq!(members, vec![vec!["u_alice", "joined"], vec!["u_bob", "joined"], vec!["u_bob", "left"]]);
    let receipts = rows(&engine, "SELECT user_id, device_id, kind, seq FROM receipts").await;
    assert_eq!(receipts, vec![vec!["u_bob", "d_2", "delivered", "2"]]);
    let audit = rows(&engine, "SELECT actor_id, action, details FROM audit").await;
    assert_eq!(audit, vec![vec!["u_carol", "sql.query", "{\"sql\":\"SELECT 1\"}"]]);
    assert_eq!(rows(&engine, "SELECT title, conversation_type FROM conversations").await, vec![vec!["team", "group"]]);
    sink.shutdown().await;

    // A third start with nothing new adds nothing: exactly once.
    let sink = HistorySink::start(store.clone(), log.clone(), config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rows(&engine, "SELECT count(*) FROM message_events").await, vec![vec!["4"]]);
    sink.shutdown().await;

    // Time travel: the table as it was after the first sink's write.
    assert_eq!(rows(&engine, "SELECT count(*) FROM as_of('message_events', 1)").await, vec![vec!["2"]]);
    let at = format!("SELECT body FROM as_of('message_events', '{between}') WHERE message_id = 'm_1'");
    assert_eq!(rows(&engine, &at).await, vec![vec!["hello bob"]]);
    let error = engine.query("SELECT * FROM as_of('nope', 1)").await.unwrap_err();
    assert!(error.to_string().contains("`nope` is not one of"), "{error}");

    let error = engine.query("INSERT INTO audit SELECT * FROM audit").await.unwrap_err();
    assert!(error.to_string().contains("only queries may run here"), "{error}");
}

/// A table that gets no rows for a long while still records how far the
/// sink got, so a restart starts near the head, not at that table's last row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_tables_record_the_sinks_progress() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FileLog::open(dir.path().join("log"), LogConfig::default()).unwrap());
    let store = HistoryStore::new(dir.path().join("history").to_str().unwrap(), HashMap::new()).unwrap();
    let config =
        SinkConfig { flush_rows: 1_000, flush_interval_ms: 50, compact_every_commits: 1_000, progress_mark_after_records: 50, ..SinkConfig::default() };
    let day = 1_796_016_352_289;
    // Only messages: `audit`, `users` and the rest get no row at all.
    append(&log, (1..=120).map(|seq| message(seq, "quiet", day + seq as i64)).collect()).await;
    let sink = HistorySink::start(store.clone(), log.clone(), config.clone()).await.unwrap();
    let engine = SqlEngine::new(store.clone(), confab_query::SqlConfig::default(), dir.path().join("sql-spill")).unwrap();
    wait_for_rows(&engine, "SELECT * FROM message_events", 120).await;
    sink.shutdown().await;
    for table in ["audit", "users", "receipts", "conversations", "membership_events", "message_events"] {
        let url = url::Url::from_directory_path(dir.path().join("history").join(table)).unwrap();
        let delta = deltalake::open_table_with_storage_options(url, HashMap::new()).await.unwrap();
        let snapshot = delta.snapshot().unwrap();
        let position = snapshot.transaction_version(delta.log_store().as_ref(), "confab-history-p0").await.unwrap();
        assert_eq!(position, Some(120), "`{table}` does not record the sink's position");
    }
    // The marks are empty commits: the tables read as before.
    let output = engine.query("SELECT count(*) AS n FROM audit").await.unwrap();
    assert_eq!(confab_query::output::to_json_rows(&output).unwrap(), vec![vec![serde_json::json!(0)]]);
}
