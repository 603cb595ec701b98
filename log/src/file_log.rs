//! The embedded log: one folder per partition, one writer thread doing
//! group commit for all partitions (one round writes every partition that
//! has appends queued, then fsyncs each file it touched), readers woken
//! through a `watch` channel. One thread rather than one per partition: on
//! a small machine the wake-ups of many writer threads cost more than the
//! fsyncs they would overlap.
//!
//! `recover.rs` opens a partition's segments, `writer.rs` is the writer
//! thread (rounds, rolls, retention).

mod recover;
pub use recover::Repaired;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::clock::{Clock, SystemClock};
use crate::consumers::{validate_name, Consumers};
use crate::segment::Segment;
use crate::{frame, fs, AppendTicket, Error, Log, LogConfig, Offset, Record, Result};
use writer::{Batch, Command, Writer};

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format_version: u32,
    partitions: u32,
}

const FORMAT_VERSION: u32 = 1;

/// State of one partition shared by its writer thread and its readers.
struct Partition {
    id: u32,
    dir: PathBuf,
    /// Oldest first; the last one is active. Readers clone only the `Arc`
    /// of the segment they read.
    segments: RwLock<Vec<Arc<Segment>>>,
    durable_end: AtomicU64,
    /// Dropped when the log closes, so that waiting readers learn it.
    durable_watch: Mutex<Option<watch::Sender<Offset>>>,
    /// Handed to readers subscribing after the close: already closed.
    closed_watch: watch::Receiver<Offset>,
    pending_bytes: AtomicU64,
    poisoned: AtomicBool,
}

impl Partition {
    fn new(id: u32, dir: PathBuf, segments: Vec<Arc<Segment>>) -> Partition {
        let end = segments.last().expect("a partition has an active segment").end_offset();
        let (sender, receiver) = watch::channel(end);
        Partition {
            id,
            dir,
            segments: RwLock::new(segments),
            durable_end: AtomicU64::new(end),
            durable_watch: Mutex::new(Some(sender)),
            closed_watch: receiver,
            pending_bytes: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    fn active(&self) -> Arc<Segment> {
        self.segments.read().last().expect("a partition has an active segment").clone()
    }

    fn earliest(&self) -> Offset {
        self.segments.read()[0].base_offset
    }

    /// Makes records up to `end` readable and wakes the readers.
    fn publish_durable(&self, end: Offset) {
        self.durable_end.store(end, Ordering::Release);
        if let Some(sender) = self.durable_watch.lock().as_ref() {
            sender.send_replace(end);
        }
    }

    /// The segment holding `offset` (binary search), or `None` past the
    /// durable end.
    fn segment_holding(&self, offset: Offset) -> Result<Option<Arc<Segment>>> {
        let segments = self.segments.read();
        let earliest = segments[0].base_offset;
        if offset < earliest {
            return Err(Error::OffsetRemoved { partition: self.id, requested: offset, earliest });
        }
        let holding = segments.partition_point(|segment| segment.base_offset <= offset) - 1;
        let segment = segments[holding].clone();
        drop(segments);
        Ok((offset < segment.end_offset()).then_some(segment))
    }

    /// A read that lost its segment's file to retention says so plainly.
    fn explain_read_error(&self, error: Error, offset: Offset) -> Error {
        let earliest = self.earliest();
        match &error {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound && offset < earliest => {
                Error::OffsetRemoved { partition: self.id, requested: offset, earliest }
            }
            _ => error,
        }
    }
}

/// The enqueue side of a partition: offsets are assigned, and the batch
/// queued, under this lock, so queue order is offset order.
struct Enqueue {
    next_offset: Offset,
}

/// One segment as `FileLog::segments` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: Offset,
    pub end_offset: Offset,
    pub size_bytes: u64,
    /// False for a segment closed before the log opened and not read since:
    /// its file has not been opened.
    pub indexed: bool,
    pub last_write: SystemTime,
}

pub struct FileLog {
    root: PathBuf,
    config: LogConfig,
    partitions: Vec<Arc<Partition>>,
    enqueues: Vec<Mutex<Enqueue>>,
    sender: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    consumers: Arc<Mutex<Consumers>>,
    fsync_seconds: Histogram,
}

/// The buckets of [`FileLog::fsync_histogram`], in seconds: a disk's fsync
/// takes from tens of microseconds (a write cache) to tens of milliseconds.
pub const FSYNC_BUCKETS_SECONDS: [f64; 12] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5];

