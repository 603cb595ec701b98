//! Analytics in ClickHouse against a live server and the real ClickHouse
//! that `tests/run` starts: messages, edits, deletes and receipts arrive
//! once each (across a restart, and when the positions are lost), the
//! documented queries answer what happened, no body reaches ClickHouse's
//! files, and retention purges the tables and the rollup the view wrote.

use std::time::Duration;

use serde_json::json;

use crate::harness::{test_config, TestServer};
use crate::search::clickhouse_files_contain;
use crate::ws::Ws;

/// The server `tests/run` starts, and a database of this test's own.
fn clickhouse() -> Option<(confab_analytics::ClickhouseConfig, Option<std::path::PathBuf>)> {
    let Ok(url) = std::env::var("CONFAB_TEST_CLICKHOUSE_URL") else {
        assert!(std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_none(), "CONFAB_REQUIRE_EXTERNAL is set but CONFAB_TEST_CLICKHOUSE_URL is not");
        eprintln!("skipping: CONFAB_TEST_CLICKHOUSE_URL is not set (tests/run starts ClickHouse)");
        return None;
    };
    let database = format!("confab_analytics_test_{}_{}", std::process::id(), fastrand::u64(..));
    let config = confab_analytics::ClickhouseConfig { url, database, ..Default::default() };
    Some((config, std::env::var_os("CONFAB_TEST_CLICKHOUSE_DATA").map(Into::into)))
}

/// A documented query's rows, each split at tabs.
async fn rows(store: &confab_analytics::Store, query: &str) -> Vec<Vec<String>> {
    let text = store.query_text(&confab_analytics::schema::query_for(query, store.database())).await.unwrap();
    text.lines().map(|line| line.split('\t').map(str::to_string).collect()).collect()
}

async fn count(store: &confab_analytics::Store, sql: &str) -> u64 {
    let sql = sql.replace("{db}", store.database());
    store.query_text(&sql).await.unwrap().trim().parse().unwrap_or_else(|_| panic!("not a count: {sql}"))
}

