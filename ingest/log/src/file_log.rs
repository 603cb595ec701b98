//! The embedded log: one folder per partition, one writer thread doing
//! group commit for all partitions (one round writes every partition that
//! has appends queued, then fsyncs each file it touched), readers woken
//! through a `watch` channel. One thread rather than one per partition: on
//! a small machine the wake-ups of many writer threads cost more than the
//! fsyncs they would overlap.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::segment::{self, Segment};
use crate::{frame, AppendTicket, Error, Log, Offset, Record, Result};

/// Settings of the embedded log. Every bound carries its unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Partitions of a new data directory; an existing one keeps its own.
    /// More partitions let consumers work in parallel, but each partition a
    /// group commit touches costs one fsync: on one disk, one partition is
    /// fastest (see docs/BENCHMARKS.md), so that is the embedded default.
    pub partitions: u32,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_max_bytes: u64,
    /// Closed segments beyond this total per partition are removed, oldest
    /// first, but never past what every consumer has committed.
    pub retention_max_bytes: Option<u64>,
    /// Largest single record.
    pub record_max_bytes: usize,
    /// Bytes queued for writing, per partition, before appends are refused.
    pub pending_max_bytes: u64,
    /// Bytes one group commit writes at most before it fsyncs.
    pub batch_max_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            partitions: 1,
            segment_max_bytes: 64 * 1024 * 1024,
            retention_max_bytes: None,
            record_max_bytes: 1024 * 1024,
            pending_max_bytes: 64 * 1024 * 1024,
            batch_max_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format_version: u32,
    partitions: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ConsumerOffsets {
    offsets: Vec<Offset>,
}

/// State of one partition shared by its writer thread and its readers.
struct Partition {
    id: u32,
    dir: PathBuf,
    segments: RwLock<Vec<Segment>>,
    durable_end: watch::Sender<Offset>,
    pending_bytes: AtomicU64,
    poisoned: AtomicBool,
}

struct Batch {
    partition: u32,
    first_offset: Offset,
    payloads: Vec<Vec<u8>>,
    bytes: u64,
    done: oneshot::Sender<Result<()>>,
}

/// The enqueue side of a partition: offsets are assigned, and the batch
/// queued, under this lock, so queue order is offset order.
struct Enqueue {
    next_offset: Offset,
}

pub struct FileLog {
    root: PathBuf,
    config: LogConfig,
    partitions: Vec<Arc<Partition>>,
    enqueues: Vec<Mutex<Enqueue>>,
    sender: Mutex<Option<mpsc::Sender<Batch>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    consumers: Arc<Mutex<HashMap<String, ConsumerOffsets>>>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("FileLog").field("root", &self.root).finish_non_exhaustive()
    }
}

const FORMAT_VERSION: u32 = 1;

impl FileLog {
    /// Opens (or creates) the log under `root`, repairing a torn tail in the
    /// newest segment of each partition.
    pub fn open(root: impl AsRef<Path>, config: LogConfig) -> Result<FileLog> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(root.join("consumers")).map_err(Error::io(&root))?;
        let partition_count = open_meta(&root, config.partitions)?;
        let consumers = Arc::new(Mutex::new(load_consumers(&root.join("consumers"))?));
        let mut partitions = Vec::new();
        let mut enqueues = Vec::new();
        let mut active_files = Vec::new();
        for id in 0..partition_count {
            let dir = root.join(format!("p-{id:04}"));
            let (segments, active_file) = recover_partition(&dir, &config)?;
            let end = segments.last().map_or(0, |segment| segment.end_offset);
            partitions.push(Arc::new(Partition {
                id,
                dir,
                segments: RwLock::new(segments),
                durable_end: watch::channel(end).0,
                pending_bytes: AtomicU64::new(0),
                poisoned: AtomicBool::new(false),
            }));
            active_files.push(active_file);
            enqueues.push(Mutex::new(Enqueue { next_offset: end }));
        }
        let (sender, receiver) = mpsc::channel();
        let writer = Writer { partitions: partitions.clone(), config: config.clone(), active_files, consumers: consumers.clone() };
        let handle = std::thread::Builder::new().name("confab-log-writer".into()).spawn(move || writer.run(receiver)).map_err(Error::io(&root))?;
        Ok(FileLog { root, config, partitions, enqueues, sender: Mutex::new(Some(sender)), writer: Mutex::new(Some(handle)), consumers })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn partition(&self, partition: u32) -> Result<&Arc<Partition>> {
        self.partitions.get(partition as usize).ok_or(Error::UnknownPartition { partition, count: self.partitions.len() as u32 })
    }

