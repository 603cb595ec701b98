//! The file log checked against an in-memory model: whatever sequence of
//! appends, reads, reopens, torn tails and consumer commits, the log must
//! read back exactly what the model holds.

use std::io::Write;
use std::path::Path;

use confab_log::{Error, FileLog, Log, LogConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Operation {
    Append {
        partition: u32,
        payloads: Vec<Vec<u8>>,
    },
    Read {
        partition: u32,
        from_fraction: u8,
        max_records: usize,
    },
    Reopen,
    /// A crash in the middle of a write: garbage after the last durable byte.
    TearTail {
        partition: u32,
        garbage: Vec<u8>,
    },
    Commit {
        partition: u32,
        to_fraction: u8,
    },
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        6 => (0..3u32, prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8))
            .prop_map(|(partition, payloads)| Operation::Append { partition, payloads }),
        3 => (0..3u32, any::<u8>(), 1..20usize)
            .prop_map(|(partition, from_fraction, max_records)| Operation::Read { partition, from_fraction, max_records }),
        1 => Just(Operation::Reopen),
        1 => (0..3u32, prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(partition, garbage)| Operation::TearTail { partition, garbage }),
        1 => (0..3u32, any::<u8>()).prop_map(|(partition, to_fraction)| Operation::Commit { partition, to_fraction }),
    ]
}

fn small_config() -> LogConfig {
    LogConfig { partitions: 3, segment_max_bytes: 2_000, retention_max_bytes: Some(4_000), ..LogConfig::default() }
}

fn newest_segment(dir: &Path, partition: u32) -> std::path::PathBuf {
    let mut names: Vec<_> = std::fs::read_dir(dir.join(format!("p-{partition:04}")))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .collect();
    names.sort();
    names.pop().unwrap()
}

fn run(operations: Vec<Operation>) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut log = FileLog::open(dir.path(), small_config()).unwrap();
    // The model: every record ever appended, and the lowest offset the log may have dropped below.
    let mut model: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
    let mut committed: Vec<u64> = vec![0; 3];
    // The model is a consumer from the start, so retention must wait for its commits.
    for partition in 0..3 {
        log.commit_offset("model", partition, 0).unwrap();
    }
    for operation in operations {
        match operation {
            Operation::Append { partition, payloads } => {
                let ticket = log.append(partition, payloads.clone()).unwrap();
                assert_eq!(ticket.first_offset, model[partition as usize].len() as u64);
                runtime.block_on(ticket.durable()).unwrap();
                model[partition as usize].extend(payloads);
                assert_eq!(log.durable_end(partition).unwrap(), model[partition as usize].len() as u64);
            }
            Operation::Read { partition, from_fraction, max_records } => {
                let held = &model[partition as usize];
                let earliest = log.earliest(partition).unwrap();
                assert!(earliest <= committed[partition as usize], "retention removed records no consumer committed past");
                let from = earliest + (held.len() as u64 - earliest) * from_fraction as u64 / 255;
                let records = log.read(partition, from, max_records, usize::MAX).unwrap();
                let expected: Vec<_> = held.iter().skip(from as usize).take(max_records).cloned().collect();
                let offsets: Vec<u64> = records.iter().map(|record| record.offset).collect();
                let expected_offsets: Vec<u64> = (from..from + expected.len() as u64).collect();
                assert_eq!(offsets, expected_offsets);
                assert_eq!(records.into_iter().map(|record| record.payload).collect::<Vec<_>>(), expected);
                if earliest > 0 {
                    assert!(matches!(log.read(partition, earliest - 1, 1, usize::MAX), Err(Error::OffsetRemoved { .. })));
                }
            }
            Operation::Reopen => {
                drop(log);
                log = FileLog::open(dir.path(), small_config()).unwrap();
                for (partition, held) in model.iter().enumerate() {
                    assert_eq!(log.durable_end(partition as u32).unwrap(), held.len() as u64);
                    assert_eq!(log.committed_offset("model", partition as u32).unwrap().unwrap_or(0), committed[partition]);
                }
            }
            Operation::TearTail { partition, garbage } => {
                drop(log);
                let path = newest_segment(dir.path(), partition);
                std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(&garbage).unwrap();
                log = FileLog::open(dir.path(), small_config()).unwrap();
                assert_eq!(log.durable_end(partition).unwrap(), model[partition as usize].len() as u64);
            }
            Operation::Commit { partition, to_fraction } => {
                let held = model[partition as usize].len() as u64;
                let at = committed[partition as usize].max(held * to_fraction as u64 / 255);
                log.commit_offset("model", partition, at).unwrap();
                committed[partition as usize] = at;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn file_log_matches_model(operations in prop::collection::vec(operation(), 1..60)) {
        run(operations);
    }
}

#[test]
fn an_unconsumed_log_keeps_everything_until_a_consumer_commits() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let log = FileLog::open(dir.path(), small_config()).unwrap();
    log.commit_offset("slow", 0, 0).unwrap();
    for _ in 0..100 {
        runtime.block_on(log.append(0, vec![vec![7u8; 200]]).unwrap().durable()).unwrap();
    }
    assert_eq!(log.earliest(0).unwrap(), 0, "a consumer at 0 holds every segment");
    log.commit_offset("slow", 0, 90).unwrap();
    for _ in 0..20 {
        runtime.block_on(log.append(0, vec![vec![7u8; 200]]).unwrap().durable()).unwrap();
    }
    let earliest = log.earliest(0).unwrap();
    assert!(earliest > 0 && earliest <= 90, "retention removed up to the commit, got {earliest}");
}

#[test]
fn damage_inside_a_closed_segment_is_reported_not_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let config = LogConfig { retention_max_bytes: None, ..small_config() };
    let log = FileLog::open(dir.path(), config.clone()).unwrap();
    for _ in 0..30 {
        runtime.block_on(log.append(1, vec![vec![1u8; 200]]).unwrap().durable()).unwrap();
    }
    drop(log);
    let first = dir.path().join("p-0001").join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let error = FileLog::open(dir.path(), config).unwrap_err();
    assert!(error.to_string().contains("damaged record in a closed segment"), "{error}");
}

