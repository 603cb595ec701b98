//! Legal holds, retention and erasure: holds refuse both, erasure leaves no
//! body on disk, retention deletes whole messages, the live store deletes
//! the same messages, and every step is audited.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::harness::{assert_error, sql_rows as sql, sql_until, Client, TestServer};

/// Whether any file of the table holds these bytes.
fn table_files_contain(data_dir: &Path, table: &str, needle: &[u8]) -> bool {
    fn walk(folder: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(folder).unwrap().flatten().any(|entry| {
            let path = entry.path();
            if path.is_dir() {
                return walk(&path, needle);
            }
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(needle.len()).any(|window| window == needle)
        })
    }
    walk(&data_dir.join("history").join(table), needle)
}

struct Cast {
    admin: Client,
    bob: Client,
    carol: Client,
    group: String,
}

async fn cast(server: &TestServer) -> Cast {
    let admin = server.user("admin").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let (status, _) = admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    assert_eq!(status, 204);
    let group = admin.conversation("group", &[&bob]).await;
    Cast { admin, bob, carol, group }
}

#[tokio::test]
async fn holds_refuse_erasure_and_retention_until_released() {
    let server = TestServer::start().await;
    let Cast { admin, bob, carol, group } = cast(&server).await;
    bob.say(&group, "b1", "bob was here").await;

    assert_error(&bob.post("/v1/admin/holds", json!({"userId": bob.user_id, "reason": "mine"})).await, 403, "forbidden");
    assert_error(&carol.post("/v1/admin/holds", json!({"userId": "u_nobody", "reason": "case 7"})).await, 404, "not_found");
    let message = assert_error(&carol.post("/v1/admin/holds", json!({"userId": bob.user_id})).await, 400, "bad_request");
    assert!(message.contains("`reason`"), "{message}");
    assert_error(&carol.post("/v1/admin/holds", json!({"userId": bob.user_id, "conversationId": group, "reason": "x"})).await, 400, "bad_request");

    let (status, hold) = carol.post("/v1/admin/holds", json!({"userId": bob.user_id, "reason": "case 7"})).await;
    assert_eq!(status, 201, "{hold}");
    let hold_id = hold["holdId"].as_str().unwrap().to_string();
    assert_eq!(
        (hold["targetType"].as_str(), hold["targetId"].as_str(), hold["placedBy"].as_str()),
        (Some("user"), Some(bob.user_id.as_str()), Some(carol.user_id.as_str()))
    );
    let (_, listed) = carol.get("/v1/admin/holds").await;
    assert_eq!(listed["holds"], json!([hold]));
    assert_error(&admin.get("/v1/admin/holds").await, 403, "forbidden");

    // A user hold covers their messages everywhere: both primitives refuse.
    let message = assert_error(&carol.post("/v1/admin/erasure", json!({"userId": bob.user_id})).await, 409, "conflict");
    assert!(message.contains(&hold_id), "{message}");
    let now = confab_schemas::ids::now_ms();
    let message = assert_error(&carol.post("/v1/admin/retention", json!({"conversationId": group, "before": now})).await, 409, "conflict");
    assert!(message.contains(&hold_id), "{message}");
    // Refused means untouched, in the live store too.
    let live = bob.all_messages(&group).await;
    assert_eq!((live[0]["body"].as_str(), live[0]["deleted"].as_bool()), (Some("bob was here"), Some(false)));

    // The hold survives a restart (it is in `legal_holds`), then is released.
    let mut server = server;
    server.restart().await;
    let carol = carol.with_base(&server.base);
    let bob = bob.with_base(&server.base);
    let (_, listed) = carol.get("/v1/admin/holds").await;
    assert_eq!(listed["holds"], json!([hold]));
    let (status, _) = carol.delete(&format!("/v1/admin/holds/{hold_id}")).await;
    assert_eq!(status, 204);
    assert_error(&carol.delete(&format!("/v1/admin/holds/{hold_id}")).await, 404, "not_found");

    // A conversation hold covers everyone's messages in it, erasure included.
    let (status, conversation_hold) = carol.post("/v1/admin/holds", json!({"conversationId": group, "reason": "case 8"})).await;
    assert_eq!(status, 201);
    let message = assert_error(&carol.post("/v1/admin/erasure", json!({"userId": bob.user_id})).await, 409, "conflict");
    assert!(message.contains(conversation_hold["holdId"].as_str().unwrap()), "{message}");
    carol.delete(&format!("/v1/admin/holds/{}", conversation_hold["holdId"].as_str().unwrap())).await;
    let (status, erased) = carol.post("/v1/admin/erasure", json!({"userId": bob.user_id})).await;
    assert_eq!((status, erased["erasedRows"].as_u64(), erased["deletedMessages"].as_u64()), (200, Some(1), Some(1)), "{erased}");

    let history = sql(&carol, "SELECT hold_id, change FROM legal_holds ORDER BY ts, change DESC").await;
    assert_eq!(history.as_array().unwrap().len(), 4, "{history}");
    sql_until(
        &carol,
        "SELECT action FROM audit WHERE action LIKE 'hold.%' OR action LIKE 'erasure.%' OR action LIKE 'retention.%' ORDER BY ts, log_offset",
        json!([
            ["hold.place"],
            ["erasure.request"],
            ["retention.delete"],
            ["hold.release"],
            ["hold.release"],
            ["hold.place"],
            ["erasure.request"],
            ["hold.release"],
            ["erasure.request"],
            ["erasure.done"]
        ]),
    )
    .await;
}

