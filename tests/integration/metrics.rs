//! `/metrics` as a scraper and the shipped Grafana dashboard read it: after
//! a message is sent over the WebSocket and over HTTP and delivered live,
//! the families the design names carry what happened, the whole page parses
//! with Prometheus' own Python parser (PyPI `prometheus-client`), and every
//! metric `docs/monitoring/grafana-dashboard.json` queries is on the page.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::harness::{Client, TestServer};
use crate::ws::Ws;

async fn scrape(client: &Client) -> String {
    let (status, body) = client.get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.as_str().unwrap().to_string()
}

/// The value of the sample `name{labels}` (exact label text), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' '))).map(|value| value.trim().parse().unwrap())
}

/// Families by Prometheus' parser, or `None` when the parser is not
/// installed (then required only under `CONFAB_REQUIRE_EXTERNAL`).
fn parse_with_prometheus(text: &str) -> Option<BTreeSet<String>> {
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as parse\nfor family in parse(sys.stdin.read()):\n    for s in family.samples:\n        print(s.name)\n";
    let available = Command::new("python3").args(["-c", "import prometheus_client"]).output().is_ok_and(|output| output.status.success());
    if !available {
        assert!(
            std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_none(),
            "python3's prometheus_client is missing: tests/run installs it (pip install prometheus-client)"
        );
        eprintln!("skipped the parser check: pip install prometheus-client");
        return None;
    }
    let mut child = Command::new("python3").args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "Prometheus' parser refused /metrics: {}\n{text}", String::from_utf8_lossy(&output.stderr));
    Some(String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect())
}

/// Every `confab_*` name in the dashboard's expressions.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(start) = rest.find("confab_") {
                let tail = &rest[start..];
                let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_a_dashboard_reads() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let mut bob_ws = Ws::connect(&bob, None).await;
    let mut alice_ws = Ws::connect(&alice, None).await;

    // One send over the WebSocket, one over HTTP, both delivered live to bob.
    alice_ws.send(json!({"type": "message.send", "id": "1", "conversationId": dm, "clientMsgId": "w1", "body": "over the socket"})).await;
    assert_eq!(alice_ws.next_of("ack").await["message"]["body"], "over the socket");
    assert_eq!(bob_ws.next_message().await["message"]["body"], "over the socket");
    alice.say(&dm, "h1", "over http").await;
    assert_eq!(bob_ws.next_message().await["message"]["body"], "over http");

    let text = scrape(&alice).await;
    assert_eq!(sample(&text, "confab_send_duration_seconds_count{transport=\"ws\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "confab_send_duration_seconds_count{transport=\"http\"}"), Some(1.0), "{text}");
    // Two messages written on bob's socket (and whatever receipts reached alice's).
    assert!(sample(&text, "confab_delivery_lag_seconds_count").unwrap() >= 2.0, "{text}");
    assert_eq!(sample(&text, "confab_ws_connected_users"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "confab_ws_connected_devices"), Some(2.0), "{text}");
    assert!(sample(&text, "confab_log_fsync_duration_seconds_count").unwrap() >= 2.0, "every durable append waited for an fsync: {text}");
    let consumer_lags: Vec<&str> = text.lines().filter(|line| line.starts_with("confab_log_consumer_lag_records{")).collect();
    assert!(consumer_lags.iter().any(|line| line.contains("consumer=\"fanout\"")), "the fanout pipeline is a consumer: {text}");
    assert!(text.contains("confab_history_sink_lag_records{partition=\"0\"}"), "{text}");

    // Closing sockets shows in the gauges.
    drop(bob_ws);
    drop(alice_ws);
    let mut devices = None;
    for _ in 0..100 {
        let text = scrape(&alice).await;
        devices = sample(&text, "confab_ws_connected_devices");
        if devices == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(devices, Some(0.0));

    // What a Prometheus and the shipped dashboard make of the page.
    let text = scrape(&alice).await;
    let mut families: BTreeSet<String> = match parse_with_prometheus(&text) {
        Some(samples) => samples,
        None => text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()).map(|line| line.split(['{', ' ']).next().unwrap().to_string()).collect(),
    };
    // A family with no samples yet (no push was sent) is still declared.
    families.extend(text.lines().filter_map(|line| line.strip_prefix("# TYPE ")).map(|rest| rest.split(' ').next().unwrap().to_string()));
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|name| {
            // A histogram is queried by its `_bucket`/`_count`; a counter by its `_total`.
            !families.contains(name) && !families.contains(&format!("{name}_bucket")) && !families.contains(&format!("{name}_count"))
        })
        .collect();
    assert!(missing.is_empty(), "the dashboard queries metrics /metrics does not have: {missing:?}\n{text}");
    server.stop().await;
}
