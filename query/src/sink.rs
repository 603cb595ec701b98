//! The history sink: one task per log partition, appending the log's
//! events to the Delta tables in batches, exactly once per log offset.
//!
//! Every commit to a table carries a Delta application transaction
//! `confab-history-p<partition>` whose version is the next log offset to
//! write. A commit is atomic with its transaction, so after a crash each
//! table says exactly how far it got: the task re-reads from the lowest of
//! them and skips, per table, the rows that table already holds.
//!
//! The sink reads through the log's shared tail reader as a registered
//! consumer (named after its pipeline, `history` as shipped) and commits,
//! after each Delta commit, the offset below which every table has all it
//! needs: log retention never removes a record the tables lack, even when
//! S3 is down for days (the log then grows until it is back).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_log::{Log, StartAt, TailReader};
use confab_schemas::events::LogEvent;
use confab_telemetry::Span;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Transaction;
use deltalake::DeltaTable;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::rows::{rows_of, Rows};
use crate::tables::{HistoryStore, Table};
use crate::{Error, Result};

/// Bounds of the sink's batches; every one carries its unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Write once this many rows are waiting...
    pub flush_rows: usize,
    /// ...or once the oldest waiting row is this old (visibility delay).
    pub flush_interval_ms: u64,
    /// Compact a table's small files after this many appends to it.
    pub compact_every_commits: u64,
    /// A table that got no rows for this many log records gets an empty
    /// commit that records the sink's position, so that a restart does not
    /// re-read everything since that table's last row.
    pub progress_mark_after_records: u64,
    /// The sink's name as a consumer of the log (its pipeline's name).
    pub consumer: String,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            flush_rows: 20_000,
            flush_interval_ms: 2_000,
            compact_every_commits: 50,
            progress_mark_after_records: 100_000,
            consumer: "history".to_string(),
        }
    }
}

/// Records read from the log at once.
const READ_BATCH_RECORDS: usize = 4_096;

pub struct HistorySink {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    handle: SinkHandle,
    /// The sink's own runtime (see [`HistorySink::start`]).
    runtime: Option<tokio::runtime::Runtime>,
}

/// A runtime of one low-priority worker thread for the sink. Encoding
/// Parquet, committing and compacting take whole milliseconds of CPU; on
/// the live path's threads they would show in every send's latency.
/// (Delta's engine blocks in place while its own futures run on this
/// runtime: each blocked task needs a spare thread, so the blocking pool is
/// left at tokio's default size.)
fn sink_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    confab_log::background::runtime("confab-history", 1)
}

/// What others need of a running sink: how far it has written, a way to
/// ask it to write now, and the lock that keeps it still while history is
/// deleted or rewritten (see [`crate::maintenance`]).
#[derive(Debug, Clone)]
pub struct SinkHandle {
    /// Per partition: every record below this offset is in the tables
    /// (nothing read is still waiting in memory).
    pub(crate) written: Vec<watch::Receiver<u64>>,
    /// Bumped to ask every task to write what is waiting at once.
    pub(crate) flush_requests: Arc<watch::Sender<u64>>,
    /// Appends and compactions hold it shared; deletes and vacuums hold it
    /// alone, so a vacuum never removes a file an append is about to commit.
    pub(crate) writers: Arc<tokio::sync::RwLock<()>>,
    /// Bumped after history was rewritten: the tasks reopen their tables.
    pub(crate) rewrites: Arc<AtomicU64>,
    /// How the partition tasks are doing (for `/readyz` and metrics).
    pub(crate) health: Arc<SinkHealth>,
}

/// The sink's tasks' failures and restarts.
#[derive(Debug, Default)]
pub struct SinkHealth {
    /// Per partition: the last failure, current until a run of that
    /// partition has written or caught up since.
    failures: std::sync::Mutex<HashMap<u32, String>>,
    /// Whether any failure is recorded (so the hot path skips the lock).
    any_failing: std::sync::atomic::AtomicBool,
    restarts: AtomicU64,
}

