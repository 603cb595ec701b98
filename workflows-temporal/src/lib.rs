//! Confab's workflows on Temporal (`[workflows] engine = "temporal"`): the
//! same [`Flow`]s and the same [`Activities`] as the embedded engine, run
//! by a Temporal worker, for deployments that outgrow one machine.
//!
//! ## The happy path
//! - **Start**: [`Engine::start_many`] starts one Temporal workflow per
//!   flow, its workflow id the flow's id and its type the flow's
//!   [`Flow::KIND`] (`push_delivery`, `retention_run`). The id reuse
//!   policy refuses a second start of an id Temporal still keeps, so
//!   starting a flow twice does nothing, as on the embedded engine.
//! - **Run**: the worker ([`Engine::run_worker`], inside `confab serve`
//!   or `confab worker`) runs one interpreter per workflow
//!   ([`interpret`]): it gives the flow `start` and then each event, with
//!   `now` from Temporal's workflow time, and turns each [`Command`] into
//!   Temporal's own: an activity (`confab_activity`, carrying the flow's
//!   activity name, input and [`ActivityCall::key`]), a timer, the
//!   workflow's result, or its failure. Temporal's history is the state:
//!   a worker that dies is replaced by a replay of the history on another.
//! - **Signals**: [`Engine::signal`] sends Temporal signal `confab_signal`
//!   `{name, payload}`; the interpreter hands it to the flow as
//!   [`Event::Signal`].
//!
//! ## Failures
//! - **An activity fails** the way a flow cares about (a 503 from APNs):
//!   the activity *succeeds* in Temporal's eyes and returns the
//!   [`Failure`], so the flow's own retry rules (backoff, `Retry-After`,
//!   attempts, age) decide, exactly as on the embedded engine.
//! - **An activity cannot finish** (the worker died, it overran
//!   `activity_timeout`): Temporal retries it (at most
//!   [`INFRASTRUCTURE_ATTEMPTS`] times, backing off from 1 s to 1 min)
//!   with the same key, so the service can tell a repeat; after that the
//!   flow sees a retryable failure.
//! - **A dead letter** fails the workflow with an application failure of
//!   type `DeadLetter` and the reason, not retried: operators find dead
//!   letters among Temporal's failed workflows.
//! - **Determinism**: the interpreter polls its waits in a fixed order
//!   and reads no clock but the workflow's, so a replay reaches the same
//!   commands; the replay tests check recorded histories.
//! - **Temporal is unreachable**: starts return [`Error::Unavailable`]
//!   (the caller logs and skips, as with a full embedded store); the
//!   worker retries its connection.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use confab_workflows::{Activities, ActivityCall, Command, Event, Failure, Flow, Millis, Stats};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, WorkflowGetResultOptions, WorkflowSignalOptions, WorkflowStartOptions};
use temporalio_common::RetryPolicy;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{ActivityOptions, ApplicationFailure, WorkflowContext, WorkflowResult, WorkflowTermination};

pub mod flows;

/// Temporal's retries of one activity that could not finish (not of a
/// failure the flow handles).
pub const INFRASTRUCTURE_ATTEMPTS: u32 = 10;

/// The one Temporal activity type; the flow's activity name travels in
/// its input.
pub const ACTIVITY: &str = "confab_activity";

/// The one Temporal signal type; the flow's signal name travels in it.
pub const SIGNAL: &str = "confab_signal";

/// The failure type of a dead-lettered workflow.
pub const DEAD_LETTER: &str = "DeadLetter";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not reach Temporal at {address}: {reason}; check `[workflows] address` and that the server is up")]
    Unavailable { address: String, reason: String },
    #[error("Temporal refused the workflow request: {0}")]
    Refused(String),
    #[error("workflow input does not encode: {0}")]
    Encode(String),
    #[error("[workflows] {field}: {reason}")]
    Config { field: &'static str, reason: String },
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unavailable { .. } => "workflow_unavailable",
            Error::Refused(_) => "workflow_refused",
            Error::Encode(_) => "workflow_encode",
            Error::Config { .. } => "workflow_config",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the Temporal service is, and how the worker runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// `http://host:7233`, or `https://host:7233` for TLS (with `tls`).
    pub address: String,
    /// How to check the server and prove who we are over TLS; used (and
    /// needed) with an `https://` address.
    pub tls: Option<Tls>,
    /// An API key (Temporal Cloud's), sent as a bearer token on every
    /// call; only over TLS.
    pub api_key: Option<ApiKey>,
    pub namespace: String,
    pub task_queue: String,
    /// How long one activity may run before Temporal retries it.
    pub activity_timeout: Duration,
    /// Activities one worker runs at once.
    pub activity_concurrency: usize,
    /// Threads of the worker's own runtime, at `nice` (background work).
    pub threads: usize,
    pub nice: i32,
}

