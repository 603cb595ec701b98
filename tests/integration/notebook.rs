//! The compliance notebook (`notebooks/compliance.ipynb`), run top to bottom
//! by Jupyter's own client against a seeded server over the PostgreSQL
//! protocol, so that it cannot rot.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::{poll_sql, query_until, test_config, TestServer};

fn notebook_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks").join("compliance.ipynb")
}

fn jupyter_available() -> bool {
    let probe = Command::new("python3").args(["-c", "import psycopg, nbclient, nbformat, ipykernel"]).output();
    if probe.is_ok_and(|output| output.status.success()) {
        return true;
    }
    if std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_some() {
        panic!("python3 lacks psycopg, nbclient, nbformat or ipykernel: tests/run installs them");
    }
    eprintln!("skipped: python3 lacks psycopg, nbclient, nbformat or ipykernel; tests/run installs them");
    false
}

/// The printed output of each code cell, in order.
fn code_outputs(notebook: &Value) -> Vec<String> {
    let cells = notebook["cells"].as_array().unwrap();
    cells
        .iter()
        .filter(|cell| cell["cell_type"] == "code")
        .map(|cell| {
            let outputs = cell["outputs"].as_array().cloned().unwrap_or_default();
            outputs
                .iter()
                .filter_map(|output| match &output["text"] {
                    Value::String(text) => Some(text.clone()),
                    Value::Array(lines) => Some(lines.iter().filter_map(Value::as_str).collect::<String>()),
                    _ => None,
                })
                .collect::<String>()
        })
        .collect()
}

#[test]
fn the_committed_notebook_has_no_outputs() {
    let notebook: Value = serde_json::from_str(&std::fs::read_to_string(notebook_path()).unwrap()).unwrap();
    for cell in notebook["cells"].as_array().unwrap().iter().filter(|cell| cell["cell_type"] == "code") {
        assert_eq!(cell["outputs"], json!([]), "clear the outputs before committing: {}", cell["source"]);
        assert_eq!(cell["execution_count"], Value::Null, "clear the outputs before committing: {}", cell["source"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compliance_notebook_answers_its_four_questions() {
    if !jupyter_available() {
        return;
    }
    let temporary = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = test_config(temporary.path());
    config.sql_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let server = TestServer::start_with(config).await;
    let admin = server.user("admin").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    let group = admin.conversation("group", &[&bob, &carol]).await;
    let other = admin.conversation("group", &[&bob]).await;
    let launch = admin.say(&group, "n1", "the launch is monday").await;
    let party = bob.say(&group, "n2", "is there a LAUNCH party?").await;
    bob.say(&other, "n3", "unrelated").await;
    admin.patch(&format!("/v1/messages/{}", launch["messageId"].as_str().unwrap()), json!({"body": "the launch is tuesday"})).await;
    admin.delete(&format!("/v1/messages/{}", party["messageId"].as_str().unwrap())).await;
    // Five message events and three users in the history.
    query_until(&carol, "SELECT 1 FROM message_events CROSS JOIN users", 5 * 3).await;

    let now = confab_schemas::ids::now_ms();
    let executed = temporary.path().join("executed.ipynb");
    let runner = Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks").join("run.py");
    let output = tokio::task::spawn_blocking({
        let executed = executed.clone();
        let group = group.clone();
        move || {
            Command::new("python3")
                .arg(runner)
                .arg(notebook_path())
                .arg(&executed)
                .env("CONFAB_PG_HOST", "127.0.0.1")
                .env("CONFAB_PG_PORT", port.to_string())
                .env("CONFAB_PG_USER", "carol")
                .env("CONFAB_PG_PASSWORD", "password123")
                .env("CONFAB_CONVERSATION_ID", &group)
                .env("CONFAB_FROM_DAY", confab_query::rows::day_of(now - 86_400_000))
                .env("CONFAB_TO_DAY", confab_query::rows::day_of(now + 86_400_000))
                .env("CONFAB_USERNAME", "admin")
                .env("CONFAB_TERM", "launch")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(output.status.success(), "the notebook failed: {}", String::from_utf8_lossy(&output.stderr));
    let notebook: Value = serde_json::from_str(&std::fs::read_to_string(&executed).unwrap()).unwrap();
    let outputs = code_outputs(&notebook);
    // Cells: parameters, connection, the four questions, close.
    let [_, _, said, changes, mentions, activity, _] = outputs.as_slice() else { panic!("unexpected cells: {outputs:?}") };

    let lines = |text: &str| text.lines().skip(2).map(|line| line.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>();
    let said = lines(said);
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(said[0].contains("admin 1 the launch is monday the launch is tuesday True False"), "{said:?}");
    assert!(said[1].contains("bob 2 is there a LAUNCH party? False True"), "{said:?}");
    assert_eq!(said[2], "(2 rows)");

    let changes = lines(changes);
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(changes[0].contains(&format!("edited {group} 1 the launch is monday the launch is tuesday")), "{changes:?}");
    assert!(changes[1].contains(&format!("deleted {group} 2 is there a LAUNCH party?")), "{changes:?}");

    let mentions = lines(mentions);
    assert_eq!(mentions.last().unwrap(), "(3 rows)", "{mentions:?}");
    assert!(mentions.iter().all(|line| !line.contains("unrelated")), "{mentions:?}");

    let activity = lines(activity);
    let today = confab_query::rows::day_of(now);
    assert_eq!(activity, vec![format!("{today} 3 1 1 2"), "(1 rows)".to_string()]);

    // The notebook's queries are audited like any other: its term search,
    // by carol, over the PostgreSQL protocol.
    let from_notebook = |rows: &Value| {
        rows.as_array().is_some_and(|rows| {
            rows.iter().any(|row| {
                let details: Value = serde_json::from_str(row[0].as_str().unwrap_or("{}")).unwrap_or(Value::Null);
                details["via"] == "pgwire" && details["sql"].as_str().is_some_and(|sql| sql.contains("ILIKE '%launch%'"))
            })
        })
    };
    let audit_sql = format!("SELECT details FROM audit WHERE action = 'sql.query' AND actor_id = '{}'", carol.user_id);
    poll_sql(&carol, &audit_sql, from_notebook).await;
}
