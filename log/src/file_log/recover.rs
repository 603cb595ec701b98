//! Opening a partition: only its newest segment is read (and a torn tail
//! cut off); the closed ones are known from their names and file lengths,
//! so a log of any size opens in the time of one segment's scan.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::RECORD_MAX_BYTES_LIMIT;
use crate::fs::{create_private_dir, create_segment_file, sync_dir};
use crate::segment::{self, Segment};
use crate::{Error, LogConfig, Offset, Result};

/// Loads a partition's segments and opens the newest one for appending.
/// The newest one's damaged tail is cut off: it was never acknowledged
/// (acknowledgement follows fsync). Damage in a closed segment is found,
/// and reported, when a read first needs it.
pub(super) fn recover_partition(dir: &Path, config: &LogConfig, now: SystemTime) -> Result<(Vec<Arc<Segment>>, File)> {
    create_private_dir(dir)?;
    let mut bases: Vec<Offset> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str().and_then(segment::parse_file_name))
        .collect();
    bases.sort_unstable();
    if bases.is_empty() {
        create_segment_file(&dir.join(segment::file_name(0)))?;
        sync_dir(dir)?;
        bases.push(0);
    }
    let mut segments = Vec::with_capacity(bases.len());
    for pair in bases.windows(2) {
        let (base, next_base) = (pair[0], pair[1]);
        let path = dir.join(segment::file_name(base));
        // One `stat`, no read: the size bounds retention by bytes, the
        // modification time (set to the last write's time at the roll)
        // bounds it by age.
        let metadata = std::fs::metadata(&path).map_err(Error::io(&path))?;
        let last_write = metadata.modified().unwrap_or(now);
        segments.push(Arc::new(Segment::closed_unread(base, path, metadata.len(), next_base, last_write)));
    }
    let newest_base = *bases.last().expect("at least one segment");
    let (newest, active_file) = recover_newest(dir, newest_base, config, now)?;
    segments.push(Arc::new(newest));
    Ok((segments, active_file))
}

fn recover_newest(dir: &Path, base: Offset, config: &LogConfig, now: SystemTime) -> Result<(Segment, File)> {
    let path = dir.join(segment::file_name(base));
    let handle = File::open(&path).map_err(Error::io(&path))?;
    let metadata = handle.metadata().map_err(Error::io(&path))?;
    let _ = config;
    let mut scanned = segment::scan(&handle, &path, base, metadata.len(), RECORD_MAX_BYTES_LIMIT)?;
    if let Some(damage) = scanned.damage.take() {
        // A torn tail is an unfinished last write: nothing valid after it.
        // Valid records after the damage mean the file was damaged in the
        // middle; cutting there would drop acknowledged records.
        if let Some((valid_at, _)) = segment::valid_frame_after(&handle, &path, damage.position, metadata.len(), scanned.end_offset)? {
            return Err(Error::Corrupt {
                path: path.clone(),
                position: damage.position,
                reason: format!(
                    "{} at byte {}, with valid records after it (from byte {valid_at}): this is not a torn tail, so nothing was cut. Stop the server and run `confab log repair --data-dir <data dir>`, which puts placeholders where records are unreadable and keeps a copy of the damaged bytes",
                    damage.reason, damage.position
                ),
            });
        }
        tracing::warn!(path = %path.display(), damaged_at = damage.position, reason = damage.reason, "cutting off a torn tail left by a crash");
        let file = OpenOptions::new().write(true).open(&path).map_err(Error::io(&path))?;
        file.set_len(damage.position).map_err(Error::io(&path))?;
        file.sync_all().map_err(Error::io(&path))?;
    }
    let last_write = metadata.modified().unwrap_or(now);
    // The age that rolls a segment counts from its first record; a segment
    // is created just before its first write, so its creation time (where
    // the filesystem keeps one) is the best stand-in.
    let first_write = (scanned.end_offset > base).then(|| metadata.created().unwrap_or(last_write));
    let active_file = OpenOptions::new().append(true).open(&path).map_err(Error::io(&path))?;
    Ok((Segment::active(base, path, handle, scanned, first_write, last_write), active_file))
}

/// What `confab log repair` did to one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub partition: u32,
    pub segment: std::path::PathBuf,
    /// Where the first damaged bytes started.
    pub damaged_at: u64,
    /// The damaged bytes (and, for a torn tail, all after them), kept here.
    pub kept_in: std::path::PathBuf,
    pub kept_bytes: u64,
    /// Records that were unreadable, now placeholders at the same offsets.
    pub lost_records: u64,
    /// Whether the segment was cut at the damage (nothing valid after it).
    pub cut: bool,
}

