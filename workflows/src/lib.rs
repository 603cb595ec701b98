//! Durable workflows: each is written once, as a deterministic state
//! machine ([`Flow`]) that takes events and the time and returns
//! [`Command`]s (run an activity, start a timer, finish, dead-letter), and
//! runs on an engine that keeps its state through crashes.
//!
//! The embedded engine ([`embedded::Engine`], the default inside
//! `confab serve`) keeps each flow's state in a fjall store of its own,
//! takes one atomic step at a time, and fires durable timers. Activities
//! are the only code with side effects; each call carries an
//! [`ActivityCall::key`] that is the same on every retry of the same
//! step, so an activity that must not run twice (a push, a deletion) can
//! use it to tell a repeat after a crash from new work.
//!
//! A flow never reads the clock, a random number or the network: time
//! comes in with each event (`now`), jitter is derived from the flow's id,
//! and results come back as events. That is what lets unit tests drive a
//! flow with an injected clock (`clock::ManualClock`), and what a replay
//! needs to reach the same state from the same history.

pub mod clock;
pub mod embedded;
pub mod moderation;
pub mod push;
pub mod retention;

use std::sync::atomic::AtomicU64;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Milliseconds since 1970, from the engine's clock.
pub type Millis = i64;

/// What a flow asks its engine to do next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Run activity `name` with `input`; its outcome comes back as
    /// [`Event::ActivityDone`] or [`Event::ActivityFailed`] with this `id`.
    Activity { id: u32, name: String, input: Value },
    /// Fire [`Event::TimerFired`] with this `id` at `at`.
    Timer { id: u32, at: Millis },
    /// The flow is done.
    Complete { output: Value },
    /// The flow gave up: kept for operators with the reason.
    DeadLetter { reason: String },
}

/// What happened to a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ActivityDone {
        id: u32,
        output: Value,
    },
    ActivityFailed {
        id: u32,
        failure: Failure,
    },
    TimerFired {
        id: u32,
    },
    /// Something outside told the flow (`Engine::signal`).
    Signal {
        name: String,
        payload: Value,
    },
}

/// How an activity failed, as the flow's retry rules need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    /// The service asked for this pause before a retry (`Retry-After`).
    pub retry_after_ms: Option<u64>,
    /// Short and stable (`Unregistered`, `http 503`): it becomes a metric label.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Worth trying again later (a timeout, 429, 5xx).
    Retryable,
    /// Will fail the same way again (a bad request).
    Permanent,
    /// The push service says the device token is gone.
    Unregistered,
}

impl Failure {
    pub fn retryable(reason: impl Into<String>, retry_after_ms: Option<u64>) -> Failure {
        Failure { kind: FailureKind::Retryable, retry_after_ms, reason: reason.into() }
    }

    pub fn permanent(reason: impl Into<String>) -> Failure {
        Failure { kind: FailureKind::Permanent, retry_after_ms: None, reason: reason.into() }
    }
}

/// A workflow: deterministic, serializable, no I/O.
pub trait Flow: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Its name in the store and in metrics; never change it once used.
    const KIND: &'static str;
    type Input: Serialize + DeserializeOwned + Send;

    /// The first state and commands; `id` is the flow's id (for jitter).
    fn start(id: &str, input: Self::Input, now: Millis) -> (Self, Vec<Command>);

    /// The next commands after `event`.
    fn on_event(&mut self, id: &str, event: Event, now: Millis) -> Vec<Command>;
}

/// One activity to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityCall {
    pub flow_id: String,
    pub kind: String,
    pub name: String,
    pub input: Value,
}

impl ActivityCall {
    /// The same for every run of this step, crash or not: an idempotency key.
    pub fn key(&self, id: u32) -> String {
        format!("{}/{id}", self.flow_id)
    }
}

/// The side effects flows ask for, implemented by the binary's wiring.
#[async_trait::async_trait]
pub trait Activities: Send + Sync {
    async fn run(&self, call: &ActivityCall, id: u32) -> Result<Value, Failure>;
}

/// An engine's counters, for metrics (both engines keep the same ones).
#[derive(Debug, Default)]
pub struct Stats {
    pub started: AtomicU64,
    pub steps: AtomicU64,
    pub activities: AtomicU64,
    pub activity_failures: AtomicU64,
    pub timers_fired: AtomicU64,
    pub completed: AtomicU64,
    pub dead_letters: AtomicU64,
}

/// Lowers the calling thread's priority to `nice` (background work waits
/// for the cores; chat does not). Best effort: a refusal changes nothing.
pub fn lower_priority(nice: i32) {
    if nice != 0 {
        let _ = rustix::process::setpriority_process(None, nice);
    }
}

/// A deterministic number in `0..bound` from a flow id and a counter: the
/// jitter of a backoff, the same on every replay.
pub fn jitter(flow_id: &str, counter: u32, bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    // FNV-1a: stable across versions and platforms (std's hasher is not).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in flow_id.bytes().chain(counter.to_be_bytes()) {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % bound
}
