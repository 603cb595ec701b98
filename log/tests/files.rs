//! The log's files: opening reads only the newest segment of each
//! partition, closed segments are read (and checked) lazily with the same
//! results, damage in them is reported on read, and everything the log
//! creates is private.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use confab_log::{Error, FileLog, Log, LogConfig, Record};

fn config() -> LogConfig {
    LogConfig { partitions: 2, segment_max_bytes: 1_000, retention_max_bytes: None, retention_max_age_secs: None, ..LogConfig::default() }
}

/// Appends `count` records to partition 0 in rounds of up to 7, payload
/// sizes varying so frames straddle index and chunk boundaries.
fn fill(log: &FileLog, count: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut next = log.durable_end(0).unwrap();
    while next < count {
        let round = (count - next).min(1 + next % 7);
        let payloads: Vec<Vec<u8>> = (next..next + round).map(payload_of).collect();
        runtime.block_on(log.append(0, payloads).unwrap().durable()).unwrap();
        next += round;
    }
}

fn payload_of(offset: u64) -> Vec<u8> {
    let mut payload = offset.to_le_bytes().to_vec();
    payload.resize(8 + (offset as usize * 37) % 400, (offset % 251) as u8);
    payload
}

fn segment_path(dir: &Path, partition: u32, base: u64) -> PathBuf {
    dir.join(format!("p-{partition:04}")).join(format!("{base:020}.seg"))
}

fn check_records(records: &[Record], from: u64) {
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record.offset, from + index as u64);
        assert_eq!(record.payload, payload_of(record.offset));
    }
}

#[test]
fn open_does_not_read_closed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), config()).unwrap();
    fill(&log, 2_000);
    let segments = log.segments(0).unwrap();
    assert!(segments.len() > 100, "{} segments", segments.len());
    drop(log);

    // Every closed segment becomes garbage of the same length: an open that
    // read any of them would fail.
    let (newest, closed) = segments.split_last().unwrap();
    for segment in closed {
        let path = segment_path(dir.path(), 0, segment.base_offset);
        std::fs::write(&path, vec![0xab; segment.size_bytes as usize]).unwrap();
    }
    let log = FileLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.durable_end(0).unwrap(), 2_000);
    assert_eq!(log.earliest(0).unwrap(), 0);
    let reopened = log.segments(0).unwrap();
    assert!(reopened[..reopened.len() - 1].iter().all(|segment| !segment.indexed), "a closed segment was read at open");
    assert_eq!(
        reopened.iter().map(|segment| (segment.base_offset, segment.end_offset, segment.size_bytes)).collect::<Vec<_>>(),
        segments.iter().map(|segment| (segment.base_offset, segment.end_offset, segment.size_bytes)).collect::<Vec<_>>()
    );

    // The newest segment reads; a closed one reports its damage, naming it.
    check_records(&log.read(0, newest.base_offset, 100, usize::MAX).unwrap(), newest.base_offset);
    let damaged = &closed[40];
    let error = log.read(0, damaged.base_offset + 1, 1, usize::MAX).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "corrupt record in `{}` at byte 0: damaged record in a closed segment (length over the record limit); only the tail of the newest segment is repaired automatically, so restore this segment from a replica or backup",
            segment_path(dir.path(), 0, damaged.base_offset).display()
        )
    );
    assert!(matches!(error, Error::Corrupt { position: 0, .. }));
    // And it stays reported: a failed scan is not remembered as a good one.
    assert!(log.read(0, damaged.base_offset, 1, usize::MAX).is_err());
    let still = log.segments(0).unwrap();
    assert_eq!(still.iter().filter(|segment| segment.indexed).count(), 1, "only the newest was ever indexed");
}