/// Repairs each partition's newest segment, keeping a copy of every byte
/// it takes out under `<root>/repair/` first. The server must not be
/// running.
///
/// Damage followed by valid records: the damaged bytes are replaced by one
/// placeholder record per offset they held (`placeholder` as payload,
/// padded with spaces to fill the bytes exactly), so offsets stay dense and
/// every consumer's position stays meaningful: the state, the history and
/// the pipelines read a placeholder where a record was lost, and nothing
/// after it moves. Damage with nothing valid after it is a torn tail, and
/// is cut. Repeats until the segment scans clean.
pub fn repair(root: &Path, placeholder: &[u8]) -> Result<Vec<Repaired>> {
    let mut repaired = Vec::new();
    let mut partitions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(root)
        .map_err(Error::io(root))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_string();
            Some((name.strip_prefix("p-")?.parse().ok()?, entry.path()))
        })
        .collect();
    partitions.sort();
    for (partition, dir) in partitions {
        let mut bases: Vec<Offset> = std::fs::read_dir(&dir)
            .map_err(Error::io(&dir))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().to_str().and_then(segment::parse_file_name))
            .collect();
        bases.sort_unstable();
        let Some(&base) = bases.last() else { continue };
        let path = dir.join(segment::file_name(base));
        loop {
            let handle = File::open(&path).map_err(Error::io(&path))?;
            let length = handle.metadata().map_err(Error::io(&path))?.len();
            let scanned = segment::scan(&handle, &path, base, length, RECORD_MAX_BYTES_LIMIT)?;
            let Some(damage) = scanned.damage else { break };
            let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
            let at = damage.position as usize;
            let valid_after = segment::valid_frame_after(&handle, &path, damage.position, length, scanned.end_offset)?;
            let (kept, rebuilt, lost_records, cut) = match valid_after {
                None => (&bytes[at..], bytes[..at].to_vec(), 0, true),
                Some((valid_at, valid_offset)) => {
                    let lost = valid_offset - scanned.end_offset;
                    let hole = &bytes[at..valid_at as usize];
                    let filler = placeholders(scanned.end_offset, lost, hole.len(), placeholder).ok_or_else(|| Error::Corrupt {
                        path: path.clone(),
                        position: damage.position,
                        reason: format!("{lost} lost records do not fit the {} damaged bytes; restore this segment from a backup", hole.len()),
                    })?;
                    let mut rebuilt = bytes[..at].to_vec();
                    rebuilt.extend_from_slice(&filler);
                    rebuilt.extend_from_slice(&bytes[valid_at as usize..]);
                    (hole, rebuilt, lost, false)
                }
            };
            let keep_dir = root.join("repair");
            create_private_dir(&keep_dir)?;
            let kept_in = keep_dir.join(format!("p-{partition:04}-{}-at-{}.damaged", segment::file_name(base), damage.position));
            std::fs::write(&kept_in, kept).map_err(Error::io(&kept_in))?;
            File::open(&kept_in).and_then(|file| file.sync_all()).map_err(Error::io(&kept_in))?;
            sync_dir(&keep_dir)?;
            // The new segment replaces the old one whole (written aside, then renamed).
            let fresh = path.with_extension("repairing");
            std::fs::write(&fresh, &rebuilt).map_err(Error::io(&fresh))?;
            File::open(&fresh).and_then(|file| file.sync_all()).map_err(Error::io(&fresh))?;
            std::fs::rename(&fresh, &path).map_err(Error::io(&path))?;
            sync_dir(&dir)?;
            repaired.push(Repaired {
                partition,
                segment: path.clone(),
                damaged_at: damage.position,
                kept_in,
                kept_bytes: kept.len() as u64,
                lost_records,
                cut,
            });
            if cut {
                break;
            }
        }
    }
    Ok(repaired)
}

/// `count` placeholder frames from offset `first`, exactly `bytes` long in
/// all (the last one padded), or `None` if they cannot fit.
fn placeholders(first: Offset, count: u64, bytes: usize, payload: &[u8]) -> Option<Vec<u8>> {
    let smallest = crate::frame::HEADER_BYTES + payload.len();
    if count == 0 {
        // Garbage between two records, no offset lost: the bytes just go.
        return Some(Vec::new());
    }
    if (count as usize).checked_mul(smallest)? > bytes {
        return None;
    }
    let mut out = Vec::with_capacity(bytes);
    for index in 0..count {
        let mut padded = payload.to_vec();
        if index == count - 1 {
            padded.resize(bytes - out.len() - crate::frame::HEADER_BYTES, b' ');
        }
        crate::frame::encode(first + index, &padded, &mut out);
    }
    Some(out)
}