impl SinkHealth {
    fn failed(&self, partition: u32, error: String) {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(partition, error);
        self.any_failing.store(true, Ordering::Release);
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// A run of `partition` wrote, or has nothing left to write.
    fn working(&self, partition: u32) {
        if self.any_failing.load(Ordering::Acquire) {
            let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            failures.remove(&partition);
            self.any_failing.store(!failures.is_empty(), Ordering::Release);
        }
    }
}

impl std::fmt::Debug for HistorySink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("HistorySink").field("partitions", &self.tasks.len()).finish()
    }
}

impl HistorySink {
    /// Opens (or creates) the tables and starts one task per partition, on a
    /// runtime of its own whose thread runs at a lower priority.
    pub async fn start(store: HistoryStore, log: Arc<dyn Log>, config: SinkConfig) -> Result<HistorySink> {
        let runtime = sink_runtime().map_err(|error| Error::Runtime(error.to_string()))?;
        let spawner = runtime.handle().clone();
        match HistorySink::start_on(&spawner, store, log, config).await {
            Ok(mut sink) => {
                sink.runtime = Some(runtime);
                Ok(sink)
            }
            Err(error) => {
                // A runtime may not be dropped inside another one.
                runtime.shutdown_background();
                Err(error)
            }
        }
    }

    /// As [`HistorySink::start`], spawning on a runtime the caller owns.
    pub async fn start_on(spawner: &tokio::runtime::Handle, store: HistoryStore, log: Arc<dyn Log>, config: SinkConfig) -> Result<HistorySink> {
        let (stop, stopped) = watch::channel(false);
        let flush_requests = Arc::new(watch::channel(0).0);
        let writers = Arc::new(tokio::sync::RwLock::new(()));
        let rewrites = Arc::new(AtomicU64::new(0));
        // Open (and create) every table here first, so that a bad location or
        // credentials fail the start rather than a task later.
        drop(open_tables(&store).await?);
        let mut tasks = Vec::new();
        let mut written = Vec::new();
        let health = Arc::new(SinkHealth::default());
        for partition in 0..log.partition_count() {
            let (progress, progress_seen) = watch::channel(0);
            let progress = Arc::new(progress);
            written.push(progress_seen);
            let (log, store, config, writers, rewrites, health) =
                (log.clone(), store.clone(), config.clone(), writers.clone(), rewrites.clone(), health.clone());
            let mut stopped = stopped.clone();
            let flush_requests = flush_requests.clone();
            tasks.push(spawner.spawn(async move {
                // A task that fails (the object store down, a disk full) is
                // started again with backoff; it resumes from what the
                // tables say, so nothing is written twice or lost.
                let mut attempt = 0u32;
                loop {
                    let task = PartitionSink {
                        partition,
                        log: log.clone(),
                        store: store.clone(),
                        // Opened by the task itself, on the sink's runtime: Delta's
                        // engine runs its work on the runtime a table was opened on.
                        tables: HashMap::new(),
                        config: config.clone(),
                        commits: HashMap::new(),
                        progress: progress.clone(),
                        health: health.clone(),
                        writers: writers.clone(),
                        rewrites: rewrites.clone(),
                        rewrites_seen: 0,
                    };
                    let error = match task.run(stopped.clone(), flush_requests.subscribe()).await {
                        Ok(()) => break,
                        Err(error) => error,
                    };
                    let wait = confab_log::background::restart_backoff(attempt);
                    tracing::error!(%error, partition, retry_in_secs = wait.as_secs(), "the history sink failed; restarting it");
                    health.failed(partition, error.to_string());
                    attempt += 1;
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stopped.wait_for(|stopped| *stopped) => break,
                    }
                }
            }));
        }
        let handle = SinkHandle { written, flush_requests, writers, rewrites, health };
        Ok(HistorySink { tasks, stop, handle, runtime: None })
    }

    pub fn handle(&self) -> SinkHandle {
        self.handle.clone()
    }

    /// Writes what is waiting, then stops.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for HistorySink {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // A runtime may not be dropped inside another one: let it go in the background.
            runtime.shutdown_background();
        }
    }
}

impl SinkHandle {
    /// Partitions whose task failed and has not written since, with the error.
    pub fn failing(&self) -> Vec<(u32, String)> {
        let failures = self.health.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut failing: Vec<(u32, String)> = failures.iter().map(|(partition, error)| (*partition, error.clone())).collect();
        failing.sort();
        failing
    }

    /// How many times a partition task was started again after failing.
    pub fn restarts(&self) -> u64 {
        self.health.restarts.load(Ordering::Relaxed)
    }