#[test]
fn lazy_closed_segment_indexes_read_the_same_as_eager_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), config()).unwrap();
    fill(&log, 600);
    let shapes = [(1usize, usize::MAX), (13, usize::MAX), (500, 1_500), (50, 0)];
    let read_everything = |log: &FileLog| -> Vec<Vec<Record>> {
        let mut reads = Vec::new();
        for from in 0..600 {
            for (max_records, max_bytes) in shapes {
                reads.push(log.read(0, from, max_records, max_bytes).unwrap());
            }
        }
        reads
    };
    let eager = read_everything(&log);
    for (index, records) in eager.iter().enumerate() {
        check_records(records, index as u64 / shapes.len() as u64);
    }
    drop(log);
    let log = FileLog::open(dir.path(), config()).unwrap();
    assert!(!log.segments(0).unwrap()[0].indexed);
    assert_eq!(read_everything(&log), eager);
    assert!(log.segments(0).unwrap().iter().all(|segment| segment.indexed));
}

#[test]
fn reads_after_many_segments_find_their_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FileLog::open(dir.path(), config()).unwrap());
    fill(&log, 3_000);
    let count = log.segments(0).unwrap().len();
    assert!(count > 200, "{count} segments");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..500 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let from = seed % 3_000;
        let records = log.read(0, from, 20, usize::MAX).unwrap();
        assert_eq!(records.len() as u64, 20.min(3_000 - from));
        check_records(&records, from);
    }
    // A read spanning many segments, and one past the end.
    check_records(&log.read(0, 0, 3_000, usize::MAX).unwrap(), 0);
    assert!(log.read(0, 3_000, 10, usize::MAX).unwrap().is_empty());
    assert!(log.read(1, 0, 10, usize::MAX).unwrap().is_empty());
}

/// Found by the model test: a first record over the byte budget at the end
/// of a segment, then an empty record at the start of the next. Within one
/// segment the empty record is not returned (the budget is overspent); it
/// must not be across the boundary either.
#[test]
fn an_overspent_budget_admits_nothing_more_across_a_segment_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), config()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(log.append(0, vec![vec![7; 1_200]]).unwrap().durable()).unwrap();
    runtime.block_on(log.append(0, vec![Vec::new(), vec![1]]).unwrap().durable()).unwrap();
    assert_eq!(log.segments(0).unwrap().len(), 2, "the big record filled the first segment");
    let offsets = |records: Vec<Record>| records.iter().map(|record| record.offset).collect::<Vec<_>>();
    assert_eq!(offsets(log.read(0, 0, 10, 100).unwrap()), [0], "only the first record, which may exceed the budget");
    assert_eq!(offsets(log.read(0, 0, 10, 1_200).unwrap()), [0, 1], "an exhausted budget still admits an empty record");
}

#[test]
fn a_reopened_log_appends_after_its_lazily_known_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), config()).unwrap();
    fill(&log, 100);
    drop(log);
    let log = FileLog::open(dir.path(), config()).unwrap();
    fill(&log, 200);
    drop(log);
    let log = FileLog::open(dir.path(), config()).unwrap();
    check_records(&log.read(0, 0, 1_000, usize::MAX).unwrap(), 0);
    assert_eq!(log.read(0, 0, 1_000, usize::MAX).unwrap().len(), 200);
}

#[test]
fn the_log_creates_its_files_and_folders_private() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("log");
    let log = FileLog::open(&root, config()).unwrap();
    fill(&log, 200);
    log.commit_offset("history", 1, 0).unwrap();
    drop(log);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    for folder in [root.clone(), root.join("consumers"), root.join("p-0000"), root.join("p-0001")] {
        assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    }
    let mut files = vec![root.join("meta.json"), root.join("consumers").join("history.json")];
    for partition in ["p-0000", "p-0001"] {
        for entry in std::fs::read_dir(root.join(partition)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    assert!(files.len() > 10);
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[test]
fn a_folder_left_open_by_an_older_version_is_made_private() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("log");
    drop(FileLog::open(&root, config()).unwrap());
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(FileLog::open(&root, config()).unwrap());
    assert_eq!(std::fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn a_torn_tail_is_cut_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), config()).unwrap();
    fill(&log, 50);
    let newest = log.segments(0).unwrap().last().unwrap().clone();
    drop(log);
    let path = segment_path(dir.path(), 0, newest.base_offset);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[7u8; 30]);
    std::fs::write(&path, &bytes).unwrap();
    let log = FileLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.durable_end(0).unwrap(), 50);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), newest.size_bytes);
    fill(&log, 60);
    check_records(&log.read(0, 0, 100, usize::MAX).unwrap(), 0);
}

