//! Administration and compliance over HTTP: roles, read-only SQL over the
//! history tables, refusals, and the audit log.

use serde_json::json;

use crate::harness::{assert_error, query_until, TestServer};

#[tokio::test]
async fn roles_are_granted_by_administrators_only() {
    let server = TestServer::start().await;
    let admin = server.user("admin").await; // the first account
    let carol = server.user("carol").await;
    let mallory = server.user("mallory").await;
    assert_error(&mallory.post("/v1/admin/roles", json!({"userId": mallory.user_id, "role": "admin"})).await, 403, "forbidden");
    let message = assert_error(&admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "root"})).await, 400, "bad_request");
    assert!(message.contains("`role`"), "{message}");
    let message = assert_error(&admin.post("/v1/admin/roles", json!({"userId": "u_nobody", "role": "compliance"})).await, 400, "bad_request");
    assert!(message.contains("`userId`"), "{message}");
    assert_error(&carol.post("/v1/admin/sql", json!({"sql": "SELECT 1"})).await, 403, "forbidden");
    let (status, _) = admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    assert_eq!(status, 204);
    let (status, body) = carol.post("/v1/admin/sql", json!({"sql": "SELECT 1 AS one"})).await;
    assert_eq!((status, body), (200, json!({"columns": ["one"], "rows": [[1]]})));
    // Administrators are not compliance officers unless granted.
    assert_error(&admin.post("/v1/admin/sql", json!({"sql": "SELECT 1"})).await, 403, "forbidden");
}

#[tokio::test]
async fn the_history_matches_what_was_sent_and_only_queries_run() {
    let server = TestServer::start().await;
    let admin = server.user("admin").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    let group = admin.conversation("group", &[&bob]).await;
    let first = admin.say(&group, "h1", "the launch is monday").await;
    bob.say(&group, "h2", "noted").await;
    let id = first["messageId"].as_str().unwrap();
    admin.patch(&format!("/v1/messages/{id}"), json!({"body": "the launch is tuesday"})).await;
    let second = bob.all_messages(&group).await[1]["messageId"].as_str().unwrap().to_string();
    bob.delete(&format!("/v1/messages/{second}")).await;
    admin.delete(&format!("/v1/conversations/{group}/members/{}", bob.user_id)).await;

    let events =
        query_until(&carol, &format!("SELECT seq, event_type, body, sender_id FROM message_events WHERE conversation_id = '{group}' ORDER BY log_offset"), 4)
            .await;
    assert_eq!(
        events,
        json!([
            [1, "created", "the launch is monday", admin.user_id],
            [2, "created", "noted", bob.user_id],
            [1, "edited", "the launch is tuesday", admin.user_id],
            [2, "deleted", null, bob.user_id],
        ])
    );
    let latest = query_until(&carol, &format!("SELECT seq, body, edited, deleted FROM messages WHERE conversation_id = '{group}' ORDER BY seq"), 2).await;
    assert_eq!(latest, json!([[1, "the launch is tuesday", true, false], [2, "", false, true]]));
    let members = query_until(
        &carol,
        &format!("SELECT user_id, change FROM membership_events WHERE conversation_id = '{group}' ORDER BY log_offset, change DESC, user_id"),
        3,
    )
    .await;
    assert_eq!(members.as_array().unwrap().last().unwrap(), &json!([bob.user_id, "left"]));

    for (sql, named) in [
        ("COPY message_events TO '/tmp/leak.csv'", "COPY"),
        ("INSERT INTO audit SELECT * FROM audit", "INSERT"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("DROP TABLE audit", "DROP"),
        ("DELETE FROM message_events", "DELETE"),
    ] {
        let message = assert_error(&carol.post("/v1/admin/sql", json!({"sql": sql})).await, 400, "bad_request");
        assert!(message.contains(named), "{sql} -> {message}");
    }
    assert_error(&carol.post("/v1/admin/sql", json!({"sql": "SELECT 1; SELECT 2"})).await, 400, "bad_request");
    assert_error(&carol.post("/v1/admin/sql", json!({"sql": "SELECT nope FROM messages"})).await, 400, "bad_request");
    // Every attempt is audited, with who and the SQL, refused ones included.
    // (The pattern is split so that this query's own audit row cannot match it.)
    let audit = query_until(
        &carol,
        "SELECT actor_id, action, details FROM audit WHERE action = 'sql.query' AND details LIKE concat('%COPY message', '_events TO %leak.csv%')",
        1,
    )
    .await;
    assert_eq!(audit[0][0], carol.user_id.as_str());
    let grants = query_until(&carol, "SELECT actor_id FROM audit WHERE action = 'role.grant'", 1).await;
    assert_eq!(grants[0][0], admin.user_id.as_str());
}

fn confab_sql(data_dir: &std::path::Path, sql: &str) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["sql", "--data-dir", data_dir.to_str().unwrap(), "--format", "csv", sql])
        .env("USER", "operator7")
        .output()
        .unwrap();
    if output.status.success() {
        return (true, String::from_utf8_lossy(&output.stdout).to_string());
    }
    (false, String::from_utf8_lossy(&output.stderr).to_string())
}