/// TLS to the frontend. The server's certificate is checked against `ca_pem`
/// (or the system's roots) for `domain` (or the address's host); with
/// `client`, the connection is mutual TLS.
#[derive(Clone, Default)]
pub struct Tls {
    /// PEM certificates of the CA that signed the server's; None: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// For mutual TLS: a PEM certificate chain and its PEM private key.
    pub client: Option<ClientIdentity>,
    /// The name the server's certificate must carry, when it is not the
    /// address's host.
    pub domain: Option<String>,
}

/// A client certificate chain and its key, both PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Tls")
            .field("ca", &self.ca_pem.as_ref().map(|_| "given"))
            .field("client_certificate", &self.client.as_ref().map(|_| "given"))
            .field("domain", &self.domain)
            .finish()
    }
}

/// A secret that never shows in logs or debug output.
#[derive(Clone)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ApiKey(…)")
    }
}

impl Config {
    /// Every problem with the settings, named by field.
    pub fn check(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        let https = self.address.starts_with("https://");
        if !https && !self.address.starts_with("http://") {
            problems.push(Error::Config { field: "address", reason: format!("`{}` is neither an http:// nor an https:// URL", self.address) });
        }
        if self.address.starts_with("http://") {
            if self.tls.is_some() {
                problems.push(Error::Config {
                    field: "address",
                    reason: format!("TLS settings (tls_*) are given but `{}` is http://; use an https:// address", self.address),
                });
            }
            if self.api_key.is_some() {
                problems.push(Error::Config {
                    field: "api_key_file",
                    reason: format!("an API key would cross the network in the clear to `{}`; use an https:// address", self.address),
                });
            }
        }
        if let Some(ApiKey(key)) = &self.api_key {
            if key.trim().is_empty() || key.trim().contains(char::is_whitespace) {
                problems
                    .push(Error::Config { field: "api_key_file", reason: "the key is empty or has spaces inside; the file should hold the key alone".into() });
            }
        }
        if self.namespace.trim().is_empty() {
            problems.push(Error::Config { field: "namespace", reason: "is empty".into() });
        }
        if self.task_queue.trim().is_empty() {
            problems.push(Error::Config { field: "task_queue", reason: "is empty".into() });
        }
        if self.activity_timeout.is_zero() {
            problems.push(Error::Config { field: "activity_timeout_secs", reason: "must be at least 1".into() });
        }
        problems
    }
}

/// How a flow ended, on either engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed(Value),
    DeadLetter(String),
}

/// A workflow's input on Temporal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowStart {
    pub input: Value,
    /// The activities' start-to-close timeout, from the starter's config.
    pub activity_timeout_ms: u64,
}

/// A signal on Temporal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowSignal {
    pub name: String,
    pub payload: Value,
}

/// What the activity is asked to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActivityInput {
    pub call: ActivityCall,
    pub id: u32,
}

/// What it answers: a failure the flow handles is an answer too.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ActivityOutput {
    Done { output: Value },
    Failed { failure: Failure },
}

/// The activities of each flow kind, shared by the worker.
#[derive(Default)]
pub struct Registry {
    kinds: RwLock<HashMap<String, Arc<dyn Activities>>>,
}

/// This process's counters. Process-wide because workflow code (which
/// Temporal constructs) can reach nothing else; steps are counted when
/// they are new, not when a worker replays them.
pub fn stats() -> &'static Stats {
    static STATS: std::sync::OnceLock<Stats> = std::sync::OnceLock::new();
    STATS.get_or_init(Stats::default)
}

