//! The embedded store: fjall (an LSM tree in pure Rust), one keyspace per
//! [`Space`], under `<data_dir>/state`.
//!
//! Why fjall: the state is written far more than it is read (every message
//! writes a handful of small rows), which is what an LSM is made for; its
//! batches are atomic across keyspaces and its journal recovers a prefix of
//! them after a crash, which is exactly what the checkpoint design needs;
//! and it is pure Rust. redb (a copy-on-write B-tree) amplifies small
//! writes, rocksdb's C++ build takes too long on two cores. It is built
//! without LZ4 (fjall's LZ4 is another version than the one the history
//! already links, and one version of each crate is the rule), so blocks are
//! stored uncompressed.
//!
//! Durability: a batch goes to the journal's buffer and the memtables; it
//! is on disk after [`persist`](Store::persist), which the checkpoint calls
//! before committing the state's log offset. Nothing in between is lost for
//! good: the log still holds those records and the start replays them.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::compaction::filter::{CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::store::{RangeIter, Space, Store, StoreError, StoreResult, WriteBatch};

/// Format of the rows this version writes; a store of another format is
/// refused (and can be rebuilt from the log).
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_KEY: &[u8] = b"format";

/// Sizes of the embedded store. Every bound carries its unit.
#[derive(Debug, Clone)]
pub struct FjallOptions {
    /// Block cache shared by every keyspace.
    pub cache_max_bytes: u64,
    /// Largest memtable of one keyspace before it is flushed to a table.
    pub memtable_max_bytes: u64,
    /// Journal kept before the oldest memtables are flushed: it bounds what
    /// a start must read back (and so the start-up time).
    pub journal_max_bytes: u64,
    /// Table files kept open at once.
    pub open_files_max: usize,
    /// Idempotency rows older than this are dropped by compaction (their
    /// first 8 bytes are the row's time in ms, big-endian).
    pub idempotency_window_ms: i64,
}

impl Default for FjallOptions {
    fn default() -> Self {
        FjallOptions {
            cache_max_bytes: 256 * 1024 * 1024,
            memtable_max_bytes: 16 * 1024 * 1024,
            journal_max_bytes: 64 * 1024 * 1024,
            open_files_max: 512,
            idempotency_window_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

pub struct FjallStore {
    path: PathBuf,
    database: Database,
    keyspaces: Vec<Keyspace>,
    /// Only for [`Store::purge`]: filler that makes the journal rotate.
    scratch: Keyspace,
}

/// fjall seals its journal only once it is past this size (fixed in fjall).
const JOURNAL_ROTATION_BYTES: usize = 64_000_000;
const FILLER_CHUNK_BYTES: usize = 1024 * 1024;

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("FjallStore").field("path", &self.path).finish_non_exhaustive()
    }
}

/// What fjall asks, per keyspace name, for that keyspace's compaction filter.
type FilterFactories = Arc<dyn Fn(&str) -> Option<Arc<dyn Factory>> + Send + Sync>;

impl FjallStore {
    /// Opens (or creates) the store under `path`; fjall replays its journal.
    pub fn open(path: &Path, options: FjallOptions) -> StoreResult<FjallStore> {
        let location = path.display().to_string();
        let io = |error: fjall::Error| StoreError::Io { path: location.clone(), reason: error.to_string() };
        std::fs::create_dir_all(path).map_err(|error| StoreError::Io { path: location.clone(), reason: error.to_string() })?;
        let window_ms = options.idempotency_window_ms;
        let filters: FilterFactories =
            Arc::new(move |name: &str| (name == Space::Idempotency.name()).then(|| Arc::new(ExpiredRows { window_ms }) as Arc<dyn Factory>));
        let database = Database::builder(path)
            .cache_size(options.cache_max_bytes)
            .max_journaling_size(options.journal_max_bytes.max(64 * 1024 * 1024))
            .max_cached_files(Some(options.open_files_max))
            .with_compaction_filter_factories(filters)
            .open()
            .map_err(io)?;
        let memtable_max_bytes = options.memtable_max_bytes;
        let mut keyspaces = Vec::new();
        for space in Space::ALL {
            let keyspace = database.keyspace(space.name(), || KeyspaceCreateOptions::default().max_memtable_size(memtable_max_bytes)).map_err(io)?;
            keyspaces.push(keyspace);
        }
        let scratch = database.keyspace("purge_scratch", || KeyspaceCreateOptions::default().max_memtable_size(memtable_max_bytes)).map_err(io)?;
        let store = FjallStore { path: path.to_path_buf(), database, keyspaces, scratch };
        store.check_format()?;
        Ok(store)
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        &self.keyspaces[space as usize]
    }

