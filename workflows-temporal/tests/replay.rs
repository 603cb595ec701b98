//! Replays the Temporal histories recorded in `tests/histories` against
//! today's workflow code, without a server: a change to a flow or to the
//! interpreter that would break workflows already running on Temporal
//! fails here. Record them again (on purpose, with a versioning plan)
//! with `CONFAB_RECORD_HISTORIES=1` and the Temporal dev server
//! (`tests/servers/temporal`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_histories_replay_on_todays_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("tests/histories").map(|entry| entry.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 9, "expected the nine recorded histories in {}, found {}", dir.display(), files.len());
    for file in files {
        let json = std::fs::read(&file).unwrap();
        if let Err(error) = confab_workflows_temporal::flows::replay(&json).await {
            panic!("{}: {error}", file.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_the_code_would_not_make_fails_to_replay() {
    // The recorded push that was sent after two retries, with its first
    // scheduled activity made another type: today's code would schedule
    // `confab_activity` there, so the replay must refuse the history.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories");
    let json = std::fs::read_to_string(dir.join("push_sent_after_retries.json")).unwrap();
    let mut history: serde_json::Value = serde_json::from_str(&json).unwrap();
    let events = history["events"].as_array_mut().unwrap();
    let scheduled =
        events.iter_mut().find_map(|event| event["attributes"].get_mut("ActivityTaskScheduledEventAttributes")).expect("a scheduled activity in the history");
    scheduled["activity_type"]["name"] = serde_json::json!("something_else");
    let changed = serde_json::to_vec(&history).unwrap();
    assert!(confab_workflows_temporal::flows::replay(&json.into_bytes()).await.is_ok(), "the history as recorded replays");
    assert!(confab_workflows_temporal::flows::replay(&changed).await.is_err(), "a history with another activity must not replay");
}
