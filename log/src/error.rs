//! Errors of the log, each saying what to do next.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("log i/o failed on `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the log stopped accepting writes after a failed write or fsync; restart the server so it recovers from disk")]
    Poisoned,
    #[error("partition `{partition}` does not exist; the log has {count} partitions")]
    UnknownPartition { partition: u32, count: u32 },
    #[error("offset `{requested}` of partition `{partition}` was removed by retention; the earliest held is `{earliest}`")]
    OffsetRemoved { partition: u32, requested: u64, earliest: u64 },
    #[error("corrupt record in `{path}` at byte {position}: {reason}; only the tail of the newest segment is repaired automatically, so restore this segment from a replica or backup")]
    Corrupt { path: PathBuf, position: u64, reason: String },
    #[error("the log's write queue holds {pending_bytes} bytes, over its bound of {max_pending_bytes}; retry shortly")]
    Overloaded { pending_bytes: u64, max_pending_bytes: u64 },
    #[error("a record of {size} bytes exceeds the log's limit of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error("the log in `{path}` has {found} partitions but {requested} were asked for; partitions are fixed when a data directory is created")]
    PartitionCountMismatch { path: PathBuf, found: u32, requested: u32 },
    #[error("invalid consumer name `{0}`: use 1 to 64 of a-z 0-9 _ -")]
    InvalidConsumerName(String),
    #[error("invalid log settings: {}; fix them in the `[log]` section of the config file", .problems.join("; "))]
    InvalidConfig { problems: Vec<String> },
    #[error("the log was closed, or the watch bounding this reader was dropped; stop reading (the server is shutting down)")]
    Closed,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages operators and clients' logs show, word for word.
    #[test]
    fn messages_say_what_to_do_next() {
        let removed = Error::OffsetRemoved { partition: 2, requested: 5, earliest: 40 };
        assert_eq!(removed.to_string(), "offset `5` of partition `2` was removed by retention; the earliest held is `40`");
        assert_eq!(Error::Closed.to_string(), "the log was closed, or the watch bounding this reader was dropped; stop reading (the server is shutting down)");
        let config = Error::InvalidConfig { problems: vec!["`a` is 0; use at least 1".into(), "`b` is 0; use at least 1".into()] };
        assert_eq!(
            config.to_string(),
            "invalid log settings: `a` is 0; use at least 1; `b` is 0; use at least 1; fix them in the `[log]` section of the config file"
        );
        assert_eq!(Error::InvalidConsumerName("A b".into()).to_string(), "invalid consumer name `A b`: use 1 to 64 of a-z 0-9 _ -");
    }
}
