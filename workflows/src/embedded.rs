//! The embedded engine: flows in a fjall store under the data directory,
//! run inside `confab serve`.
//!
//! ## The happy path
//! `start` runs the flow's `start`, and in one batch writes the flow's
//! record (kind, state, the activities it waits for) and its timers; only
//! then are the activities spawned. When an activity returns, one *step*
//! loads the record, gives the flow the outcome, and writes the new state,
//! the new waits and timers, and drops the finished wait, in one batch.
//! A timer that comes due is a step too, which deletes the timer's row.
//! A finished flow's record stays with its outcome (`completed` or
//! `dead_letter` and the reason, but not its state) until `forget_finished`
//! removes it.
//!
//! ## Failures
//! - **A crash (kill -9) between steps**: every batch is written to fjall's
//!   journal and handed to the OS before the step returns, so it survives
//!   the process. On open, every running flow's waits are spawned again
//!   and its timers loaded: the flow resumes where it was.
//! - **A crash while an activity runs**: its wait is still in the record,
//!   so it runs again after the restart, with the same
//!   [`ActivityCall::key`]; activities use it to not do the work twice.
//! - **An outcome for a wait that is gone** (a duplicate after a restart,
//!   or the flow finished meanwhile) is dropped.
//! - **A flow that fails to decode or panics** is dead-lettered with the
//!   reason, and the engine goes on with the others.
//! - **The store fails**: the step returns the error and the activity's
//!   outcome is not recorded; the wait stays and runs again at the next
//!   start.
//!
//! Steps of one flow never run at once (a lock per stripe of flow ids);
//! steps of different flows do.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};

use crate::clock::Clock;
pub use crate::Stats;
use crate::{Activities, ActivityCall, Command, Event, Flow, Millis};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the workflow store at {path} failed: {reason}; check the disk, then restart")]
    Store { path: String, reason: String },
    #[error("no workflow of kind `{0}` is registered")]
    UnknownKind(String),
    #[error("workflow input does not encode: {0}")]
    Encode(String),
    #[error("the workflow engine is shut down")]
    Closed,
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::Store { .. } => "workflow_store",
            Error::UnknownKind(_) => "workflow_kind",
            Error::Encode(_) => "workflow_encode",
            Error::Closed => "workflow_closed",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Completed,
    DeadLetter,
}

/// A flow as it is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub kind: String,
    pub state: Value,
    pub status: Status,
    /// Activities started and not yet answered: `(id, name, input)`.
    pub waits: Vec<(u32, String, Value)>,
    pub timers: Vec<(u32, Millis)>,
    pub created_at: Millis,
    pub steps: u64,
    pub outcome: Option<Value>,
    pub reason: Option<String>,
}

/// Options of the engine.
#[derive(Debug, Clone)]
pub struct Options {
    /// Activities running at once.
    pub activity_concurrency: usize,
    /// Threads of the engine's own runtime, at `nice`; 0: run on the
    /// caller's runtime. Workflows are background work: on their own
    /// threads at a lower priority they wait for the cores, chat does not.
    pub threads: usize,
    pub nice: i32,
    /// Finished flows are kept this long (for operators), then removed.
    pub keep_finished_ms: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options { activity_concurrency: 256, threads: 0, nice: 0, keep_finished_ms: 24 * 3_600_000 }
    }
}

/// How often finished flows past `keep_finished_ms` are removed.
const CLEANUP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// The engine's own runtime; shut down without blocking when dropped (the
/// engine may be dropped on an async thread).
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

type StepResult = std::result::Result<(Value, Vec<Command>), String>;

trait Kind: Send + Sync {
    fn start(&self, id: &str, input: Value, now: Millis) -> StepResult;
    fn step(&self, id: &str, state: Value, event: Event, now: Millis) -> StepResult;
}

struct Typed<F>(std::marker::PhantomData<fn() -> F>);

impl<F: Flow> Kind for Typed<F> {
    fn start(&self, id: &str, input: Value, now: Millis) -> StepResult {
        let input: F::Input = serde_json::from_value(input).map_err(|error| format!("input does not decode: {error}"))?;
        let (flow, commands) = F::start(id, input, now);
        Ok((serde_json::to_value(&flow).map_err(|error| error.to_string())?, commands))
    }

    fn step(&self, id: &str, state: Value, event: Event, now: Millis) -> StepResult {
        let mut flow: F = serde_json::from_value(state).map_err(|error| format!("state does not decode: {error}"))?;
        let commands = flow.on_event(id, event, now);
        Ok((serde_json::to_value(&flow).map_err(|error| error.to_string())?, commands))
    }
}