#[test]
fn bad_settings_are_refused_at_open_naming_each() {
    let dir = tempfile::tempdir().unwrap();
    let error = FileLog::open(dir.path(), LogConfig { segment_max_bytes: 0, partitions: 0, ..LogConfig::default() }).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid log settings: `partitions` is 0; use at least 1; `segment_max_bytes` is 0; use at least 1; fix them in the `[log]` section of the config file"
    );
}

/// Damage in the middle of the newest segment, with good records after
/// it, is not a torn tail: the open refuses and changes nothing; `repair`
/// puts a placeholder where each record is unreadable (same offsets, so
/// nothing after moves) and keeps the damaged bytes.
#[test]
fn damage_before_valid_records_stops_the_open_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_max_bytes: 1 << 20, ..config() };
    let log = FileLog::open(dir.path(), config.clone()).unwrap();
    fill(&log, 40);
    let newest = log.segments(0).unwrap().last().unwrap().clone();
    drop(log);
    let path = segment_path(dir.path(), 0, newest.base_offset);
    let original = std::fs::read(&path).unwrap();
    let mut damaged = original.clone();
    let middle = original.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(&path, &damaged).unwrap();

    let error = FileLog::open(dir.path(), config.clone()).unwrap_err();
    assert!(matches!(error, Error::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("not a torn tail") && error.to_string().contains("confab log repair"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), damaged, "nothing was changed");

    let repaired = FileLog::repair(dir.path(), b"{\"lost\":true}").unwrap();
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    let repair = &repaired[0];
    assert!(!repair.cut && repair.lost_records == 1, "{repair:?}");
    assert!(repair.damaged_at as usize <= middle);
    let kept = std::fs::read(&repair.kept_in).unwrap();
    assert_eq!(kept.len() as u64, repair.kept_bytes);
    assert_eq!(kept[..], damaged[repair.damaged_at as usize..repair.damaged_at as usize + kept.len()], "the damaged bytes are kept");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), original.len() as u64, "the placeholder fills the same bytes");

    let log = FileLog::open(dir.path(), config).unwrap();
    assert_eq!(log.durable_end(0).unwrap(), 40, "every offset is still there");
    let records = log.read(0, 0, 100, usize::MAX).unwrap();
    assert_eq!(records.len(), 40);
    let lost: Vec<&Record> = records.iter().filter(|record| record.payload != payload_of(record.offset)).collect();
    assert_eq!(lost.len(), 1, "one record was lost");
    assert!(lost[0].payload.starts_with(b"{\"lost\":true}") && lost[0].payload[14..].iter().all(|byte| *byte == b' '));
    fill(&log, 45);
    check_records(&log.read(0, 40, 100, usize::MAX).unwrap(), 40);
}

/// Lowering `record_max_bytes` refuses new large records, never old ones.
#[test]
fn lowering_the_record_limit_keeps_the_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let large = LogConfig { record_max_bytes: 64 * 1024, ..config() };
    let log = FileLog::open(dir.path(), large).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(log.append(0, vec![vec![b'x'; 20_000], vec![b'y'; 30_000]]).unwrap().durable()).unwrap();
    drop(log);
    let small = LogConfig { record_max_bytes: 1_024, ..config() };
    let log = FileLog::open(dir.path(), small).unwrap();
    assert_eq!(log.durable_end(0).unwrap(), 2);
    let records = log.read(0, 0, 10, usize::MAX).unwrap();
    assert_eq!(records.iter().map(|record| record.payload.len()).collect::<Vec<_>>(), vec![20_000, 30_000]);
    assert!(matches!(log.append(0, vec![vec![b'z'; 2_000]]), Err(Error::RecordTooLarge { .. })));
}