fn count<W>(ctx: &WorkflowContext<W>, counter: &std::sync::atomic::AtomicU64) {
    if !ctx.is_replaying() {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The Temporal activity that runs a flow's activity.
pub struct FlowActivities {
    registry: Arc<Registry>,
}

#[activities]
impl FlowActivities {
    #[activity(name = ACTIVITY)]
    pub async fn run(self: Arc<Self>, _ctx: ActivityContext, input: ActivityInput) -> std::result::Result<ActivityOutput, ActivityError> {
        let activities = self.registry.kinds.read().get(&input.call.kind).cloned();
        let Some(activities) = activities else {
            // Another worker of the queue may know it: let Temporal retry.
            return Err(ActivityError::from(anyhow::anyhow!("this worker has no activities for workflows of kind `{}`", input.call.kind)));
        };
        stats().activities.fetch_add(1, Ordering::Relaxed);
        Ok(match activities.run(&input.call, input.id).await {
            Ok(output) => ActivityOutput::Done { output },
            Err(failure) => {
                stats().activity_failures.fetch_add(1, Ordering::Relaxed);
                ActivityOutput::Failed { failure }
            }
        })
    }
}

/// Workflow state the interpreter reads: the signals not yet handed on.
pub trait Inbox {
    fn inbox(&mut self) -> &mut VecDeque<FlowSignal>;
    fn has_signal(&self) -> bool;
}

/// The next signal, if one came. Reads before it takes: a mutation makes
/// the SDK poll the workflow again, so one on every poll would never rest.
fn take_signal<W: Inbox + 'static>(ctx: &WorkflowContext<W>) -> Option<Event> {
    if !ctx.state(|state| state.has_signal()) {
        return None;
    }
    ctx.state_mut(|state| state.inbox().pop_front()).map(|signal| Event::Signal { name: signal.name, payload: signal.payload })
}

fn millis(time: Option<SystemTime>) -> Millis {
    time.and_then(|time| time.duration_since(UNIX_EPOCH).ok()).map(|since| since.as_millis() as Millis).unwrap_or(0)
}

type Wait<'a> = Pin<Box<dyn Future<Output = Event> + 'a>>;

/// Runs flow `F` as the body of a Temporal workflow.
pub async fn interpret<F: Flow, W: Inbox + 'static>(ctx: &mut WorkflowContext<W>, start: FlowStart) -> WorkflowResult<Value> {
    let ctx: &WorkflowContext<W> = ctx;
    let flow_id = ctx.workflow_id().to_string();
    let input: F::Input = serde_json::from_value(start.input).map_err(|error| dead_letter(format!("the input of {flow_id} does not decode: {error}")))?;
    // A flow that panics is dead-lettered, as on the embedded engine (a
    // panic left to the SDK would fail the workflow task again and again).
    let panicked = |_| dead_letter("the workflow panicked".to_string());
    let now = millis(ctx.workflow_time());
    let (mut flow, mut commands) = std::panic::catch_unwind(AssertUnwindSafe(|| F::start(&flow_id, input, now))).map_err(panicked)?;
    let options = ActivityOptions::with_start_to_close_timeout(Duration::from_millis(start.activity_timeout_ms.max(1_000)))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .backoff_coefficient(2.0)
                .maximum_interval(Duration::from_secs(60))
                .maximum_attempts(INFRASTRUCTURE_ATTEMPTS)
                .build(),
        )
        .build();
    // Activities and timers the flow waits for, polled in the order they
    // were asked for: the same order on every replay.
    let mut waits: Vec<Wait<'_>> = Vec::new();
    loop {
        for command in commands.drain(..) {
            match command {
                Command::Activity { id, name, input } => {
                    let call = ActivityCall { flow_id: flow_id.clone(), kind: F::KIND.to_string(), name, input };
                    let options = options.clone();
                    waits.push(Box::pin(async move {
                        match ctx.execute_activity(FlowActivities::run, ActivityInput { call, id }, options).await {
                            Ok(ActivityOutput::Done { output }) => Event::ActivityDone { id, output },
                            Ok(ActivityOutput::Failed { failure }) => Event::ActivityFailed { id, failure },
                            Err(error) => Event::ActivityFailed { id, failure: Failure::retryable(format!("the activity could not finish: {error}"), None) },
                        }
                    }));
                }
                Command::Timer { id, at } => {
                    let after = (at - millis(ctx.workflow_time())).max(1) as u64;
                    waits.push(Box::pin(async move {
                        ctx.timer(Duration::from_millis(after)).await;
                        Event::TimerFired { id }
                    }));
                }
                Command::Complete { output } => {
                    count(ctx, &stats().completed);
                    return Ok(output);
                }
                Command::DeadLetter { reason } => {
                    count(ctx, &stats().dead_letters);
                    return Err(dead_letter(reason));
                }
            }
        }
        let event = next_event(ctx, &mut waits).await;
        count(ctx, &stats().steps);
        if matches!(event, Event::TimerFired { .. }) {
            count(ctx, &stats().timers_fired);
        }
        let now = millis(ctx.workflow_time());
        commands = std::panic::catch_unwind(AssertUnwindSafe(|| flow.on_event(&flow_id, event, now))).map_err(panicked)?;
    }
}

/// How a flow that gives up ends on Temporal: failed, not retried, with
/// the type operators search for.
fn dead_letter(reason: String) -> WorkflowTermination {
    ApplicationFailure::builder(reason).type_name(DEAD_LETTER.to_string()).non_retryable(true).build().into()
}