// `as_of` needs the multi-threaded runtime (as the server has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_clears_a_users_bodies_from_the_tables_and_the_disk() {
    let server = TestServer::start().await;
    let Cast { admin, bob, carol, group } = cast(&server).await;
    admin.say(&group, "a1", "admin keeps this").await;
    let first = bob.say(&group, "b1", "bob-secret-body-one").await;
    bob.say(&group, "b2", "bob-secret-body-two").await;
    let first_id = first["messageId"].as_str().unwrap();
    bob.patch(&format!("/v1/messages/{first_id}"), json!({"body": "bob-secret-body-edited"})).await;
    let bodies = format!("SELECT sender_id, event_type, body FROM message_events WHERE conversation_id = '{group}' ORDER BY log_offset");
    sql_until(
        &carol,
        &bodies,
        json!([
            [admin.user_id, "created", "admin keeps this"],
            [bob.user_id, "created", "bob-secret-body-one"],
            [bob.user_id, "created", "bob-secret-body-two"],
            [bob.user_id, "edited", "bob-secret-body-edited"],
        ]),
    )
    .await;
    assert!(table_files_contain(&server.data_dir, "message_events", b"bob-secret-body-two"), "the body is on disk before the erasure");

    let (status, erased) = carol.post("/v1/admin/erasure", json!({"userId": bob.user_id})).await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!((erased["erasedRows"].as_u64(), erased["deletedMessages"].as_u64()), (Some(3), Some(2)), "{erased}");
    assert!(erased["filesRemoved"].as_u64().unwrap() >= 1, "{erased}");

    // In the live store bob's messages are deleted (devices were told); admin's stays.
    let live: Vec<(String, bool)> =
        admin.all_messages(&group).await.iter().map(|message| (message["body"].as_str().unwrap().to_string(), message["deleted"].as_bool().unwrap())).collect();
    assert_eq!(live, vec![("admin keeps this".to_string(), false), (String::new(), true), (String::new(), true)]);
    // In the history every body of bob's is gone; the deletes are recorded as carol's.
    let rows =
        sql(&carol, &format!("SELECT sender_id, event_type, body, actor_id FROM message_events WHERE conversation_id = '{group}' ORDER BY log_offset")).await;
    assert_eq!(
        rows,
        json!([
            [admin.user_id, "created", "admin keeps this", admin.user_id],
            [bob.user_id, "created", null, bob.user_id],
            [bob.user_id, "created", null, bob.user_id],
            [bob.user_id, "edited", null, bob.user_id],
            [bob.user_id, "deleted", null, carol.user_id],
            [bob.user_id, "deleted", null, carol.user_id],
        ])
    );
    for needle in ["bob-secret-body-one", "bob-secret-body-two", "bob-secret-body-edited"] {
        assert!(!table_files_contain(&server.data_dir, "message_events", needle.as_bytes()), "`{needle}` is still on disk");
    }
    // Time travel cannot bring a body back: the old files are gone.
    let (status, old) = carol.post("/v1/admin/sql", json!({"sql": "SELECT body FROM as_of('message_events', 1) WHERE body LIKE 'bob-secret%'"})).await;
    assert!(status == 400 || old["rows"] == json!([]), "{status} {old}");

    // New messages after the erasure are kept, and the sink goes on writing.
    bob.say(&group, "b3", "after the erasure").await;
    sql_until(
        &carol,
        &format!("SELECT body FROM message_events WHERE conversation_id = '{group}' AND body IS NOT NULL ORDER BY log_offset"),
        json!([["admin keeps this"], ["after the erasure"]]),
    )
    .await;
}