    /// Stops the writer threads after they have written what was queued.
    pub fn close(&self) {
        // Take each partition's lock so no append is half-queued, then hang up.
        let _enqueues: Vec<_> = self.enqueues.iter().map(|enqueue| enqueue.lock()).collect();
        self.sender.lock().take();
        drop(_enqueues);
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
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
        let sent = self.sender.lock().as_ref().is_some_and(|sender| sender.send(batch).is_ok());
        if !sent {
            partition.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(Error::Poisoned);
        }
        enqueue.next_offset += count;
        Ok(AppendTicket { first_offset, count, done: receiver })
    }

    fn read(&self, partition_id: u32, from: Offset, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let partition = self.partition(partition_id)?;
        let mut records = Vec::new();
        let mut cursor = from;
        let segments: Vec<Segment> = partition.segments.read().clone();
        let earliest = segments.first().map_or(0, |segment| segment.base_offset);
        if from < earliest {
            return Err(Error::OffsetRemoved { partition: partition_id, requested: from, earliest });
        }
        let first = segments.partition_point(|segment| segment.end_offset <= from);
        for segment in &segments[first..] {
            if records.len() >= max_records {
                break;
            }
            let budget = max_bytes.saturating_sub(records.iter().map(|record: &Record| record.payload.len()).sum());
            if budget == 0 && !records.is_empty() {
                break;
            }
            let more = segment.read(cursor, max_records - records.len(), budget, self.config.record_max_bytes)?;
            if let Some(last) = more.last() {
                cursor = last.offset + 1;
            }
            records.extend(more);
        }
        Ok(records)
    }

    fn durable_end(&self, partition: u32) -> Result<Offset> {
        Ok(*self.partition(partition)?.durable_end.borrow())
    }

    fn earliest(&self, partition: u32) -> Result<Offset> {
        Ok(self.partition(partition)?.segments.read().first().map_or(0, |segment| segment.base_offset))
    }

    fn subscribe(&self, partition: u32) -> Result<watch::Receiver<Offset>> {
        Ok(self.partition(partition)?.durable_end.subscribe())
    }

    fn commit_offset(&self, consumer: &str, partition: u32, offset: Offset) -> Result<()> {
        validate_consumer_name(consumer)?;
        self.partition(partition)?;
        let mut consumers = self.consumers.lock();
        let entry = consumers.entry(consumer.to_string()).or_default();
        entry.offsets.resize(self.partitions.len(), 0);
        entry.offsets[partition as usize] = offset;
        let path = self.root.join("consumers").join(format!("{consumer}.json"));
        let bytes = serde_json::to_vec(&*entry).expect("offsets serialize");
        write_atomically(&path, &bytes)
    }

    fn committed_offset(&self, consumer: &str, partition: u32) -> Result<Option<Offset>> {
        validate_consumer_name(consumer)?;
        self.partition(partition)?;
        let consumers = self.consumers.lock();
        Ok(consumers.get(consumer).and_then(|entry| entry.offsets.get(partition as usize).copied()))
    }
}

fn validate_consumer_name(name: &str) -> Result<()> {
    let valid = (1..=64).contains(&name.len()) && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidConsumerName(name.to_string()))
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
            let meta = Meta { format_version: FORMAT_VERSION, partitions: requested.max(1) };
            write_atomically(&path, &serde_json::to_vec(&meta).expect("meta serializes"))?;
            Ok(meta.partitions)
        }
        Err(error) => Err(Error::Io { path, source: error }),
    }
}

fn load_consumers(dir: &Path) -> Result<HashMap<String, ConsumerOffsets>> {
    let mut consumers = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let path = entry.map_err(Error::io(dir))?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()).and_then(|name| name.strip_suffix(".json")) else {
            continue;
        };
        let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
        let offsets: ConsumerOffsets =
            serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt { path: path.clone(), position: 0, reason: error.to_string() })?;
        consumers.insert(name.to_string(), offsets);
    }
    Ok(consumers)
}