impl std::fmt::Debug for FileLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("FileLog").field("root", &self.root).finish_non_exhaustive()
    }
}

impl FileLog {
    /// Opens (or creates) the log under `root`, repairing a torn tail in the
    /// newest segment of each partition. Closed segments are not read.
    pub fn open(root: impl AsRef<Path>, config: LogConfig) -> Result<FileLog> {
        FileLog::open_with_clock(root, config, Arc::new(SystemClock))
    }

    /// Like [`FileLog::open`], reading segment ages from `clock`.
    pub fn open_with_clock(root: impl AsRef<Path>, config: LogConfig, clock: Arc<dyn Clock>) -> Result<FileLog> {
        config.validate()?;
        let root = root.as_ref().to_path_buf();
        fs::create_private_dir(&root.join("consumers"))?;
        fs::make_dir_private(&root)?;
        let partition_count = open_meta(&root, config.partitions)?;
        let consumers = Arc::new(Mutex::new(Consumers::load(&root.join("consumers"), partition_count as usize)?));
        let mut partitions = Vec::new();
        let mut enqueues = Vec::new();
        let mut active_files = Vec::new();
        for id in 0..partition_count {
            let dir = root.join(format!("p-{id:04}"));
            let (segments, active_file) = recover::recover_partition(&dir, &config, clock.now())?;
            let partition = Partition::new(id, dir, segments);
            enqueues.push(Mutex::new(Enqueue { next_offset: partition.durable_end.load(Ordering::Acquire) }));
            partitions.push(Arc::new(partition));
            active_files.push(active_file);
        }
        let (sender, receiver) = mpsc::channel();
        let fsync_seconds = Histogram::new(FSYNC_BUCKETS_SECONDS);
        let writer = Writer::new(partitions.clone(), config.clone(), active_files, consumers.clone(), clock, fsync_seconds.clone());
        let handle = std::thread::Builder::new().name("confab-log-writer".into()).spawn(move || writer.run(receiver)).map_err(Error::io(&root))?;
        Ok(FileLog { root, config, partitions, enqueues, sender: Mutex::new(Some(sender)), writer: Mutex::new(Some(handle)), consumers, fsync_seconds })
    }

    /// Repairs each partition's newest segment: damaged records become
    /// placeholders carrying `placeholder` at the same offsets, a torn tail
    /// is cut, and every byte taken out is kept under `<root>/repair/`
    /// (see `recover::repair`). Run with the server stopped, when opening
    /// refused damage with valid records after it.
    pub fn repair(root: impl AsRef<Path>, placeholder: &[u8]) -> Result<Vec<Repaired>> {
        recover::repair(root.as_ref(), placeholder)
    }

