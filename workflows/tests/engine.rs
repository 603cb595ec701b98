//! The embedded engine with an injected clock, a restart, and kill -9.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_workflows::clock::{Clock, ManualClock, SystemClock};
use confab_workflows::embedded::{Engine, Options, Status};
use confab_workflows::push::{PushDelivery, PushInput, RetryPolicy};
use confab_workflows::{Activities, ActivityCall, Failure};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// Fails each push the number of times its input says, then accepts it;
/// records every call's key.
#[derive(Default)]
struct Flaky {
    calls: Mutex<HashMap<String, u32>>,
    keys: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Activities for Flaky {
    async fn run(&self, call: &ActivityCall, id: u32) -> Result<Value, Failure> {
        self.keys.lock().push(call.key(id));
        let fail_times = call.input["push"]["fail"].as_u64().unwrap_or(0) as u32;
        let mut calls = self.calls.lock();
        let count = calls.entry(call.flow_id.clone()).or_default();
        *count += 1;
        match *count <= fail_times {
            true => Err(Failure::retryable("http 503", None)),
            false => Ok(json!({})),
        }
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy { max_attempts: 5, max_age_ms: 3_600_000, backoff_ms: 1_000, backoff_max_ms: 60_000 }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_for_the_clock_and_then_complete() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let engine = Engine::open(dir.path(), clock.clone(), Options::default()).unwrap();
    let activities = Arc::new(Flaky::default());
    engine.register::<PushDelivery>(activities.clone());
    engine.run();
    assert!(engine.start::<PushDelivery>("p1", PushInput { push: json!({"fail": 2}), policy: policy() }).unwrap());
    assert!(!engine.start::<PushDelivery>("p1", PushInput { push: json!({"fail": 2}), policy: policy() }).unwrap(), "a second start is a no-op");
    until("the first failure", || engine.record("p1").unwrap().unwrap().timers.len() == 1).await;
    // Nothing happens until the clock reaches the timer.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(activities.calls.lock()["p1"], 1);
    clock.advance(1_600);
    until("the second failure", || activities.calls.lock()["p1"] == 2 && engine.record("p1").unwrap().unwrap().timers.len() == 1).await;
    clock.advance(3_100);
    until("completion", || engine.record("p1").unwrap().unwrap().status == Status::Completed).await;
    let record = engine.record("p1").unwrap().unwrap();
    assert_eq!(record.outcome, Some(json!({"outcome": "sent", "attempts": 3})));
    assert_eq!(record.state, Value::Null, "a finished flow keeps its outcome, not its state");
    assert!(!engine.start::<PushDelivery>("p1", PushInput { push: json!({}), policy: policy() }).unwrap(), "nor is a finished id started again");
    assert_eq!(activities.calls.lock()["p1"], 3);
    // Finished flows are removed once older than asked; running ones never.
    engine.start::<PushDelivery>("p2", PushInput { push: json!({"fail": 9}), policy: policy() }).unwrap();
    until("p2 to wait on a retry", || engine.record("p2").unwrap().unwrap().timers.len() == 1).await;
    assert_eq!(engine.forget_finished(clock.now() - 10_000_000).unwrap(), 0, "p1 is younger than that");
    assert_eq!(engine.forget_finished(clock.now() + 1).unwrap(), 1);
    assert!(engine.record("p1").unwrap().is_none());
    assert_eq!(engine.record("p2").unwrap().unwrap().status, Status::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_resumes_after_the_engine_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    // One set of activities across the reopen: it remembers the first failure.
    let activities = Arc::new(Flaky::default());
    {
        let engine = Engine::open(dir.path(), clock.clone(), Options::default()).unwrap();
        engine.register::<PushDelivery>(activities.clone());
        engine.run();
        engine.start::<PushDelivery>("p1", PushInput { push: json!({"fail": 1}), policy: policy() }).unwrap();
        until("a retry timer", || engine.record("p1").unwrap().unwrap().timers.len() == 1).await;
        // Started but never run: its first send waits in the store.
        let idle = Engine::open(&dir.path().join("other"), clock.clone(), Options::default()).unwrap();
        idle.register::<PushDelivery>(Arc::new(Flaky::default()));
        idle.start::<PushDelivery>("p2", PushInput { push: json!({}), policy: policy() }).unwrap();
        engine.shutdown().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (path, id) in [(dir.path().to_path_buf(), "p1"), (dir.path().join("other"), "p2")] {
        let engine = Engine::open(&path, clock.clone(), Options::default()).unwrap();
        engine.register::<PushDelivery>(activities.clone());
        engine.run();
        clock.advance(10_000);
        until("completion after the reopen", || engine.record(id).unwrap().unwrap().status == Status::Completed).await;
        engine.shutdown().await;
    }
    assert_eq!(activities.calls.lock()["p1"], 2, "p1: the failed send, then the retry after the reopen");
    assert_eq!(activities.calls.lock()["p2"], 1, "p2: its first send ran only after the reopen");
}

const CHILD_ENV: &str = "CONFAB_WORKFLOWS_KILL_CHILD";
const FLOWS: usize = 200;

/// Activities of the child: every call appends its key to a file, slowly.
struct Journal {
    file: Mutex<std::fs::File>,
    calls: AtomicU32,
}

#[async_trait::async_trait]
impl Activities for Journal {
    async fn run(&self, call: &ActivityCall, id: u32) -> Result<Value, Failure> {
        use std::io::Write;
        tokio::time::sleep(Duration::from_millis(2)).await;
        writeln!(self.file.lock(), "{}", call.key(id)).unwrap();
        self.calls.fetch_add(1, Ordering::Relaxed);
        // Every third flow fails once, so some are waiting on a timer at the kill.
        let fails = call.input["push"]["n"].as_u64().unwrap().is_multiple_of(3) && call.input["attempt"] == 1;
        match fails {
            true => Err(Failure::retryable("http 503", None)),
            false => Ok(json!({})),
        }
    }
}

fn quick() -> RetryPolicy {
    RetryPolicy { max_attempts: 5, max_age_ms: 600_000, backoff_ms: 50, backoff_max_ms: 100 }
}

/// Run as a child process by `a_killed_engine_resumes_every_flow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let dir = std::path::PathBuf::from(dir);
    let file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("calls")).unwrap();
    let engine =
        Engine::open(&dir.join("engine"), Arc::new(SystemClock), Options { activity_concurrency: 8, threads: 1, nice: 5, ..Options::default() }).unwrap();
    engine.register::<PushDelivery>(Arc::new(Journal { file: Mutex::new(file), calls: AtomicU32::new(0) }));
    engine.run();
    let flows = (0..FLOWS).map(|n| (format!("f{n:04}"), PushInput { push: json!({"n": n}), policy: quick() })).collect();
    engine.start_many::<PushDelivery>(flows).unwrap();
    std::fs::write(dir.join("started"), b"").unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engine_resumes_every_flow() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill_child", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once flows are started and some, not all, activities ran.
    let calls = dir.path().join("calls");
    until("the child to start its flows and run some", || {
        dir.path().join("started").exists() && std::fs::read_to_string(&calls).map(|text| text.lines().count()).unwrap_or(0) >= 40
    })
    .await;
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::KILL).unwrap();
    child.wait().unwrap();
    let before: Vec<String> = std::fs::read_to_string(&calls).unwrap().lines().map(String::from).collect();
    assert!(before.len() < FLOWS, "killed in the middle: {} calls of at least {FLOWS}", before.len());

    let file = std::fs::OpenOptions::new().append(true).open(&calls).unwrap();
    let engine = Engine::open(&dir.path().join("engine"), Arc::new(SystemClock), Options::default()).unwrap();
    engine.register::<PushDelivery>(Arc::new(Journal { file: Mutex::new(file), calls: AtomicU32::new(0) }));
    engine.run();
    until("every flow to complete after the restart", || engine.records().unwrap().iter().all(|(_, record)| record.status == Status::Completed)).await;
    let records = engine.records().unwrap();
    assert_eq!(records.len(), FLOWS, "no flow lost");
    for (id, record) in &records {
        let n: usize = id[1..].parse().unwrap();
        let attempts = if n.is_multiple_of(3) { 2 } else { 1 };
        assert_eq!(record.outcome, Some(json!({"outcome": "sent", "attempts": attempts})), "{id}");
    }
    // Each step ran at least once; a step repeated after the kill kept its key.
    let after: Vec<String> = std::fs::read_to_string(&calls).unwrap().lines().map(String::from).collect();
    let mut keys: HashMap<&str, usize> = HashMap::new();
    for key in &after {
        *keys.entry(key.as_str()).or_default() += 1;
    }
    let expected_steps: usize = (0..FLOWS).map(|n| if n.is_multiple_of(3) { 2 } else { 1 }).sum();
    assert_eq!(keys.len(), expected_steps, "one key per send, repeats included");
    let repeated = keys.values().filter(|count| **count > 1).count();
    assert!(repeated <= 8, "only sends in flight at the kill ran twice: {repeated}");
}

/// `(thread name, nice)` of each of this process's threads, from /proc.
fn threads_and_nice() -> Vec<(String, i32)> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default().trim().to_string();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Field 19 (nice) counts from after the `(comm)` field, which may hold spaces.
        let after_comm = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or_default();
        if let Some(nice) = after_comm.split_whitespace().nth(16).and_then(|field| field.parse().ok()) {
            threads.push((name, nice));
        }
    }
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_own_threads_run_at_the_engines_priority() {
    // nextest runs each test in a process of its own: these fjall threads are the engine's.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Arc::new(SystemClock), Options { threads: 1, nice: 7, ..Options::default() }).unwrap();
    let fjall: Vec<(String, i32)> = threads_and_nice().into_iter().filter(|(name, _)| name.starts_with("fjall")).collect();
    assert!(!fjall.is_empty(), "the store has threads of its own: {:?}", threads_and_nice());
    assert!(fjall.iter().all(|(_, nice)| *nice == 7), "fjall's flush and compaction threads inherit the engine's nice: {fjall:?}");
    let main_nice = threads_and_nice().into_iter().find(|(name, _)| !name.starts_with("fjall")).map(|(_, nice)| nice);
    assert_eq!(main_nice, Some(0), "the caller's thread keeps its priority");
    engine.shutdown().await;
}