/// `confab sql` reads a data directory, beside a running server, refuses
/// writes, and leaves an audit row for every statement, refused or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_query_with_confab_sql_and_are_audited() {
    let server = TestServer::start().await;
    let admin = server.user("admin").await;
    let carol = server.user("carol").await;
    admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    let group = admin.conversation("group", &[&carol]).await;
    admin.say(&group, "c1", "for the operators").await;
    query_until(&carol, "SELECT 1 FROM message_events", 1).await;

    let data_dir = server.data_dir.clone();
    let (ok, text) = tokio::task::spawn_blocking(move || confab_sql(&data_dir, "SELECT body FROM messages")).await.unwrap();
    assert!(ok, "{text}");
    assert_eq!(text, "body\nfor the operators\n");
    let data_dir = server.data_dir.clone();
    let (ok, text) = tokio::task::spawn_blocking(move || confab_sql(&data_dir, "DELETE FROM audit")).await.unwrap();
    assert!(!ok && text.contains("`DELETE FROM`"), "{text}");

    let audit = query_until(&carol, "SELECT actor_id, details FROM audit WHERE actor_id LIKE 'os:%' ORDER BY ts", 2).await;
    let audited: Vec<(String, serde_json::Value)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row[0].as_str().unwrap().to_string(), serde_json::from_str::<serde_json::Value>(row[1].as_str().unwrap()).unwrap()))
        .collect();
    assert_eq!(audited.len(), 2, "{audit}");
    for ((actor, details), sql) in audited.iter().zip(["SELECT body FROM messages", "DELETE FROM audit"]) {
        assert_eq!(actor, "os:operator7");
        assert_eq!(details["sql"], sql);
        assert_eq!(details["via"], "cli");
        assert_eq!(details["sqlBytes"], sql.len());
    }
}

