//! Settings of the embedded log, as the `[log]` section of the config file.
//! Every option carries its unit.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const MINUTE_SECS: u64 = 60;
const DAY_SECS: u64 = 24 * 60 * MINUTE_SECS;
const GIB: u64 = 1024 * 1024 * 1024;
/// The frame's length field is 32 bits; a quarter of that is already far
/// more than one chat event needs.
/// The largest record any configuration may allow. Reads and recovery
/// accept records up to this, whatever `record_max_bytes` is now: lowering
/// the limit refuses new records, never old ones.
pub const RECORD_MAX_BYTES_LIMIT: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Partitions of a new data directory; an existing one keeps its own.
    /// More partitions let consumers work in parallel, but each partition a
    /// group commit touches costs one fsync: on one disk, one partition is
    /// fastest (see docs/BENCHMARKS.md), so that is the embedded default.
    pub partitions: u32,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_max_bytes: u64,
    /// A non-empty segment is closed once its first record is this old, so
    /// that age retention can remove it even when the log is quiet.
    pub segment_max_age_secs: u64,
    /// A closed segment whose last record is older than this is removed,
    /// once every consumer has committed past it. `"unlimited"` keeps
    /// segments whatever their age.
    #[serde(with = "unlimited")]
    pub retention_max_age_secs: Option<u64>,
    /// While a partition's closed segments total more than this, the oldest
    /// is removed, once every consumer has committed past it. `"unlimited"`
    /// keeps segments whatever their size.
    #[serde(with = "unlimited")]
    pub retention_max_bytes: Option<u64>,
    /// How often the writer looks at ages (rolls and age retention) when no
    /// append wakes it.
    pub retention_check_interval_ms: u64,
    /// Largest single record.
    pub record_max_bytes: usize,
    /// Bytes queued for writing, per partition, before appends are refused.
    pub pending_max_bytes: u64,
    /// Bytes one group commit writes at most before it fsyncs.
    pub batch_max_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            partitions: 1,
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age_secs: 60 * MINUTE_SECS,
            retention_max_age_secs: Some(7 * DAY_SECS),
            retention_max_bytes: Some(16 * GIB),
            retention_check_interval_ms: 10_000,
            record_max_bytes: 1024 * 1024,
            pending_max_bytes: 64 * 1024 * 1024,
            batch_max_bytes: 4 * 1024 * 1024,
        }
    }
}

impl LogConfig {
    /// Reports every problem at once, each naming its option.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let at_least_one = [
            ("partitions", u64::from(self.partitions)),
            ("segment_max_bytes", self.segment_max_bytes),
            ("segment_max_age_secs", self.segment_max_age_secs),
            ("retention_check_interval_ms", self.retention_check_interval_ms),
            ("record_max_bytes", self.record_max_bytes as u64),
        ];
        for (option, value) in at_least_one {
            if value == 0 {
                problems.push(format!("`{option}` is 0; use at least 1"));
            }
        }
        if self.record_max_bytes > RECORD_MAX_BYTES_LIMIT {
            problems.push(format!("`record_max_bytes` is {}; use at most {RECORD_MAX_BYTES_LIMIT}", self.record_max_bytes));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig { problems })
        }
    }
}

/// An optional bound written as a number or the word `"unlimited"`: TOML has
/// no null, so `None` needs a spelling of its own.
mod unlimited {
    use serde::{Deserialize, Deserializer, Serializer};

    const WORD: &str = "unlimited";

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(u64),
        Word(String),
    }

    pub fn serialize<S: Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(number) => serializer.serialize_u64(*number),
            None => serializer.serialize_str(WORD),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
        match Written::deserialize(deserializer)? {
            Written::Number(number) => Ok(Some(number)),
            Written::Word(word) if word == WORD => Ok(None),
            Written::Word(word) => Err(serde::de::Error::custom(format!("`{word}` is not a bound; write a number or \"{WORD}\""))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bound_the_log_by_a_week_and_16_gib() {
        let config = LogConfig::default();
        assert_eq!(config.segment_max_age_secs, 3_600);
        assert_eq!(config.retention_max_age_secs, Some(604_800));
        assert_eq!(config.retention_max_bytes, Some(17_179_869_184));
        assert_eq!(config.retention_check_interval_ms, 10_000);
        config.validate().unwrap();
    }

    #[test]
    fn a_bound_is_a_number_or_unlimited_and_unknown_options_are_refused() {
        let config: LogConfig = toml::from_str("retention_max_age_secs = \"unlimited\"\nretention_max_bytes = 4096\n").unwrap();
        assert_eq!((config.retention_max_age_secs, config.retention_max_bytes), (None, Some(4096)));
        let round_trip: LogConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(round_trip, config);

        let error = toml::from_str::<LogConfig>("retention_max_bytes = \"lots\"\n").unwrap_err();
        assert!(error.to_string().contains("`lots` is not a bound; write a number or \"unlimited\""), "{error}");
        let error = toml::from_str::<LogConfig>("retention_max_size = 1\n").unwrap_err();
        assert!(error.to_string().contains("unknown field `retention_max_size`"), "{error}");
    }

    #[test]
    fn validation_names_every_bad_option_at_once() {
        let config = LogConfig { segment_max_age_secs: 0, retention_check_interval_ms: 0, record_max_bytes: usize::MAX, ..LogConfig::default() };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            format!(
                "invalid log settings: `segment_max_age_secs` is 0; use at least 1; `retention_check_interval_ms` is 0; use at least 1; `record_max_bytes` is {}; use at most 1073741824; fix them in the `[log]` section of the config file",
                usize::MAX
            )
        );
    }
}
