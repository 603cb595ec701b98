//! Every flow on both engines, with the same expectations: the embedded
//! engine (a store in a temporary folder) and Temporal (the dev server
//! `tests/run` starts; `CONFAB_TEST_TEMPORAL_ADDRESS`). Without the
//! address the Temporal half is skipped, unless `CONFAB_REQUIRE_EXTERNAL`
//! says the server must be there.
//!
//! Each scenario scripts its activities' answers and checks the flow's
//! outcome and the activities it called, in order, with their keys.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use confab_workflows::clock::SystemClock;
use confab_workflows::embedded::{self, Status};
use confab_workflows::moderation::{MediaModeration, ModerationInput, CHECK, GIVE_UP};
use confab_workflows::push::{PushDelivery, PushInput, RetryPolicy, FORGET_TOKEN, SEND};
use confab_workflows::retention::{RetentionInput, RetentionRun, APPLY, AUDIT, PLAN};
use confab_workflows::{Activities, ActivityCall, Failure, FailureKind, Flow};
use confab_workflows_temporal::{Config, Outcome};
use parking_lot::Mutex;
use serde_json::{json, Value};

type Answer = Result<Value, Failure>;

/// Answers each activity from a script (per activity name, in order; `{}`
/// once the script is used up) and records every call.
#[derive(Default)]
struct Scripted {
    script: Mutex<HashMap<String, VecDeque<Answer>>>,
    calls: Mutex<Vec<(String, String)>>,
}

impl Scripted {
    fn new(script: Vec<(&str, Answer)>) -> Arc<Scripted> {
        let scripted = Scripted::default();
        for (name, answer) in script {
            scripted.script.lock().entry(name.to_string()).or_default().push_back(answer);
        }
        Arc::new(scripted)
    }

    /// `(activity name, key without the flow id)`, in call order.
    fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().clone()
    }
}

#[async_trait::async_trait]
impl Activities for Scripted {
    async fn run(&self, call: &ActivityCall, id: u32) -> Result<Value, Failure> {
        let key = call.key(id);
        let key = key.strip_prefix(&call.flow_id).unwrap_or(&key).to_string();
        self.calls.lock().push((call.name.clone(), key));
        self.script.lock().get_mut(&call.name).and_then(VecDeque::pop_front).unwrap_or_else(|| Ok(json!({})))
    }
}

/// What a scenario ends with.
#[derive(Debug, PartialEq)]
struct Ran {
    outcome: Outcome,
    calls: Vec<(String, String)>,
}

/// One engine, behind the few calls the scenarios make.
enum Under {
    Embedded(embedded::Engine, tempfile::TempDir),
    Temporal(confab_workflows_temporal::Engine),
}

impl Under {
    fn embedded<F: Flow>(activities: Arc<Scripted>) -> Under {
        let dir = tempfile::tempdir().unwrap();
        let options = embedded::Options { threads: 0, ..embedded::Options::default() };
        let engine = embedded::Engine::open(dir.path(), Arc::new(SystemClock), options).unwrap();
        engine.register::<F>(activities);
        engine.run();
        Under::Embedded(engine, dir)
    }

    /// None: no server was given and none is required.
    async fn temporal<F: Flow>(activities: Arc<Scripted>) -> Option<Under> {
        let Some(address) = std::env::var("CONFAB_TEST_TEMPORAL_ADDRESS").ok() else {
            assert!(
                std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_none(),
                "CONFAB_REQUIRE_EXTERNAL is set but CONFAB_TEST_TEMPORAL_ADDRESS is not: start Temporal with tests/servers/temporal"
            );
            eprintln!("skipping the Temporal half: CONFAB_TEST_TEMPORAL_ADDRESS is not set (tests/run sets it)");
            return None;
        };
        let config = Config {
            address,
            tls: None,
            api_key: None,
            namespace: std::env::var("CONFAB_TEST_TEMPORAL_NAMESPACE").unwrap_or_else(|_| "default".into()),
            // A queue of its own: other tests' workers (other activities) never take these tasks.
            task_queue: format!("confab-test-{}", nonce()),
            activity_timeout: Duration::from_secs(30),
            activity_concurrency: 16,
            threads: 1,
            nice: 0,
        };
        let engine = confab_workflows_temporal::Engine::connect(config).await.expect("connect to Temporal");
        engine.register::<F>(activities);
        engine.run_worker().expect("start the worker");
        Some(Under::Temporal(engine))
    }

    async fn start<F: Flow>(&self, flow_id: &str, input: F::Input) -> bool {
        match self {
            Under::Embedded(engine, _) => engine.start::<F>(flow_id, input).unwrap(),
            Under::Temporal(engine) => engine.start::<F>(flow_id, input).await.unwrap(),
        }
    }