#[tokio::test]
async fn retention_deletes_whole_messages_before_a_time() {
    let server = TestServer::start().await;
    let Cast { admin, bob, carol, group } = cast(&server).await;
    let other = admin.conversation("group", &[&bob]).await;
    let old = admin.say(&group, "o1", "old one").await;
    bob.say(&group, "o2", "old two").await;
    admin.say(&other, "x1", "other conversation").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = confab_schemas::ids::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    admin.say(&group, "n1", "new one").await;
    // An edit after the cut of a message from before it goes with its message.
    admin.patch(&format!("/v1/messages/{}", old["messageId"].as_str().unwrap()), json!({"body": "old one, edited late"})).await;

    assert_error(&bob.post("/v1/admin/retention", json!({"conversationId": group, "before": cut})).await, 403, "forbidden");
    assert_error(&carol.post("/v1/admin/retention", json!({"conversationId": "c_nothing", "before": cut})).await, 404, "not_found");
    assert_error(&carol.post("/v1/admin/retention", json!({"conversationId": group, "before": cut + 3_600_000})).await, 400, "bad_request");

    let (status, deleted) = carol.post("/v1/admin/retention", json!({"conversationId": group, "before": cut})).await;
    assert_eq!(status, 200, "{deleted}");
    // Two messages: their creates, the late edit, and the two live deletes.
    assert_eq!((deleted["deletedRows"].as_u64(), deleted["deletedMessages"].as_u64()), (Some(5), Some(2)), "{deleted}");
    let live: Vec<(u64, String, bool)> = bob
        .all_messages(&group)
        .await
        .iter()
        .map(|message| (message["seq"].as_u64().unwrap(), message["body"].as_str().unwrap().to_string(), message["deleted"].as_bool().unwrap()))
        .collect();
    assert_eq!(live, vec![(1, String::new(), true), (2, String::new(), true), (3, "new one".to_string(), false)]);
    let remaining = sql(&carol, &format!("SELECT seq, event_type, body FROM message_events WHERE conversation_id = '{group}' ORDER BY log_offset")).await;
    assert_eq!(remaining, json!([[3, "created", "new one"]]));
    let untouched = sql(&carol, &format!("SELECT body FROM messages WHERE conversation_id = '{other}'")).await;
    assert_eq!(untouched, json!([["other conversation"]]));
    assert!(!table_files_contain(&server.data_dir, "message_events", b"old two"), "a deleted body is still on disk");
    // Running it again finds nothing more.
    let (_, again) = carol.post("/v1/admin/retention", json!({"conversationId": group, "before": cut})).await;
    assert_eq!((again["deletedRows"].as_u64(), again["deletedMessages"].as_u64()), (Some(0), Some(0)), "{again}");
}

