//! The embedded store against the in-memory model: random batches of puts
//! and removes across spaces, point reads, ranges both ways, persists and
//! reopens. After every step both answer every read the same.

use std::ops::Bound;

use confab_ingest::store::fjall_store::{FjallOptions, FjallStore};
use confab_ingest::store::memory::MemoryStore;
use confab_ingest::store::{prefix_range, Space, Store, WriteBatch};
use proptest::prelude::*;

const SPACES: [Space; 3] = [Space::Messages, Space::Events, Space::Idempotency];

#[derive(Debug, Clone)]
enum Step {
    Batch(Vec<(usize, Vec<u8>, Option<Vec<u8>>)>),
    Get(usize, Vec<u8>),
    Range { space: usize, start: Option<Vec<u8>>, end: Option<Vec<u8>>, reverse: bool },
    Prefix(usize, Vec<u8>),
    Persist,
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // Few distinct bytes, so that keys collide, share prefixes and hit 0xff.
    proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(7u8), Just(0xffu8)], 1..4)
}

fn step() -> impl Strategy<Value = Step> {
    let change = (0..SPACES.len(), key(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)));
    prop_oneof![
        4 => proptest::collection::vec(change, 1..8).prop_map(Step::Batch),
        2 => (0..SPACES.len(), key()).prop_map(|(space, key)| Step::Get(space, key)),
        2 => (0..SPACES.len(), proptest::option::of(key()), proptest::option::of(key()), any::<bool>())
            .prop_map(|(space, start, end, reverse)| Step::Range { space, start, end, reverse }),
        1 => (0..SPACES.len(), key()).prop_map(|(space, prefix)| Step::Prefix(space, prefix)),
        1 => Just(Step::Persist),
        1 => Just(Step::Reopen),
    ]
}

fn options() -> FjallOptions {
    FjallOptions { cache_max_bytes: 1024 * 1024, memtable_max_bytes: 1024 * 1024, ..FjallOptions::default() }
}

fn collect(store: &dyn Store, space: Space, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    store.range(space, start, end, reverse).map(|entry| entry.unwrap()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_answers_like_the_model(steps in proptest::collection::vec(step(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut real = Some(FjallStore::open(dir.path(), options()).unwrap());
        let model = MemoryStore::new();
        for step in steps {
            let store = real.as_ref().unwrap();
            match step {
                Step::Batch(changes) => {
                    let mut batch = WriteBatch::default();
                    for (space, key, value) in changes {
                        match value {
                            Some(value) => batch.put(SPACES[space], key, value),
                            None => batch.remove(SPACES[space], key),
                        }
                    }
                    store.write(batch.clone()).unwrap();
                    model.write(batch).unwrap();
                }
                Step::Get(space, key) => {
                    prop_assert_eq!(store.get(SPACES[space], &key).unwrap(), model.get(SPACES[space], &key).unwrap());
                }
                Step::Range { space, start, end, reverse } => {
                    let start = start.map_or(Bound::Unbounded, Bound::Included);
                    let end = end.map_or(Bound::Unbounded, Bound::Excluded);
                    // An inverted range is empty in both (fjall would panic on it, so skip it).
                    if let (Bound::Included(low), Bound::Excluded(high)) = (&start, &end) {
                        if low > high {
                            continue;
                        }
                    }
                    prop_assert_eq!(
                        collect(store, SPACES[space], start.clone(), end.clone(), reverse),
                        collect(&model, SPACES[space], start, end, reverse)
                    );
                }
                Step::Prefix(space, prefix) => {
                    let (start, end) = prefix_range(&prefix);
                    prop_assert_eq!(collect(store, SPACES[space], start.clone(), end.clone(), false), collect(&model, SPACES[space], start, end, false));
                }
                Step::Persist => {
                    store.persist().unwrap();
                    model.persist().unwrap();
                }
                Step::Reopen => {
                    store.persist().unwrap();
                    drop(real.take());
                    real = Some(FjallStore::open(dir.path(), options()).unwrap());
                }
            }
        }
        // Finally every row of every space is the same.
        let store = real.as_ref().unwrap();
        for space in SPACES {
            prop_assert_eq!(collect(store, space, Bound::Unbounded, Bound::Unbounded, false), collect(&model, space, Bound::Unbounded, Bound::Unbounded, false));
        }
    }
}

#[test]
fn a_store_of_another_format_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FjallStore::open(dir.path(), options()).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(Space::Meta, b"format".to_vec(), 99u32.to_be_bytes().to_vec());
        store.write(batch).unwrap();
        store.persist().unwrap();
    }
    let error = FjallStore::open(dir.path(), options()).unwrap_err().to_string();
    assert!(error.contains("format 99") && error.contains("move it aside and restart to rebuild it from the log"), "{error}");
}

#[test]
fn purge_leaves_no_overwritten_value_in_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FjallStore::open(dir.path(), options()).unwrap();
    let secret = b"a-body-that-must-go-7f3a9".to_vec();
    let mut batch = WriteBatch::default();
    batch.put(Space::Messages, b"k".to_vec(), secret.clone());
    store.write(batch).unwrap();
    store.persist().unwrap();
    let mut batch = WriteBatch::default();
    batch.put(Space::Messages, b"k".to_vec(), b"deleted".to_vec());
    store.write(batch).unwrap();
    store.purge().unwrap();
    let mut found = Vec::new();
    let mut folders = vec![dir.path().to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if std::fs::read(&path).unwrap().windows(secret.len()).any(|window| window == secret.as_slice()) {
                found.push(path);
            }
        }
    }
    assert!(found.is_empty(), "the old value is still in {found:?}");
    assert_eq!(store.get(Space::Messages, b"k").unwrap(), Some(b"deleted".to_vec()));
}
