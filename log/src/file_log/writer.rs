//! The writer thread, the only writer of segment files: group-commit rounds,
//! rolls (by size and by age), and retention. Between appends it wakes
//! every `retention_check_interval_ms`, so a quiet log still rolls and
//! sheds old segments.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;

use super::Partition;
use crate::clock::{age, Clock};
use crate::consumers::Consumers;
use crate::fs::{create_segment_file, sync_dir};
use crate::segment::{self, Scan, Segment};
use crate::{frame, Error, LogConfig, Offset, Result};

pub(super) struct Batch {
    pub partition: u32,
    pub first_offset: Offset,
    pub payloads: Vec<Vec<u8>>,
    pub bytes: u64,
    pub done: oneshot::Sender<Result<()>>,
}

pub(super) enum Command {
    Append(Batch),
    /// Run the periodic check now and answer when done.
    CheckRetention(mpsc::SyncSender<Result<()>>),
}

pub(super) struct Writer {
    partitions: Vec<Arc<Partition>>,
    config: LogConfig,
    /// The newest segment of each partition, open for appending.
    active_files: Vec<File>,
    consumers: Arc<Mutex<Consumers>>,
    clock: Arc<dyn Clock>,
    /// Set by a failed write, fsync or roll: nothing more is written.
    poisoned: bool,
    /// Seconds each round's fsyncs took (`confab_log_fsync_duration_seconds`).
    fsync_seconds: Histogram,
}

impl Writer {
    pub fn new(
        partitions: Vec<Arc<Partition>>,
        config: LogConfig,
        active_files: Vec<File>,
        consumers: Arc<Mutex<Consumers>>,
        clock: Arc<dyn Clock>,
        fsync_seconds: Histogram,
    ) -> Writer {
        Writer { partitions, config, active_files, consumers, clock, poisoned: false, fsync_seconds }
    }

