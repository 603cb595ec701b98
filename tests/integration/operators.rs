//! The operators' commands, run as the real `confab` binary against a live
//! server: `confab admin` creates a user with a role, lists and logs out
//! their devices (audited; the device's token stops working), and
//! `confab status` reports the consumers, the log and the disk, as JSON and
//! as tables; a caller without the admin role is refused in the API's words.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::harness::{query_until, TestServer};

struct Cli {
    base: String,
    token_file: std::path::PathBuf,
}

impl Cli {
    /// Runs `confab <args>` with `stdin`; returns (success, stdout, stderr).
    fn run(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(args)
            .arg("--url")
            .arg(&self.base)
            .arg("--token-file")
            .arg(&self.token_file)
            .env_remove("CONFAB_TOKEN")
            .env_remove("CONFAB_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
    }

    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let (success, stdout, stderr) = self.run(args, stdin);
        assert!(success, "confab {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }
}

// The CLI runs block a worker each: the server keeps the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_manage_users_and_devices_and_read_the_status_from_the_cli() {
    let server = TestServer::start().await;
    let admin = server.user("admin").await;
    let folder = tempfile::tempdir().unwrap();
    let token_file = folder.path().join("token");
    let cli = Cli { base: server.base.clone(), token_file: token_file.clone() };

    // Log in from the CLI (the password on stdin); the token goes to a file.
    let login = Cli { base: cli.base.clone(), token_file: folder.path().join("not-yet") };
    let token = login.ok(&["admin", "login", "admin"], "password123\n");
    assert!(token.trim().starts_with("ey"), "a JWT: {token}");
    std::fs::write(&token_file, token.trim()).unwrap();

    // A compliance user, created with the role.
    let out = cli.ok(&["admin", "create-user", "carol", "--role", "compliance"], "carol's secret\n");
    assert!(out.starts_with("created carol (u_") && out.trim_end().ends_with("with compliance"), "{out}");
    let carol = server.client().login("carol", "carol's secret").await;
    assert_eq!(carol.post("/v1/admin/sql", json!({"sql": "SELECT 1 AS one"})).await.0, 200, "carol has the compliance role");

    // Her devices, by username, then one logged out: its token stops working.
    let listed: Value = serde_json::from_str(&cli.ok(&["admin", "devices", "carol", "--json"], "")).unwrap();
    let devices = listed["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{listed}");
    assert_eq!(devices[0]["deviceId"], json!(carol.device_id));
    let table = cli.ok(&["admin", "devices", &carol.user_id], "");
    assert!(table.starts_with("DEVICE") && table.contains(&carol.device_id), "{table}");
    let out = cli.ok(&["admin", "logout", "carol", &carol.device_id], "");
    assert_eq!(out.trim(), format!("logged out {} of carol", carol.device_id));
    assert_eq!(carol.get("/v1/conversations").await.0, 401, "the logged-out device's token answers 401");
    let (success, _, stderr) = cli.run(&["admin", "logout", "carol", "d_nonexistent"], "");
    assert!(!success && stderr.contains("404 not_found"), "{stderr}");

    // Roles by username, both ways.
    cli.ok(&["admin", "grant", "carol", "admin"], "");
    cli.ok(&["admin", "revoke", "carol", "admin"], "");
    let (success, _, stderr) = cli.run(&["admin", "grant", "carol", "superuser"], "");
    assert!(!success && stderr.contains("`superuser` is not a role"), "{stderr}");

    // The status, with something in the log.
    let bob = server.user("bob").await;
    let dm = admin.conversation("dm", &[&bob]).await;
    admin.say(&dm, "k1", "hello").await;
    let status: Value = serde_json::from_str(&cli.ok(&["status", "--json"], "")).unwrap();
    let consumers: Vec<&str> = status["consumers"].as_array().unwrap().iter().map(|consumer| consumer["name"].as_str().unwrap()).collect();
    for expected in ["fanout", "history", "state"] {
        assert!(consumers.contains(&expected), "{expected} in {consumers:?}");
    }
    assert!(status["log"]["records"].as_u64().unwrap() >= 5, "{status}");
    assert!(status["log"]["bytes"].as_u64().unwrap() > 0, "{status}");
    let disk: Vec<&str> = status["disk"].as_array().unwrap().iter().map(|part| part["part"].as_str().unwrap()).collect();
    assert!(disk.contains(&"log") && disk.contains(&"state"), "{disk:?}");
    assert!(status["ready"].as_array().unwrap().iter().all(|part| part["ready"] == json!(true)), "{status}");
    let table = cli.ok(&["status"], "");
    assert!(table.contains("CONSUMER") && table.contains("fanout") && table.contains("log: "), "{table}");

    // Not an administrator: refused, in the API's words.
    std::fs::write(&token_file, bob.token.as_ref().unwrap()).unwrap();
    let (success, _, stderr) = cli.run(&["status"], "");
    assert!(!success && stderr.contains("403 forbidden"), "{stderr}");
    let (success, _, stderr) = cli.run(&["admin", "devices", "carol"], "");
    assert!(!success && stderr.contains("403 forbidden"), "{stderr}");

    // The logout was audited (carol's compliance role reads the audit table).
    let logged_out = carol.device_id.clone();
    let carol = server.client().login("carol", "carol's secret").await;
    let rows = query_until(&carol, "SELECT actor_id, details FROM audit WHERE action = 'device.logout'", 1).await;
    assert_eq!(rows[0][0], json!(admin.user_id), "{rows}");
    assert!(rows[0][1].as_str().unwrap().contains(&logged_out), "{rows}");
    server.stop().await;
}
