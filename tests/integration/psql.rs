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

/// Starts a server with the PostgreSQL listener, a compliance account
/// `carol` and a plain account `mallory`.
async fn sql_server(configure: impl FnOnce(&mut confab::config::Config)) -> (TestServer, crate::harness::Client, u16, tempfile::TempDir) {
    let temporary = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = test_config(temporary.path());
    config.sql_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    configure(&mut config);
    let server = TestServer::start_with(config).await;
    let admin = server.user("admin").await;
    let carol = server.user("carol").await;
    server.user("mallory").await;
    admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    (server, carol, port, temporary)
}

async fn psql_async(port: u16, user: &'static str, sql: String) -> (bool, String) {
    tokio::task::spawn_blocking(move || psql(port, user, "password123", &sql)).await.unwrap()
}

/// What an attacker with a compliance login tries: change the shared
/// settings, keep a copy of the history past erasure, write through a CTE,
/// read files. Each is refused, and nothing one connection does reaches the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compliance_login_cannot_write_change_settings_or_read_files() {
    let (_server, carol, port, _temporary) = sql_server(|_| {}).await;
    for (sql, expected) in [
        ("SET datafusion.runtime.memory_limit = '1K'", "is not allowed"),
        ("SET datafusion.execution.time_zone = '+05:00'", "is not allowed"),
        ("SELECT 1 AS one INTO leaked", "only queries"),
        ("WITH x AS (SELECT 1) INSERT INTO audit SELECT * FROM audit", "only queries"),
        ("CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'", "ERROR"),
        ("SELECT * FROM '/etc/passwd'", "passwd"),
        ("PREPARE p AS SELECT 1", "only queries"),
    ] {
        let (ok, text) = psql_async(port, "carol", sql.to_string()).await;
        assert!(!ok && text.contains(expected), "{sql}: {text}");
    }
    // Nothing was created: a new connection does not see `leaked`.
    let (ok, text) = psql_async(port, "carol", "SELECT * FROM leaked".to_string()).await;
    assert!(!ok && text.contains("leaked"), "{text}");
    // What clients send on connect is answered, for this connection only.
    let (ok, text) = psql_async(port, "carol", "SET application_name = 'notebook'; SHOW application_name".to_string()).await;
    assert!(ok && text.trim().ends_with("\nnotebook"), "{text}");
    let (ok, text) = psql_async(port, "carol", "SET extra_float_digits = 3; SET TIME ZONE 'UTC'; SELECT 41 + 1".to_string()).await;
    assert!(ok && text.trim().ends_with("\n42"), "{text}");
    // Every attempt is in the audit log, the refused and the unparsable too.
    let (ok, text) = psql_async(port, "carol", "SELEC nonsense FROM".to_string()).await;
    assert!(!ok, "{text}");
    crate::harness::poll_sql(&carol, "SELECT details FROM audit WHERE action = 'sql.query' AND details LIKE '%pgwire%'", |rows| {
        let text = rows.to_string();
        text.contains("SELEC nonsense") && text.contains("memory_limit") && text.contains("INTO leaked")
    })
    .await;
}

/// A heavy statement stops at the session's `statement_timeout`, and a
/// CancelRequest (Ctrl-C in psql) stops the one running; the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_statements_stop_at_their_timeout_and_on_cancel() {
    let (server, _carol, port, _temporary) = sql_server(|_| {}).await;
    let heavy = "SELECT count(*) FROM generate_series(1, 1000000000) a, generate_series(1, 1000000000) b";
    let (ok, text) = psql_async(port, "carol", format!("SET statement_timeout = '500ms'; {heavy}")).await;
    assert!(!ok && text.contains("limit and was stopped"), "{text}");

    let child = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "carol", "-d", "confab", "-At", "-c", heavy])
        .env("PGPASSWORD", "password123")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("cancelled"), "{text}");
    // Chat is served throughout, and the next statement runs.
    let (status, _) = server.client().get("/healthz").await;
    assert_eq!(status, 200);
    let (ok, text) = psql_async(port, "carol", "SELECT 1".to_string()).await;
    assert!(ok && text.trim() == "1", "{text}");
}

