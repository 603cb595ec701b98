//! One segment file of a partition: `<base offset, 20 digits>.seg`, frames
//! back to back. Only the newest segment of a partition is ever written.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::frame::{self, Decoded};
use crate::{Error, Offset, Record, Result};

/// Bytes between two entries of a segment's sparse index.
pub const INDEX_INTERVAL_BYTES: u64 = 64 * 1024;
/// Bytes read at once when scanning forward.
const READ_CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct Segment {
    pub base_offset: Offset,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Durable bytes: readers never look past this.
    pub size: u64,
    /// One past the last durable record.
    pub end_offset: Offset,
    /// `(offset, byte position)` of some frames, ascending, first frame included.
    pub index: Vec<(Offset, u64)>,
}

pub fn file_name(base_offset: Offset) -> String {
    format!("{base_offset:020}.seg")
}

pub fn parse_file_name(name: &str) -> Option<Offset> {
    name.strip_suffix(".seg")?.parse().ok()
}

/// What recovering one segment found.
#[derive(Debug)]
pub struct Scanned {
    pub segment: Segment,
    /// Where a torn or invalid tail began, if the file had one.
    pub damaged_tail_at: Option<u64>,
}

impl Segment {
    /// Scans a segment from the start, building its index. A damaged frame
    /// ends the scan; the caller decides whether that is a repairable tail.
    pub fn scan(path: &Path, base_offset: Offset, max_payload_bytes: usize) -> Result<Scanned> {
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        let file = File::open(path).map_err(Error::io(path))?;
        let mut position = 0usize;
        let mut expected_offset = base_offset;
        let mut index = Vec::new();
        let mut last_indexed: Option<u64> = None;
        let damaged_tail_at = loop {
            if position == bytes.len() {
                break None;
            }
            match frame::decode(&bytes[position..], max_payload_bytes) {
                Decoded::Frame { offset, frame_bytes, .. } if offset == expected_offset => {
                    if last_indexed.is_none_or(|at| position as u64 - at >= INDEX_INTERVAL_BYTES) {
                        index.push((offset, position as u64));
                        last_indexed = Some(position as u64);
                    }
                    position += frame_bytes;
                    expected_offset += 1;
                }
                Decoded::Frame { .. } | Decoded::Incomplete | Decoded::Invalid(_) => break Some(position as u64),
            }
        };
        let segment = Segment { base_offset, path: path.to_path_buf(), file: Arc::new(file), size: position as u64, end_offset: expected_offset, index };
        Ok(Scanned { segment, damaged_tail_at })
    }

    /// Notes frames appended at `position` (called by the writer after
    /// fsync); `marks` are some frames' `(offset, position relative to
    /// `position`)`, ascending, the first frame among them.
    pub fn note_appended(&mut self, first_offset: Offset, position: u64, bytes: u64, count: u64, marks: &[(Offset, u64)]) {
        for &(offset, relative) in marks {
            let at = position + relative;
            if self.index.last().is_none_or(|&(_, indexed)| at - indexed >= INDEX_INTERVAL_BYTES) {
                self.index.push((offset, at));
            }
        }
        self.size = position + bytes;
        self.end_offset = first_offset + count;
    }

    /// Reads records with offset >= `from` from this segment.
    pub fn read(&self, from: Offset, max_records: usize, max_bytes: usize, max_payload_bytes: usize) -> Result<Vec<Record>> {
        let start_entry = self.index.partition_point(|&(offset, _)| offset <= from);
        let mut position = match start_entry {
            0 => 0,
            entry => self.index[entry - 1].1,
        };
        let mut records = Vec::new();
        let mut returned_bytes = 0usize;
        let mut buffer: Vec<u8> = Vec::new();
        let mut buffer_start = position;
        while position < self.size && records.len() < max_records {
            let within = (position - buffer_start) as usize;
            let decoded = frame::decode(&buffer[within..], max_payload_bytes);
            match decoded {
                Decoded::Frame { offset, payload, frame_bytes } => {
                    if offset >= from {
                        if !records.is_empty() && returned_bytes + payload.len() > max_bytes {
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
                    let readable = (self.size - read_at) as usize;
                    if readable == 0 {
                        return Err(self.corrupt(position, "record runs past the durable end"));
                    }
                    let wanted = READ_CHUNK_BYTES.max(max_bytes.min(8 * READ_CHUNK_BYTES));
                    let mut chunk = vec![0u8; wanted.min(readable)];
                    self.file.read_exact_at(&mut chunk, read_at).map_err(Error::io(&self.path))?;
                    buffer.extend_from_slice(&chunk);
                }
                Decoded::Invalid(reason) => return Err(self.corrupt(position, reason)),
            }
        }
        Ok(records)
    }

    fn corrupt(&self, position: u64, reason: &str) -> Error {
        Error::Corrupt { path: self.path.clone(), position, reason: reason.to_string() }
    }
}
