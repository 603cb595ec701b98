//! The sink: one task per log partition, reading the log as the
//! registered consumer named after its pipeline (`analytics`), appending
//! rows to ClickHouse in batches, exactly once per log offset.

use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_log::{Log, StartAt, TailReader};
use confab_schemas::events::LogEvent;
use tokio::sync::watch;

use crate::rows::Batch;
use crate::store::Store;
use crate::Result;

/// The `clickhouse_sink` stage's settings.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The pipeline's name: its consumer name on the log.
    pub consumer: String,
    /// Write once this many rows wait...
    pub flush_rows: usize,
    /// ...or once the oldest waiting row is this old.
    pub flush_interval: Duration,
}

/// Records read from the log at once.
const READ_RECORDS: usize = 4_096;
const READ_BYTES: usize = 16 << 20;
/// How often an idle partition's log offset is committed (each commit is an fsync).
const IDLE_COMMIT: Duration = Duration::from_secs(1);

/// What the partition tasks share with [`crate::Analytics`].
pub(crate) struct Shared {
    pub store: Store,
    pub log: Arc<dyn Log>,
    pub config: SinkConfig,
    /// Held for reading by every append, for writing by retention's purge.
    pub writers: tokio::sync::RwLock<()>,
    /// Bumped to ask every task to write what it holds now.
    pub flush_requests: watch::Sender<u64>,
    /// Per partition: every record below this offset is in the tables.
    pub written: Vec<watch::Sender<u64>>,
    /// Per partition, the error of a task that failed and has not written since.
    pub failures: std::sync::Mutex<std::collections::BTreeMap<u32, String>>,
}

impl Shared {
    pub fn failed(&self, partition: u32, error: String) {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(partition, error);
    }

    fn working(&self, partition: u32) {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&partition);
    }
}

/// Runs one partition until `stopped`; a failure is returned to the caller, which restarts it.
pub(crate) async fn run_partition(shared: &Shared, partition: u32, mut stopped: watch::Receiver<bool>) -> Result<()> {
    let mut flush_requested = shared.flush_requests.subscribe();
    let starts = shared.store.starts(partition).await?;
    let earliest = shared.log.earliest(partition)?;
    if starts.lowest() < earliest {
        tracing::warn!(partition, from = starts.lowest(), earliest, "the analytics lack records the log no longer holds; they start at the earliest held");
    }
    let mut next = starts.lowest().max(earliest);
    let mut reader = TailReader::open(shared.log.clone(), &shared.config.consumer, partition, StartAt::Earliest)?;
    reader.seek(next)?;
    // Every record below `next` is in every table already: say so now, or
    // retention's catch-up would wait on a partition that gets nothing new.
    shared.written[partition as usize].send_replace(next);
    let mut batch = Batch::default();
    let mut oldest: Option<Instant> = None;
    let mut committed: Option<u64> = None;
    let mut last_commit = Instant::now();
    loop {
        let mut asked = false;
        // When the oldest waiting row is due (or, with none waiting, in an hour: a wake-up that finds nothing to do).
        let deadline =
            tokio::time::Instant::from_std(oldest.unwrap_or_else(Instant::now) + oldest.map_or(Duration::from_secs(3_600), |_| shared.config.flush_interval));
        tokio::select! {
            records = reader.next_batch(READ_RECORDS, READ_BYTES) => {
                let records = match records {
                    Ok(records) => records,
                    Err(confab_log::Error::Closed) => break,
                    Err(error) => return Err(error.into()),
                };
                for record in records {
                    next = record.offset + 1;
                    match LogEvent::decode(&record.payload) {
                        Ok(event) => batch.add(&event, partition, record.offset, &starts),
                        Err(_) => tracing::error!(partition, offset = record.offset, "the analytics sink skips an unreadable record"),
                    }
                }
                if batch.is_empty() {
                    // Nothing read is waiting: everything below `next` is in.
                    shared.written[partition as usize].send_replace(next);
                    if committed != Some(next) && last_commit.elapsed() >= IDLE_COMMIT {
                        committed = commit(&reader, next, committed);
                        last_commit = Instant::now();
                    }
                } else if oldest.is_none() {
                    oldest = Some(Instant::now());
                }
            }
            () = tokio::time::sleep_until(deadline) => {}
            _ = flush_requested.changed() => asked = true,
            _ = stopped.changed() => break,
        }
        let due = batch.len() >= shared.config.flush_rows || oldest.is_some_and(|since| since.elapsed() >= shared.config.flush_interval);
        if !batch.is_empty() && (due || asked) {
            flush(shared, &mut batch, partition, next).await?;
            oldest = None;
            committed = commit(&reader, next, committed);
            last_commit = Instant::now();
        }
    }
    if !batch.is_empty() {
        flush(shared, &mut batch, partition, next).await?;
    }
    commit(&reader, next, committed);
    Ok(())
}

async fn flush(shared: &Shared, batch: &mut Batch, partition: u32, next: u64) -> Result<()> {
    {
        let _writing = shared.writers.read().await;
        shared.store.append(batch, partition, next).await?;
    }
    *batch = Batch::default();
    shared.written[partition as usize].send_replace(next);
    shared.working(partition);
    Ok(())
}

/// Commits the sink's log offset unless it is already; returns what is
/// committed. A failed commit only means log retention keeps more for now.
fn commit(reader: &TailReader, next: u64, committed: Option<u64>) -> Option<u64> {
    if committed == Some(next) {
        return committed;
    }
    match reader.commit(next) {
        Ok(()) => Some(next),
        Err(error) => {
            tracing::warn!(%error, partition = reader.partition(), "the analytics sink could not commit its log offset");
            committed
        }
    }
}
