//! The file log checked against an in-memory model: whatever sequence of
//! appends, reads, reopens, torn tails, consumer registrations, commits and
//! removals, clock ticks and retention checks, the log must read back
//! exactly what the model holds from wherever retention left it, never
//! remove a record some consumer has not committed past, and actually shed
//! what it may.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use confab_log::{Error, FileLog, Log, LogConfig, ManualClock, StartAt, TailReader};
use proptest::prelude::*;

const PARTITIONS: u32 = 3;
/// Consumer 0 is registered on every partition from the start and never
/// removed, so every partition always has a holder.
const CONSUMERS: [&str; 2] = ["model", "other"];
const RETENTION_MAX_BYTES: u64 = 4_000;
const DAY: Duration = Duration::from_secs(24 * 3600);

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
        max_bytes: Option<usize>,
    },
    Reopen,
    /// A crash in the middle of a write: garbage after the last durable byte.
    TearTail {
        partition: u32,
        garbage: Vec<u8>,
    },
    Commit {
        consumer: usize,
        partition: u32,
        to_fraction: u8,
    },
    RegisterOther {
        partition: u32,
        at_fraction: u8,
    },
    RemoveOther,
    /// Time passes (less than a segment's age, or more), then the writer's check runs.
    Tick {
        seconds: u64,
    },
    /// A month passes: every closed segment is past its age.
    AgeEverything,
    /// A consumer's tail reader picks up from its committed offset.
    TailRead {
        consumer: usize,
        partition: u32,
        max_records: usize,
    },
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        6 => (0..PARTITIONS, prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8))
            .prop_map(|(partition, payloads)| Operation::Append { partition, payloads }),
        3 => (0..PARTITIONS, any::<u8>(), 1..20usize, prop::option::of(0..1_500usize))
            .prop_map(|(partition, from_fraction, max_records, max_bytes)| Operation::Read { partition, from_fraction, max_records, max_bytes }),
        1 => Just(Operation::Reopen),
        1 => (0..PARTITIONS, prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(partition, garbage)| Operation::TearTail { partition, garbage }),
        2 => (0..CONSUMERS.len(), 0..PARTITIONS, any::<u8>())
            .prop_map(|(consumer, partition, to_fraction)| Operation::Commit { consumer, partition, to_fraction }),
        1 => (0..PARTITIONS, any::<u8>()).prop_map(|(partition, at_fraction)| Operation::RegisterOther { partition, at_fraction }),
        1 => Just(Operation::RemoveOther),
        1 => (0..7_200u64).prop_map(|seconds| Operation::Tick { seconds }),
        1 => Just(Operation::AgeEverything),
        2 => (0..CONSUMERS.len(), 0..PARTITIONS, 1..30usize)
            .prop_map(|(consumer, partition, max_records)| Operation::TailRead { consumer, partition, max_records }),
    ]
}

