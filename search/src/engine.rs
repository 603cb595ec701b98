//! The one trait both index engines implement, and what passes through it.

use std::collections::BTreeMap;

use crate::query::Query;

/// A message as indexed.
pub type Doc = confab_ingest::SearchableMessage;

/// One change to the index, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Index a message the index does not hold (a create in log order
    /// after the index's positions, or a rebuild into an empty index).
    Add(Doc),
    /// Index the message as it is now (replacing what was indexed of it).
    Upsert(Doc),
    /// Forget it (deleted, erased, retention).
    Remove { conversation_id: String, seq: u64 },
}

/// Per log partition, the next offset not yet in the index.
pub type Positions = BTreeMap<u32, u64>;

/// Where a page ends: the newest-first order is `(ts, tiebreak)` descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SortKey {
    pub ts: i64,
    /// Distinct per message and stable (the conversation's FNV-1a hash
    /// xor the seq), so equal times still order.
    pub tiebreak: u64,
}

impl SortKey {
    pub fn of(ts: i64, conversation_id: &str, seq: u64) -> SortKey {
        SortKey { ts, tiebreak: fnv1a(conversation_id.as_bytes()) ^ seq }
    }

    /// The opaque cursor text.
    pub fn encode(&self) -> String {
        format!("{:x}.{:x}", self.ts, self.tiebreak)
    }

    pub fn decode(text: &str) -> Option<SortKey> {
        let (ts, tiebreak) = text.split_once('.')?;
        Some(SortKey { ts: i64::from_str_radix(ts, 16).ok()?, tiebreak: u64::from_str_radix(tiebreak, 16).ok()? })
    }
}

/// FNV-1a, 64 bits: stable across processes and versions (unlike std's hasher).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// A conversation to search, from `from_seq` on (as ingest works it out).
pub type Scope = confab_ingest::ReadableConversation;

/// One search, its permissions already worked out.
#[derive(Debug, Clone)]
pub struct Request {
    pub query: Query,
    /// The conversations the caller may read (never empty: an empty scope finds nothing without asking).
    pub scope: Vec<Scope>,
    /// `from:`, resolved to a user id.
    pub sender_id: Option<String>,
    /// Only messages strictly after this key in the newest-first order.
    pub after: Option<SortKey>,
    pub limit: usize,
}

/// One message found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub conversation_id: String,
    pub seq: u64,
    pub key: SortKey,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the search index failed: {0}")]
    Index(String),
    #[error("the search index is not reachable: {0}")]
    Unavailable(String),
}

pub type EngineResult<T> = Result<T, EngineError>;

/// A full-text index of messages.
///
/// `apply` is called by the one indexing pipeline, in log order; it must
/// make the changes and the positions durable together, so that after a
/// crash the pipeline resumes from `positions` and re-applies what came
/// after (every change is idempotent). `search` is called concurrently.
#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Where the index stands: per partition, the next offset to index (empty for a fresh index).
    async fn positions(&self) -> EngineResult<Positions>;
    /// Applies the changes and records the positions, durably, then makes them searchable.
    async fn apply(&self, changes: Vec<Change>, positions: Positions) -> EngineResult<()>;
    /// Newest first, at most `request.limit` (plus some, which the caller trims after its checks).
    async fn search(&self, request: &Request) -> EngineResult<Vec<Hit>>;
    /// Makes what was removed leave the index's files (erasure and
    /// retention): rewrites whatever still holds removed messages.
    async fn purge(&self) -> EngineResult<u64>;
    /// Deletes everything and forgets the positions (before a rebuild of a stale index).
    async fn clear(&self) -> EngineResult<()>;
    /// The index's size on disk, in bytes (benchmarks, status).
    async fn size_bytes(&self) -> EngineResult<u64>;
}
