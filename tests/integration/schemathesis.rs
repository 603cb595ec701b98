//! Schemathesis (PyPI) against the live server, from the `/openapi.json`
//! the server itself serves: generated requests for every documented
//! operation (bounded in examples per operation), checking that nothing
//! answers 5xx, every status is documented, every answer has its
//! documented content type and matches its schema (errors included: the
//! API's `{error: {code, message}}`).
//!
//! Left out: the WebSocket upgrade (its frames are in asyncapi.json), and
//! the three routes that can log the caller's own device out, which would
//! end the run's token halfway.

use std::process::Command;

use serde_json::json;

use crate::harness::TestServer;

fn schemathesis_available() -> bool {
    if Command::new("schemathesis").arg("--version").output().is_ok_and(|output| output.status.success()) {
        return true;
    }
    assert!(std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_none(), "schemathesis is missing: tests/run installs it (pip install schemathesis)");
    eprintln!("skipped: schemathesis is missing; tests/run installs it");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_against_the_openapi_document() {
    if !schemathesis_available() {
        return;
    }
    let server = TestServer::start().await;
    // Data for the generated requests to meet: an administrator (the first
    // account), a second user, a dm with a message.
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    alice.say(&dm, "k1", "hello").await;
    let (status, _) = alice.post("/v1/admin/roles", json!({"userId": alice.user_id, "role": "compliance"})).await;
    assert_eq!(status, 204);
    let token = alice.token.clone().unwrap();
    let base = server.base.clone();
    let reports = tempfile::tempdir().unwrap();
    let output = tokio::task::spawn_blocking({
        let reports = reports.path().to_path_buf();
        move || {
            Command::new("schemathesis")
                .arg("run")
                .arg(format!("{base}/openapi.json"))
                .args(["--url", &base])
                .args(["--header", &format!("Authorization: Bearer {token}")])
                .args(["--max-examples", "10"])
                .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
                .args(["--exclude-path", "/v1/ws", "--exclude-path", "/v1/sessions/current", "--exclude-path", "/v1/devices/{id}"])
                .args(["--exclude-path", "/v1/admin/users/{user_id}/devices/{device_id}"])
                .args(["--seed", "1"])
                .arg("--report-dir")
                .arg(&reports)
                .env("NO_COLOR", "1")
                // Its cache (`.schemathesis/`) goes there too, not into the checkout.
                .current_dir(&reports)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "schemathesis found failures:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("passed"), "{stdout}");
    // The server kept serving throughout.
    let (status, _) = alice.get("/v1/conversations").await;
    assert_eq!(status, 200);
    server.stop().await;
}
