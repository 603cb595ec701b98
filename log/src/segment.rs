//! One segment file of a partition: `<base offset, 20 digits>.seg`, frames
//! back to back. Only the newest segment of a partition is ever written.
//!
//! Segments are shared (`Arc<Segment>`) between the writer and readers; the
//! parts that change (size, end, index, write times) sit behind the
//! segment's own small lock, so a read clones one `Arc` and never the index.
//! A segment already closed when the log opens is not read then: its size
//! is the file's length, its end the next segment's base, and its index is
//! built (every frame CRC-checked) the first time a read needs it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

use crate::config::RECORD_MAX_BYTES_LIMIT;
use crate::frame::{self, Decoded};
use crate::{Error, Offset, Record, Result};

/// Bytes between two entries of a segment's sparse index.
pub const INDEX_INTERVAL_BYTES: u64 = 64 * 1024;
/// Bytes read at once when scanning forward.
const READ_CHUNK_BYTES: usize = 256 * 1024;

pub fn file_name(base_offset: Offset) -> String {
    format!("{base_offset:020}.seg")
}

pub fn parse_file_name(name: &str) -> Option<Offset> {
    name.strip_suffix(".seg")?.parse().ok()
}

pub struct Segment {
    pub base_offset: Offset,
    pub path: PathBuf,
    /// A read handle kept only while the segment is active (tailing readers
    /// read it all the time). A closed segment opens its file per read, so
    /// a long log never holds one descriptor per segment.
    active_handle: Mutex<Option<Arc<File>>>,
    extent: RwLock<Extent>,
    /// Serialises the lazy scan, so two first readers scan the file once.
    scanning: Mutex<()>,
}

struct Extent {
    /// Durable bytes: readers never look past this.
    size: u64,
    /// One past the last durable record.
    end_offset: Offset,
    /// `(offset, byte position)` of some frames, ascending, first frame
    /// included. `None` for a closed segment not read since the log opened.
    index: Option<Vec<(Offset, u64)>>,
    /// When the first record went in: the age that rolls an active segment.
    first_write: Option<SystemTime>,
    /// When the last record went in: the age that retention removes by.
    last_write: SystemTime,
}

/// What scanning a segment's frames found.
#[derive(Debug)]
pub struct Scan {
    pub index: Vec<(Offset, u64)>,
    /// Bytes of whole, valid frames from the start.
    pub valid_bytes: u64,
    /// One past the last valid frame's offset.
    pub end_offset: Offset,
    /// Where the valid frames stopped before `length`, and why.
    pub damage: Option<Damage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub position: u64,
    pub reason: &'static str,
}

/// Reads the first `length` bytes of a segment in chunks, checking every
/// frame (checksum, and offsets dense from `base_offset`), and builds the
/// sparse index. Memory stays at a chunk plus the largest record.
pub fn scan(file: &File, path: &Path, base_offset: Offset, length: u64, max_payload_bytes: usize) -> Result<Scan> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut buffer_start = 0u64;
    let mut position = 0u64;
    let mut expected_offset = base_offset;
    let mut index: Vec<(Offset, u64)> = Vec::new();
    let damage = loop {
        if position == length {
            break None;
        }
        let within = (position - buffer_start) as usize;
        match frame::decode(&buffer[within..], max_payload_bytes) {
            Decoded::Frame { offset, frame_bytes, .. } => {
                if offset != expected_offset {
                    break Some(Damage { position, reason: "record with an unexpected offset" });
                }
                if index.last().is_none_or(|&(_, indexed)| position - indexed >= INDEX_INTERVAL_BYTES) {
                    index.push((offset, position));
                }
                position += frame_bytes as u64;
                expected_offset += 1;
            }
            Decoded::Incomplete => {
                buffer.drain(..within);
                buffer_start = position;
                let read_at = buffer_start + buffer.len() as u64;
                if read_at >= length {
                    break Some(Damage { position, reason: "incomplete record" });
                }
                let mut chunk = vec![0u8; READ_CHUNK_BYTES.min((length - read_at) as usize)];
                file.read_exact_at(&mut chunk, read_at).map_err(Error::io(path))?;
                buffer.extend_from_slice(&chunk);
            }
            Decoded::Invalid(reason) => break Some(Damage { position, reason }),
        }
    };
    Ok(Scan { index, valid_bytes: position, end_offset: expected_offset, damage })
}

