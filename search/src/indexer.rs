//! The indexing pipeline: keeps the index exactly in step with the log.
//!
//! Happy path: one reader per log partition (a registered consumer named
//! after the pipeline, bounded by the state's applied end so that an edit
//! is looked up in a state that already holds it) turns each record into
//! index changes: `MessageCreated` adds the message as sent,
//! `MessageEdited` indexes its current text (looked up in the state, so an
//! edit never resurrects a deleted message), `MessageDeleted` (a user's
//! delete, erasure, retention) removes it. The readers hand their batches
//! to one writer task, which applies them every `commit_interval` together
//! with each partition's next offset, durably, in one engine commit; then
//! it commits the log offsets (so retention may drop what is indexed) and
//! publishes the positions (`Indexer::caught_up` waits on them).
//!
//! Failures:
//! - A crash between the engine's commit and the log's: the next start
//!   seeks each reader to the engine's positions, not the log consumer's
//!   offset; every change is idempotent, so re-reading is harmless.
//! - The engine refuses a commit (disk full, ClickHouse down): the batch is
//!   kept and retried with backoff; the readers block behind the bounded
//!   queue, and the log holds everything because nothing is committed.
//! - A fresh index (deleted folder, new engine) whose log was trimmed by
//!   retention, or a stale one that fell behind what the log holds: the
//!   index is cleared and rebuilt from the state (every live message's
//!   current text), then the readers start from the applied ends read
//!   before the scan; what changed during the scan is re-applied from the
//!   log as replacements (creates up to the log's end seen after the scan
//!   are upserts, not adds, since the scan may hold them already). A crash mid-rebuild leaves no positions, so the
//!   next start rebuilds again.
//! - An undecodable record is skipped with an error (the state refused it
//!   too); a lookup error stops that reader's batch and retries it.

use std::sync::Arc;
use std::time::Duration;

use confab_ingest::Ingest;
use confab_log::{Log, Offset, StartAt, TailReader};
use confab_schemas::events::LogEvent;
use confab_telemetry::Span;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::engine::{Change, Engine, EngineError, Positions};

/// Records read from the log at once, per partition.
const READ_RECORDS: usize = 1_000;
const READ_BYTES: usize = 4 << 20;
/// Batches queued between the readers and the writer.
const QUEUE: usize = 64;
/// Changes that make the writer commit before its interval.
const COMMIT_CHANGES: usize = 20_000;
/// How often positions move without changes to index (receipts only) are saved.
const SAVE_IDLE_POSITIONS: Duration = Duration::from_secs(10);
/// Messages read from the state per page while rebuilding.
const REBUILD_PAGE: usize = 2_000;

#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// The pipeline's name: its consumer name on the log.
    pub consumer: String,
    /// How long a change may wait before it is searchable.
    pub commit_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("reading the log for the search index: {0}")]
    Log(#[from] confab_log::Error),
    #[error("reading the state for the search index: {0}")]
    State(#[from] confab_ingest::Error),
}

/// One reader's batch: its changes, and the partition's next offset after them.
struct Batch {
    partition: u32,
    next: Offset,
    changes: Vec<Change>,
    /// `{pipeline}/search_index` of each traced message: from its read to
    /// the commit that makes it searchable.
    spans: Vec<Span>,
}

pub struct Indexer {
    indexed: watch::Receiver<Positions>,
    stop: watch::Sender<bool>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Indexer").field("indexed", &*self.indexed.borrow()).finish_non_exhaustive()
    }
}