/// Writes a small file so that a crash leaves either the old or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).map_err(Error::io(&temporary))?;
    file.write_all(bytes).map_err(Error::io(&temporary))?;
    file.sync_all().map_err(Error::io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(Error::io(path))?;
    sync_dir(path.parent().expect("files live in a folder"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(Error::io(dir))
}

/// Loads a partition's segments; the newest one's damaged tail is cut off
/// (it was never acknowledged: acknowledgement follows fsync), damage
/// anywhere else is an error.
fn recover_partition(dir: &Path, config: &LogConfig) -> Result<(Vec<Segment>, File)> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let mut bases: Vec<Offset> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str().and_then(segment::parse_file_name))
        .collect();
    bases.sort_unstable();
    if bases.is_empty() {
        let path = dir.join(segment::file_name(0));
        File::create(&path).map_err(Error::io(&path))?;
        sync_dir(dir)?;
        bases.push(0);
    }
    let mut segments = Vec::with_capacity(bases.len());
    for (position, &base) in bases.iter().enumerate() {
        let path = dir.join(segment::file_name(base));
        let scanned = Segment::scan(&path, base, config.record_max_bytes)?;
        let newest = position + 1 == bases.len();
        if let Some(damaged_at) = scanned.damaged_tail_at {
            if !newest {
                return Err(Error::Corrupt { path, position: damaged_at, reason: "damaged record in a closed segment".into() });
            }
            tracing::warn!(path = %path.display(), damaged_at, "cutting off a torn tail left by a crash");
            let file = OpenOptions::new().write(true).open(&path).map_err(Error::io(&path))?;
            file.set_len(damaged_at).map_err(Error::io(&path))?;
            file.sync_all().map_err(Error::io(&path))?;
        }
        if let Some(previous) = segments.last() {
            let previous: &Segment = previous;
            if previous.end_offset != base {
                return Err(Error::Corrupt {
                    path,
                    position: 0,
                    reason: format!("segment starts at {base} but the previous one ends at {}", previous.end_offset),
                });
            }
        }
        segments.push(scanned.segment);
    }
    let active_path = &segments.last().expect("at least one segment").path;
    let active_file = OpenOptions::new().append(true).open(active_path).map_err(Error::io(active_path))?;
    Ok((segments, active_file))
}

/// The only writer of the log's files.
struct Writer {
    partitions: Vec<Arc<Partition>>,
    config: LogConfig,
    /// The newest segment of each partition, open for appending.
    active_files: Vec<File>,
    consumers: Arc<Mutex<HashMap<String, ConsumerOffsets>>>,
}