/// The first position after `from` where a valid record with an offset
/// at or after `expected` starts, if any: damage followed by valid records
/// is not a torn tail. Reads the rest of the segment once.
pub fn valid_frame_after(file: &File, path: &Path, from: u64, length: u64, expected: Offset) -> Result<Option<(u64, Offset)>> {
    if from + 1 >= length {
        return Ok(None);
    }
    let mut rest = vec![0u8; (length - from) as usize];
    file.read_exact_at(&mut rest, from).map_err(Error::io(path))?;
    for start in 1..rest.len().saturating_sub(frame::HEADER_BYTES - 1) {
        let bytes = &rest[start..];
        let length_field = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
        let offset = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        // Cheap filters before the checksum: it fits, and its offset is plausible.
        if length_field + frame::HEADER_BYTES > bytes.len() || offset < expected || offset - expected > rest.len() as u64 {
            continue;
        }
        if let Decoded::Frame { .. } = frame::decode(bytes, RECORD_MAX_BYTES_LIMIT) {
            return Ok(Some((from + start as u64, offset)));
        }
    }
    Ok(None)
}

impl Segment {
    /// The segment being written: the newest one at open (scanned and
    /// repaired), or a new one at a roll.
    pub fn active(base_offset: Offset, path: PathBuf, handle: File, scan: Scan, first_write: Option<SystemTime>, last_write: SystemTime) -> Segment {
        Segment {
            base_offset,
            path,
            active_handle: Mutex::new(Some(Arc::new(handle))),
            extent: RwLock::new(Extent { size: scan.valid_bytes, end_offset: scan.end_offset, index: Some(scan.index), first_write, last_write }),
            scanning: Mutex::new(()),
        }
    }

    /// A segment closed before the log opened, known only from its file's
    /// length and time and the next segment's base.
    pub fn closed_unread(base_offset: Offset, path: PathBuf, size: u64, end_offset: Offset, last_write: SystemTime) -> Segment {
        Segment {
            base_offset,
            path,
            active_handle: Mutex::new(None),
            extent: RwLock::new(Extent { size, end_offset, index: None, first_write: None, last_write }),
            scanning: Mutex::new(()),
        }
    }

    pub fn size(&self) -> u64 {
        self.extent.read().size
    }

    pub fn end_offset(&self) -> Offset {
        self.extent.read().end_offset
    }

    pub fn first_write(&self) -> Option<SystemTime> {
        self.extent.read().first_write
    }

    pub fn last_write(&self) -> SystemTime {
        self.extent.read().last_write
    }

    /// Whether the index was built (false for a closed segment not yet read).
    pub fn is_indexed(&self) -> bool {
        self.extent.read().index.is_some()
    }

    /// Notes frames appended at the segment's end (called by the writer
    /// after fsync); `marks` are some frames' `(offset, position relative
    /// to the old end)`, ascending, the first frame among them.
    pub fn note_appended(&self, first_offset: Offset, bytes: u64, count: u64, marks: &[(Offset, u64)], now: SystemTime) {
        let mut extent = self.extent.write();
        let position = extent.size;
        let index = extent.index.get_or_insert_with(Vec::new);
        for &(offset, relative) in marks {
            let at = position + relative;
            if index.last().is_none_or(|&(_, indexed)| at - indexed >= INDEX_INTERVAL_BYTES) {
                index.push((offset, at));
            }
        }
        extent.size = position + bytes;
        extent.end_offset = first_offset + count;
        extent.first_write.get_or_insert(now);
        extent.last_write = now;
    }

