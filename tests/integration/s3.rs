//! The history in an S3 bucket: SeaweedFS, which checks request signatures,
//! started by `tests/run` (see `tests/servers/seaweedfs`).

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::harness::{sql_until, test_config, TestServer};

pub(crate) struct S3 {
    pub endpoint: String,
    pub filer: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

/// The test server's address, from `tests/run`. Without it the test is
/// skipped, unless `CONFAB_REQUIRE_EXTERNAL` says the servers must be there.
pub(crate) fn s3_server() -> Option<S3> {
    let var = |name: &str| std::env::var(name).ok();
    match (var("CONFAB_TEST_S3_ENDPOINT"), var("CONFAB_TEST_S3_FILER"), var("CONFAB_TEST_S3_ACCESS_KEY"), var("CONFAB_TEST_S3_SECRET_KEY")) {
        (Some(endpoint), Some(filer), Some(access_key), Some(secret_key)) => {
            Some(S3 { endpoint, filer, bucket: var("CONFAB_TEST_S3_BUCKET").unwrap_or_else(|| "confab-test".into()), access_key, secret_key })
        }
        _ if std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_some() => {
            panic!("CONFAB_TEST_S3_* is not set: run the tests with tests/run, which starts SeaweedFS")
        }
        _ => {
            eprintln!("skipped: no S3 server (CONFAB_TEST_S3_*); tests/run starts one");
            None
        }
    }
}

pub(crate) fn storage_options(s3: &S3, secret_key: &str) -> HashMap<String, String> {
    HashMap::from([
        ("AWS_ENDPOINT_URL".to_string(), s3.endpoint.clone()),
        ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID".to_string(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), secret_key.to_string()),
        ("AWS_S3_ADDRESSING_STYLE".to_string(), "path".to_string()),
    ])
}

/// Names under a folder of the bucket, read through the filer (no signature needed).
pub(crate) async fn objects_under(s3: &S3, path: &str) -> Vec<String> {
    let url = format!("{}/buckets/{}/{}/", s3.filer, s3.bucket, path);
    let response = reqwest::Client::new().get(url).header("accept", "application/json").send().await.unwrap();
    let listing: Value = response.json().await.unwrap_or(Value::Null);
    listing["Entries"].as_array().map(|entries| entries.iter().filter_map(|entry| entry["FullPath"].as_str().map(str::to_string)).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_lives_in_an_s3_bucket() {
    let Some(s3) = s3_server() else { return };
    let data_dir = tempfile::tempdir().unwrap();
    let prefix = confab_schemas::ids::new_id("run", confab_schemas::ids::now_ms());

    // A wrong secret is refused by the server's signature check: no start.
    let mut refused = test_config(data_dir.path());
    refused.history.location = Some(format!("s3://{}/{prefix}", s3.bucket));
    refused.history.storage_options = storage_options(&s3, "not-the-secret");
    let error = match confab::server::start(refused).await {
        Ok(_) => panic!("a server with a wrong S3 secret started"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("history") && error.contains("403"), "{error}");

    let mut config = test_config(data_dir.path());
    config.history.location = Some(format!("s3://{}/{prefix}", s3.bucket));
    config.history.storage_options = storage_options(&s3, &s3.secret_key);
    let server = TestServer::start_with(config).await;
    let admin = server.user("admin").await;
    let carol = server.user("carol").await;
    admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await;
    let group = admin.conversation("group", &[&carol]).await;
    admin.say(&group, "s1", "stored in a bucket").await;
    admin.say(&group, "s2", "erase me later").await;

    let sql = format!("SELECT seq, body FROM message_events WHERE conversation_id = '{group}' ORDER BY seq");
    sql_until(&carol, &sql, json!([[1, "stored in a bucket"], [2, "erase me later"]])).await;
    let commits = objects_under(&s3, &format!("{prefix}/message_events/_delta_log")).await;
    assert!(commits.iter().any(|path| path.ends_with(".json")), "no Delta commit in the bucket: {commits:?}");
    assert!(!data_dir.path().join("history").exists(), "the history was written locally");

    // Retention, with its vacuum, works against the bucket too.
    let (status, deleted) = carol.post("/v1/admin/retention", json!({"conversationId": group, "before": confab_schemas::ids::now_ms()})).await;
    // Two creates, and the two deletes the live store wrote first.
    assert_eq!((status, deleted["deletedRows"].as_u64()), (200, Some(4)), "{deleted}");
    let (_, after) = carol.post("/v1/admin/sql", json!({"sql": sql})).await;
    assert_eq!(after["rows"], json!([]));
}