impl Indexer {
    /// Rebuilds the index if it must (see the note above), then follows the log.
    pub async fn start(engine: Arc<dyn Engine>, ingest: Arc<Ingest>, log: Arc<dyn Log>, config: IndexerConfig) -> Result<Indexer, IndexerError> {
        let partitions = log.partition_count();
        let mut positions = engine.positions().await?;
        let fresh = positions.is_empty();
        let mut behind = false;
        for partition in 0..partitions {
            let at = positions.get(&partition).copied().unwrap_or(0);
            if at < log.earliest(partition)? {
                behind = true;
            }
        }
        // Creates below these offsets may already be in the index (a rebuild's overlap).
        let mut upsert_below = Positions::new();
        if behind {
            if !fresh {
                tracing::warn!("the search index is behind what the log still holds; clearing and rebuilding it from the state");
            }
            // Also when fresh: a rebuild that crashed left documents without positions.
            engine.clear().await?;
            positions = rebuild(&*engine, &ingest, partitions).await?;
            for partition in 0..partitions {
                upsert_below.insert(partition, log.durable_end(partition)?);
            }
        }
        let (stop, stopped) = watch::channel(false);
        let (indexed_sender, indexed) = watch::channel(positions.clone());
        let (sender, receiver) = mpsc::channel(QUEUE);
        let mut tasks = Vec::new();
        for partition in 0..partitions {
            let mut reader = TailReader::open(log.clone(), &config.consumer, partition, StartAt::Earliest)?.bounded_by(ingest.subscribe_applied(partition));
            reader.seek(positions.get(&partition).copied().unwrap_or(0).max(log.earliest(partition)?))?;
            let upsert_below = upsert_below.get(&partition).copied().unwrap_or(0);
            let span_name = format!("{}/search_index", config.consumer);
            tasks.push(tokio::spawn(read_partition(reader, ingest.clone(), upsert_below, span_name, sender.clone(), stopped.clone())));
        }
        drop(sender);
        tasks.push(tokio::spawn(write_batches(engine, log, config, receiver, positions, indexed_sender, stopped)));
        Ok(Indexer { indexed, stop, tasks: parking_lot::Mutex::new(tasks) })
    }

    /// Per partition, the next log offset not yet searchable.
    pub fn positions(&self) -> Positions {
        self.indexed.borrow().clone()
    }

    /// Waits until every partition of `targets` is indexed up to its offset; false on timeout.
    pub async fn caught_up(&self, targets: &Positions, timeout: Duration) -> bool {
        let mut indexed = self.indexed.clone();
        let reached = tokio::time::timeout(timeout, async {
            indexed.wait_for(|positions| targets.iter().all(|(partition, target)| positions.get(partition).copied().unwrap_or(0) >= *target)).await.is_ok()
        })
        .await;
        reached.unwrap_or(false)
    }