#[test]
fn concurrent_appends_share_fsyncs_and_keep_per_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let log = std::sync::Arc::new(FileLog::open(dir.path(), LogConfig::default()).unwrap());
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for writer in 0..32u8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut offsets = Vec::new();
                for sequence in 0..50u8 {
                    let ticket = log.append(0, vec![vec![writer, sequence]]).unwrap();
                    offsets.push(ticket.durable().await.unwrap());
                }
                offsets
            }));
        }
        for task in tasks {
            let offsets = task.await.unwrap();
            assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]));
        }
    });
    let records = log.read(0, 0, 10_000, usize::MAX).unwrap();
    assert_eq!(records.len(), 32 * 50);
    let mut last_by_writer = [None::<u8>; 32];
    for record in records {
        let (writer, sequence) = (record.payload[0] as usize, record.payload[1]);
        assert_eq!(last_by_writer[writer].map_or(0, |last| last + 1), sequence);
        last_by_writer[writer] = Some(sequence);
    }
}

#[test]
fn a_tailing_reader_is_woken_by_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    let log = std::sync::Arc::new(FileLog::open(dir.path(), LogConfig { partitions: 3, ..LogConfig::default() }).unwrap());
    let mut durable = log.subscribe(2).unwrap();
    runtime.block_on(async {
        let reader_log = log.clone();
        let reader = tokio::spawn(async move {
            durable.wait_for(|&end| end > 0).await.unwrap();
            reader_log.read(2, 0, 10, usize::MAX).unwrap()
        });
        tokio::task::yield_now().await;
        log.append(2, vec![b"wake".to_vec()]).unwrap().durable().await.unwrap();
        let records = tokio::time::timeout(std::time::Duration::from_secs(5), reader).await.unwrap().unwrap();
        assert_eq!(records[0].payload, b"wake");
    });
}