/// Every file under `folder` holding one of the needles, with the needle.
fn files_containing(folder: &Path, needles: &[&str]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut folders = vec![folder.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            // A file may vanish between the listing and the read (a segment removed, a compaction).
            let Ok(bytes) = std::fs::read(&path) else { continue };
            for needle in needles {
                if bytes.windows(needle.len()).any(|window| window == needle.as_bytes()) {
                    found.push((path.display().to_string(), needle.to_string()));
                }
            }
        }
    }
    found
}

/// After an erasure, once the log's retention window has passed, no byte
/// of the erased bodies is left in any file under the data directory: not
/// in the log's segments, not in the state's store (its journal and
/// tables), not in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_erasure_and_the_retention_window_no_byte_of_the_bodies_remains_on_disk() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(temporary.path());
    // A window of one second, checked often; checkpoints often.
    config.log.segment_max_age_secs = 1;
    config.log.retention_max_age_secs = Some(1);
    config.log.retention_check_interval_ms = 100;
    config.state.checkpoint_interval_ms = 100;
    let server = TestServer::start_with(config).await;
    let Cast { admin, bob, carol, group } = cast(&server).await;
    let needles = ["erase-me-alpha-41f9", "erase-me-beta-77c2", "erase-me-edited-0d3e"];
    let first = bob.say(&group, "b1", needles[0]).await;
    bob.say(&group, "b2", needles[1]).await;
    let first_id = first["messageId"].as_str().unwrap();
    bob.patch(&format!("/v1/messages/{first_id}"), json!({"body": needles[2]})).await;
    admin.say(&group, "a1", "kept-by-admin-5b1c").await;
    sql_until(&carol, &format!("SELECT count(*) FROM message_events WHERE conversation_id = '{group}'"), json!([[4]])).await;
    assert!(!files_containing(&server.data_dir, &needles).is_empty(), "the bodies are on disk before the erasure");

    let (status, erased) = carol.post("/v1/admin/erasure", json!({"userId": bob.user_id})).await;
    assert_eq!(status, 200, "{erased}");
    // The server keeps serving, and writing, meanwhile.
    admin.say(&group, "a2", "after-the-erasure-9e0a").await;

    let mut left = Vec::new();
    for _ in 0..300 {
        left = files_containing(&server.data_dir, &needles);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.is_empty(), "erased bodies still on disk after the retention window: {left:?}");
    // What was not erased is still served.
    let bodies: Vec<String> = admin.all_messages(&group).await.iter().map(|message| message["body"].as_str().unwrap().to_string()).collect();
    assert_eq!(bodies, vec![String::new(), String::new(), "kept-by-admin-5b1c".to_string(), "after-the-erasure-9e0a".to_string()]);
}