fn small_config() -> LogConfig {
    LogConfig {
        partitions: PARTITIONS,
        segment_max_bytes: 2_000,
        segment_max_age_secs: 3_600,
        retention_max_age_secs: Some(7 * 24 * 3600),
        retention_max_bytes: Some(RETENTION_MAX_BYTES),
        // Only the test's own checks run: the model decides when time passes.
        retention_check_interval_ms: 24 * 3600 * 1000,
        ..LogConfig::default()
    }
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

struct Model {
    /// Every record ever appended, per partition.
    records: Vec<Vec<Vec<u8>>>,
    /// Each registered consumer's committed offset per partition.
    committed: BTreeMap<&'static str, Vec<Option<u64>>>,
}

impl Model {
    fn held_from(&self, partition: u32) -> u64 {
        self.committed.values().filter_map(|offsets| offsets[partition as usize]).min().expect("consumer 0 holds every partition")
    }

    /// The records a read from `from` returns: at most `max_records`, and
    /// while the payload bytes stay within `max_bytes`, but at least one.
    fn expected_read(&self, partition: u32, from: u64, max_records: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        let mut expected = Vec::new();
        let mut bytes = 0usize;
        for payload in self.records[partition as usize].iter().skip(from as usize).take(max_records) {
            if !expected.is_empty() && bytes + payload.len() > max_bytes {
                break;
            }
            bytes += payload.len();
            expected.push(payload.clone());
        }
        expected
    }
}

struct Harness {
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    clock: Arc<ManualClock>,
    log: Arc<FileLog>,
    model: Model,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        let log = Arc::new(FileLog::open_with_clock(dir.path(), small_config(), clock.clone()).unwrap());
        for partition in 0..PARTITIONS {
            assert_eq!(log.register_consumer(CONSUMERS[0], partition, 0).unwrap(), 0);
        }
        let model = Model { records: vec![Vec::new(); PARTITIONS as usize], committed: BTreeMap::from([(CONSUMERS[0], vec![Some(0); PARTITIONS as usize])]) };
        Harness { dir, runtime, clock, log, model }
    }

    fn reopen(&mut self) {
        // The old log stops writing before the new one opens the folder.
        self.log.close();
        self.log = Arc::new(FileLog::open_with_clock(self.dir.path(), small_config(), self.clock.clone()).unwrap());
    }

    fn earliest(&self, partition: u32) -> u64 {
        self.log.earliest(partition).unwrap()
    }

    fn apply(&mut self, operation: Operation) {
        match operation {
            Operation::Append { partition, payloads } => {
                let ticket = self.log.append(partition, payloads.clone()).unwrap();
                assert_eq!(ticket.first_offset, self.model.records[partition as usize].len() as u64);
                self.runtime.block_on(ticket.durable()).unwrap();
                self.model.records[partition as usize].extend(payloads);
            }
            Operation::Read { partition, from_fraction, max_records, max_bytes } => {
                let held = self.model.records[partition as usize].len() as u64;
                let earliest = self.earliest(partition);
                let from = earliest + (held - earliest) * from_fraction as u64 / 255;
                let max_bytes = max_bytes.unwrap_or(usize::MAX);
                let records = self.log.read(partition, from, max_records, max_bytes).unwrap();
                let expected = self.model.expected_read(partition, from, max_records, max_bytes);
                let offsets: Vec<u64> = records.iter().map(|record| record.offset).collect();
                assert_eq!(offsets, (from..from + expected.len() as u64).collect::<Vec<_>>());
                assert_eq!(records.into_iter().map(|record| record.payload).collect::<Vec<_>>(), expected);
                if earliest > 0 {
                    assert!(matches!(self.log.read(partition, earliest - 1, 1, usize::MAX), Err(Error::OffsetRemoved { .. })));
                }
            }
            Operation::Reopen => {
                self.reopen();
                for (partition, held) in self.model.records.iter().enumerate() {
                    assert_eq!(self.log.durable_end(partition as u32).unwrap(), held.len() as u64);
                }
            }
            Operation::TearTail { partition, garbage } => {
                self.log.close();
                let path = newest_segment(self.dir.path(), partition);
                std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(&garbage).unwrap();
                self.reopen();
            }
            Operation::Commit { consumer, partition, to_fraction } => {
                let name = CONSUMERS[consumer];
                let held = self.model.records[partition as usize].len() as u64;
                let current = self.model.committed.get(name).and_then(|offsets| offsets[partition as usize]).unwrap_or(self.earliest(partition));
                let at = current.max(held * to_fraction as u64 / 255);
                self.log.commit_offset(name, partition, at).unwrap();
                self.model.committed.entry(name).or_insert_with(|| vec![None; PARTITIONS as usize])[partition as usize] = Some(at);
            }
            Operation::RegisterOther { partition, at_fraction } => {
                let held = self.model.records[partition as usize].len() as u64;
                let earliest = self.earliest(partition);
                let at = earliest + (held - earliest) * at_fraction as u64 / 255;
                let offsets = self.model.committed.entry(CONSUMERS[1]).or_insert_with(|| vec![None; PARTITIONS as usize]);
                let expected = *offsets[partition as usize].get_or_insert(at);
                assert_eq!(self.log.register_consumer(CONSUMERS[1], partition, at).unwrap(), expected);
            }
            Operation::RemoveOther => {
                self.log.remove_consumer(CONSUMERS[1]).unwrap();
                self.model.committed.remove(CONSUMERS[1]);
            }
            Operation::Tick { seconds } => {
                self.clock.advance(Duration::from_secs(seconds));
                self.log.check_retention_now().unwrap();
                self.check_size_bound();
            }
            Operation::AgeEverything => {
                self.clock.advance(30 * DAY);
                self.log.check_retention_now().unwrap();
                self.check_size_bound();
                for partition in 0..PARTITIONS {
                    let segments = self.log.segments(partition).unwrap();
                    let (active, closed) = segments.split_last().unwrap();
                    assert_eq!(active.size_bytes, 0, "a month-old active segment was not rolled: {segments:?}");
                    if let Some(oldest) = closed.first() {
                        assert!(oldest.end_offset > self.model.held_from(partition), "an expired segment no consumer holds was kept: {segments:?}");
                    }
                }
            }
            Operation::TailRead { consumer, partition, max_records } => {
                let name = CONSUMERS[consumer];
                let log: Arc<dyn Log> = self.log.clone();
                let earliest = self.earliest(partition);
                let mut reader = TailReader::open(log, name, partition, StartAt::Earliest).unwrap();
                let offsets = self.model.committed.entry(name).or_insert_with(|| vec![None; PARTITIONS as usize]);
                let from = *offsets[partition as usize].get_or_insert(earliest);
                assert_eq!(reader.position(), from, "a reader starts at its consumer's committed offset");
                let records = reader.read_available(max_records, usize::MAX).unwrap();
                let expected = self.model.expected_read(partition, from, max_records, usize::MAX);
                assert_eq!(records.into_iter().map(|record| record.payload).collect::<Vec<_>>(), expected);
                assert_eq!(reader.position(), from + expected.len() as u64);
            }
        }
        self.check_invariants();
    }

    /// After every operation: nothing a consumer holds is gone, and each
    /// consumer can read from where it committed.
    fn check_invariants(&self) {
        let names: Vec<String> = self.model.committed.keys().map(|name| name.to_string()).collect();
        assert_eq!(self.log.consumers().unwrap(), names);
        for partition in 0..PARTITIONS {
            let held = self.model.records[partition as usize].len() as u64;
            assert_eq!(self.log.durable_end(partition).unwrap(), held);
            let earliest = self.earliest(partition);
            assert!(earliest <= self.model.held_from(partition), "retention removed records below a consumer: earliest {earliest}");
            for (name, offsets) in &self.model.committed {
                assert_eq!(self.log.committed_offset(name, partition).unwrap(), offsets[partition as usize]);
                if let Some(committed) = offsets[partition as usize] {
                    let records = self.log.read(partition, committed, 1, usize::MAX).unwrap();
                    assert_eq!(records.first().map(|record| record.offset), (committed < held).then_some(committed));
                }
            }
        }
    }

    /// After a check: a partition over its size bound has its oldest closed
    /// segment held by a consumer.
    fn check_size_bound(&self) {
        for partition in 0..PARTITIONS {
            let segments = self.log.segments(partition).unwrap();
            let closed = &segments[..segments.len() - 1];
            let closed_bytes: u64 = closed.iter().map(|segment| segment.size_bytes).sum();
            if closed_bytes > RETENTION_MAX_BYTES {
                assert!(closed[0].end_offset > self.model.held_from(partition), "over the size bound with nothing held: {segments:?}");
            }
        }
    }
}

fn run(operations: Vec<Operation>) {
    let mut harness = Harness::new();
    for operation in operations {
        harness.apply(operation);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn file_log_matches_model(operations in prop::collection::vec(operation(), 1..80)) {
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
fn concurrent_appends_share_fsyncs_and_keep_per_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let log = Arc::new(FileLog::open(dir.path(), LogConfig::default()).unwrap());
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
    let log = Arc::new(FileLog::open(dir.path(), LogConfig { partitions: 3, ..LogConfig::default() }).unwrap());
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
