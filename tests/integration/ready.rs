//! `/readyz`: a failing part is named while `/healthz` stays a liveness
//! probe; the history sink restarts by itself once the fault is gone.

use std::time::Duration;

use serde_json::json;

use crate::harness::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_history_sink_is_named_by_readyz_and_restarts_when_fixed() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let anonymous = server.client();
    let (status, body) = anonymous.get("/readyz").await;
    assert_eq!((status, body.clone()), (200, json!({"status": "ready"})), "{body}");

    // The table's folder becomes a file: every commit to it fails.
    let table = server.data_dir.join("history").join("message_events");
    let aside = server.data_dir.join("history").join("message_events.aside");
    std::fs::rename(&table, &aside).unwrap();
    std::fs::write(&table, b"not a folder").unwrap();
    let group = alice.conversation("group", &[]).await;
    alice.say(&group, "m1", "into a broken history").await;
    let mut answer = (0, json!(null));
    for _ in 0..150 {
        answer = anonymous.get("/readyz").await;
        if answer.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = answer;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("history_sink"), "{body}");
    assert_eq!(body["error"]["parts"][0]["part"], "history_sink", "{body}");
    // Liveness is unaffected: the process serves.
    assert_eq!(anonymous.get("/healthz").await.0, 200);
    let (_, metrics) = alice.get("/metrics").await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(metrics.contains("confab_ready{part=\"history_sink\"} 0"), "{metrics}");
    assert!(!metrics.contains("confab_history_sink_restarts_total 0\n"), "{metrics}");

    // Fixed: the sink starts again by itself and catches up.
    std::fs::remove_file(&table).unwrap();
    std::fs::rename(&aside, &table).unwrap();
    let mut status = 0;
    for _ in 0..900 {
        status = anonymous.get("/readyz").await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the sink recovers without a restart");
}
