//! The shared tail reader: where it starts, its bound, seek, commit,
//! wake-ups, cancel-safety and closing.

use std::sync::Arc;
use std::time::Duration;

use confab_log::{Error, FileLog, Log, LogConfig, StartAt, TailReader};
use tokio::sync::watch;

/// Small segments, and a size bound of 0: every closed segment goes as soon
/// as every consumer has committed past it.
fn open_log(dir: &tempfile::TempDir) -> Arc<FileLog> {
    let config = LogConfig { partitions: 2, segment_max_bytes: 500, retention_max_bytes: Some(0), ..LogConfig::default() };
    Arc::new(FileLog::open(dir.path(), config).unwrap())
}

async fn append(log: &FileLog, partition: u32, count: u64) {
    for _ in 0..count {
        let next = log.durable_end(partition).unwrap();
        log.append(partition, vec![next.to_le_bytes().to_vec()]).unwrap().durable().await.unwrap();
    }
}

fn offsets(records: &[confab_log::Record]) -> Vec<u64> {
    records.iter().map(|record| record.offset).collect()
}

#[tokio::test]
async fn a_new_consumer_starts_where_asked_and_an_old_one_where_it_committed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir);
    append(&log, 1, 10).await;
    let mut from_start = TailReader::open(log.clone(), "replay", 1, StartAt::Earliest).unwrap();
    let from_end = TailReader::open(log.clone(), "fanout", 1, StartAt::End).unwrap();
    assert_eq!((from_start.position(), from_end.position()), (0, 10));
    assert_eq!((from_start.consumer(), from_start.partition()), ("replay", 1));
    assert_eq!(log.committed_offset("fanout", 1).unwrap(), Some(10), "registration is durable at once");

    assert_eq!(offsets(&from_start.read_available(4, usize::MAX).unwrap()), vec![0, 1, 2, 3]);
    from_start.commit(4).unwrap();
    drop(from_start);
    let again = TailReader::open(log.clone(), "replay", 1, StartAt::End).unwrap();
    assert_eq!(again.position(), 4, "the committed offset wins over `start`");
    assert_eq!(log.committed_offset("replay", 0).unwrap(), None, "registration is per partition");
}

#[tokio::test]
async fn a_bounded_reader_reads_only_below_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir);
    append(&log, 0, 10).await;
    let (applied, applied_watch) = watch::channel(3u64);
    let mut reader = TailReader::open(log.clone(), "fanout", 0, StartAt::Earliest).unwrap().bounded_by(applied_watch);
    assert_eq!(reader.readable_end(), 3);
    assert_eq!(offsets(&reader.read_available(100, usize::MAX).unwrap()), vec![0, 1, 2]);
    assert!(reader.read_available(100, usize::MAX).unwrap().is_empty());

    // The bound moving wakes a waiting reader.
    let waiting = tokio::spawn(async move {
        let records = reader.next_batch(100, usize::MAX).await.unwrap();
        (reader, records)
    });
    tokio::task::yield_now().await;
    applied.send_replace(7);
    let (mut reader, records) = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(offsets(&records), vec![3, 4, 5, 6]);

    // A bound past the durable end still reads only durable records.
    applied.send_replace(50);
    assert_eq!(reader.readable_end(), 10);
    assert_eq!(offsets(&reader.read_available(100, usize::MAX).unwrap()), vec![7, 8, 9]);
}

#[tokio::test]
async fn seek_moves_the_position_and_refuses_removed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir);
    // Registered first: with no consumer, the size bound of 0 would remove closed segments at once.
    let mut reader = TailReader::open(log.clone(), "operator", 0, StartAt::Earliest).unwrap();
    append(&log, 0, 30).await;
    reader.seek(25).unwrap();
    assert_eq!(offsets(&reader.read_available(2, usize::MAX).unwrap()), vec![25, 26]);
    reader.seek(5).unwrap();
    assert_eq!(offsets(&reader.read_available(1, usize::MAX).unwrap()), vec![5]);
    reader.seek(40).unwrap();
    assert!(reader.read_available(10, usize::MAX).unwrap().is_empty(), "past the end it waits");
    assert_eq!(reader.position(), 40);

    // Retention (no other holder: the consumer committed past everything).
    reader.commit(30).unwrap();
    log.check_retention_now().unwrap();
    let earliest = log.earliest(0).unwrap();
    assert!(earliest > 0);
    assert_eq!(reader.seek(0).unwrap_err().to_string(), format!("offset `0` of partition `0` was removed by retention; the earliest held is `{earliest}`"));
    assert_eq!(reader.position(), 40, "a refused seek leaves the position");
}