/// The next thing that happens: a wait that finished (the earliest asked
/// for first) or a signal.
async fn next_event<W: Inbox + 'static>(ctx: &WorkflowContext<W>, waits: &mut Vec<Wait<'_>>) -> Event {
    if let Some(signal) = take_signal(ctx) {
        return signal;
    }
    let mut signalled = Box::pin(ctx.wait_condition(|state| state.has_signal()));
    std::future::poll_fn(|cx| {
        for index in 0..waits.len() {
            if let Poll::Ready(event) = waits[index].as_mut().poll(cx) {
                drop(waits.remove(index));
                return Poll::Ready(event);
            }
        }
        // Resolves once a signal is in (and registers the waker until then).
        match signalled.as_mut().poll(cx) {
            Poll::Ready(_) => match take_signal(ctx) {
                Some(signal) => Poll::Ready(signal),
                None => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A workflow type by name, for the client (start, signal, result).
#[derive(Debug, Clone, Copy)]
struct Named(&'static str);

impl temporalio_common::WorkflowDefinition for Named {
    type Input = FlowStart;
    type Output = Value;
    fn name(&self) -> &str {
        self.0
    }
}

impl temporalio_common::HasWorkflowDefinition for Named {
    type Run = Named;
}

#[derive(Debug, Clone, Copy)]
struct Signal;

impl temporalio_common::SignalDefinition for Signal {
    type Workflow = Named;
    type Input = FlowSignal;
    fn name(&self) -> &str {
        SIGNAL
    }
}

/// The Temporal engine: a client that starts and signals flows, and the
/// worker that runs them (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    client: Client,
    registry: Arc<Registry>,
    worker: Mutex<Option<WorkerThread>>,
}

struct WorkerThread {
    shutdown: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Engine").field("address", &self.inner.config.address).field("task_queue", &self.inner.config.task_queue).finish_non_exhaustive()
    }
}

async fn connect(config: &Config) -> Result<Client> {
    let unavailable = |reason: String| Error::Unavailable { address: config.address.clone(), reason };
    let url: temporalio_client::Url = config.address.parse().map_err(|error| unavailable(format!("not a URL: {error}")))?;
    // An https:// address is TLS even with nothing configured: the
    // system's roots, the address's host.
    let tls = match (config.address.starts_with("https://"), &config.tls) {
        (true, tls) => Some(tls_options(tls.clone().unwrap_or_default())),
        (false, _) => None,
    };
    let options = ConnectionOptions::new(url).maybe_tls_options(tls).maybe_api_key(config.api_key.as_ref().map(|key| key.0.trim().to_string())).build();
    let connection = Connection::connect(options).await.map_err(|error| unavailable(error_chain(&error)))?;
    Client::new(connection, ClientOptions::new(config.namespace.clone()).build()).map_err(|error| unavailable(error_chain(&error)))
}

fn tls_options(tls: Tls) -> temporalio_client::TlsOptions {
    let client =
        tls.client.map(|identity| temporalio_client::ClientTlsOptions::builder().client_cert(identity.cert_pem).client_private_key(identity.key_pem).build());
    temporalio_client::TlsOptions::builder().maybe_server_root_ca_cert(tls.ca_pem).maybe_domain(tls.domain).maybe_client_tls_options(client).build()
}

/// An error and its causes, so a TLS failure says which check failed (a
/// transport error alone says nothing).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Engine {
    /// Connects to Temporal (the worker starts with [`Engine::run_worker`]).
    pub async fn connect(config: Config) -> Result<Engine> {
        if let Some(problem) = config.check().into_iter().next() {
            return Err(problem);
        }
        let client = connect(&config).await?;
        Ok(Engine { inner: Arc::new(Inner { config, client, registry: Arc::new(Registry::default()), worker: Mutex::new(None) }) })
    }

    /// Registers flow `F`'s activities with this process's worker.
    pub fn register<F: Flow>(&self, activities: Arc<dyn Activities>) {
        self.inner.registry.kinds.write().insert(F::KIND.to_string(), activities);
    }

    pub fn stats(&self) -> &Stats {
        stats()
    }

    /// Starts the worker on threads of its own: it polls the task queue
    /// for every flow in [`flows`] and the activities registered here.
    pub fn run_worker(&self) -> Result<()> {
        let mut slot = self.inner.worker.lock();
        if slot.is_some() {
            return Ok(());
        }
        let config = self.inner.config.clone();
        let registry = self.inner.registry.clone();
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("confab-temporal".into())
            .spawn(move || {
                let nice = config.nice;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(config.threads.max(1))
                    .thread_name("confab-temporal-worker")
                    .on_thread_start(move || confab_workflows::lower_priority(nice))
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(format!("could not start the worker's threads: {error}")));
                        return;
                    }
                };
                runtime.block_on(flows::run_worker(config, registry, stop, ready_tx));
            })
            .map_err(|error| Error::Refused(format!("could not start the worker's thread: {error}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {
                *slot = Some(WorkerThread { shutdown, thread });
                Ok(())
            }
            Ok(Err(reason)) => {
                let _ = thread.join();
                Err(Error::Unavailable { address: self.inner.config.address.clone(), reason })
            }
            Err(_) => Err(Error::Refused("the worker's thread ended before it started".into())),
        }
    }

    /// Stops the worker: it finishes the tasks it holds, then returns.
    pub async fn shutdown(&self) {
        let worker = self.inner.worker.lock().take();
        if let Some(worker) = worker {
            let _ = worker.shutdown.send(());
            let _ = tokio::task::spawn_blocking(move || worker.thread.join()).await;
        }
    }

    fn options(&self, flow_id: &str) -> WorkflowStartOptions {
        WorkflowStartOptions::new(self.inner.config.task_queue.clone(), flow_id.to_string())
            .id_reuse_policy(temporalio_client::WorkflowIdReusePolicy::RejectDuplicate)
            .build()
    }

    /// Starts flow `F` as `flow_id`; false if one with that id exists.
    pub async fn start<F: Flow>(&self, flow_id: &str, input: F::Input) -> Result<bool> {
        let input = serde_json::to_value(input).map_err(|error| Error::Encode(error.to_string()))?;
        let start = FlowStart { input, activity_timeout_ms: self.inner.config.activity_timeout.as_millis() as u64 };
        match self.inner.client.start_workflow(Named(F::KIND), start, self.options(flow_id)).await {
            Ok(_) => {
                stats().started.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(temporalio_client::errors::WorkflowStartError::AlreadyStarted { .. }) => Ok(false),
            Err(error) => Err(self.refused(error)),
        }
    }

    /// Starts many flows of kind `F`, 64 requests at a time; how many
    /// were new. One refused start does not stop the others: the refused
    /// are logged, and the call fails only when none could start.
    pub async fn start_many<F: Flow>(&self, flows: Vec<(String, F::Input)>) -> Result<usize> {
        use futures_util::stream::{self, StreamExt};
        let results: Vec<Result<bool>> =
            stream::iter(flows).map(|(flow_id, input)| async move { self.start::<F>(&flow_id, input).await }).buffer_unordered(64).collect().await;
        let (mut started, mut failed, mut first_error) = (0, 0, None);
        for result in results {
            match result {
                Ok(true) => started += 1,
                Ok(false) => {}
                Err(error) => {
                    failed += 1;
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) if started == 0 => Err(error),
            Some(error) => {
                tracing::error!(%error, failed, started, "Temporal refused some workflow starts; those are skipped");
                Ok(started)
            }
            None => Ok(started),
        }
    }

    /// Sends signal `name` to a running flow.
    pub async fn signal(&self, flow_id: &str, name: &str, payload: Value) -> Result<()> {
        let handle = self.inner.client.get_workflow_handle::<Named>(flow_id.to_string());
        handle.signal(Signal, FlowSignal { name: name.to_string(), payload }, WorkflowSignalOptions::default()).await.map_err(|error| self.refused(error))
    }

    /// Waits for a flow to end and tells how.
    pub async fn outcome(&self, flow_id: &str) -> Result<Outcome> {
        let handle = self.inner.client.get_workflow_handle::<Named>(flow_id.to_string());
        match handle.get_result(WorkflowGetResultOptions::default()).await {
            Ok(output) => Ok(Outcome::Completed(output)),
            Err(temporalio_client::errors::WorkflowGetResultError::Failed(failure)) => Ok(Outcome::DeadLetter(failure.to_string())),
            Err(error) => Err(self.refused(error)),
        }
    }

    /// A flow's history as Temporal's JSON (what [`flows::replay`] reads).
    pub async fn history_json(&self, flow_id: &str) -> Result<Vec<u8>> {
        let handle = self.inner.client.get_workflow_handle::<Named>(flow_id.to_string());
        handle.fetch_history(temporalio_client::WorkflowFetchHistoryOptions::default()).to_json().await.map_err(|error| self.refused(error))
    }

    fn refused(&self, error: impl std::fmt::Display) -> Error {
        let reason = error.to_string();
        if reason.contains("transport error") || reason.contains("Connection refused") || reason.contains("Unavailable") {
            Error::Unavailable { address: self.inner.config.address.clone(), reason }
        } else {
            Error::Refused(reason)
        }
    }
}