    async fn signal(&self, flow_id: &str, name: &str) {
        match self {
            Under::Embedded(engine, _) => engine.signal(flow_id, name, json!({})).unwrap(),
            Under::Temporal(engine) => engine.signal(flow_id, name, json!({})).await.unwrap(),
        }
    }

    async fn outcome(&self, flow_id: &str) -> Outcome {
        match self {
            Under::Embedded(engine, _) => {
                for _ in 0..3_000 {
                    let record = engine.record(flow_id).unwrap().expect("the flow's record");
                    match record.status {
                        Status::Running => tokio::time::sleep(Duration::from_millis(10)).await,
                        Status::Completed => return Outcome::Completed(record.outcome.unwrap_or(Value::Null)),
                        Status::DeadLetter => return Outcome::DeadLetter(record.reason.unwrap_or_default()),
                    }
                }
                panic!("{flow_id} did not finish on the embedded engine within 30 s");
            }
            Under::Temporal(engine) => tokio::time::timeout(Duration::from_secs(60), engine.outcome(flow_id))
                .await
                .unwrap_or_else(|_| panic!("{flow_id} did not finish on Temporal within 60 s"))
                .unwrap(),
        }
    }

    async fn stop(self) {
        match self {
            Under::Embedded(engine, _dir) => engine.shutdown().await,
            Under::Temporal(engine) => engine.shutdown().await,
        }
    }
}

fn nonce() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{}-{}", std::process::id(), now.as_nanos())
}

