//! Retention by age and by size, bounded by consumers, on a manual clock:
//! ages move by hand, no test sleeps for them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use confab_log::{Error, FileLog, Log, LogConfig, ManualClock, StartAt, TailReader};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Segments of about five 200-byte records; no check runs unless the test asks.
fn config() -> LogConfig {
    LogConfig {
        segment_max_bytes: 1_000,
        segment_max_age_secs: 3_600,
        retention_max_age_secs: Some(24 * 3600),
        retention_max_bytes: None,
        retention_check_interval_ms: 24 * 3600 * 1000,
        ..LogConfig::default()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    log: Arc<FileLog>,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn new(config: LogConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        let log = Arc::new(FileLog::open_with_clock(dir.path(), config, clock.clone()).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        Fixture { dir, clock, log, runtime }
    }

    /// Appends `count` records, each its offset's bytes, one round each.
    fn append(&self, count: u64) {
        for _ in 0..count {
            let next = self.log.durable_end(0).unwrap();
            let payload = payload_of(next);
            self.runtime.block_on(self.log.append(0, vec![payload]).unwrap().durable()).unwrap();
        }
    }

    fn reader(&self, consumer: &str) -> TailReader {
        TailReader::open(self.log.clone(), consumer, 0, StartAt::Earliest).unwrap()
    }

    fn segment_count(&self) -> usize {
        self.log.segments(0).unwrap().len()
    }
}

fn payload_of(offset: u64) -> Vec<u8> {
    let mut payload = offset.to_le_bytes().to_vec();
    payload.resize(200, 0xa5);
    payload
}

/// Reads everything readable and checks it is the next records in order.
fn read_on(reader: &mut TailReader) -> Vec<u64> {
    let mut offsets = Vec::new();
    loop {
        let from = reader.position();
        let records = reader.read_available(7, usize::MAX).unwrap();
        if records.is_empty() {
            return offsets;
        }
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.offset, from + index as u64, "a gap or a repeat");
            assert_eq!(record.payload, payload_of(record.offset));
            offsets.push(record.offset);
        }
    }
}

#[test]
fn retention_removing_segments_while_every_consumer_keeps_its_place() {
    let fixture = Fixture::new(config());
    let mut fast = fixture.reader("fast");
    let mut slow = fixture.reader("slow");
    fixture.append(100);
    assert_eq!(read_on(&mut fast), (0..100).collect::<Vec<_>>());
    fast.commit(100).unwrap();
    let slow_read: Vec<u64> = (0..30).map(|_| slow.read_available(1, usize::MAX).unwrap()[0].offset).collect();
    assert_eq!(slow_read, (0..30).collect::<Vec<_>>());
    slow.commit(30).unwrap();

    // Everything is past its age, but the slow consumer holds from 30.
    fixture.clock.advance(2 * DAY);
    fixture.log.check_retention_now().unwrap();
    let earliest = fixture.log.earliest(0).unwrap();
    assert!(earliest > 0 && earliest <= 30, "removed below the slow consumer only, earliest {earliest}");
    let first = fixture.log.segments(0).unwrap()[0].clone();
    assert!(first.base_offset <= 30 && first.end_offset > 30, "the segment holding 30 stays: {first:?}");

    // Each keeps reading from its own place, through new appends.
    fixture.append(20);
    assert_eq!(read_on(&mut slow), (30..120).collect::<Vec<_>>());
    assert_eq!(read_on(&mut fast), (100..120).collect::<Vec<_>>());

    // Reopened, each resumes at its committed offset.
    fixture.log.close();
    let log = Arc::new(FileLog::open_with_clock(fixture.dir.path(), config(), fixture.clock.clone()).unwrap());
    let mut slow_again = TailReader::open(log.clone(), "slow", 0, StartAt::End).unwrap();
    let mut fast_again = TailReader::open(log.clone(), "fast", 0, StartAt::End).unwrap();
    assert_eq!((slow_again.position(), fast_again.position()), (30, 100));
    assert_eq!(read_on(&mut slow_again), (30..120).collect::<Vec<_>>());
    assert_eq!(read_on(&mut fast_again), (100..120).collect::<Vec<_>>());

    // Once the slow one commits, the old segments go; the ones written two
    // days later are not past their age yet.
    slow_again.commit(120).unwrap();
    fast_again.commit(120).unwrap();
    log.check_retention_now().unwrap();
    assert_eq!(log.earliest(0).unwrap(), 100);
    fixture.clock.advance(2 * DAY);
    log.check_retention_now().unwrap();
    assert_eq!(log.earliest(0).unwrap(), 120, "the quiet active segment was rolled, then removed");
    assert!(read_on(&mut fast_again).is_empty());
    log.append(0, vec![payload_of(120)]).unwrap();
    log.close();
    assert_eq!(read_on(&mut slow_again), vec![120]);
}

#[test]
fn size_retention_keeps_a_partition_under_its_bound_once_consumers_pass() {
    let fixture = Fixture::new(LogConfig { retention_max_age_secs: None, retention_max_bytes: Some(3_000), ..config() });
    let reader = fixture.reader("sink");
    fixture.append(200);
    let closed_bytes = |log: &FileLog| -> u64 {
        let segments = log.segments(0).unwrap();
        segments[..segments.len() - 1].iter().map(|segment| segment.size_bytes).sum()
    };
    assert_eq!(fixture.log.earliest(0).unwrap(), 0, "the consumer at 0 holds everything");
    assert!(closed_bytes(&fixture.log) > 30_000);

    reader.commit(200).unwrap();
    fixture.log.check_retention_now().unwrap();
    assert!(closed_bytes(&fixture.log) <= 3_000, "{} closed bytes", closed_bytes(&fixture.log));
    // Rolls apply it too, without a check.
    fixture.append(100);
    reader.commit(300).unwrap();
    fixture.append(20);
    // Retention after a roll runs once the round is acknowledged: the last
    // roll's may still be under way, the earlier ones are done.
    assert!(closed_bytes(&fixture.log) <= 3_000 + 1_080, "{} closed bytes", closed_bytes(&fixture.log));
}