struct Registered {
    kind: Box<dyn Kind>,
    activities: Arc<dyn Activities>,
}

const STRIPES: usize = 64;

/// The engine's store; dropped at shutdown, which closes it.
struct Db {
    database: Database,
    flows: Keyspace,
}

struct Inner {
    path: String,
    db: RwLock<Option<Arc<Db>>>,
    clock: Arc<dyn Clock>,
    kinds: RwLock<HashMap<String, Arc<Registered>>>,
    stripes: Vec<Mutex<()>>,
    /// Timers of running flows: `(at, flow id, timer id)`.
    timers: Mutex<BTreeSet<(Millis, String, u32)>>,
    timer_added: Notify,
    permits: Arc<Semaphore>,
    stats: Stats,
    /// One `start_many` at a time, so one id cannot be started twice.
    starting: Mutex<()>,
    /// Spawns activities; `None` until `run`.
    runtime: Mutex<Option<tokio::runtime::Handle>>,
    /// Waits to spawn once `run` is called: those found at open, and those
    /// of flows started before it.
    pending: Mutex<Vec<(String, u32)>>,
    /// The timer and cleanup tasks, aborted at shutdown.
    timer_task: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    options: Options,
    own_runtime: Mutex<OwnedRuntime>,
}

/// The embedded engine (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Engine").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

fn stripe(flow_id: &str) -> usize {
    (crate::jitter(flow_id, 0, u64::MAX) % STRIPES as u64) as usize
}