    /// Stops the readers, applies what they handed over, and commits.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Indexes every live message of the state; returns the positions to follow the log from.
async fn rebuild(engine: &dyn Engine, ingest: &Arc<Ingest>, partitions: u32) -> Result<Positions, IndexerError> {
    // The applied ends first: everything below them is in the state the scan reads.
    let ends: Positions = (0..partitions).map(|partition| (partition, *ingest.subscribe_applied(partition).borrow())).collect();
    let started = std::time::Instant::now();
    let conversations = {
        let ingest = ingest.clone();
        tokio::task::spawn_blocking(move || ingest.conversation_ids()).await.map_err(|error| EngineError::Index(error.to_string()))??
    };
    let mut indexed = 0usize;
    let mut pending = Vec::new();
    for conversation_id in conversations {
        let mut after = 0;
        loop {
            let page = {
                let (ingest, conversation_id) = (ingest.clone(), conversation_id.clone());
                tokio::task::spawn_blocking(move || ingest.searchable_messages(&conversation_id, after, REBUILD_PAGE))
                    .await
                    .map_err(|error| EngineError::Index(error.to_string()))??
            };
            let (messages, last) = page;
            indexed += messages.len();
            pending.extend(messages.into_iter().map(Change::Add));
            if pending.len() >= COMMIT_CHANGES {
                // No positions yet: a crash here rebuilds again.
                engine.apply(std::mem::take(&mut pending), Positions::new()).await?;
            }
            match last {
                Some(last) => after = last,
                None => break,
            }
        }
    }
    engine.apply(pending, ends.clone()).await?;
    tracing::info!(messages = indexed, elapsed_ms = started.elapsed().as_millis() as u64, "rebuilt the search index from the state");
    Ok(ends)
}

async fn read_partition(
    mut reader: TailReader,
    ingest: Arc<Ingest>,
    upsert_below: Offset,
    span_name: String,
    sender: mpsc::Sender<Batch>,
    mut stopped: watch::Receiver<bool>,
) {
    let partition = reader.partition();
    loop {
        let start = reader.position();
        let records = tokio::select! {
            records = reader.next_batch(READ_RECORDS, READ_BYTES) => records,
            _ = stopped.wait_for(|stopped| *stopped) => return,
        };
        let records = match records {
            Ok(records) => records,
            Err(confab_log::Error::Closed) => return,
            Err(error) => {
                tracing::error!(%error, partition, "the search indexer could not read the log; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut changes = Vec::new();
        let mut spans = Vec::new();
        let mut failed = false;
        for record in &records {
            let event = match LogEvent::decode(&record.payload) {
                Ok(event) => event,
                Err(error) => {
                    tracing::error!(%error, partition, offset = record.offset, "skipping an undecodable log record");
                    continue;
                }
            };
            let span = Span::record(|| span_name.clone(), event.trace(), partition, record.offset);
            if span.recording() {
                spans.push(span);
            }
            match changes_of(&ingest, event, record.offset < upsert_below) {
                Ok(Some(change)) => changes.push(change),
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%error, partition, offset = record.offset, "the search indexer could not read the state; retrying");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // Read the same records again after a pause.
            if reader.seek(start).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // The writer may be retrying a refused commit: stopping must not wait for it.
        tokio::select! {
            sent = sender.send(Batch { partition, next: reader.position(), changes, spans }) => if sent.is_err() {
                return;
            },
            _ = stopped.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// What one log event changes in the index.
///
/// `replace`: the index may hold the message already, so a create replaces.
fn changes_of(ingest: &Ingest, event: LogEvent, replace: bool) -> Result<Option<Change>, confab_ingest::Error> {
    Ok(match event {
        LogEvent::MessageCreated { message_id, conversation_id, seq, sender_id, body, attachments, ts, .. } => {
            let message = confab_ingest::SearchableMessage { message_id, conversation_id, seq, sender_id, ts, body, has_attachments: !attachments.is_empty() };
            Some(if replace { Change::Upsert(message) } else { Change::Add(message) })
        }
        LogEvent::MessageEdited { conversation_id, seq, .. } => Some(match ingest.searchable_message(&conversation_id, seq)? {
            Some(message) => Change::Upsert(message),
            None => Change::Remove { conversation_id, seq },
        }),
        LogEvent::MessageDeleted { conversation_id, seq, .. } => Some(Change::Remove { conversation_id, seq }),
        _ => None,
    })
}

async fn write_batches(
    engine: Arc<dyn Engine>,
    log: Arc<dyn Log>,
    config: IndexerConfig,
    mut receiver: mpsc::Receiver<Batch>,
    mut positions: Positions,
    indexed: watch::Sender<Positions>,
    stopped: watch::Receiver<bool>,
) {
    let mut changes = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    let mut moved = false;
    let mut ticks = tokio::time::interval(config.commit_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    let mut last_saved = std::time::Instant::now();
    while open || moved {
        let commit_now = tokio::select! {
            batch = receiver.recv(), if open => match batch {
                Some(batch) => {
                    positions.insert(batch.partition, batch.next);
                    changes.extend(batch.changes);
                    spans.extend(batch.spans);
                    moved = true;
                    changes.len() >= COMMIT_CHANGES
                }
                // Every reader stopped: commit what is left and finish.
                None => {
                    open = false;
                    true
                }
            },
            _ = ticks.tick() => true,
        };
        if !commit_now || !moved {
            continue;
        }
        if changes.is_empty() && open && last_saved.elapsed() < SAVE_IDLE_POSITIONS {
            // Nothing to index (receipts, members): searchable as it is; the
            // positions are saved later, without an engine commit per tick.
            indexed.send_replace(positions.clone());
            continue;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match engine.apply(changes.clone(), positions.clone()).await {
                Ok(()) => break,
                // Stopping: the batch is dropped; its positions were never saved, so the next start reads it again.
                Err(error) if *stopped.borrow() => {
                    tracing::warn!(%error, "stopping with a search batch the index refused; the next start applies it");
                    return;
                }
                Err(error) => {
                    tracing::error!(%error, changes = changes.len(), "the search index refused a commit; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        changes.clear();
        // Searchable now: the messages' spans end.
        spans.clear();
        moved = false;
        last_saved = std::time::Instant::now();
        indexed.send_replace(positions.clone());
        let (log, consumer, committed) = (log.clone(), config.consumer.clone(), positions.clone());
        let result =
            tokio::task::spawn_blocking(move || committed.iter().try_for_each(|(partition, offset)| log.commit_offset(&consumer, *partition, *offset))).await;
        if let Ok(Err(error)) = result {
            // Harmless: the engine's positions are where the next start resumes.
            tracing::warn!(%error, "could not commit the search indexer's log offsets");
        }
    }
}
