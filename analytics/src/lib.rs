//! Confab's analytics on ClickHouse; see `README.md` beside this crate.
//!
//! Happy path. When `[analytics.clickhouse]` is set and a pipeline has a
//! `clickhouse_sink` stage (`analytics` in `history.toml`), one task per
//! log partition reads the durable log as that pipeline's consumer and
//! turns each record into rows (`rows.rs`: messages created, edited and
//! deleted, delivery and read receipts, conversations; never a body). Every
//! `flush_interval_ms`, or at `flush_rows`, it appends them with one insert
//! per table, then records the partition's next offset in
//! `analytics_positions`, then commits its log offset so log retention may
//! drop what is in. The materialized view `conversation_daily_mv` sums
//! each insert into `conversation_daily` as it lands.
//!
//! Failures:
//! - **A crash between inserts.** ClickHouse has no transaction over
//!   tables, but each insert (up to a million rows) is atomic; on restart
//!   each table says how far it got (its highest `log_offset` in the
//!   partition, or the recorded position if higher), and rows below that
//!   are skipped: exactly once per log offset and table.
//! - **ClickHouse down or refusing.** The task logs, reports the failure
//!   on `/readyz`, and starts again with backoff (1 s doubling to a
//!   minute); it resumes from what the tables say. The log keeps every
//!   record meanwhile, since the consumer has not committed past it.
//! - **Retention** ([`Analytics::purge_conversation_before`]): the live
//!   store's deletes reach the tables first (the sink is asked to write at
//!   once and waited for), then, with the sink paused, the rows of the
//!   messages sent before the time go, and `conversation_daily`'s rows of
//!   those days are counted again from what is left (a view never sees
//!   deletes). Erasure leaves the tables as they are: they hold no body.
//! - **A fresh database on an old server.** The sink starts at what the
//!   log still holds (seven days by default); older history stays in Delta.

pub mod config;
pub mod rows;
pub mod schema;
pub mod sink;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use confab_log::Log;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{AnalyticsConfig, ClickhouseConfig};
pub use sink::SinkConfig;
pub use store::{Purged, Store};

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("ClickHouse at `{url}` cannot be reached ({detail}); check [analytics.clickhouse] url and that the server runs")]
    Unavailable { url: String, detail: String },
    #[error("ClickHouse refused an analytics statement: {0}")]
    Refused(String),
    #[error("reading the log for the analytics: {0}")]
    Log(#[from] confab_log::Error),
    #[error("the analytics sink has not written what the log holds within {0} s (is ClickHouse up? see /readyz); try again later")]
    Behind(u64),
    #[error("ClickHouse has not finished the analytics deletes within {0} s; the run can be repeated")]
    MutationsPending(u64),
    #[error("the analytics database `{database}` holds the log positions of another data directory (instance {owner}); set [analytics.clickhouse] database to a new one, or drop that one")]
    OwnedBy { database: String, owner: String },
}

impl AnalyticsError {
    /// A stable code, for logs and the API's error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            AnalyticsError::Unavailable { .. } => "analytics_unavailable",
            AnalyticsError::Refused(_) => "analytics_refused",
            AnalyticsError::Log(_) => "log_error",
            AnalyticsError::Behind(_) => "analytics_behind",
            AnalyticsError::MutationsPending(_) => "analytics_mutations_pending",
            AnalyticsError::OwnedBy { .. } => "analytics_database_owned",
        }
    }
}

pub type Result<T, E = AnalyticsError> = std::result::Result<T, E>;

/// How long retention waits for the sink to write what the log holds.
const CATCH_UP: Duration = Duration::from_secs(60);

/// The running analytics: the sink's tasks and retention's purge.
pub struct Analytics {
    shared: Arc<sink::Shared>,
    stop: watch::Sender<bool>,
    tasks: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Analytics").field("store", &self.shared.store).finish_non_exhaustive()
    }
}

impl Analytics {
    /// Opens (and creates) the database, then starts one task per partition.
    /// `source`: the data directory's instance id (see [`Store::open`]).
    pub async fn start(clickhouse: &ClickhouseConfig, source: &str, log: Arc<dyn Log>, config: SinkConfig) -> Result<Analytics> {
        let store = Store::open(clickhouse, source).await?;
        let written = (0..log.partition_count()).map(|_| watch::channel(0).0).collect();
        let shared = Arc::new(sink::Shared {
            store,
            log: log.clone(),
            config,
            writers: tokio::sync::RwLock::new(()),
            flush_requests: watch::channel(0).0,
            written,
            failures: Default::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for partition in 0..log.partition_count() {
            let (shared, mut stopped) = (shared.clone(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                let mut attempt = 0u32;
                loop {
                    let error = match sink::run_partition(&shared, partition, stopped.clone()).await {
                        Ok(()) => break,
                        Err(error) => error,
                    };
                    let wait = confab_log::background::restart_backoff(attempt);
                    tracing::error!(%error, code = error.code(), partition, retry_in_secs = wait.as_secs(), "the analytics sink failed; restarting it");
                    shared.failed(partition, error.to_string());
                    attempt += 1;
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stopped.wait_for(|stopped| *stopped) => break,
                    }
                }
            }));
        }
        Ok(Analytics { shared, stop, tasks: tokio::sync::Mutex::new(tasks) })
    }

    /// Partitions whose task failed and has not written since, with the error.
    pub fn failing(&self) -> Vec<(u32, String)> {
        self.shared.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().map(|(partition, error)| (*partition, error.clone())).collect()
    }

    /// Asks the sink to write at once and waits until the tables hold every
    /// record the log held when called.
    pub async fn catch_up(&self, within: Duration) -> Result<()> {
        let mut targets = Vec::new();
        for partition in 0..self.shared.log.partition_count() {
            targets.push((partition, self.shared.log.durable_end(partition)?));
        }
        self.shared.flush_requests.send_modify(|requests| *requests += 1);
        let wait = async {
            for (partition, target) in targets {
                let mut written = self.shared.written[partition as usize].subscribe();
                // The sender lives as long as `self`: this only ends when written.
                let _ = written.wait_for(|written| *written >= target).await;
            }
        };
        tokio::time::timeout(within, wait).await.map_err(|_| AnalyticsError::Behind(within.as_secs()))
    }

    /// Retention of one conversation: once the sink has written the live
    /// store's deletes, the rows of its messages sent before `before_ms`
    /// go, and its daily counts are made again from what is left.
    /// Idempotent: a failed run can be repeated.
    pub async fn purge_conversation_before(&self, conversation_id: &str, before_ms: i64) -> Result<Purged> {
        self.catch_up(CATCH_UP).await?;
        let _paused = self.shared.writers.write().await;
        self.shared.store.purge_conversation_before(conversation_id, before_ms).await
    }

    /// Writes what is waiting, then stops.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut *self.tasks.lock().await) {
            let _ = task.await;
        }
    }
}
