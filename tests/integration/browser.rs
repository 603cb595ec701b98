//! The web client in two real headless Chromiums (Debian's `chromium` and
//! `chromium-driver`, driven by Selenium from PyPI; nothing downloaded at
//! test time): `tests/browser/web_client.py` walks two people through
//! signing up, a dm, live messages, ticks to read, typing, an image and its
//! thumbnail, search with highlights, and catching up after being away.
//! A screenshot of each step is kept in
//! `$CARGO_TARGET_DIR/browser-artifacts/` (or `target/…`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::harness::TestServer;

fn browser_available() -> bool {
    let selenium = Command::new("python3").args(["-c", "import selenium"]).output().is_ok_and(|output| output.status.success());
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().any(|path| Path::new(path).exists());
    let driver = Path::new("/usr/bin/chromedriver").exists();
    if selenium && chromium && driver {
        return true;
    }
    assert!(
        std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_none(),
        "the browser tests need chromium, chromium-driver and python3's selenium (selenium {selenium}, chromium {chromium}, driver {driver}): tests/run installs them"
    );
    eprintln!("skipped: chromium, chromium-driver or selenium is missing; tests/run installs them");
    false
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("browser-artifacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_two_browsers() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start().await;
    let artifacts = artifacts_dir();
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/web_client.py");
    let base = server.base.clone();
    let output = tokio::task::spawn_blocking({
        let artifacts = artifacts.clone();
        move || Command::new("python3").arg(script).arg(&base).arg(&artifacts).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser walk failed (screenshots in {}):\n{stdout}\n{stderr}", artifacts.display());
    let shots = std::fs::read_dir(&artifacts).unwrap().filter(|entry| entry.as_ref().unwrap().path().extension().is_some_and(|ext| ext == "png")).count();
    assert!(shots >= 16, "a screenshot per step and browser: {shots}");

    // What the browsers did is what the server holds: five messages in
    // order, the picture's upload attached and ready.
    let alice = server.client().login("alice", "correct horse").await;
    let (_, list) = alice.get("/v1/conversations").await;
    let dm = list["conversations"][0]["conversationId"].as_str().unwrap().to_string();
    let messages = alice.all_messages(&dm).await;
    let bodies: Vec<&str> = messages.iter().map(|message| message["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["hello bob, are you there?", "yes, here!", "a picture", "while you were away", "and one more"]);
    assert_eq!(messages[2]["attachments"][0]["status"], json!("ready"), "{}", messages[2]);
    server.stop().await;
}