    pub fn run(mut self, receiver: mpsc::Receiver<Command>) {
        let interval = Duration::from_millis(self.config.retention_check_interval_ms);
        let mut next_check = Instant::now() + interval;
        let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); self.partitions.len()];
        loop {
            let wait = next_check.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(wait) {
                Ok(Command::Append(first)) => {
                    let (batches, check_requests) = self.collect_round(first, &receiver);
                    self.commit_round(batches, &mut buffers);
                    for reply in check_requests {
                        let outcome = self.check_retention();
                        let _ = reply.send(outcome);
                    }
                }
                Ok(Command::CheckRetention(reply)) => {
                    let outcome = self.check_retention();
                    let _ = reply.send(outcome);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if !self.poisoned && Instant::now() >= next_check {
                if let Err(error) = self.check_retention() {
                    tracing::warn!(%error, "log retention check failed; it is retried at the next interval");
                }
                next_check = Instant::now() + interval;
            }
            if self.poisoned {
                fail_everything_queued(&receiver);
                return;
            }
        }
    }

    /// Group commit: everything queued while the last round ran goes in this
    /// one, up to `batch_max_bytes`. Check requests met on the way wait for
    /// the end of the round.
    fn collect_round(&self, first: Batch, receiver: &mpsc::Receiver<Command>) -> (Vec<Batch>, Vec<mpsc::SyncSender<Result<()>>>) {
        let mut bytes = first.bytes as usize;
        let mut batches = vec![first];
        let mut check_requests = Vec::new();
        while bytes < self.config.batch_max_bytes {
            match receiver.try_recv() {
                Ok(Command::Append(batch)) => {
                    bytes += batch.bytes as usize;
                    batches.push(batch);
                }
                Ok(Command::CheckRetention(reply)) => check_requests.push(reply),
                Err(_) => break,
            }
        }
        (batches, check_requests)
    }

    fn commit_round(&mut self, batches: Vec<Batch>, buffers: &mut [Vec<u8>]) {
        let outcome = self.write_round(&batches, buffers);
        for batch in &batches {
            self.partitions[batch.partition as usize].pending_bytes.fetch_sub(batch.bytes, Ordering::AcqRel);
        }
        match outcome {
            Ok(rolled) => {
                for batch in batches {
                    let _ = batch.done.send(Ok(()));
                }
                // After the acknowledgements: removing files is not the appenders' wait.
                for partition in rolled {
                    if let Err(error) = self.apply_retention(partition) {
                        tracing::warn!(%error, partition, "log retention failed; it is retried at the next check");
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "log write failed; refusing further appends");
                self.poison();
                for buffer in buffers.iter_mut() {
                    buffer.clear();
                }
                for batch in batches {
                    let _ = batch.done.send(Err(Error::Poisoned));
                }
            }
        }
    }

    fn poison(&mut self) {
        self.poisoned = true;
        for partition in &self.partitions {
            partition.poisoned.store(true, Ordering::Release);
        }
    }

    /// Writes the round's batches partition by partition, fsyncs every file
    /// written, and only then makes the records readable. Returns the
    /// partitions that rolled to a new segment.
    fn write_round(&mut self, batches: &[Batch], buffers: &mut [Vec<u8>]) -> Result<Vec<usize>> {
        let now = self.clock.now();
        let mut touched: Vec<(usize, Offset, u64)> = Vec::new(); // (partition, first offset, count)
        let mut rolled = Vec::new();
        // Per partition, `(offset, position in the round's buffer)` of frames
        // at least an index interval apart: a big round (a burst, a bulk
        // load) must not leave megabytes between two index entries, or every
        // read would scan them.
        let mut marks: Vec<Vec<(Offset, u64)>> = vec![Vec::new(); buffers.len()];
        for batch in batches {
            let partition = batch.partition as usize;
            if buffers[partition].is_empty() {
                if self.should_roll(&self.partitions[partition].active(), now) {
                    self.roll(partition, batch.first_offset, now)?;
                    rolled.push(partition);
                }
                touched.push((partition, batch.first_offset, 0));
            }
            for (index, payload) in batch.payloads.iter().enumerate() {
                let position = buffers[partition].len() as u64;
                let offset = batch.first_offset + index as u64;
                if marks[partition].last().is_none_or(|&(_, marked)| position - marked >= segment::INDEX_INTERVAL_BYTES) {
                    marks[partition].push((offset, position));
                }
                frame::encode(offset, payload, &mut buffers[partition]);
            }
            let entry = touched.iter_mut().find(|entry| entry.0 == partition).expect("touched above");
            entry.2 += batch.payloads.len() as u64;
        }
        for &(partition, _, _) in &touched {
            let path = self.partitions[partition].active().path.clone();
            self.active_files[partition].write_all(&buffers[partition]).map_err(Error::io(&path))?;
        }
        let syncing = Instant::now();
        for &(partition, _, _) in &touched {
            let path = self.partitions[partition].active().path.clone();
            self.active_files[partition].sync_data().map_err(Error::io(&path))?;
        }
        self.fsync_seconds.observe(syncing.elapsed().as_secs_f64());
        for &(partition, first_offset, count) in &touched {
            let state = &self.partitions[partition];
            state.active().note_appended(first_offset, buffers[partition].len() as u64, count, &marks[partition], now);
            state.publish_durable(first_offset + count);
            buffers[partition].clear();
        }
        Ok(rolled)
    }

    /// Full, or holding records for longer than `segment_max_age_secs`.
    fn should_roll(&self, active: &Segment, now: SystemTime) -> bool {
        let size = active.size();
        if size == 0 {
            return false;
        }
        let max_age = Duration::from_secs(self.config.segment_max_age_secs);
        size >= self.config.segment_max_bytes || active.first_write().is_some_and(|first| age(now, first) >= max_age)
    }

    /// Closes the active segment and starts a new one at `base_offset`.
    /// A roll that fails halfway may leave an empty file at `base_offset`;
    /// the caller poisons the log, so nothing is written to the old segment
    /// past that base and a restart sees a consistent pair.
    fn roll(&mut self, partition: usize, base_offset: Offset, now: SystemTime) -> Result<()> {
        let state = self.partitions[partition].clone();
        // The closed segment's bytes are already durable: rounds fsync before acknowledging.
        let path = state.dir.join(segment::file_name(base_offset));
        let file = create_segment_file(&path)?;
        sync_dir(&state.dir)?;
        let read_handle = File::open(&path).map_err(Error::io(&path))?;
        let closing = state.active();
        // The file's time becomes the last write's time on the log's clock:
        // after a restart, age retention reads it from there.
        if let Err(error) = self.active_files[partition].set_modified(closing.last_write()) {
            tracing::warn!(%error, path = %closing.path.display(), "could not set a closed segment's time; age retention after a restart counts from the file's own");
        }
        closing.close();
        self.active_files[partition] = file;
        let empty = Scan { index: Vec::new(), valid_bytes: 0, end_offset: base_offset, damage: None };
        let segment = Segment::active(base_offset, path, read_handle, empty, None, now);
        state.segments.write().push(Arc::new(segment));
        Ok(())
    }

    /// The periodic check: rolls active segments past their age, then
    /// applies retention to every partition. A failed roll poisons the log
    /// (as in a round); a failed removal is retried next time.
    fn check_retention(&mut self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let now = self.clock.now();
        let mut first_error = None;
        for partition in 0..self.partitions.len() {
            let active = self.partitions[partition].active();
            if self.should_roll(&active, now) {
                if let Err(error) = self.roll(partition, active.end_offset(), now) {
                    tracing::error!(%error, "log roll failed; refusing further appends");
                    self.poison();
                    return Err(error);
                }
            }
            if let Err(error) = self.apply_retention(partition) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the oldest closed segments while they are past an age or
    /// size bound and every consumer has committed past them.
    fn apply_retention(&self, partition: usize) -> Result<()> {
        let state = &self.partitions[partition];
        let now = self.clock.now();
        let removed: Vec<Arc<Segment>> = {
            // Held across the choice and the removal from the list, so a
            // consumer registering meanwhile either holds the segments or
            // sees them gone.
            let consumers = self.consumers.lock();
            let held_from = consumers.held_from(state.id).unwrap_or(Offset::MAX);
            let mut segments = state.segments.write();
            let closed = segments.len() - 1;
            let mut closed_bytes: u64 = segments[..closed].iter().map(|segment| segment.size()).sum();
            let mut count = 0;
            while count < closed {
                let oldest = &segments[count];
                let over_size = self.config.retention_max_bytes.is_some_and(|max_bytes| closed_bytes > max_bytes);
                let too_old = self.config.retention_max_age_secs.is_some_and(|max_age| age(now, oldest.last_write()) > Duration::from_secs(max_age));
                if !(over_size || too_old) || oldest.end_offset() > held_from {
                    break;
                }
                closed_bytes -= oldest.size();
                count += 1;
            }
            segments.drain(..count).collect()
        };
        // Oldest first, each removal made durable before the next, and a
        // failure stops the rest: what stays on disk is always a contiguous
        // run of segments (a later open finds no gap).
        for segment in removed {
            std::fs::remove_file(&segment.path).map_err(Error::io(&segment.path))?;
            sync_dir(&state.dir)?;
            tracing::info!(path = %segment.path.display(), end_offset = segment.end_offset(), "retention removed a segment");
        }
        Ok(())
    }
}

/// After a failure: every queued append fails, then the thread stops.
fn fail_everything_queued(receiver: &mpsc::Receiver<Command>) {
    while let Ok(command) = receiver.recv() {
        match command {
            Command::Append(batch) => {
                let _ = batch.done.send(Err(Error::Poisoned));
            }
            Command::CheckRetention(reply) => {
                let _ = reply.send(Err(Error::Poisoned));
            }
        }
    }
}