/// The data directory is the server's only: 0700, and every file in it 0600.
#[tokio::test]
async fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    alice.say(&dm, "p1", "private").await;
    let mut wrong = Vec::new();
    let mut folders = vec![server.data_dir.clone()];
    while let Some(folder) = folders.pop() {
        let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
        if mode != 0o700 {
            wrong.push(format!("{} is {mode:o}", folder.display()));
        }
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            let Ok(metadata) = std::fs::symlink_metadata(&path) else { continue };
            if metadata.is_dir() {
                folders.push(path);
            } else if metadata.permissions().mode() & 0o777 != 0o600 {
                wrong.push(format!("{} is {:o}", path.display(), metadata.permissions().mode() & 0o777));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}

#[tokio::test]
async fn retention_policies_are_set_by_compliance_and_applied_by_the_scheduled_workflow() {
    retention_policies(false).await;
}

#[tokio::test]
async fn retention_policies_are_set_by_compliance_and_applied_by_the_scheduled_workflow_on_temporal() {
    retention_policies(true).await;
}

async fn retention_policies(on_temporal: bool) {
    let data = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(data.path());
    if on_temporal {
        let Some(workflows) = crate::harness::temporal_workflows() else { return };
        config.workflows = workflows;
    }
    config.history.default_retention_days = Some(30);
    config.history.retention_interval_secs = Some(1);
    let server = TestServer::start_with(config).await;
    let Cast { admin, bob, carol, group } = cast(&server).await;
    bob.say(&group, "b1", "kept: younger than any policy").await;
    let dm = admin.conversation("dm", &[&carol]).await;
    let path = format!("/v1/admin/retention-policies/{group}");

    assert_error(&bob.put(&path, json!({"retentionDays": 7})).await, 403, "forbidden");
    assert_error(&bob.get("/v1/admin/retention-policies").await, 403, "forbidden");
    assert!(assert_error(&carol.put(&path, json!({"retentionDays": 0})).await, 400, "bad_request").contains("`retentionDays`"));
    assert_error(&carol.put(&path, json!({"retentionDays": "seven"})).await, 400, "bad_request");
    assert_error(&carol.put("/v1/admin/retention-policies/c_nothere", json!({"retentionDays": 7})).await, 404, "not_found");
    assert_eq!(carol.put(&path, json!({"retentionDays": 7})).await, (200, json!({"conversationId": group, "retentionDays": 7})));
    let (status, listed) = carol.get("/v1/admin/retention-policies").await;
    assert_eq!(status, 200);
    assert_eq!(listed["defaultRetentionDays"], 30);
    assert_eq!(listed["policies"].as_array().unwrap().len(), 1);
    assert_eq!((listed["policies"][0]["conversationId"].clone(), listed["policies"][0]["retentionDays"].clone()), (json!(group), json!(7)));
    assert_eq!(listed["policies"][0]["setBy"], carol.user_id);

    // A held conversation is left out of the runs, and said so.
    let (status, _) = carol.post("/v1/admin/holds", json!({"conversationId": dm, "reason": "case 9"})).await;
    assert_eq!(status, 201);
    let runs = crate::harness::poll_sql(&carol, "SELECT details FROM audit WHERE action = 'retention.run' ORDER BY ts DESC LIMIT 1", |rows| {
        rows.as_array().is_some_and(|rows| rows.first().is_some_and(|row| row[0].as_str().is_some_and(|details| details.contains(dm.as_str()))))
    })
    .await;
    let run: serde_json::Value = serde_json::from_str(runs[0][0].as_str().unwrap()).unwrap();
    assert_eq!(run["held"], json!([dm]), "{run}");
    let outcome = run["outcomes"].as_array().unwrap().iter().find(|outcome| outcome["conversationId"] == group.as_str()).expect("the group was applied");
    assert_eq!(outcome["outcome"]["deletedMessages"], 0, "nothing in it is older than 7 days: {run}");
    assert_eq!(bob.all_messages(&group).await.len(), 1);
    // Each change of policy is audited, by who made it.
    let audited = sql(&carol, "SELECT actor_id FROM audit WHERE action = 'retention.policy'").await;
    assert_eq!(audited, json!([[carol.user_id]]));
    // Removing the policy: the default applies again.
    assert_eq!(carol.put(&path, json!({"retentionDays": null})).await, (200, json!({"conversationId": group, "retentionDays": null})));
    assert_eq!(carol.get("/v1/admin/retention-policies").await.1["policies"], json!([]));
    assert_eq!(carol.put(&path, json!({"retentionDays": 90})).await.0, 200);
    // Policies are durable.
    let mut server = server;
    server.restart().await;
    let carol = carol.with_base(&server.base);
    assert_eq!(carol.get("/v1/admin/retention-policies").await.1["policies"][0]["retentionDays"], 90);
}