    /// The segment stops being written: its kept read handle goes.
    pub fn close(&self) {
        self.active_handle.lock().take();
    }

    /// Reads records with offset >= `from` from this segment: at most
    /// `max_records`, and no more than `max_bytes` of payload unless
    /// `at_least_one` and the first record alone is larger.
    pub fn read(&self, from: Offset, max_records: usize, max_bytes: usize, at_least_one: bool, max_payload_bytes: usize) -> Result<Vec<Record>> {
        let (mut position, size) = self.start_of(from, max_payload_bytes)?;
        let file = self.read_handle()?;
        let mut records = Vec::new();
        let mut returned_bytes = 0usize;
        let mut buffer: Vec<u8> = Vec::new();
        let mut buffer_start = position;
        while position < size && records.len() < max_records {
            let within = (position - buffer_start) as usize;
            match frame::decode(&buffer[within..], max_payload_bytes) {
                Decoded::Frame { offset, payload, frame_bytes } => {
                    if offset >= from {
                        let may_exceed = at_least_one && records.is_empty();
                        if !may_exceed && returned_bytes + payload.len() > max_bytes {
                            break;
                        }
                        returned_bytes += payload.len();
                        records.push(Record { offset, payload: payload.to_vec() });
                    }
                    position += frame_bytes as u64;
                }
                Decoded::Incomplete => {
                    // Keep the unconsumed bytes and read the next chunk after them.
                    buffer.drain(..within);
                    buffer_start = position;
                    let read_at = position + buffer.len() as u64;
                    let readable = (size - read_at) as usize;
                    if readable == 0 {
                        return Err(self.corrupt(position, "record runs past the durable end".into()));
                    }
                    let wanted = READ_CHUNK_BYTES.max(max_bytes.min(8 * READ_CHUNK_BYTES));
                    let mut chunk = vec![0u8; wanted.min(readable)];
                    file.read_exact_at(&mut chunk, read_at).map_err(Error::io(&self.path))?;
                    buffer.extend_from_slice(&chunk);
                }
                Decoded::Invalid(reason) => return Err(self.corrupt(position, reason.into())),
            }
        }
        Ok(records)
    }

    /// The byte position to scan from for `from`, and the durable size,
    /// building a closed segment's index first if it has none yet.
    fn start_of(&self, from: Offset, max_payload_bytes: usize) -> Result<(u64, u64)> {
        loop {
            {
                let extent = self.extent.read();
                if let Some(index) = &extent.index {
                    let entry = index.partition_point(|&(offset, _)| offset <= from);
                    let position = if entry == 0 { 0 } else { index[entry - 1].1 };
                    return Ok((position, extent.size));
                }
            }
            self.build_index(max_payload_bytes)?;
        }
    }

    /// Scans a closed segment on its first read: damage in it is not a
    /// crash artefact (it was fsynced before the next one began), so it is
    /// reported, never cut off.
    fn build_index(&self, max_payload_bytes: usize) -> Result<()> {
        let _scanning = self.scanning.lock();
        let (size, end_offset) = {
            let extent = self.extent.read();
            if extent.index.is_some() {
                return Ok(());
            }
            (extent.size, extent.end_offset)
        };
        let file = self.read_handle()?;
        let scanned = scan(&file, &self.path, self.base_offset, size, max_payload_bytes)?;
        if let Some(damage) = scanned.damage {
            return Err(self.corrupt(damage.position, format!("damaged record in a closed segment ({})", damage.reason)));
        }
        if scanned.end_offset != end_offset {
            let reason = format!("the segment ends at offset {} but the next one starts at {end_offset}", scanned.end_offset);
            return Err(self.corrupt(size, reason));
        }
        self.extent.write().index = Some(scanned.index);
        Ok(())
    }

