//! Durable consumer offsets: `consumers/<name>.json`, one file per consumer
//! holding its committed offset per partition (`null` where it never
//! registered), each write atomic and fsynced. Retention reads the lowest
//! committed offset of each partition here: a consumer holds every record
//! at or after its offset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fs::{sync_dir, write_atomically};
use crate::{Error, Offset, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ConsumerOffsets {
    /// Files of the first format hold a number for every partition; they
    /// read as registered everywhere, as they were.
    offsets: Vec<Option<Offset>>,
}

pub(crate) struct Consumers {
    dir: PathBuf,
    partitions: usize,
    entries: HashMap<String, ConsumerOffsets>,
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    let valid = (1..=64).contains(&name.len()) && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidConsumerName(name.to_string()))
    }
}

impl Consumers {
    pub fn load(dir: &Path, partitions: usize) -> Result<Consumers> {
        let mut entries = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
            let path = entry.map_err(Error::io(dir))?.path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()).and_then(|name| name.strip_suffix(".json")) else {
                continue;
            };
            let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
            let offsets: ConsumerOffsets =
                serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt { path: path.clone(), position: 0, reason: error.to_string() })?;
            entries.insert(name.to_string(), offsets);
        }
        Ok(Consumers { dir: dir.to_path_buf(), partitions, entries })
    }

    pub fn committed(&self, consumer: &str, partition: u32) -> Option<Offset> {
        self.entries.get(consumer).and_then(|entry| entry.offsets.get(partition as usize).copied().flatten())
    }

    /// Sets the offset, durably; the one in memory changes only once the
    /// file is written.
    pub fn commit(&mut self, consumer: &str, partition: u32, offset: Offset) -> Result<()> {
        let mut entry = self.entries.get(consumer).cloned().unwrap_or_default();
        entry.offsets.resize(self.partitions, None);
        entry.offsets[partition as usize] = Some(offset);
        let bytes = serde_json::to_vec(&entry).expect("offsets serialize");
        write_atomically(&self.path_of(consumer), &bytes)?;
        self.entries.insert(consumer.to_string(), entry);
        Ok(())
    }

    /// The committed offset, first committing `offset_if_new` if there is none.
    pub fn register(&mut self, consumer: &str, partition: u32, offset_if_new: Offset) -> Result<Offset> {
        if let Some(committed) = self.committed(consumer, partition) {
            return Ok(committed);
        }
        self.commit(consumer, partition, offset_if_new)?;
        Ok(offset_if_new)
    }

    /// Forgets a consumer, durably, so it no longer holds the log. Removing
    /// one that does not exist does nothing.
    pub fn remove(&mut self, consumer: &str) -> Result<()> {
        let path = self.path_of(consumer);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(Error::Io { path, source: error }),
        }
        self.entries.remove(consumer);
        Ok(())
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// The lowest offset committed for `partition`: retention keeps every
    /// record from there on. `None` when no consumer registered for it.
    pub fn held_from(&self, partition: u32) -> Option<Offset> {
        self.entries.values().filter_map(|entry| entry.offsets.get(partition as usize).copied().flatten()).min()
    }

    fn path_of(&self, consumer: &str) -> PathBuf {
        self.dir.join(format!("{consumer}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_holds_only_the_partitions_it_registered_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut consumers = Consumers::load(dir.path(), 3).unwrap();
        assert_eq!(consumers.register("fanout", 1, 7).unwrap(), 7);
        assert_eq!(consumers.register("fanout", 1, 0).unwrap(), 7, "an existing offset is kept");
        consumers.commit("history", 1, 3).unwrap();
        assert_eq!((consumers.held_from(0), consumers.held_from(1)), (None, Some(3)));
        assert_eq!(std::fs::read_to_string(dir.path().join("fanout.json")).unwrap(), r#"{"offsets":[null,7,null]}"#);

        let reloaded = Consumers::load(dir.path(), 3).unwrap();
        assert_eq!(reloaded.names(), vec!["fanout".to_string(), "history".to_string()]);
        assert_eq!(reloaded.committed("fanout", 1), Some(7));

        consumers.remove("history").unwrap();
        consumers.remove("history").unwrap();
        assert_eq!(consumers.held_from(1), Some(7));
        assert!(!dir.path().join("history.json").exists());
    }

    #[test]
    fn a_file_of_the_first_format_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), r#"{"offsets":[4,0]}"#).unwrap();
        let consumers = Consumers::load(dir.path(), 2).unwrap();
        assert_eq!((consumers.committed("state", 0), consumers.held_from(1)), (Some(4), Some(0)));
    }
}
