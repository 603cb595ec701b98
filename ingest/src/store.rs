//! The port the state is kept behind: an ordered key-value store with
//! named spaces and atomic batches. The embedded default is
//! [`FjallStore`](fjall_store::FjallStore) under `<data_dir>/state`; a
//! distributed store (cluster mode) implements the same small trait.
//! [`MemoryStore`](memory::MemoryStore) is the model the property tests
//! hold the real one to.
//!
//! What a store must promise (the checkpoint design in `README.md` rests on it):
//! - a [`WriteBatch`] is applied whole or not at all, also across a crash;
//! - after a crash the store holds a prefix of the batches written (never
//!   batch `n + 1` without batch `n`);
//! - everything written before [`Store::persist`] returned survives a crash.

pub mod fjall_store;
pub mod memory;

use std::ops::Bound;

/// The spaces of the store, one per kind of row (`src/rows.rs` says what
/// each holds and how its keys are laid out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    Meta,
    Users,
    Usernames,
    Devices,
    Conversations,
    DmPairs,
    Members,
    UserConversations,
    Messages,
    MessageIds,
    Events,
    Receipts,
    Deleted,
    Idempotency,
    Mentions,
    Media,
}

impl Space {
    pub const ALL: [Space; 16] = [
        Space::Meta,
        Space::Users,
        Space::Usernames,
        Space::Devices,
        Space::Conversations,
        Space::DmPairs,
        Space::Members,
        Space::UserConversations,
        Space::Messages,
        Space::MessageIds,
        Space::Events,
        Space::Receipts,
        Space::Deleted,
        Space::Idempotency,
        Space::Mentions,
        Space::Media,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::Users => "users",
            Space::Usernames => "usernames",
            Space::Devices => "devices",
            Space::Conversations => "conversations",
            Space::DmPairs => "dm_pairs",
            Space::Members => "members",
            Space::UserConversations => "user_conversations",
            Space::Messages => "messages",
            Space::MessageIds => "message_ids",
            Space::Events => "events",
            Space::Receipts => "receipts",
            Space::Deleted => "deleted",
            Space::Idempotency => "idempotency",
            Space::Mentions => "mentions",
            Space::Media => "media",
        }
    }
}

/// One change of a batch: a value to put, or `None` to remove the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub space: Space,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Changes applied atomically, in order (a later change of a key wins).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    pub changes: Vec<Change>,
}

impl WriteBatch {
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.changes.push(Change { space, key, value: Some(value) });
    }

    pub fn remove(&mut self, space: Space, key: Vec<u8>) {
        self.changes.push(Change { space, key, value: None });
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Keys of one space in a range, lazily, in key order (or reversed).
pub type RangeIter<'a> = Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + Send + 'a>;

/// A failure of the store itself (the disk, or damage). Not a client's
/// fault: the API answers 503, and the state stops applying until restart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state store at `{path}` failed: {reason}; check the disk and restart the server")]
    Io { path: String, reason: String },
    #[error("the state store holds a row it cannot read in `{space}`: {reason}; move `{path}` aside and restart to rebuild it from the log")]
    Corrupt { path: String, space: &'static str, reason: String },
    #[error("the state store at `{path}` was written by a newer or older confab (format {found}, this one reads {expected}); move it aside and restart to rebuild it from the log")]
    Format { path: String, found: u32, expected: u32 },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The state's store. Every method is blocking and short (a point read, a
/// batch into the memtable); `persist` and `purge` may take long and are
/// called off the async threads.
pub trait Store: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;

    /// The keys in `(start, end)`, ascending, or descending when `reverse`.
    fn range(&self, space: Space, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> RangeIter<'_>;

    /// Applies a batch atomically. It is visible to readers at once, and
    /// survives a crash once a later [`persist`](Store::persist) returns.
    fn write(&self, batch: WriteBatch) -> StoreResult<()>;

    /// Makes everything written so far durable (fsync).
    fn persist(&self) -> StoreResult<()>;

    /// Rewrites the store's files so that overwritten and removed values
    /// leave the disk (after a retention run or an erasure).
    fn purge(&self) -> StoreResult<()>;

    /// Where it keeps its data, for messages.
    fn location(&self) -> String;
}

/// Every key starting with `prefix`.
pub fn prefix_range(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = Bound::Included(prefix.to_vec());
    let mut end = prefix.to_vec();
    // The smallest key above every key with this prefix: drop trailing 0xff, add one.
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (start, Bound::Excluded(end));
        }
    }
    (start, Bound::Unbounded)
}

/// Keys from `from` (included) to `to` (excluded), both full keys.
pub fn key_range(from: Vec<u8>, to: Vec<u8>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (Bound::Included(from), Bound::Excluded(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_covers_exactly_the_prefix() {
        assert_eq!(prefix_range(b"ab"), (Bound::Included(b"ab".to_vec()), Bound::Excluded(b"ac".to_vec())));
        assert_eq!(prefix_range(&[1, 0xff]), (Bound::Included(vec![1, 0xff]), Bound::Excluded(vec![2])));
        assert_eq!(prefix_range(&[0xff]), (Bound::Included(vec![0xff]), Bound::Unbounded));
    }
}
