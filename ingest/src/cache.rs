//! A bounded cache of objects loaded from the store, with pins.
//!
//! The store is the truth; the cache holds the working set (conversations
//! with their members and recent messages, users, devices). Two rules keep
//! a cached copy from ever going stale:
//!
//! - **Pinned entries are never evicted.** A conversation is pinned while
//!   an append for it is in flight (its `assigned_seq` is ahead of the
//!   store) and while an apply round changes it (its rows are not committed
//!   yet). So the copy that changes is always the one in the cache.
//! - **A load that raced an eviction is thrown away.** A reader loads from
//!   the store without holding a lock; meanwhile the apply may change the
//!   cached copy, commit, and an eviction may drop it. The reader would then
//!   insert what it read before the commit. Every eviction bumps an epoch
//!   first, and a load inserts only if the epoch did not move, else it loads
//!   again. The check and the insert happen under the key's shard lock, and
//!   eviction removes under the same lock, so they cannot interleave.
//!
//! Eviction is a clock sweep: it runs when the cache is an eighth over its
//! bound, skips pinned and recently used entries (clearing their mark) and
//! removes the rest until the bound holds again. A cache whose entries are
//! all pinned grows past its bound; that is bounded by the work in flight.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

/// What a cached object says about itself.
pub(crate) trait Cacheable: Send + Sync {
    /// Whether it must stay in the cache (see the module notes).
    fn pinned(&self) -> bool {
        false
    }
}

struct Slot<V> {
    value: Arc<V>,
    referenced: AtomicBool,
}

pub(crate) struct Cache<V> {
    entries: DashMap<String, Slot<V>>,
    capacity: usize,
    epoch: AtomicU64,
    evicting: AtomicBool,
}

impl<V> std::fmt::Debug for Cache<V> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Cache").field("len", &self.entries.len()).field("capacity", &self.capacity).finish()
    }
}

impl<V: Cacheable> Cache<V> {
    pub fn new(capacity: usize) -> Cache<V> {
        Cache { entries: DashMap::new(), capacity: capacity.max(1), epoch: AtomicU64::new(0), evicting: AtomicBool::new(false) }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The cached object; `then` runs under the entry's lock (so a pin it
    /// takes cannot race an eviction).
    pub fn get_then(&self, key: &str, then: impl FnOnce(&Arc<V>)) -> Option<Arc<V>> {
        let slot = self.entries.get(key)?;
        slot.referenced.store(true, Ordering::Relaxed);
        then(&slot.value);
        Some(slot.value.clone())
    }

    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.get_then(key, |_| {})
    }

    /// The cached object, or the one `load` reads from the store (cached
    /// from then on); `None` when the store has none. `then` as in
    /// [`get_then`](Self::get_then).
    pub fn get_or_load<E>(&self, key: &str, load: impl Fn() -> Result<Option<V>, E>, then: impl Fn(&Arc<V>)) -> Result<Option<Arc<V>>, E> {
        loop {
            if let Some(value) = self.get_then(key, &then) {
                return Ok(Some(value));
            }
            let epoch = self.epoch.load(Ordering::Acquire);
            let Some(loaded) = load()? else { return Ok(None) };
            match self.entries.entry(key.to_string()) {
                Entry::Occupied(occupied) => {
                    let slot = occupied.get();
                    slot.referenced.store(true, Ordering::Relaxed);
                    then(&slot.value);
                    return Ok(Some(slot.value.clone()));
                }
                Entry::Vacant(vacant) => {
                    if self.epoch.load(Ordering::Acquire) != epoch {
                        continue; // An eviction ran while loading: what was read may be stale.
                    }
                    let value = Arc::new(loaded);
                    then(&value);
                    vacant.insert(Slot { value: value.clone(), referenced: AtomicBool::new(true) });
                    self.evict_if_over();
                    return Ok(Some(value));
                }
            }
        }
    }

    /// Puts a new or changed object in (replacing any copy), with `then`
    /// run before it is visible.
    pub fn insert_then(&self, key: String, value: Arc<V>, then: impl FnOnce(&Arc<V>)) {
        then(&value);
        self.entries.insert(key, Slot { value, referenced: AtomicBool::new(true) });
        self.evict_if_over();
    }

    pub fn insert(&self, key: String, value: Arc<V>) {
        self.insert_then(key, value, |_| {});
    }

    /// Forgets an object that no longer exists in the store.
    pub fn remove(&self, key: &str) {
        self.entries.remove(key);
    }

    fn evict_if_over(&self) {
        let high_water = self.capacity + (self.capacity / 8).max(1);
        if self.entries.len() <= high_water || self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        // Before any removal: a load that started before this sweep must not insert.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for _pass in 0..2 {
            let excess = self.entries.len().saturating_sub(self.capacity);
            if excess == 0 {
                break;
            }
            let mut removed = 0usize;
            self.entries.retain(|_, slot| {
                if removed >= excess || slot.value.pinned() || slot.referenced.swap(false, Ordering::Relaxed) {
                    return true;
                }
                removed += 1;
                false
            });
        }
        self.evicting.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    struct Item {
        value: u32,
        pins: AtomicU32,
    }

    impl Cacheable for Item {
        fn pinned(&self) -> bool {
            self.pins.load(Ordering::Acquire) > 0
        }
    }

    fn item(value: u32) -> Item {
        Item { value, pins: AtomicU32::new(0) }
    }

    #[test]
    fn stays_near_its_bound_and_never_evicts_a_pinned_entry() {
        let cache: Cache<Item> = Cache::new(8);
        let pinned = cache.get_or_load::<()>(
            "pinned",
            || Ok(Some(item(0))),
            |value| {
                value.pins.fetch_add(1, Ordering::AcqRel);
            },
        );
        let pinned = pinned.unwrap().unwrap();
        for key in 0..1_000u32 {
            cache.get_or_load::<()>(&key.to_string(), || Ok(Some(item(key))), |_| {}).unwrap();
            assert!(cache.len() <= 8 + 1 + 1, "{} entries", cache.len());
        }
        let again = cache.get("pinned").expect("a pinned entry stays");
        assert!(Arc::ptr_eq(&again, &pinned));
        assert_eq!(cache.get_or_load::<()>("absent", || Ok(None), |_| {}).unwrap().map(|item| item.value), None);
    }

    #[test]
    fn a_load_that_raced_an_eviction_loads_again() {
        let cache: Cache<Item> = Cache::new(1);
        let loads = AtomicU32::new(0);
        let value = cache
            .get_or_load::<()>(
                "k",
                || {
                    let attempt = loads.fetch_add(1, Ordering::AcqRel);
                    if attempt == 0 {
                        // An eviction runs while this first load reads the store.
                        for other in 0..4 {
                            cache.insert(format!("o{other}"), Arc::new(item(other)));
                        }
                    }
                    Ok(Some(item(attempt)))
                },
                |_| {},
            )
            .unwrap()
            .unwrap();
        assert_eq!(value.value, 1, "the value read before the eviction was not used");
    }
}
