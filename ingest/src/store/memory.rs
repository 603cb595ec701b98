//! An in-memory [`Store`]: the model the property tests hold
//! [`FjallStore`](super::fjall_store::FjallStore) to, and a store for
//! tests that need no disk. It also models a crash: [`MemoryStore::crash`]
//! keeps what was persisted plus any prefix of the batches written since,
//! which is all a real store promises.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use crate::store::{RangeIter, Space, Store, StoreResult, WriteBatch};

type Spaces = BTreeMap<Space, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default, Clone)]
struct Inner {
    live: Spaces,
    /// What a crash cannot take away.
    persisted: Spaces,
    /// Batches written since the last persist, oldest first.
    unpersisted: Vec<WriteBatch>,
}

fn apply(spaces: &mut Spaces, batch: &WriteBatch) {
    for change in &batch.changes {
        let space = spaces.entry(change.space).or_default();
        match &change.value {
            Some(value) => {
                space.insert(change.key.clone(), value.clone());
            }
            None => {
                space.remove(&change.key);
            }
        }
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The store as a crash could leave it: everything persisted, plus the
    /// first `kept` batches written after that (capped at what exists).
    pub fn crash(&self, kept: usize) -> MemoryStore {
        let inner = self.inner.read();
        let mut live = inner.persisted.clone();
        for batch in inner.unpersisted.iter().take(kept) {
            apply(&mut live, batch);
        }
        MemoryStore { inner: RwLock::new(Inner { persisted: live.clone(), live, unpersisted: Vec::new() }) }
    }

    /// Batches written since the last persist.
    pub fn unpersisted_batches(&self) -> usize {
        self.inner.read().unpersisted.len()
    }

    /// Every row, for comparing two stores.
    pub fn dump(&self) -> Vec<(Space, Vec<u8>, Vec<u8>)> {
        let inner = self.inner.read();
        inner.live.iter().flat_map(|(space, rows)| rows.iter().map(move |(key, value)| (*space, key.clone(), value.clone()))).collect()
    }
}

fn contains(start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>, key: &[u8]) -> bool {
    let after_start = match start {
        Bound::Included(start) => key >= start.as_slice(),
        Bound::Excluded(start) => key > start.as_slice(),
        Bound::Unbounded => true,
    };
    let before_end = match end {
        Bound::Included(end) => key <= end.as_slice(),
        Bound::Excluded(end) => key < end.as_slice(),
        Bound::Unbounded => true,
    };
    after_start && before_end
}

impl Store for MemoryStore {
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.inner.read().live.get(&space).and_then(|rows| rows.get(key).cloned()))
    }

    fn range(&self, space: Space, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> RangeIter<'_> {
        // A copy, as a snapshot: later writes do not show in an open range.
        let inner = self.inner.read();
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = match inner.live.get(&space) {
            Some(rows) => rows.iter().filter(|(key, _)| contains(&start, &end, key)).map(|(key, value)| (key.clone(), value.clone())).collect(),
            None => Vec::new(),
        };
        if reverse {
            rows.reverse();
        }
        Box::new(rows.into_iter().map(Ok))
    }

    fn write(&self, batch: WriteBatch) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.write();
        apply(&mut inner.live, &batch);
        inner.unpersisted.push(batch);
        Ok(())
    }

    fn persist(&self) -> StoreResult<()> {
        let mut inner = self.inner.write();
        inner.persisted = inner.live.clone();
        inner.unpersisted.clear();
        Ok(())
    }

    fn purge(&self) -> StoreResult<()> {
        Ok(())
    }

    fn location(&self) -> String {
        "memory".to_string()
    }
}