impl Engine {
    /// Opens (or creates) the engine's store under `path`. Flows resume once
    /// their kinds are registered and [`Engine::run`] is called.
    pub fn open(path: &Path, clock: Arc<dyn Clock>, options: Options) -> Result<Engine> {
        let location = path.display().to_string();
        let io = |error: fjall::Error| Error::Store { path: location.clone(), reason: error.to_string() };
        std::fs::create_dir_all(path).map_err(|error| Error::Store { path: location.clone(), reason: error.to_string() })?;
        // Opened from a thread at the engine's nice value: fjall's flush and
        // compaction threads are spawned here and inherit it, so the
        // workflows' own disk work waits for the cores like their steps do
        // (at nice 0 it competed with the chat path's store).
        let nice = options.nice;
        let database = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    crate::lower_priority(nice);
                    Database::builder(path).cache_size(32 * 1024 * 1024).open()
                })
                .join()
        })
        .map_err(|_| Error::Store { path: location.clone(), reason: "the thread opening the store panicked".into() })?
        .map_err(io)?;
        let flows = database.keyspace("flows", KeyspaceCreateOptions::default).map_err(io)?;
        let inner = Inner {
            path: location.clone(),
            db: RwLock::new(Some(Arc::new(Db { database, flows }))),
            clock,
            kinds: RwLock::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            timers: Mutex::new(BTreeSet::new()),
            timer_added: Notify::new(),
            permits: Arc::new(Semaphore::new(options.activity_concurrency.max(1))),
            stats: Stats::default(),
            starting: Mutex::new(()),
            runtime: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            timer_task: Mutex::new(Vec::new()),
            options,
            own_runtime: Mutex::new(OwnedRuntime(None)),
        };
        let engine = Engine { inner: Arc::new(inner) };
        engine.recover()?;
        Ok(engine)
    }

    fn io(&self, error: impl std::fmt::Display) -> Error {
        Error::Store { path: self.inner.path.clone(), reason: error.to_string() }
    }

    fn db(&self) -> Result<Arc<Db>> {
        self.inner.db.read().clone().ok_or(Error::Closed)
    }

    /// Loads the timers and waits of every running flow (`run` spawns the waits).
    fn recover(&self) -> Result<()> {
        let mut timers = self.inner.timers.lock();
        let mut pending = self.inner.pending.lock();
        let db = self.db()?;
        for guard in db.flows.iter() {
            let (key, value) = guard.into_inner().map_err(|error| self.io(error))?;
            let flow_id = String::from_utf8_lossy(&key).into_owned();
            let Ok(record) = serde_json::from_slice::<Record>(&value) else {
                tracing::error!(flow_id, "a workflow record does not decode; it is left as it is");
                continue;
            };
            if record.status != Status::Running {
                continue;
            }
            for (id, at) in &record.timers {
                timers.insert((*at, flow_id.clone(), *id));
            }
            pending.extend(record.waits.iter().map(|(id, _, _)| (flow_id.clone(), *id)));
        }
        Ok(())
    }

    /// Registers flow `F` with the activities it calls.
    pub fn register<F: Flow>(&self, activities: Arc<dyn Activities>) {
        let registered = Registered { kind: Box::new(Typed::<F>(std::marker::PhantomData)), activities };
        self.inner.kinds.write().insert(F::KIND.to_string(), Arc::new(registered));
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Runs timers and activities on the current runtime; resumes the flows
    /// found at open. Returns at once (the work runs in tasks).
    pub fn run(&self) {
        let handle = match self.inner.options.threads {
            0 => tokio::runtime::Handle::current(),
            threads => {
                let nice = self.inner.options.nice;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("confab-workflows")
                    .on_thread_start(move || crate::lower_priority(nice))
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let handle = runtime.handle().clone();
                        self.inner.own_runtime.lock().0 = Some(runtime);
                        handle
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not start the workflow threads; workflows share the server's");
                        tokio::runtime::Handle::current()
                    }
                }
            }
        };
        *self.inner.runtime.lock() = Some(handle.clone());
        // The waits from before a crash, and of flows started before run().
        let waiting = std::mem::take(&mut *self.inner.pending.lock());
        for (flow_id, id) in waiting {
            self.spawn_activity(flow_id, id);
        }
        let engine = self.clone();
        let timers = handle.spawn(async move { engine.timer_loop().await });
        let engine = self.clone();
        let cleanup = handle.spawn(async move {
            loop {
                tokio::time::sleep(CLEANUP_INTERVAL).await;
                let before = engine.inner.clock.now() - engine.inner.options.keep_finished_ms;
                let cleaner = engine.clone();
                match tokio::task::spawn_blocking(move || cleaner.forget_finished(before)).await {
                    Ok(Ok(removed)) if removed > 0 => tracing::info!(removed, "finished workflows removed"),
                    Ok(Err(error)) => tracing::warn!(%error, "could not remove finished workflows"),
                    _ => {}
                }
            }
        });
        self.inner.timer_task.lock().extend([timers, cleanup]);
    }

    /// Where the engine runs its work (after `run`): callers put their own
    /// background work for it there too.
    pub fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.inner.runtime.lock().clone()
    }

    /// Stops firing timers and starting activities; what runs finishes,
    /// and the store closes when the last of them does. Flows resume at
    /// the next open.
    pub async fn shutdown(&self) {
        *self.inner.runtime.lock() = None;
        for task in self.inner.timer_task.lock().drain(..) {
            task.abort();
        }
        // Registered activities may hold this engine: let them go.
        self.inner.kinds.write().clear();
        let Some(db) = self.inner.db.write().take() else { return };
        // Steps in flight hold the store for a moment; wait for them (bounded).
        for _ in 0..500 {
            if Arc::strong_count(&db) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if let Err(error) = db.database.persist(PersistMode::SyncAll) {
            tracing::warn!(%error, "could not sync the workflow store at shutdown");
        }
        drop(db);
        let runtime = std::mem::replace(&mut *self.inner.own_runtime.lock(), OwnedRuntime(None));
        drop(runtime);
    }

    /// Starts a flow unless one with this id exists (then `false`): starting
    /// twice, after a crash or a re-read of the log, does nothing.
    pub fn start<F: Flow>(&self, flow_id: &str, input: F::Input) -> Result<bool> {
        Ok(self.start_many::<F>(vec![(flow_id.to_string(), input)])? == 1)
    }

    /// Starts many flows in one batch; returns how many were new.
    pub fn start_many<F: Flow>(&self, flows: Vec<(String, F::Input)>) -> Result<usize> {
        let registered = self.registered(F::KIND)?;
        let now = self.inner.clock.now();
        let db = self.db()?;
        let mut batch = db.database.batch();
        let mut started = Vec::new();
        let mut in_batch = std::collections::HashSet::new();
        let _one_at_a_time = self.inner.starting.lock();
        for (flow_id, input) in flows {
            if in_batch.contains(&flow_id) || db.flows.get(&flow_id).map_err(|error| self.io(error))?.is_some() {
                continue;
            }
            in_batch.insert(flow_id.clone());
            let input = serde_json::to_value(input).map_err(|error| Error::Encode(error.to_string()))?;
            let mut record = Record {
                kind: F::KIND.to_string(),
                state: Value::Null,
                status: Status::Running,
                waits: Vec::new(),
                timers: Vec::new(),
                created_at: now,
                steps: 0,
                outcome: None,
                reason: None,
            };
            match registered.kind.start(&flow_id, input, now) {
                Ok((state, commands)) => {
                    record.state = state;
                    apply_commands(&mut record, commands);
                }
                Err(reason) => dead(&mut record, reason),
            }
            let bytes = serde_json::to_vec(&record).map_err(|error| Error::Encode(error.to_string()))?;
            batch.insert(&db.flows, flow_id.as_bytes(), bytes);
            started.push((flow_id, record));
        }
        if started.is_empty() {
            return Ok(0);
        }
        batch.commit().map_err(|error| self.io(error))?;
        db.database.persist(PersistMode::Buffer).map_err(|error| self.io(error))?;
        let count = started.len();
        self.inner.stats.started.fetch_add(count as u64, Ordering::Relaxed);
        for (flow_id, record) in started {
            self.after_write(&flow_id, &record, &[]);
        }
        Ok(count)
    }

    /// Tells a running flow something (a no-op for one that is gone).
    pub fn signal(&self, flow_id: &str, name: &str, payload: Value) -> Result<()> {
        self.step(flow_id, Event::Signal { name: name.to_string(), payload }).map(|_| ())
    }

    /// A flow's record, if it exists.
    pub fn record(&self, flow_id: &str) -> Result<Option<Record>> {
        let Some(bytes) = self.db()?.flows.get(flow_id).map_err(|error| self.io(error))? else { return Ok(None) };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Every flow's id and record (for operators and tests).
    pub fn records(&self) -> Result<Vec<(String, Record)>> {
        let mut records = Vec::new();
        let db = self.db()?;
        for guard in db.flows.iter() {
            let (key, value) = guard.into_inner().map_err(|error| self.io(error))?;
            if let Ok(record) = serde_json::from_slice::<Record>(&value) {
                records.push((String::from_utf8_lossy(&key).into_owned(), record));
            }
        }
        Ok(records)
    }

    /// Removes finished flows created before `before`; returns how many.
    pub fn forget_finished(&self, before: Millis) -> Result<usize> {
        let db = self.db()?;
        let mut batch = db.database.batch();
        let mut count = 0;
        for (flow_id, record) in self.records()? {
            if record.status != Status::Running && record.created_at < before {
                batch.remove(&db.flows, flow_id.as_bytes());
                count += 1;
            }
        }
        batch.commit().map_err(|error| self.io(error))?;
        Ok(count)
    }

    fn registered(&self, kind: &str) -> Result<Arc<Registered>> {
        self.inner.kinds.read().get(kind).cloned().ok_or_else(|| Error::UnknownKind(kind.to_string()))
    }

    /// One atomic step of one flow. `Ok(false)`: the event was for nothing
    /// the flow waits for (or the flow is gone or finished), and was dropped.
    fn step(&self, flow_id: &str, event: Event) -> Result<bool> {
        let _stripe = self.inner.stripes[stripe(flow_id)].lock();
        let db = self.db()?;
        let Some(bytes) = db.flows.get(flow_id).map_err(|error| self.io(error))? else { return Ok(false) };
        let Ok(mut record) = serde_json::from_slice::<Record>(&bytes) else { return Ok(false) };
        if record.status != Status::Running {
            return Ok(false);
        }
        let expected = match &event {
            Event::ActivityDone { id, .. } | Event::ActivityFailed { id, .. } => {
                let before = record.waits.len();
                record.waits.retain(|(wait, _, _)| wait != id);
                before != record.waits.len()
            }
            Event::TimerFired { id } => {
                let before = record.timers.len();
                record.timers.retain(|(timer, _)| timer != id);
                before != record.timers.len()
            }
            Event::Signal { .. } => true,
        };
        if !expected {
            return Ok(false);
        }
        let registered = self.registered(&record.kind)?;
        let previous_waits: Vec<u32> = record.waits.iter().map(|(id, _, _)| *id).collect();
        let now = self.inner.clock.now();
        let state = std::mem::take(&mut record.state);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| registered.kind.step(flow_id, state, event, now)));
        match outcome {
            Ok(Ok((state, commands))) => {
                record.state = state;
                apply_commands(&mut record, commands);
            }
            Ok(Err(reason)) => dead(&mut record, reason),
            Err(_) => dead(&mut record, "the workflow panicked".to_string()),
        }
        record.steps += 1;
        let bytes = serde_json::to_vec(&record).map_err(|error| Error::Encode(error.to_string()))?;
        db.flows.insert(flow_id.as_bytes(), bytes).map_err(|error| self.io(error))?;
        db.database.persist(PersistMode::Buffer).map_err(|error| self.io(error))?;
        drop(db);
        self.inner.stats.steps.fetch_add(1, Ordering::Relaxed);
        drop(_stripe);
        self.after_write(flow_id, &record, &previous_waits);
        Ok(true)
    }

    /// After a write: count the outcome, spawn new waits, arm new timers.
    fn after_write(&self, flow_id: &str, record: &Record, previous_waits: &[u32]) {
        match record.status {
            Status::Completed => {
                self.inner.stats.completed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Status::DeadLetter => {
                self.inner.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(flow_id, kind = record.kind, reason = record.reason.as_deref().unwrap_or(""), "workflow dead-lettered");
                return;
            }
            Status::Running => {}
        }
        for (id, _, _) in &record.waits {
            if !previous_waits.contains(id) {
                self.spawn_activity(flow_id.to_string(), *id);
            }
        }
        let mut added = false;
        {
            let mut timers = self.inner.timers.lock();
            for (id, at) in &record.timers {
                added |= timers.insert((*at, flow_id.to_string(), *id));
            }
        }
        if added {
            self.inner.timer_added.notify_one();
        }
    }

    fn spawn_activity(&self, flow_id: String, id: u32) {
        let Some(runtime) = self.inner.runtime.lock().clone() else {
            // Not running yet: run() spawns it. (After shutdown the next
            // open finds the wait in the store.)
            self.inner.pending.lock().push((flow_id, id));
            return;
        };
        let engine = self.clone();
        runtime.spawn(async move {
            let Ok(_permit) = engine.inner.permits.clone().acquire_owned().await else { return };
            let Ok(Some(record)) = engine.record(&flow_id) else { return };
            let Some((_, name, input)) = record.waits.iter().find(|(wait, _, _)| *wait == id).cloned() else { return };
            let Ok(registered) = engine.registered(&record.kind) else {
                tracing::error!(flow_id, kind = record.kind, "no workflow of this kind is registered; it waits until one is");
                return;
            };
            let call = ActivityCall { flow_id: flow_id.clone(), kind: record.kind.clone(), name, input };
            engine.inner.stats.activities.fetch_add(1, Ordering::Relaxed);
            let event = match registered.activities.run(&call, id).await {
                Ok(output) => Event::ActivityDone { id, output },
                Err(failure) => {
                    engine.inner.stats.activity_failures.fetch_add(1, Ordering::Relaxed);
                    Event::ActivityFailed { id, failure }
                }
            };
            drop(_permit);
            let stepper = engine.clone();
            let result = tokio::task::spawn_blocking(move || stepper.step(&flow_id, event)).await;
            if let Ok(Err(error)) = result {
                tracing::error!(%error, "a workflow step failed; the activity runs again at the next start");
            }
        });
    }

    async fn timer_loop(&self) {
        loop {
            let next = self.inner.timers.lock().first().cloned();
            let Some((at, flow_id, id)) = next else {
                self.inner.timer_added.notified().await;
                continue;
            };
            if self.inner.clock.now() < at {
                tokio::select! {
                    _ = self.inner.clock.sleep_until(at) => {}
                    _ = self.inner.timer_added.notified() => continue,
                }
            }
            self.inner.timers.lock().remove(&(at, flow_id.clone(), id));
            self.inner.stats.timers_fired.fetch_add(1, Ordering::Relaxed);
            let engine = self.clone();
            let result = tokio::task::spawn_blocking(move || engine.step(&flow_id, Event::TimerFired { id })).await;
            if let Ok(Err(error)) = result {
                tracing::error!(%error, "a workflow timer step failed; it fires again at the next start");
            }
        }
    }
}

/// A finished flow keeps its outcome, not its state: the record stays (so
/// its id is not started again) at a fraction of the size.
fn finish(record: &mut Record) {
    record.state = Value::Null;
    record.waits.clear();
    record.timers.clear();
}

fn dead(record: &mut Record, reason: String) {
    finish(record);
    record.status = Status::DeadLetter;
    record.reason = Some(reason);
}

fn apply_commands(record: &mut Record, commands: Vec<Command>) {
    for command in commands {
        match command {
            Command::Activity { id, name, input } => record.waits.push((id, name, input)),
            Command::Timer { id, at } => record.timers.push((id, at)),
            Command::Complete { output } => {
                finish(record);
                record.status = Status::Completed;
                record.outcome = Some(output);
                return;
            }
            Command::DeadLetter { reason } => {
                dead(record, reason);
                return;
            }
        }
    }
}