    fn read_handle(&self) -> Result<Arc<File>> {
        if let Some(handle) = self.active_handle.lock().as_ref() {
            return Ok(handle.clone());
        }
        File::open(&self.path).map(Arc::new).map_err(Error::io(&self.path))
    }

    #[cfg(test)]
    pub fn index_for_tests(&self) -> Vec<(Offset, u64)> {
        self.extent.read().index.clone().unwrap_or_default()
    }

    fn corrupt(&self, position: u64, reason: String) -> Error {
        Error::Corrupt { path: self.path.clone(), position, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_frames(path: &Path, base: Offset, count: u64, payload_bytes: usize) {
        let mut bytes = Vec::new();
        for offset in base..base + count {
            frame::encode(offset, &vec![(offset % 251) as u8; payload_bytes], &mut bytes);
        }
        std::fs::File::create(path).unwrap().write_all(&bytes).unwrap();
    }

    #[test]
    fn a_chunked_scan_checks_every_frame_and_indexes_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(100));
        // 1 MiB of frames: more than one read chunk, many index intervals.
        write_frames(&path, 100, 1_000, 1_000);
        let length = std::fs::metadata(&path).unwrap().len();
        let file = File::open(&path).unwrap();
        let scanned = scan(&file, &path, 100, length, 1 << 20).unwrap();
        assert_eq!((scanned.valid_bytes, scanned.end_offset, scanned.damage), (length, 1_100, None));
        assert!(scanned.index.len() >= 15, "{} entries", scanned.index.len());
        assert_eq!(scanned.index[0], (100, 0));

        // The same bytes scanned from the wrong base: the first frame is refused.
        let wrong_base = scan(&file, &path, 99, length, 1 << 20).unwrap();
        assert_eq!(wrong_base.damage, Some(Damage { position: 0, reason: "record with an unexpected offset" }));
    }

    #[test]
    fn a_closed_segment_reports_damage_on_its_first_read_naming_the_file_and_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(0));
        write_frames(&path, 0, 10, 100);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[116 * 3 + 20] ^= 0xff; // inside the fourth frame's payload
        std::fs::write(&path, &bytes).unwrap();
        let segment = Segment::closed_unread(0, path.clone(), bytes.len() as u64, 10, SystemTime::now());
        assert!(!segment.is_indexed());
        let error = segment.read(0, 10, usize::MAX, true, 1 << 20).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "corrupt record in `{}` at byte 348: damaged record in a closed segment (checksum mismatch); only the tail of the newest segment is repaired automatically, so restore this segment from a replica or backup",
                path.display()
            )
        );
        assert!(!segment.is_indexed(), "a failed scan leaves the segment to be scanned again");
    }

    #[test]
    fn a_closed_segment_that_stops_short_of_the_next_base_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(0));
        write_frames(&path, 0, 10, 100);
        let size = std::fs::metadata(&path).unwrap().len();
        let segment = Segment::closed_unread(0, path.clone(), size, 12, SystemTime::now());
        let error = segment.read(0, 1, usize::MAX, true, 1 << 20).unwrap_err();
        assert!(error.to_string().contains(&format!("at byte {size}: the segment ends at offset 10 but the next one starts at 12;")), "{error}");
    }

    #[test]
    fn a_read_keeps_to_its_byte_budget_unless_it_must_return_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(0));
        write_frames(&path, 0, 10, 100);
        let size = std::fs::metadata(&path).unwrap().len();
        let segment = Segment::closed_unread(0, path, size, 10, SystemTime::now());
        assert_eq!(segment.read(2, 10, 250, true, 1 << 20).unwrap().len(), 2);
        assert_eq!(segment.read(2, 10, 50, true, 1 << 20).unwrap().len(), 1);
        assert_eq!(segment.read(2, 10, 50, false, 1 << 20).unwrap().len(), 0);
        assert!(segment.is_indexed());
    }
}
