//! Confab's streaming log: the durable, ordered record of everything the
//! gateway accepts.
//!
//! The [`Log`] trait is what the rest of Confab sees, so that a distributed
//! log (NATS JetStream) can take the place of the embedded [`FileLog`]
//! without the write path changing, and every reader follows it through a
//! [`TailReader`]. See `README.md` beside this crate for the on-disk format,
//! the life of one append, retention and the tail reader.

pub mod background;
mod clock;
mod config;
mod consumers;
mod error;
mod file_log;
mod frame;
mod fs;
mod segment;
mod tail;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::LogConfig;
pub use error::{Error, Result};
pub use file_log::{FileLog, Repaired, SegmentInfo};
pub use tail::{StartAt, TailReader};

/// A record's position inside its partition: dense, starting at 0.
pub type Offset = u64;

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub payload: Vec<u8>,
}

/// A pending append: its offsets are known at once, its durability later.
///
/// The offsets are assigned when [`Log::append`] returns, in the order of the
/// calls, so a caller that appends under its own lock gets log order equal to
/// its own order.
#[derive(Debug)]
pub struct AppendTicket {
    pub first_offset: Offset,
    pub count: u64,
    pub(crate) done: tokio::sync::oneshot::Receiver<Result<()>>,
}

impl AppendTicket {
    /// Waits until every record of the append is on disk (fsynced).
    pub async fn durable(self) -> Result<Offset> {
        match self.done.await {
            Ok(Ok(())) => Ok(self.first_offset),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Poisoned),
        }
    }
}

/// The streaming log as the write path and the pipelines use it.
pub trait Log: Send + Sync + 'static {
    /// How many partitions the log has; fixed for the life of a data directory.
    fn partition_count(&self) -> u32;

    /// Queues `payloads` for one partition and returns their offsets at once.
    /// The records become readable, and the ticket resolves, only once they
    /// are durable. Concurrent appends share one fsync (group commit).
    fn append(&self, partition: u32, payloads: Vec<Vec<u8>>) -> Result<AppendTicket>;

    /// Reads durable records from `from` on, at most `max_records` of them and
    /// about `max_bytes` (at least one record is returned when one exists).
    fn read(&self, partition: u32, from: Offset, max_records: usize, max_bytes: usize) -> Result<Vec<Record>>;

    /// The offset one past the last durable record of the partition.
    fn durable_end(&self, partition: u32) -> Result<Offset>;

    /// The lowest offset still held (older segments were removed by retention).
    fn earliest(&self, partition: u32) -> Result<Offset>;

    /// A receiver of the partition's durable end: readers tailing the log
    /// await `changed()` instead of polling.
    fn subscribe(&self, partition: u32) -> Result<tokio::sync::watch::Receiver<Offset>>;

    /// The offset `consumer` last committed for `partition`; if it has none,
    /// first commits `offset_if_new` (durably), so that from now on
    /// retention keeps every record from there.
    fn register_consumer(&self, consumer: &str, partition: u32, offset_if_new: Offset) -> Result<Offset>;

    /// The registered consumers' names, sorted.
    fn consumers(&self) -> Result<Vec<String>>;

    /// Forgets `consumer` (all its partitions), durably: it no longer holds
    /// records back from retention. Removing an unknown consumer does nothing.
    fn remove_consumer(&self, consumer: &str) -> Result<()>;

    /// Durably records that `consumer` has processed everything before
    /// `offset` in `partition`, registering it if needed. Retention never
    /// removes records a registered consumer has not committed past. An
    /// offset below what retention already removed is accepted; reading
    /// there answers [`Error::OffsetRemoved`].
    fn commit_offset(&self, consumer: &str, partition: u32, offset: Offset) -> Result<()>;

    /// The offset last committed by `consumer` for `partition`, if any.
    fn committed_offset(&self, consumer: &str, partition: u32) -> Result<Option<Offset>>;
}
