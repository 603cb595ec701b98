//! The state's settings (`[state]` in the server's config): cache bounds,
//! checkpoints, the idempotency window, and the embedded store's sizes.
//! Every bound carries its unit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::fjall_store::FjallOptions;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Conversations (their members and recent messages) kept in memory.
    pub conversations_cached_max: usize,
    /// Newest messages of each cached conversation kept in memory (history
    /// pages and fanout read them without touching the store).
    pub recent_messages_per_conversation: usize,
    pub users_cached_max: usize,
    pub devices_cached_max: usize,
    /// How often the store is made durable and the log told it may drop
    /// what the state no longer needs; a start replays at most this much.
    pub checkpoint_interval_ms: u64,
    /// A checkpoint also runs once this many records were applied since the last.
    pub checkpoint_max_records: u64,
    /// How long a `clientMsgId` is remembered (a retry within it returns the
    /// original; after it, the same id makes a new message).
    pub idempotency_window_secs: u64,
    /// How long a retry waits for its original while that is still in flight.
    pub in_flight_wait_max_ms: u64,
    /// The embedded store's block cache, shared by all its spaces.
    pub cache_max_bytes: u64,
    /// Largest in-memory write buffer of one space before it is flushed.
    pub memtable_max_bytes: u64,
    /// Journal kept before the oldest write buffers are flushed (what a start reads back).
    pub journal_max_bytes: u64,
    /// Store files kept open at once (they count against the open-file limit, with sockets).
    pub open_files_max: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        let store = FjallOptions::default();
        StateConfig {
            conversations_cached_max: 20_000,
            recent_messages_per_conversation: 64,
            users_cached_max: 100_000,
            devices_cached_max: 100_000,
            checkpoint_interval_ms: 5_000,
            checkpoint_max_records: 200_000,
            idempotency_window_secs: 7 * 24 * 3600,
            in_flight_wait_max_ms: 10_000,
            cache_max_bytes: store.cache_max_bytes,
            memtable_max_bytes: store.memtable_max_bytes,
            journal_max_bytes: store.journal_max_bytes,
            open_files_max: store.open_files_max,
        }
    }
}

impl StateConfig {
    pub fn fjall_options(&self) -> FjallOptions {
        FjallOptions {
            cache_max_bytes: self.cache_max_bytes,
            memtable_max_bytes: self.memtable_max_bytes,
            journal_max_bytes: self.journal_max_bytes,
            open_files_max: self.open_files_max,
            idempotency_window_ms: self.idempotency_window_ms(),
        }
    }

    pub fn idempotency_window_ms(&self) -> i64 {
        (self.idempotency_window_secs.saturating_mul(1000)).min(i64::MAX as u64) as i64
    }

    pub fn in_flight_wait_max(&self) -> Duration {
        Duration::from_millis(self.in_flight_wait_max_ms)
    }

    /// Every problem with the values, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &str, what: &str| {
            if !ok {
                problems.push(format!("`state.{field}`: {what}"));
            }
        };
        check(self.conversations_cached_max >= 1, "conversations_cached_max", "must be at least 1");
        check(self.users_cached_max >= 1, "users_cached_max", "must be at least 1");
        check(self.devices_cached_max >= 1, "devices_cached_max", "must be at least 1");
        check(self.checkpoint_interval_ms >= 1, "checkpoint_interval_ms", "must be at least 1");
        check(self.checkpoint_max_records >= 1, "checkpoint_max_records", "must be at least 1");
        check(self.idempotency_window_secs >= 1, "idempotency_window_secs", "must be at least 1");
        check(self.cache_max_bytes >= 1024 * 1024, "cache_max_bytes", "must be at least 1048576 (1 MiB)");
        check(self.memtable_max_bytes >= 1024 * 1024, "memtable_max_bytes", "must be at least 1048576 (1 MiB)");
        check(self.journal_max_bytes >= 64 * 1024 * 1024, "journal_max_bytes", "must be at least 67108864 (64 MiB)");
        check(self.open_files_max >= 16, "open_files_max", "must be at least 16");
        problems
    }
}