#[tokio::test]
async fn retention_never_passes_a_tail_readers_commit() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_max_bytes: 200, retention_max_bytes: Some(0), ..LogConfig::default() };
    let log = Arc::new(FileLog::open(dir.path(), config).unwrap());
    let mut reader = TailReader::open(log.clone(), "sink", 0, StartAt::Earliest).unwrap();
    append(&log, 0, 100).await;
    let mut seen = Vec::new();
    while seen.len() < 100 {
        let records = reader.next_batch(9, usize::MAX).await.unwrap();
        seen.extend(offsets(&records));
        reader.commit(reader.position() - 5).unwrap();
        append(&log, 0, 1).await; // rolls apply retention
        assert!(log.earliest(0).unwrap() <= reader.position() - 5);
    }
    assert_eq!(seen[..100], (0..100).collect::<Vec<_>>()[..]);
    assert!(log.earliest(0).unwrap() > 0, "retention did remove what was committed");
}

#[tokio::test(start_paused = true)]
async fn next_batch_is_cancel_safe() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir);
    let mut reader = TailReader::open(log.clone(), "fanout", 0, StartAt::Earliest).unwrap();

    // Cancelled while waiting: nothing is lost, the next call returns it.
    let waited = tokio::time::timeout(Duration::from_secs(3600), reader.next_batch(10, usize::MAX)).await;
    assert!(waited.is_err(), "an empty log has nothing to return");
    append(&log, 0, 200).await;

    // Cancelled at every other first poll, whether it was waiting, reading,
    // or already done: each record comes exactly once, in order.
    let mut seen = Vec::new();
    let mut attempt = 0u32;
    while seen.len() < 200 {
        attempt += 1;
        let before = reader.position();
        let outcome = if attempt.is_multiple_of(2) {
            tokio::select! {
                biased;
                records = reader.next_batch(7, usize::MAX) => Some(records.unwrap()),
                () = std::future::ready(()) => None,
            }
        } else {
            Some(reader.next_batch(7, usize::MAX).await.unwrap())
        };
        match outcome {
            Some(records) => seen.extend(offsets(&records)),
            None => assert_eq!(reader.position(), before, "a cancelled call moved the position"),
        }
    }
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_batch_wakes_on_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir);
    let mut reader = TailReader::open(log.clone(), "fanout", 1, StartAt::End).unwrap();
    let waiting = tokio::spawn(async move { reader.next_batch(10, usize::MAX).await });
    tokio::task::yield_now().await;
    log.append(1, vec![b"wake".to_vec()]).unwrap().durable().await.unwrap();
    let records = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(records[0].payload, b"wake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_batch_answers_closed_when_the_log_or_bound_goes() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir);
    append(&log, 0, 2).await;
    let mut reader = TailReader::open(log.clone(), "fanout", 0, StartAt::Earliest).unwrap();
    let waiting = tokio::spawn(async move {
        let drained = reader.next_batch(10, usize::MAX).await.map(|records| records.len());
        (drained, reader.next_batch(10, usize::MAX).await)
    });
    tokio::task::yield_now().await;
    log.close();
    let (drained, after_close) = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(drained.unwrap(), 2, "what was readable is still returned");
    assert!(matches!(after_close, Err(Error::Closed)), "{after_close:?}");
    // A reader opened after the close learns it at once.
    let mut late = TailReader::open(log.clone(), "late", 0, StartAt::End).unwrap();
    assert!(matches!(late.next_batch(1, usize::MAX).await, Err(Error::Closed)));

    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir);
    let (applied, applied_watch) = watch::channel(0u64);
    let mut bounded = TailReader::open(log.clone(), "fanout", 0, StartAt::Earliest).unwrap().bounded_by(applied_watch);
    drop(applied);
    assert!(matches!(bounded.next_batch(1, usize::MAX).await, Err(Error::Closed)));
}