/// Polls until `sql` counts `expected`, and fails with what it counted last.
async fn until_count(store: &confab_analytics::Store, sql: &str, expected: u64) {
    let mut last = 0;
    for _ in 0..200 {
        last = count(store, sql).await;
        if last == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("`{sql}` counted {last}, not {expected}");
}

#[tokio::test]
async fn messages_and_receipts_reach_clickhouse_once_and_retention_purges_them() {
    let Some((clickhouse, data)) = clickhouse() else { return };
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.analytics.clickhouse = Some(clickhouse.clone());
    let server = TestServer::start_with(config.clone()).await;
    let store = confab_analytics::Store::connect(&clickhouse);
    let admin = server.user("admin").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    assert_eq!(admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await.0, 204);
    let group = admin.conversation("group", &[&bob]).await;
    let other = admin.conversation("group", &[&bob]).await;
    admin.say(&group, "a1", "the analyticsbodyword plan").await;
    let second = admin.say(&group, "a2", "second").await;
    admin.say(&group, "a3", "third").await;
    bob.say(&other, "b1", "hello from bob").await;
    let second_id = second["messageId"].as_str().unwrap();
    assert_eq!(admin.patch(&format!("/v1/messages/{second_id}"), json!({"body": "second, edited"})).await.0, 200);
    assert_eq!(admin.delete(&format!("/v1/messages/{second_id}")).await.0, 204);
    let mut bob_ws = Ws::connect(&bob, None).await;
    bob_ws.send(json!({"type": "receipt.delivered", "conversationId": group, "seq": 3})).await;
    bob_ws.send(json!({"type": "receipt.read", "conversationId": group, "seq": 3})).await;

    let events = "SELECT count() FROM {db}.message_events";
    until_count(&store, events, 6).await;
    let bobs_receipts = format!("SELECT count() FROM {{db}}.receipts WHERE user_id = '{}'", bob.user_id);
    until_count(&store, &bobs_receipts, 2).await;
    until_count(&store, "SELECT count() FROM {db}.conversations", 2).await;

    let day = confab_query::rows::day_of(confab_schemas::ids::now_ms());
    let per_day = rows(&store, confab_analytics::schema::MESSAGES_PER_DAY).await;
    let expected: Vec<Vec<String>> = [(&group, "3"), (&other, "1")].iter().map(|(id, n)| vec![day.clone(), id.to_string(), n.to_string()]).collect();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(per_day, sorted, "messages per day per conversation");
    assert_eq!(rows(&store, confab_analytics::schema::ACTIVE_USERS_PER_DAY).await, vec![vec![day.clone(), "2".to_string()]], "admin sent, bob sent and read");
    let delays = rows(&store, confab_analytics::schema::RECEIPT_DELAYS).await;
    assert_eq!(delays.iter().map(|row| (row[0].as_str(), row[1].as_str())).collect::<Vec<_>>(), vec![("delivered", "1"), ("read", "1")], "{delays:?}");
    for row in &delays {
        let p50: f64 = row[2].parse().unwrap();
        assert!((0.0..60_000.0).contains(&p50), "a delay from the send of message 3 to bob's receipt: {row:?}");
    }
    let edited = count(&store, "SELECT count() FROM {db}.message_events WHERE event_type = 'edited' AND body_chars = 14 AND actor_id != ''").await;
    assert_eq!(edited, 1, "the edit, with its length and not its text");

    // No body reaches ClickHouse's files; what it does hold (ids) does.
    if let Some(data) = &data {
        let files = data.join("data").join(&clickhouse.database);
        assert!(clickhouse_files_contain(&files, group.as_bytes()), "the positive control: ids are in the files");
        assert!(!clickhouse_files_contain(&files, b"analyticsbodyword"), "a message body is in ClickHouse's files");
    }

    // A restart writes nothing twice; nor does one that lost its positions
    // (as after a crash between the rows and the position).
    drop(bob_ws);
    server.stop().await;
    let server = TestServer::start_with(config.clone()).await;
    server.stop().await;
    store.query_text(&format!("TRUNCATE TABLE {}.analytics_positions", store.database())).await.unwrap();
    let server = TestServer::start_with(config).await;
    let admin = admin.with_base(&server.base);
    let carol = carol.with_base(&server.base);
    admin.say(&other, "a4", "after the restarts").await;
    until_count(&store, events, 7).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(count(&store, events).await, 7, "rows written twice after a restart");
    assert_eq!(count(&store, &bobs_receipts).await, 2);

    // Retention: the conversation's rows before the cut go, and so do the
    // rows the view summed from them; the other conversation stays.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cut = confab_schemas::ids::now_ms();
    let (status, deleted) = carol.post("/v1/admin/retention", json!({"conversationId": group, "before": cut})).await;
    assert_eq!(status, 200, "{deleted}");
    let in_group = format!("SELECT count() FROM {{db}}.message_events WHERE conversation_id = '{group}'");
    assert_eq!(count(&store, &in_group).await, 0, "retention left message rows (its own deletes included)");
    assert_eq!(count(&store, &format!("SELECT count() FROM {{db}}.receipts WHERE conversation_id = '{group}'")).await, 0);
    let per_day = rows(&store, confab_analytics::schema::MESSAGES_PER_DAY).await;
    assert_eq!(per_day, vec![vec![day.clone(), other.clone(), "2".to_string()]], "the rollup still counts the purged messages");
    // The view goes on counting what comes after.
    admin.say(&group, "a5", "after the cut").await;
    until_count(&store, &format!("SELECT toUInt64(sum(messages)) FROM {{db}}.conversation_daily WHERE conversation_id = '{group}'"), 1).await;
    server.stop().await;

    // Another data directory is refused the database: its log's offsets
    // are not these, and would skip or mix records silently.
    let rows_before = count(&store, events).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let mut other_config = test_config(elsewhere.path());
    other_config.analytics.clickhouse = Some(clickhouse.clone());
    let refused = confab::server::start(other_config).await.map(|_| ()).unwrap_err();
    let message = format!("{refused:#}");
    assert!(message.contains("holds the log positions of another data directory"), "{message}");
    assert_eq!(count(&store, events).await, rows_before, "the refused server wrote nothing");
}