impl Writer {
    fn run(mut self, receiver: mpsc::Receiver<Batch>) {
        let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); self.partitions.len()];
        while let Ok(first) = receiver.recv() {
            // Group commit: everything queued while the last round ran goes in this one.
            let mut batches = vec![first];
            let mut bytes = batches[0].bytes as usize;
            while bytes < self.config.batch_max_bytes {
                match receiver.try_recv() {
                    Ok(batch) => {
                        bytes += batch.bytes as usize;
                        batches.push(batch);
                    }
                    Err(_) => break,
                }
            }
            let outcome = self.write_round(&batches, &mut buffers);
            for batch in &batches {
                self.partitions[batch.partition as usize].pending_bytes.fetch_sub(batch.bytes, Ordering::AcqRel);
            }
            if let Err(error) = outcome {
                tracing::error!(%error, "log write failed; refusing further appends");
                for partition in &self.partitions {
                    partition.poisoned.store(true, Ordering::Release);
                }
                for batch in batches {
                    let _ = batch.done.send(Err(Error::Poisoned));
                }
                // Fail everything still queued, then stop.
                while let Ok(batch) = receiver.recv() {
                    let _ = batch.done.send(Err(Error::Poisoned));
                }
                return;
            }
            for batch in batches {
                let _ = batch.done.send(Ok(()));
            }
        }
    }

    /// Writes the round's batches partition by partition, fsyncs every file
    /// written, and only then makes the records readable.
    fn write_round(&mut self, batches: &[Batch], buffers: &mut [Vec<u8>]) -> Result<()> {
        let mut touched: Vec<(u32, Offset, u64)> = Vec::new(); // (partition, first offset, count)
                                                               // Per partition, `(offset, position in the round's buffer)` of frames
                                                               // at least an index interval apart: a big round (a burst, a bulk
                                                               // load) must not leave megabytes between two index entries, or every
                                                               // read would scan them.
        let mut marks: Vec<Vec<(Offset, u64)>> = vec![Vec::new(); buffers.len()];
        for batch in batches {
            let partition = batch.partition as usize;
            if buffers[partition].is_empty() {
                let active_size = self.partitions[partition].segments.read().last().expect("active segment").size;
                if active_size >= self.config.segment_max_bytes {
                    self.roll(partition, batch.first_offset)?;
                }
                touched.push((batch.partition, batch.first_offset, 0));
            }
            for (index, payload) in batch.payloads.iter().enumerate() {
                let position = buffers[partition].len() as u64;
                let offset = batch.first_offset + index as u64;
                if marks[partition].last().is_none_or(|&(_, marked)| position - marked >= segment::INDEX_INTERVAL_BYTES) {
                    marks[partition].push((offset, position));
                }
                frame::encode(offset, payload, &mut buffers[partition]);
            }
            let entry = touched.iter_mut().find(|entry| entry.0 == batch.partition).expect("touched above");
            entry.2 += batch.payloads.len() as u64;
        }
        for &(partition, _, _) in &touched {
            let path = self.partitions[partition as usize].segments.read().last().expect("active segment").path.clone();
            self.active_files[partition as usize].write_all(&buffers[partition as usize]).map_err(Error::io(&path))?;
        }
        for &(partition, _, _) in &touched {
            let path = self.partitions[partition as usize].segments.read().last().expect("active segment").path.clone();
            self.active_files[partition as usize].sync_data().map_err(Error::io(&path))?;
        }
        for &(partition, first_offset, count) in &touched {
            let state = &self.partitions[partition as usize];
            let written = buffers[partition as usize].len() as u64;
            {
                let mut segments = state.segments.write();
                let active = segments.last_mut().expect("active segment");
                let position = active.size;
                active.note_appended(first_offset, position, written, count, &marks[partition as usize]);
            }
            state.durable_end.send_replace(first_offset + count);
            buffers[partition as usize].clear();
        }
        Ok(())
    }

    /// Closes the active segment and starts a new one at `base_offset`.
    fn roll(&mut self, partition: usize, base_offset: Offset) -> Result<()> {
        let state = self.partitions[partition].clone();
        // The closed segment's bytes are already durable: rounds fsync before acknowledging.
        let path = state.dir.join(segment::file_name(base_offset));
        let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(Error::io(&path))?;
        sync_dir(&state.dir)?;
        let read_handle = File::open(&path).map_err(Error::io(&path))?;
        self.active_files[partition] = file;
        let mut segments = state.segments.write();
        segments.push(Segment { base_offset, path, file: Arc::new(read_handle), size: 0, end_offset: base_offset, index: Vec::new() });
        drop(segments);
        self.apply_retention(&state)
    }

    /// Removes the oldest closed segments while the partition is over its
    /// bound and every consumer has committed past them.
    fn apply_retention(&self, partition: &Partition) -> Result<()> {
        let Some(max_bytes) = self.config.retention_max_bytes else {
            return Ok(());
        };
        let id = partition.id as usize;
        let held_from = self.consumers.lock().values().map(|consumer| consumer.offsets.get(id).copied().unwrap_or(0)).min().unwrap_or(Offset::MAX);
        loop {
            let mut segments = partition.segments.write();
            let closed = &segments[..segments.len() - 1];
            let closed_bytes: u64 = closed.iter().map(|segment| segment.size).sum();
            let removable = closed.first().is_some_and(|oldest| oldest.end_offset <= held_from);
            if closed_bytes <= max_bytes || !removable {
                return Ok(());
            }
            let oldest = segments.remove(0);
            drop(segments);
            std::fs::remove_file(&oldest.path).map_err(Error::io(&oldest.path))?;
            tracing::info!(path = %oldest.path.display(), "retention removed a segment");
        }
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
        let segments = log.partition(0).unwrap().segments.read().clone();
        let index = &segments.last().unwrap().index;
        // 4 MiB of frames: about 64 entries, one per 64 KiB.
        assert!(index.len() >= 60, "{} index entries for 4 MiB", index.len());
        for pair in index.windows(2) {
            assert!(pair[1].1 - pair[0].1 >= crate::segment::INDEX_INTERVAL_BYTES, "{pair:?}");
        }
        // And a read from the middle starts at the right record.
        let records = log.read(0, 3_000, 2, usize::MAX).unwrap();
        assert_eq!((records[0].offset, records[0].payload[0]), (3_000, (3_000 % 251) as u8));
    }
}