    /// Partitions that refuse appends after a failed write (a restart clears it).
    pub fn poisoned_partitions(&self) -> Vec<u32> {
        self.partitions.iter().filter(|partition| partition.poisoned.load(Ordering::Acquire)).map(|partition| partition.id).collect()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How long each group commit's fsyncs took, in seconds: a handle on the
    /// writer's own histogram, for `/metrics`.
    pub fn fsync_histogram(&self) -> Histogram {
        self.fsync_seconds.clone()
    }

    fn partition(&self, partition: u32) -> Result<&Arc<Partition>> {
        self.partitions.get(partition as usize).ok_or(Error::UnknownPartition { partition, count: self.partitions.len() as u32 })
    }

    /// The partition's segments, oldest first, the active one last.
    pub fn segments(&self, partition: u32) -> Result<Vec<SegmentInfo>> {
        let segments = self.partition(partition)?.segments.read().clone();
        let infos = segments.iter().map(|segment| SegmentInfo {
            base_offset: segment.base_offset,
            end_offset: segment.end_offset(),
            size_bytes: segment.size(),
            indexed: segment.is_indexed(),
            last_write: segment.last_write(),
        });
        Ok(infos.collect())
    }

    /// Runs the writer's periodic check now (age rolls, then retention in
    /// every partition) and waits for it; the writer otherwise runs it every
    /// `retention_check_interval_ms`. Blocks the calling thread.
    pub fn check_retention_now(&self) -> Result<()> {
        let (reply, outcome) = mpsc::sync_channel(1);
        let sent = self.sender.lock().as_ref().map(|sender| sender.send(Command::CheckRetention(reply)).is_ok());
        match sent {
            None => Err(Error::Closed),
            Some(false) => Err(Error::Poisoned),
            Some(true) => outcome.recv().unwrap_or(Err(Error::Poisoned)),
        }
    }

    /// Stops the writer thread after it has written what was queued, then
    /// tells waiting readers the log is closed.
    pub fn close(&self) {
        // Take each partition's lock so no append is half-queued, then hang up.
        let enqueues: Vec<_> = self.enqueues.iter().map(|enqueue| enqueue.lock()).collect();
        self.sender.lock().take();
        drop(enqueues);
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
        for partition in &self.partitions {
            partition.durable_watch.lock().take();
        }
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl Log for FileLog {
    fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    fn append(&self, partition_id: u32, payloads: Vec<Vec<u8>>) -> Result<AppendTicket> {
        let partition = self.partition(partition_id)?;
        if partition.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        let mut bytes = 0u64;
        for payload in &payloads {
            if payload.len() > self.config.record_max_bytes {
                return Err(Error::RecordTooLarge { size: payload.len(), max: self.config.record_max_bytes });
            }
            bytes += (payload.len() + frame::HEADER_BYTES) as u64;
        }
        let pending = partition.pending_bytes.fetch_add(bytes, Ordering::AcqRel);
        if pending > 0 && pending + bytes > self.config.pending_max_bytes {
            partition.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(Error::Overloaded { pending_bytes: pending, max_pending_bytes: self.config.pending_max_bytes });
        }
        let count = payloads.len() as u64;
        let (done, receiver) = oneshot::channel();
        let mut enqueue = self.enqueues[partition_id as usize].lock();
        let first_offset = enqueue.next_offset;
        let batch = Batch { partition: partition_id, first_offset, payloads, bytes, done };
        let sent = self.sender.lock().as_ref().map(|sender| sender.send(Command::Append(batch)).is_ok());
        if sent != Some(true) {
            partition.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(if sent.is_none() { Error::Closed } else { Error::Poisoned });
        }
        enqueue.next_offset += count;
        Ok(AppendTicket { first_offset, count, done: receiver })
    }

    fn read(&self, partition_id: u32, from: Offset, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let partition = self.partition(partition_id)?;
        let mut records: Vec<Record> = Vec::new();
        let mut cursor = from;
        let mut returned_bytes = 0usize;
        while records.len() < max_records {
            // An exhausted budget still looks at the next record: one of no
            // bytes fits. An overspent one (a first record larger than the
            // budget) admits nothing more, not even an empty record, as
            // within a segment: a read's result never depends on where a
            // segment happens to end.
            if returned_bytes > max_bytes {
                break;
            }
            let budget = max_bytes - returned_bytes;
            let Some(segment) = partition.segment_holding(cursor)? else {
                break;
            };
            let more = segment
                .read(cursor, max_records - records.len(), budget, records.is_empty(), crate::config::RECORD_MAX_BYTES_LIMIT)
                .map_err(|error| partition.explain_read_error(error, cursor))?;
            let Some(last) = more.last() else {
                break;
            };
            cursor = last.offset + 1;
            returned_bytes += more.iter().map(|record| record.payload.len()).sum::<usize>();
            records.extend(more);
        }
        Ok(records)
    }

    fn durable_end(&self, partition: u32) -> Result<Offset> {
        Ok(self.partition(partition)?.durable_end.load(Ordering::Acquire))
    }

    fn earliest(&self, partition: u32) -> Result<Offset> {
        Ok(self.partition(partition)?.earliest())
    }

    fn subscribe(&self, partition: u32) -> Result<watch::Receiver<Offset>> {
        let partition = self.partition(partition)?;
        let receiver = partition.durable_watch.lock().as_ref().map(watch::Sender::subscribe);
        Ok(receiver.unwrap_or_else(|| partition.closed_watch.clone()))
    }

    fn register_consumer(&self, consumer: &str, partition: u32, offset_if_new: Offset) -> Result<Offset> {
        validate_name(consumer)?;
        self.partition(partition)?;
        self.consumers.lock().register(consumer, partition, offset_if_new)
    }

    fn consumers(&self) -> Result<Vec<String>> {
        Ok(self.consumers.lock().names())
    }

    fn remove_consumer(&self, consumer: &str) -> Result<()> {
        validate_name(consumer)?;
        self.consumers.lock().remove(consumer)
    }

    fn commit_offset(&self, consumer: &str, partition: u32, offset: Offset) -> Result<()> {
        validate_name(consumer)?;
        self.partition(partition)?;
        self.consumers.lock().commit(consumer, partition, offset)
    }

    fn committed_offset(&self, consumer: &str, partition: u32) -> Result<Option<Offset>> {
        validate_name(consumer)?;
        self.partition(partition)?;
        Ok(self.consumers.lock().committed(consumer, partition))
    }
}

fn open_meta(root: &Path, requested: u32) -> Result<u32> {
    let path = root.join("meta.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let meta: Meta = serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt { path: path.clone(), position: 0, reason: error.to_string() })?;
            if meta.partitions != requested {
                return Err(Error::PartitionCountMismatch { path, found: meta.partitions, requested });
            }
            Ok(meta.partitions)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let meta = Meta { format_version: FORMAT_VERSION, partitions: requested };
            fs::write_atomically(&path, &serde_json::to_vec(&meta).expect("meta serializes"))?;
            Ok(meta.partitions)
        }
        Err(error) => Err(Error::Io { path, source: error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round that carries megabytes must still leave an index entry every
    /// 64 KiB, or each read from its middle scans from the segment's start.
    #[tokio::test]
    async fn a_big_round_is_indexed_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), LogConfig::default()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..4_096u32).map(|index| vec![(index % 251) as u8; 1_024]).collect();
        log.append(0, payloads).unwrap().durable().await.unwrap();
        let active = log.partition(0).unwrap().active();
        let extent_index = active.index_for_tests();
        // 4 MiB of frames: about 64 entries, one per 64 KiB.
        assert!(extent_index.len() >= 60, "{} index entries for 4 MiB", extent_index.len());
        for pair in extent_index.windows(2) {
            assert!(pair[1].1 - pair[0].1 >= crate::segment::INDEX_INTERVAL_BYTES, "{pair:?}");
        }
        // And a read from the middle starts at the right record.
        let records = log.read(0, 3_000, 2, usize::MAX).unwrap();
        assert_eq!((records[0].offset, records[0].payload[0]), (3_000, (3_000 % 251) as u8));
    }

    #[test]
    fn an_append_after_close_says_the_log_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), LogConfig::default()).unwrap();
        log.close();
        assert!(matches!(log.append(0, vec![b"late".to_vec()]), Err(Error::Closed)));
        assert!(matches!(log.check_retention_now(), Err(Error::Closed)));
    }
}