/// The extended protocol (psycopg): parameters, binary results, and the
/// same refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_protocol_binds_parameters_and_refuses_the_same() {
    let (_server, _carol, port, _temporary) = sql_server(|_| {}).await;
    let script = format!(
        r#"
import psycopg
with psycopg.connect(host="127.0.0.1", port={port}, user="carol", password="password123", dbname="confab") as conn:
    print(conn.execute("SELECT %s::bigint + 1 AS n", [41]).fetchone()[0])
    print(conn.cursor(binary=True).execute("SELECT count(*) AS n FROM audit WHERE action = %s", ["nothing"]).fetchone()[0])
    try:
        conn.execute("SELECT %s AS one INTO leaked", [1])
        print("ran")
    except psycopg.Error as error:
        print("refused:", error.sqlstate)
"#
    );
    let output = tokio::task::spawn_blocking(move || Command::new("python3").args(["-c", &script]).output().unwrap()).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert_eq!(text.lines().collect::<Vec<_>>(), vec!["42", "0", "refused: 25006"], "{text}");
}

/// Over the connection cap a new connection is told so and closed; a
/// slot frees when one closes. Wrong passwords are limited per account
/// and address, as over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_wrong_passwords_limited() {
    let (_server, _carol, port, _temporary) = sql_server(|config| {
        config.sql.max_connections = 2;
        config.gateway.rate_limits.enabled = true;
        config.gateway.rate_limits.login_per_ip = Some(confab_gateway::rate_limit::Rate { per_second: 100.0, burst: 1_000 });
        config.gateway.rate_limits.login_failures_per_account_and_ip = Some(confab_gateway::rate_limit::Rate { per_second: 0.001, burst: 3 });
    })
    .await;
    // Sockets that never log in do not take the sessions' slots.
    let idle: Vec<std::net::TcpStream> = (0..4).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, text) = psql_async(port, "carol", "SELECT 1".to_string()).await;
    assert!(ok, "{text}");
    // Two logged-in sessions (held open by a slow query), then the third is refused.
    let heavy = "SELECT count(*) FROM generate_series(1, 1000000000) a, generate_series(1, 1000000000) b";
    let holders: Vec<std::process::Child> = (0..2)
        .map(|_| {
            Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "carol", "-d", "confab", "-At", "-c", heavy])
                .env("PGPASSWORD", "password123")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, text) = psql_async(port, "carol", "SELECT 1".to_string()).await;
    assert!(!ok && text.contains("too many sessions"), "{text}");
    // Ctrl-C: psql cancels its query and leaves, freeing its slot.
    for mut holder in holders {
        assert!(Command::new("kill").args(["-INT", &holder.id().to_string()]).status().unwrap().success());
        holder.wait().unwrap();
    }
    drop(idle);
    let mut answer = (false, String::new());
    for _ in 0..50 {
        answer = psql_async(port, "carol", "SELECT 1".to_string()).await;
        if answer.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.0, "{}", answer.1);

    for _ in 0..3 {
        let (ok, text) = tokio::task::spawn_blocking(move || psql(port, "carol", "wrong-password", "SELECT 1")).await.unwrap();
        assert!(!ok && text.contains("login refused"), "{text}");
    }
    let (ok, text) = tokio::task::spawn_blocking(move || psql(port, "carol", "wrong-password", "SELECT 1")).await.unwrap();
    assert!(!ok && text.contains("too many login attempts"), "{text}");
}

/// With a certificate, passwords are taken only over TLS: psql with
/// `sslmode=require` gets in, a plain connection is refused before it
/// sends its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_passwords_are_taken_only_over_tls() {
    let certificates = tempfile::tempdir().unwrap();
    let (cert, key) = crate::doors::certificate(certificates.path());
    let (_server, _carol, port, _temporary) = sql_server(|config| {
        config.sql.tls_cert_file = Some(cert);
        config.sql.tls_key_file = Some(key);
    })
    .await;
    let run = move |mode: &'static str| {
        let output = Command::new("psql")
            .arg(format!("host=127.0.0.1 port={port} user=carol dbname=confab sslmode={mode}"))
            .args(["-At", "-c", "SELECT 40 + 2"])
            .env("PGPASSWORD", "password123")
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap();
        (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    };
    let (ok, text) = tokio::task::spawn_blocking(move || run("require")).await.unwrap();
    assert!(ok && text.trim() == "42", "{text}");
    let (ok, text) = tokio::task::spawn_blocking(move || run("disable")).await.unwrap();
    assert!(!ok && text.contains("only over TLS"), "{text}");
}