    fn io(&self, error: fjall::Error) -> StoreError {
        StoreError::Io { path: self.location(), reason: error.to_string() }
    }

    fn check_format(&self) -> StoreResult<()> {
        match self.get(Space::Meta, FORMAT_KEY)? {
            None => {
                let mut batch = WriteBatch::default();
                batch.put(Space::Meta, FORMAT_KEY.to_vec(), FORMAT_VERSION.to_be_bytes().to_vec());
                self.write(batch)
            }
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_slice()).map(u32::from_be_bytes).unwrap_or(0);
                if found == FORMAT_VERSION {
                    Ok(())
                } else {
                    Err(StoreError::Format { path: self.location(), found, expected: FORMAT_VERSION })
                }
            }
        }
    }
}

impl Store for FjallStore {
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let value = self.keyspace(space).get(key).map_err(|error| self.io(error))?;
        Ok(value.map(|slice| slice.to_vec()))
    }

    fn range(&self, space: Space, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> RangeIter<'_> {
        let iter = self.keyspace(space).range::<Vec<u8>, _>((start, end));
        let location = self.location();
        let convert = move |guard: fjall::Guard| {
            guard
                .into_inner()
                .map(|(key, value)| (key.to_vec(), value.to_vec()))
                .map_err(|error| StoreError::Io { path: location.clone(), reason: error.to_string() })
        };
        if reverse {
            Box::new(iter.rev().map(convert))
        } else {
            Box::new(iter.map(convert))
        }
    }

    fn write(&self, batch: WriteBatch) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut fjall_batch = self.database.batch();
        for change in batch.changes {
            let keyspace = self.keyspace(change.space);
            match change.value {
                Some(value) => fjall_batch.insert(keyspace, change.key, value),
                None => fjall_batch.remove(keyspace, change.key),
            }
        }
        fjall_batch.commit().map_err(|error| self.io(error))
    }

    fn persist(&self) -> StoreResult<()> {
        self.database.persist(PersistMode::SyncData).map_err(|error| self.io(error))
    }

    fn purge(&self) -> StoreResult<()> {
        // The old values live in two places: the journal and the tables.
        // The journal is deleted once it is sealed and everything in it is
        // flushed, but fjall seals it only past 64 MB: on a quiet server that
        // could be never. So: flush everything, push the journal past that
        // size with zeros in a scratch keyspace, flush that (the journal is
        // sealed), flush everything again (the sealed journal is deleted),
        // drop the zeros, and rewrite every keyspace's tables into one run
        // without the overwritten and removed values.
        let io = |error: fjall::Error| self.io(error);
        for keyspace in &self.keyspaces {
            keyspace.rotate_memtable_and_wait().map_err(io)?;
        }
        let chunks = JOURNAL_ROTATION_BYTES / FILLER_CHUNK_BYTES + 1;
        let zeros = vec![0u8; FILLER_CHUNK_BYTES];
        for chunk in 0..chunks as u32 {
            let mut batch = self.database.batch();
            batch.insert(&self.scratch, chunk.to_be_bytes(), zeros.as_slice());
            batch.commit().map_err(io)?;
        }
        self.scratch.rotate_memtable_and_wait().map_err(io)?;
        let mut batch = self.database.batch();
        for chunk in 0..chunks as u32 {
            batch.remove(&self.scratch, chunk.to_be_bytes());
        }
        batch.commit().map_err(io)?;
        for keyspace in self.keyspaces.iter().chain([&self.scratch]) {
            keyspace.rotate_memtable_and_wait().map_err(io)?;
        }
        self.database.persist(PersistMode::SyncAll).map_err(io)?;
        for keyspace in self.keyspaces.iter().chain([&self.scratch]) {
            keyspace.major_compact().map_err(io)?;
        }
        Ok(())
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// Drops idempotency rows older than the window during compaction.
struct ExpiredRows {
    window_ms: i64,
}

impl Factory for ExpiredRows {
    fn name(&self) -> &str {
        "confab-idempotency-window"
    }

    fn make_filter(&self, _context: &Context) -> Box<dyn CompactionFilter> {
        let oldest_kept_ms = confab_schemas::ids::now_ms() - self.window_ms;
        Box::new(ExpiredRowFilter { oldest_kept_ms })
    }
}

struct ExpiredRowFilter {
    oldest_kept_ms: i64,
}

impl CompactionFilter for ExpiredRowFilter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _context: &Context) -> CompactionFilterResult {
        let value = item.value()?;
        let written_ms = value.get(..8).and_then(|bytes| <[u8; 8]>::try_from(bytes).ok()).map(i64::from_be_bytes);
        Ok(match written_ms {
            Some(written_ms) if written_ms < self.oldest_kept_ms => Verdict::Remove,
            _ => Verdict::Keep,
        })
    }
}