/// Refused attempts leave a trace: a caller without the role, SQL over the
/// size limit, a statement that would write. Each is audited before it is
/// refused, long SQL cut with its length and hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sql_attempts_are_audited_before_they_are_refused() {
    let server = TestServer::start().await;
    let admin = server.user("admin").await;
    let carol = server.user("carol").await;
    let mallory = server.user("mallory").await;
    admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    assert_error(&mallory.post("/v1/admin/sql", json!({"sql": "SELECT 'mallory-was-here'"})).await, 403, "forbidden");
    let long = format!("SELECT '{}' AS padding", "x".repeat(70 * 1024));
    let message = assert_error(&carol.post("/v1/admin/sql", json!({"sql": long})).await, 413, "too_large");
    assert!(message.contains("sql_max_bytes"), "{message}");
    let message = assert_error(&carol.post("/v1/admin/sql", json!({"sql": "SELECT 1 AS one INTO kept"})).await, 400, "bad_request");
    assert!(message.contains("only queries"), "{message}");
    let message = assert_error(&carol.post("/v1/admin/sql", json!({"sql": "SELECT * FROM kept"})).await, 400, "bad_request");
    assert!(message.contains("kept"), "{message}");
    // A result over the HTTP cap is stopped while it streams.
    let message = assert_error(&carol.post("/v1/admin/sql", json!({"sql": "SELECT * FROM generate_series(1, 200000)"})).await, 413, "too_large");
    assert!(message.contains("LIMIT"), "{message}");

    let rows = crate::harness::poll_sql(&carol, "SELECT actor_id, details FROM audit WHERE action = 'sql.query' ORDER BY ts", |rows| {
        let text = rows.to_string();
        text.contains("mallory-was-here") && text.contains("too_long") && text.contains("INTO kept")
    })
    .await;
    let rows = rows.as_array().unwrap();
    let forbidden = rows.iter().find(|row| row[1].as_str().unwrap().contains("mallory-was-here")).unwrap();
    assert_eq!(forbidden[0], mallory.user_id.as_str());
    assert!(forbidden[1].as_str().unwrap().contains(r#""refused":"forbidden""#), "{forbidden}");
    let cut = rows.iter().find(|row| row[1].as_str().unwrap().contains("too_long")).unwrap();
    let details: serde_json::Value = serde_json::from_str(cut[1].as_str().unwrap()).unwrap();
    assert_eq!(details["sqlBytes"], long.len());
    assert_eq!(details["truncated"], true);
    assert!(details["sql"].as_str().unwrap().len() <= 4096);
}

/// A role can be taken back, by an administrator only, and the taking is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_revoked_by_administrators_and_audited() {
    let server = TestServer::start().await;
    let admin = server.user("admin").await;
    let carol = server.user("carol").await;
    let mallory = server.user("mallory").await;
    admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    let (status, _) = carol.post("/v1/admin/sql", json!({"sql": "SELECT 1"})).await;
    assert_eq!(status, 200);
    assert_error(&mallory.delete(&format!("/v1/admin/roles/{}/compliance", carol.user_id)).await, 403, "forbidden");
    assert_error(&admin.delete(&format!("/v1/admin/roles/{}/root", carol.user_id)).await, 400, "bad_request");
    let message = assert_error(&admin.delete(&format!("/v1/admin/roles/{}/admin", admin.user_id)).await, 400, "bad_request");
    assert!(message.contains("own admin role"), "{message}");
    let (status, body) = admin.delete(&format!("/v1/admin/roles/{}/compliance", carol.user_id)).await;
    assert_eq!(status, 204, "{body}");
    assert_error(&carol.post("/v1/admin/sql", json!({"sql": "SELECT 1"})).await, 403, "forbidden");
    // Given back, the analyst finds the revocation in the audit log.
    admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    let rows = query_until(&carol, "SELECT actor_id, details FROM audit WHERE action = 'role.revoke'", 1).await;
    assert_eq!(rows[0][0], admin.user_id.as_str());
    assert!(rows[0][1].as_str().unwrap().contains(carol.user_id.as_str()), "{rows}");
}

/// A heavy query over HTTP stops when its client goes away (it would
/// otherwise run to its 60 s timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_stops_when_its_http_client_goes_away() {
    let server = TestServer::start().await;
    let admin = server.user("admin").await;
    admin.post("/v1/admin/roles", json!({"userId": admin.user_id, "role": "compliance"})).await;
    let running = || async {
        let (_, metrics) = admin.get("/metrics").await;
        let metrics = metrics.as_str().unwrap().to_string();
        metrics.lines().find_map(|line| line.strip_prefix("confab_sql_statements_running ")).unwrap().trim().parse::<u64>().unwrap()
    };
    // A client on raw TCP: it sends the request, then hangs up without waiting.
    let body = json!({"sql": "SELECT count(*) FROM generate_series(1, 10000000) a, generate_series(1, 10000000) b"}).to_string();
    let address = admin.base.trim_start_matches("http://").to_string();
    let request = format!(
        "POST /v1/admin/sql HTTP/1.1\r\nHost: confab\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        admin.token.as_ref().unwrap(),
        body.len()
    );
    let mut client = std::net::TcpStream::connect(&address).unwrap();
    std::io::Write::write_all(&mut client, request.as_bytes()).unwrap();
    let mut seen_running = false;
    for _ in 0..40 {
        if running().await == 1 {
            seen_running = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen_running, "the query runs");
    drop(client);
    let mut stopped = false;
    for _ in 0..100 {
        if running().await == 0 {
            stopped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(stopped, "the statement stops within seconds of its client leaving, not at its timeout");
}
