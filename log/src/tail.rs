//! The one way to follow the log: a named consumer's reader of one
//! partition. The state's replay, the fanout pipeline, the history sink and
//! operators' pipelines all read through it, so they share one set of
//! rules: start from the committed offset, read only what is durable (or
//! below a bound such as the state's applied end), wake on appends, and
//! commit what is processed so retention may remove it.
//!
//! Readers see only `TailReader`, never `Log::read`: when the log becomes
//! async (cluster mode), the reader keeps this API and changes inside.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{Error, Log, Offset, Record, Result};

/// Where a consumer with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The lowest offset retention still holds.
    Earliest,
    /// The durable end: only records appended from now on.
    End,
}

pub struct TailReader {
    log: Arc<dyn Log>,
    consumer: String,
    partition: u32,
    position: Offset,
    durable: watch::Receiver<Offset>,
    bound: Option<watch::Receiver<Offset>>,
}

impl std::fmt::Debug for TailReader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TailReader")
            .field("consumer", &self.consumer)
            .field("partition", &self.partition)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl TailReader {
    /// Registers `consumer` for `partition` (at `start` if it has no committed offset) and reads from its committed offset.
    ///
    /// A committed offset below what retention holds (the consumer
    /// committed below what was already removed) resumes at the earliest
    /// held, with a warning: nothing below it can be read any more.
    pub fn open(log: Arc<dyn Log>, consumer: &str, partition: u32, start: StartAt) -> Result<TailReader> {
        let durable = log.subscribe(partition)?;
        let offset_if_new = match start {
            StartAt::Earliest => log.earliest(partition)?,
            StartAt::End => log.durable_end(partition)?,
        };
        let committed = log.register_consumer(consumer, partition, offset_if_new)?;
        // Read after registering: retention that ran before saw no holder,
        // retention after it keeps everything from `committed` on.
        let earliest = log.earliest(partition)?;
        if committed < earliest {
            tracing::warn!(consumer, partition, committed, earliest, "consumer's committed offset was removed by retention; resuming at the earliest held");
        }
        Ok(TailReader { log, consumer: consumer.to_string(), partition, position: committed.max(earliest), durable, bound: None })
    }

    /// Reads only records below what `bound` says (e.g. the state's applied end), instead of the log's durable end.
    pub fn bounded_by(self, bound: watch::Receiver<Offset>) -> TailReader {
        TailReader { bound: Some(bound), ..self }
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The next offset this reader returns.
    pub fn position(&self) -> Offset {
        self.position
    }

    /// Moves the position (errors with OffsetRemoved below `earliest`).
    /// A position past the readable end waits for it.
    pub fn seek(&mut self, offset: Offset) -> Result<()> {
        let earliest = self.log.earliest(self.partition)?;
        if offset < earliest {
            return Err(Error::OffsetRemoved { partition: self.partition, requested: offset, earliest });
        }
        self.position = offset;
        Ok(())
    }

    /// The end it may read up to now (bound or durable end).
    pub fn readable_end(&self) -> Offset {
        let durable = *self.durable.borrow();
        match &self.bound {
            Some(bound) => durable.min(*bound.borrow()),
            None => durable,
        }
    }

    /// Whatever is readable now, at most `max_records` and about `max_bytes`; may be empty; advances the position.
    ///
    /// It reads files on the calling thread: from async code, prefer
    /// [`TailReader::next_batch`], which does not.
    pub fn read_available(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let end = self.readable_end();
        if end <= self.position || max_records == 0 {
            return Ok(Vec::new());
        }
        let count = max_records.min((end - self.position) as usize);
        let records = self.log.read(self.partition, self.position, count, max_bytes)?;
        self.advance_past(&records);
        Ok(records)
    }

    /// Waits until at least one record is readable, then returns like `read_available`. Cancel-safe (usable in select!). Errors with Error::Closed when the log or bound is gone.
    ///
    /// Returns at least one record (`max_records` of 0 counts as 1). The
    /// files are read on tokio's blocking pool, since a first read of a
    /// closed segment scans it. Cancelled at any await, the reader's
    /// position is unchanged: the next call reads the same records again.
    pub async fn next_batch(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let end = self.wait_until_readable().await?;
        let count = max_records.max(1).min((end - self.position) as usize);
        let (log, partition, from) = (self.log.clone(), self.partition, self.position);
        let read = tokio::task::spawn_blocking(move || log.read(partition, from, count, max_bytes));
        let records = match read.await {
            Ok(outcome) => outcome?,
            Err(join_error) if join_error.is_panic() => std::panic::resume_unwind(join_error.into_panic()),
            // The runtime is shutting down.
            Err(_) => return Err(Error::Closed),
        };
        self.advance_past(&records);
        Ok(records)
    }

    /// Durably records that everything below `offset` is processed (retention may then remove it).
    /// It fsyncs: commit every batch or so, not every record.
    pub fn commit(&self, offset: Offset) -> Result<()> {
        self.log.commit_offset(&self.consumer, self.partition, offset)
    }

    /// The readable end once it is past the position. Values are marked
    /// seen before the check, so an append between the check and the wait
    /// still wakes it.
    async fn wait_until_readable(&mut self) -> Result<Offset> {
        loop {
            let durable = *self.durable.borrow_and_update();
            let end = match &mut self.bound {
                Some(bound) => durable.min(*bound.borrow_and_update()),
                None => durable,
            };
            if end > self.position {
                return Ok(end);
            }
            let changed = match &mut self.bound {
                Some(bound) => tokio::select! {
                    changed = self.durable.changed() => changed,
                    changed = bound.changed() => changed,
                },
                None => self.durable.changed().await,
            };
            changed.map_err(|_| Error::Closed)?;
        }
    }

    fn advance_past(&mut self, records: &[Record]) {
        if let Some(last) = records.last() {
            debug_assert_eq!(records[0].offset, self.position, "offsets are dense");
            self.position = last.offset + 1;
        }
    }
}