/// Runs one scenario on one engine: starts the flow, optionally signals it
/// once its first activity ran, and waits for the end.
async fn scenario<F: Flow>(under: Under, script: &Arc<Scripted>, input: F::Input, signal: Option<&str>, record: Option<&str>) -> Ran {
    let flow_id = format!("{}-{}", F::KIND, nonce());
    assert!(under.start::<F>(&flow_id, input_clone::<F>(&input)).await, "a new flow id starts");
    assert!(!under.start::<F>(&flow_id, input).await, "starting the same id again does nothing");
    if let Some(name) = signal {
        for _ in 0..3_000 {
            if !script.calls().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        under.signal(&flow_id, name).await;
    }
    let outcome = under.outcome(&flow_id).await;
    if let (Some(name), Under::Temporal(engine)) = (record, &under) {
        if std::env::var_os("CONFAB_RECORD_HISTORIES").is_some() {
            // The golden histories `replay.rs` replays without a server.
            let json = engine.history_json(&flow_id).await.unwrap();
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories").join(format!("{name}.json"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, json).unwrap();
        }
    }
    under.stop().await;
    Ran { outcome, calls: script.calls() }
}

fn input_clone<F: Flow>(input: &F::Input) -> F::Input {
    serde_json::from_value(serde_json::to_value(input).unwrap()).unwrap()
}

/// Runs a scenario on the embedded engine, then on Temporal, with a fresh
/// script each time; both must give `expected`. With
/// `CONFAB_RECORD_HISTORIES=1`, Temporal's history is kept as
/// `tests/histories/{name}.json`.
async fn on_both_engines<F: Flow>(name: &str, script: impl Fn() -> Vec<(&'static str, Answer)>, input: F::Input, signal: Option<&str>, expected: Ran) {
    let activities = Scripted::new(script());
    let ran = scenario::<F>(Under::embedded::<F>(activities.clone()), &activities, input_clone::<F>(&input), signal, None).await;
    assert_eq!(ran, expected, "on the embedded engine");
    let activities = Scripted::new(script());
    if let Some(under) = Under::temporal::<F>(activities.clone()).await {
        let ran = scenario::<F>(under, &activities, input, signal, Some(name)).await;
        assert_eq!(ran, expected, "on Temporal");
    }
}

fn calls(list: &[(&str, u32)]) -> Vec<(String, String)> {
    list.iter().map(|(name, id)| (name.to_string(), format!("/{id}"))).collect()
}

fn push(fields: Value) -> PushInput {
    let policy = RetryPolicy { max_attempts: 3, max_age_ms: 600_000, backoff_ms: 50, backoff_max_ms: 200 };
    PushInput { push: fields, policy }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_retries_a_busy_service_then_is_sent() {
    let script =
        || vec![(SEND, Err(Failure::retryable("http 429", Some(100)))), (SEND, Err(Failure::retryable("http 503", None))), (SEND, Ok(json!({"apnsId": "x"})))];
    let expected = Ran { outcome: Outcome::Completed(json!({"outcome": "sent", "attempts": 3})), calls: calls(&[(SEND, 1), (SEND, 3), (SEND, 5)]) };
    on_both_engines::<PushDelivery>("push_sent_after_retries", script, push(json!({"token": "t1"})), None, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_token_is_forgotten() {
    let script = || {
        vec![
            (SEND, Err(Failure { kind: FailureKind::Unregistered, retry_after_ms: None, reason: "Unregistered".into() })),
            (FORGET_TOKEN, Ok(json!({"forgotten": true}))),
        ]
    };
    let expected = Ran { outcome: Outcome::Completed(json!({"outcome": "unregistered", "attempts": 1})), calls: calls(&[(SEND, 1), (FORGET_TOKEN, 2)]) };
    on_both_engines::<PushDelivery>("push_unregistered", script, push(json!({"token": "t2"})), None, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_and_a_push_out_of_attempts_are_dead_letters() {
    let refused = || vec![(SEND, Err(Failure::permanent("BadTopic")))];
    let expected = Ran { outcome: Outcome::DeadLetter("refused by the push service (last failure: BadTopic)".into()), calls: calls(&[(SEND, 1)]) };
    on_both_engines::<PushDelivery>("push_refused", refused, push(json!({"token": "t3"})), None, expected).await;

    let down = || (0..3).map(|_| (SEND, Err(Failure::retryable("http 500", None)))).collect();
    let expected =
        Ran { outcome: Outcome::DeadLetter("gave up after 3 attempts (last failure: http 500)".into()), calls: calls(&[(SEND, 1), (SEND, 3), (SEND, 5)]) };
    on_both_engines::<PushDelivery>("push_out_of_attempts", down, push(json!({"token": "t4"})), None, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_push_stops_waiting() {
    // The service asks for a minute's pause; the signal ends the wait.
    let script = || vec![(SEND, Err(Failure::retryable("http 429", Some(60_000))))];
    let expected = Ran { outcome: Outcome::Completed(json!({"outcome": "superseded", "attempts": 1})), calls: calls(&[(SEND, 1)]) };
    on_both_engines::<PushDelivery>("push_superseded", script, push(json!({"token": "t5"})), Some("superseded"), expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_run_plans_applies_each_item_and_audits() {
    let script = || {
        vec![
            (PLAN, Ok(json!({"items": [{"conversationId": "c1"}, {"conversationId": "c2"}], "held": [{"conversationId": "c3"}]}))),
            (APPLY, Err(Failure::retryable("the history is busy", None))),
            (APPLY, Ok(json!({"deletedMessages": 3, "deletedRows": 5}))),
            (APPLY, Ok(json!({"deletedMessages": 1, "deletedRows": 1}))),
            (AUDIT, Ok(json!({"audited": true}))),
        ]
    };
    let summary = json!({
        "now": 1_000,
        "conversations": 2,
        "held": [{"conversationId": "c3"}],
        "deletedMessages": 4,
        "deletedRows": 6,
        "failed": 0,
        "outcomes": [
            {"conversationId": "c1", "outcome": {"deletedMessages": 3, "deletedRows": 5}},
            {"conversationId": "c2", "outcome": {"deletedMessages": 1, "deletedRows": 1}},
        ],
    });
    let expected = Ran {
        outcome: Outcome::Completed(json!({"summary": summary, "audited": {"audited": true}})),
        calls: calls(&[(PLAN, 1), (APPLY, 2), (APPLY, 4), (APPLY, 5), (AUDIT, 6)]),
    };
    on_both_engines::<RetentionRun>("retention_run", script, RetentionInput { now: 1_000 }, None, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_run_whose_plan_fails_for_good_is_a_dead_letter() {
    let script = || vec![(PLAN, Err(Failure::permanent("the history is gone")))];
    let expected = Ran { outcome: Outcome::DeadLetter("retention run failed: the history is gone".into()), calls: calls(&[(PLAN, 1)]) };
    on_both_engines::<RetentionRun>("retention_plan_fails", script, RetentionInput { now: 2_000 }, None, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_retries_a_failed_check_then_completes_with_the_verdict() {
    let script = || vec![(CHECK, Err(Failure::retryable("the virus scanner failed: connection refused", None))), (CHECK, Ok(json!({"status": "ready"})))];
    let expected = Ran { outcome: Outcome::Completed(json!({"status": "ready"})), calls: calls(&[(CHECK, 1), (CHECK, 3)]) };
    let input = ModerationInput { media_id: format!("f_{}", nonce()) };
    on_both_engines::<MediaModeration>("media_checked_after_retry", script, input, None, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_that_cannot_check_records_the_upload_as_unchecked() {
    let script = || vec![(CHECK, Err(Failure::permanent("no such object"))), (GIVE_UP, Ok(json!({"status": "blocked", "reason": "unchecked"})))];
    let output = json!({"status": "blocked", "reason": "unchecked", "failure": "no such object"});
    let expected = Ran { outcome: Outcome::Completed(output), calls: calls(&[(CHECK, 1), (GIVE_UP, 2)]) };
    let input = ModerationInput { media_id: format!("f_{}", nonce()) };
    on_both_engines::<MediaModeration>("media_unchecked", script, input, None, expected).await;
}