    /// Every record of `partition` below this offset is in the tables.
    pub fn written_up_to(&self, partition: u32) -> u64 {
        self.written.get(partition as usize).map_or(0, |written| *written.borrow())
    }
}

async fn open_tables(store: &HistoryStore) -> Result<HashMap<Table, DeltaTable>> {
    let mut tables = HashMap::new();
    for table in Table::SUNK {
        tables.insert(table, store.open_or_create(table).await?);
    }
    Ok(tables)
}

struct PartitionSink {
    partition: u32,
    log: Arc<dyn Log>,
    store: HistoryStore,
    tables: HashMap<Table, DeltaTable>,
    config: SinkConfig,
    commits: HashMap<Table, u64>,
    progress: Arc<watch::Sender<u64>>,
    health: Arc<SinkHealth>,
    writers: Arc<tokio::sync::RwLock<()>>,
    rewrites: Arc<AtomicU64>,
    rewrites_seen: u64,
}

impl PartitionSink {
    fn app_id(&self) -> String {
        format!("confab-history-p{}", self.partition)
    }

    /// Per table, the next log offset it does not hold yet.
    async fn written_up_to(&self) -> Result<HashMap<Table, u64>> {
        let mut versions = HashMap::new();
        for (table, delta) in &self.tables {
            let snapshot = delta.snapshot().map_err(|source| Error::Delta { table: table.name(), source })?;
            let version =
                snapshot.transaction_version(delta.log_store().as_ref(), self.app_id()).await.map_err(|source| Error::Delta { table: table.name(), source })?;
            versions.insert(*table, version.unwrap_or(0).max(0) as u64);
        }
        Ok(versions)
    }

