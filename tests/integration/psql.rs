//! The history over the PostgreSQL protocol, with the real `psql`.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::{test_config, TestServer};

fn psql(port: u16, user: &str, password: &str, sql: &str) -> (bool, String) {
    let output = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-d", "confab", "-At", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql is installed (see tests/run)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_accounts_query_the_history_with_psql_and_nothing_else_runs() {
    let temporary = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = test_config(temporary.path());
    config.sql_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let server = TestServer::start_with(config).await;
    let admin = server.user("admin").await;
    let carol = server.user("carol").await;
    admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    let group = admin.conversation("group", &[&carol]).await;
    admin.say(&group, "p1", "over the wire").await;

    let sql = format!("SELECT seq, body FROM messages WHERE conversation_id = '{group}'");
    let mut answer = String::new();
    for _ in 0..100 {
        let (ok, text) = tokio::task::spawn_blocking({
            let sql = sql.clone();
            move || psql(port, "carol", "password123", &sql)
        })
        .await
        .unwrap();
        assert!(ok, "{text}");
        answer = text;
        if answer.contains("over the wire") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.trim(), "1|over the wire");

    let checks = tokio::task::spawn_blocking(move || {
        vec![
            psql(port, "carol", "password123", "COPY message_events TO '/tmp/confab-leak.csv'"),
            psql(port, "carol", "password123", "CREATE TABLE t AS SELECT 1"),
            psql(port, "carol", "wrong-password", "SELECT 1"),
            psql(port, "admin", "password123", "SELECT 1"),
            psql(port, "carol", "password123", "EXPLAIN SELECT count(*) FROM message_events"),
            psql(port, "carol", "password123", "EXPLAIN DELETE FROM audit"),
        ]
    })
    .await
    .unwrap();
    assert!(!checks[0].0 && checks[0].1.contains("only queries may run here"), "{}", checks[0].1);
    assert!(!checks[1].0 && checks[1].1.contains("only queries may run here"), "{}", checks[1].1);
    assert!(!checks[2].0 && checks[2].1.contains("login refused"), "{}", checks[2].1);
    assert!(!checks[3].0 && checks[3].1.contains("not a compliance account"), "{}", checks[3].1);
    assert!(!std::path::Path::new("/tmp/confab-leak.csv").exists());
    // Analysts may see a query's plan, but not the plan of a write.
    assert!(checks[4].0 && checks[4].1.contains("physical_plan"), "{}", checks[4].1);
    assert!(!checks[5].0 && checks[5].1.contains("only queries may run here"), "{}", checks[5].1);
    // The queries are in the audit log, with the protocol they came by.
    let (status, audit) = carol.post("/v1/admin/sql", json!({"sql": "SELECT count(*) FROM audit WHERE details LIKE '%pgwire%'"})).await;
    assert_eq!(status, 200, "{audit}");
}