#[test]
fn an_age_roll_closes_a_quiet_segment_so_age_retention_can_remove_it() {
    let fixture = Fixture::new(config());
    let reader = fixture.reader("pipeline");
    fixture.append(1);
    fixture.clock.advance(HOUR - Duration::from_secs(1));
    fixture.log.check_retention_now().unwrap();
    assert_eq!(fixture.segment_count(), 1, "not yet an hour old");
    fixture.clock.advance(Duration::from_secs(2));
    fixture.log.check_retention_now().unwrap();
    let segments = fixture.log.segments(0).unwrap();
    assert_eq!(segments.len(), 2, "rolled at an hour: {segments:?}");
    assert_eq!((segments[1].base_offset, segments[1].size_bytes), (1, 0));

    // An empty active segment is never rolled, however old.
    fixture.clock.advance(2 * DAY);
    fixture.log.check_retention_now().unwrap();
    assert_eq!(fixture.segment_count(), 2, "the consumer at 0 holds the closed one; the empty one stays active");
    reader.commit(1).unwrap();
    fixture.log.check_retention_now().unwrap();
    assert_eq!(fixture.segment_count(), 1);
    assert_eq!(fixture.log.earliest(0).unwrap(), 1);
}

#[test]
fn an_append_into_an_old_active_segment_rolls_it_first() {
    let fixture = Fixture::new(config());
    fixture.append(1);
    fixture.clock.advance(2 * HOUR);
    fixture.append(1);
    let bases: Vec<u64> = fixture.log.segments(0).unwrap().iter().map(|segment| segment.base_offset).collect();
    assert_eq!(bases, vec![0, 1]);
}

#[test]
fn a_segment_is_aged_by_its_last_write_even_after_a_restart() {
    // A clock far behind the files' own times: only the time the log wrote
    // into the closed file at its roll can make it old.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)));
    let config = LogConfig { segment_max_bytes: 100_000, ..config() };
    let log = FileLog::open_with_clock(dir.path(), config.clone(), clock.clone()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(log.append(0, vec![vec![1u8; 10]; 3]).unwrap().durable()).unwrap();
    clock.advance(2 * HOUR);
    log.check_retention_now().unwrap(); // the age roll
    drop(log);

    clock.advance(21 * HOUR);
    let log = FileLog::open_with_clock(dir.path(), config, clock.clone()).unwrap();
    log.check_retention_now().unwrap();
    assert_eq!(log.earliest(0).unwrap(), 0, "last written 23 hours ago on the log's clock");
    clock.advance(2 * HOUR);
    log.check_retention_now().unwrap();
    assert_eq!(log.earliest(0).unwrap(), 3, "last written 25 hours ago: past a day");
}

#[test]
fn a_removed_consumer_stops_holding_the_log() {
    let fixture = Fixture::new(config());
    let gone = fixture.reader("removed-pipeline");
    fixture.append(50);
    let kept = TailReader::open(fixture.log.clone(), "kept", 0, StartAt::End).unwrap();
    assert_eq!(kept.position(), 50);
    assert_eq!(gone.position(), 0);
    fixture.clock.advance(2 * DAY);
    fixture.log.check_retention_now().unwrap();
    assert_eq!(fixture.log.earliest(0).unwrap(), 0, "held by the consumer at 0");

    fixture.log.remove_consumer("removed-pipeline").unwrap();
    assert_eq!(fixture.log.consumers().unwrap(), vec!["kept".to_string()]);
    assert!(!fixture.dir.path().join("consumers").join("removed-pipeline.json").exists());
    fixture.log.check_retention_now().unwrap();
    assert_eq!(fixture.log.earliest(0).unwrap(), 50, "every closed segment went once nobody held it");

    fixture.log.close();
    let log = FileLog::open(fixture.dir.path(), config()).unwrap();
    assert_eq!(log.consumers().unwrap(), vec!["kept".to_string()], "the removal is durable");
    log.remove_consumer("never-registered").unwrap();
}

#[test]
fn a_commit_below_what_retention_removed_is_accepted_and_a_reader_resumes_at_the_earliest() {
    let fixture = Fixture::new(config());
    fixture.append(50);
    fixture.clock.advance(2 * DAY);
    fixture.log.check_retention_now().unwrap();
    assert_eq!(fixture.log.earliest(0).unwrap(), 50, "no consumer: everything past its age goes");

    fixture.log.commit_offset("late", 0, 3).unwrap();
    assert_eq!(
        fixture.log.read(0, 3, 1, usize::MAX).unwrap_err().to_string(),
        "offset `3` of partition `0` was removed by retention; the earliest held is `50`"
    );
    let mut reader = fixture.reader("late");
    assert_eq!(reader.position(), 50);
    assert!(matches!(reader.seek(49), Err(Error::OffsetRemoved { requested: 49, earliest: 50, .. })));
    fixture.append(1);
    assert_eq!(read_on(&mut reader), vec![50]);
}

#[test]
fn the_writer_checks_retention_without_appends() {
    let fixture = Fixture::new(LogConfig { retention_check_interval_ms: 10, ..config() });
    fixture.append(3);
    // A month on the log's clock; only the writer's own timer runs the check.
    fixture.clock.advance(30 * DAY);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fixture.log.earliest(0).unwrap() != 3 {
        assert!(Instant::now() < deadline, "no periodic check rolled and removed the quiet segment: {:?}", fixture.log.segments(0).unwrap());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(fixture.segment_count(), 1);
}