    async fn run(mut self, mut stopped: watch::Receiver<bool>, mut flush_requested: watch::Receiver<u64>) -> Result<()> {
        self.tables = open_tables(&self.store).await?;
        let mut written = self.written_up_to().await?;
        let mut next = written.values().copied().min().unwrap_or(0).max(self.log.earliest(self.partition)?);
        let mut reader = TailReader::open(self.log.clone(), &self.config.consumer, self.partition, StartAt::Earliest)?;
        reader.seek(next)?;
        let mut committed = reader_commit(&reader, next, None);
        let mut durable = self.log.subscribe(self.partition)?;
        let mut rows = Rows::default();
        // `{pipeline}/delta_sink` of each traced message read: from its read
        // to the Delta commit that holds it.
        let mut spans: Vec<Span> = Vec::new();
        let span_name = format!("{}/delta_sink", self.config.consumer);
        let mut oldest_waiting: Option<Instant> = None;
        let flush_after = Duration::from_millis(self.config.flush_interval_ms);
        loop {
            // Take in everything durable, a batch of records at a time.
            while next < *durable.borrow_and_update() && rows.count < self.config.flush_rows {
                for record in reader.read_available(READ_BATCH_RECORDS, 16 * 1024 * 1024)? {
                    next = record.offset + 1;
                    let Ok(event) = LogEvent::decode(&record.payload) else {
                        tracing::error!(partition = self.partition, offset = record.offset, "the history sink skips an unreadable record");
                        continue;
                    };
                    let span = Span::record(|| span_name.clone(), event.trace(), self.partition, record.offset);
                    if span.recording() {
                        spans.push(span);
                    }
                    for (table, ts, cells) in rows_of(&event) {
                        if record.offset >= written[&table] {
                            rows.push(table, self.partition, record.offset, ts, cells);
                        }
                    }
                }
                if rows.count > 0 && oldest_waiting.is_none() {
                    oldest_waiting = Some(Instant::now());
                }
            }
            let asked = flush_requested.has_changed().unwrap_or(false);
            let due = rows.count >= self.config.flush_rows || oldest_waiting.is_some_and(|since| since.elapsed() >= flush_after);
            if due || (asked && rows.count > 0) {
                self.flush(&mut rows, next, &mut written).await?;
                spans.clear();
                self.health.working(self.partition);
                committed = reader_commit(&reader, next, committed);
                oldest_waiting = None;
                continue;
            }
            flush_requested.mark_unchanged();
            if rows.count == 0 {
                spans.clear();
                // Nothing read is waiting: everything below `next` is written.
                self.progress.send_replace(next);
                self.health.working(self.partition);
                committed = reader_commit(&reader, next, committed);
            }
            let wait = oldest_waiting.map_or(Duration::from_secs(3_600), |since| flush_after.saturating_sub(since.elapsed()));
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(wait) => {}
                _ = flush_requested.changed() => {}
                _ = stopped.changed() => break,
            }
        }
        if rows.count > 0 {
            self.flush(&mut rows, next, &mut written).await?;
        }
        reader_commit(&reader, next, committed);
        Ok(())
    }

    /// Appends each table's waiting rows with the transaction "written up to `next`".
    async fn flush(&mut self, rows: &mut Rows, next: u64, written: &mut HashMap<Table, u64>) -> Result<()> {
        let writers = self.writers.clone();
        let _writing = writers.read().await;
        let rewrites = self.rewrites.load(Ordering::Acquire);
        if rewrites != self.rewrites_seen {
            // History was deleted or rewritten meanwhile: start from the new versions.
            self.tables = open_tables(&self.store).await?;
            self.rewrites_seen = rewrites;
        }
        for (table, table_rows) in std::mem::take(&mut rows.by_table) {
            if table_rows.is_empty() {
                continue;
            }
            let updated = self.append(table, Rows::batch(table, &table_rows), next).await?;
            written.insert(table, next);
            let commits = self.commits.entry(table).or_insert(0);
            *commits += 1;
            let updated = if (*commits).is_multiple_of(self.config.compact_every_commits.max(1)) { compact(table, updated).await } else { updated };
            self.tables.insert(table, updated);
        }
        rows.count = 0;
        self.mark_progress(next, written).await?;
        self.progress.send_replace(next);
        Ok(())
    }

    /// Gives each table that lags far behind `next` (it had no rows for a
    /// long while) an empty commit carrying the transaction "written up to
    /// `next`": exactly once holds, and a restart starts near `next`.
    async fn mark_progress(&mut self, next: u64, written: &mut HashMap<Table, u64>) -> Result<()> {
        let threshold = self.config.progress_mark_after_records.max(1);
        let lagging: Vec<Table> = Table::SUNK.into_iter().filter(|table| next.saturating_sub(written[table]) >= threshold).collect();
        for table in lagging {
            let empty = deltalake::arrow::array::RecordBatch::new_empty(table.arrow_schema());
            let updated = self.append(table, empty, next).await?;
            self.tables.insert(table, updated);
            written.insert(table, next);
        }
        Ok(())
    }

    /// Appends `batch` to `table` in one commit that also records the
    /// transaction "written up to `next`"; the table is taken out of
    /// `self.tables` and returned updated.
    async fn append(&mut self, table: Table, batch: deltalake::arrow::array::RecordBatch, next: u64) -> Result<DeltaTable> {
        let delta = self.tables.remove(&table).expect("every table is open");
        let properties = CommitProperties::default().with_application_transaction(Transaction::new(self.app_id(), next as i64));
        delta
            .write(vec![batch])
            .with_partition_columns(["day"])
            .with_commit_properties(properties)
            .await
            .map_err(|source| Error::Delta { table: table.name(), source })
    }
}

/// Commits the sink's log offset (every record below `next` is in the
/// tables) unless it is already committed; returns what is committed. A
/// failed commit only means retention keeps more for now.
fn reader_commit(reader: &TailReader, next: u64, committed: Option<u64>) -> Option<u64> {
    if committed == Some(next) {
        return committed;
    }
    match reader.commit(next) {
        Ok(()) => Some(next),
        Err(error) => {
            tracing::warn!(%error, partition = reader.partition(), "the history sink could not commit its log offset");
            committed
        }
    }
}

/// Merges small files so that streaming does not leave thousands of them.
async fn compact(table: Table, delta: DeltaTable) -> DeltaTable {
    let reopen = delta.clone();
    match delta.optimize().await {
        Ok((compacted, metrics)) => {
            tracing::info!(table = table.name(), files_removed = metrics.num_files_removed, files_added = metrics.num_files_added, "compacted");
            compacted
        }
        Err(error) => {
            tracing::warn!(%error, table = table.name(), "compaction failed; it will be tried again later");
            reopen
        }
    }
}
