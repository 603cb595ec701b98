//! Pipeline definitions: TOML files operators edit. A file holds one or more
//! `[[pipeline]]` tables; each names its source and its stages with their
//! parameters. [`validate`] turns files into [`PipelineSpec`]s and reports
//! every problem at once, each naming the file, the pipeline and the field.
//! A set of files with any error starts nothing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The one format version this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// The definitions shipped in the repository's `pipelines/definitions/`,
/// built into the binary so `confab serve` runs anywhere.
pub const SHIPPED: &[(&str, &str)] = &[
    ("pipelines/definitions/fanout.toml", include_str!("../definitions/fanout.toml")),
    ("pipelines/definitions/receipts.toml", include_str!("../definitions/receipts.toml")),
    ("pipelines/definitions/history.toml", include_str!("../definitions/history.toml")),
    ("pipelines/definitions/push.toml", include_str!("../definitions/push.toml")),
    ("pipelines/definitions/search.toml", include_str!("../definitions/search.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    version: u32,
    #[serde(default, rename = "pipeline")]
    pipelines: Vec<PipelineV1>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineV1 {
    name: String,
    source: String,
    #[serde(default, rename = "stage")]
    stages: Vec<StageV1>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum StageV1 {
    /// Keep only some event types (`message.new`, `receipt.read`, ...).
    Filter { event_types: Vec<String> },
    /// Deliver each event to the connected devices of the members who may see it.
    Fanout {
        /// Above this many members a conversation is delivered to online
        /// devices only, with receipts and typing not broadcast to everyone.
        large_conversation_members: usize,
    },
    /// Coalesce delivery receipts from devices and write them to the log.
    AggregateReceipts { flush_interval_ms: u64, max_receipts_per_record: usize },
    /// Append every event to the Delta Lake history tables, in batches.
    DeltaSink { flush_rows: usize, flush_interval_ms: u64, compact_every_commits: u64 },
    /// Push new messages to members' devices that are offline.
    Push {
        /// Above this many members, only messages that mention a member push them.
        large_conversation_members: usize,
        /// How long the push services keep an undelivered push.
        ttl_secs: u64,
    },
    /// Keep the search index in step with the log (creates, edits, deletes).
    SearchIndex {
        /// How long a change may wait before it is searchable.
        commit_interval_ms: u64,
    },
    /// Write messages, receipts and conversations to the ClickHouse
    /// analytics tables (when the server's `[analytics.clickhouse]` is set).
    ClickhouseSink {
        /// Write once this many rows wait...
        flush_rows: usize,
        /// ...or once the oldest waiting row is this old.
        flush_interval_ms: u64,
    },
}

/// Where a pipeline reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The streaming log, every partition, from the pipeline's committed offsets.
    Log,
    /// Delivery receipts sent by devices over the WebSocket.
    DeviceReceipts,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Filter { event_types: Vec<String> },
    Fanout { large_conversation_members: usize },
    AggregateReceipts { flush_interval_ms: u64, max_receipts_per_record: usize },
    DeltaSink { flush_rows: usize, flush_interval_ms: u64, compact_every_commits: u64 },
    Push { large_conversation_members: usize, ttl_secs: u64 },
    SearchIndex { commit_interval_ms: u64 },
    ClickhouseSink { flush_rows: usize, flush_interval_ms: u64 },
}

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSpec {
    pub name: String,
    pub source: Source,
    pub stages: Vec<Stage>,
    pub file: PathBuf,
}

/// One problem in one definition file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub pipeline: Option<String>,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: ", self.file.display())?;
        if let Some(pipeline) = &self.pipeline {
            write!(formatter, "pipeline `{pipeline}`: ")?;
        }
        write!(formatter, "`{}`: {}", self.field, self.message)
    }
}

/// Names the server's own log readers use as consumers of the log (the
/// state's checkpoint is `state`). A pipeline's name is its consumer name,
/// so these are refused: two readers sharing one committed offset would
/// let retention remove what one of them still needs.
pub const RESERVED_NAMES: &[&str] = &["state"];

pub const EVENT_TYPES: &[&str] = &["message.new", "message.edit", "message.delete", "receipt.delivered", "receipt.read", "conversation.member"];

/// Validates definition files given as `(path, text)`.
pub fn validate(files: &[(PathBuf, String)]) -> Result<Vec<PipelineSpec>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut specs = Vec::new();
    let mut names = HashSet::new();
    for (path, text) in files {
        let problem = |pipeline: Option<&str>, field: &str, message: String| Problem {
            file: path.clone(),
            pipeline: pipeline.map(str::to_string),
            field: field.to_string(),
            message,
        };
        let file: FileV1 = match toml::from_str(text) {
            Ok(file) => file,
            Err(error) => {
                let message = error.message().to_string();
                let field = field_of_parse_error(&message);
                problems.push(problem(None, &field, format!("{message} ({})", location(text, error.span()))));
                continue;
            }
        };
        if file.version != FORMAT_VERSION {
            problems.push(problem(None, "version", format!("is {}; this confab reads version {FORMAT_VERSION}", file.version)));
            continue;
        }
        for pipeline in file.pipelines {
            let name = pipeline.name.clone();
            let before = problems.len();
            let mut report = |field: &str, message: String| problems.push(problem(Some(&name), field, message));
            if !valid_name(&name) {
                report("name", "use 1 to 64 of a-z 0-9 _ -".into());
            } else if RESERVED_NAMES.contains(&name.as_str()) {
                report("name", format!("`{name}` is the name of the server's own reader of the log; choose another"));
            } else if !names.insert(name.clone()) {
                report("name", "another pipeline already has this name".into());
            }
            let source = match pipeline.source.as_str() {
                "log" => Some(Source::Log),
                "device_receipts" => Some(Source::DeviceReceipts),
                other => {
                    report("source", format!("`{other}` is not one of log, device_receipts"));
                    None
                }
            };
            if pipeline.stages.is_empty() {
                report("stage", "a pipeline needs at least one stage".into());
            }
            let mut stages = Vec::new();
            let last = pipeline.stages.len().saturating_sub(1);
            for (index, stage) in pipeline.stages.into_iter().enumerate() {
                let field = |name: &str| format!("stage[{index}].{name}");
                match stage {
                    StageV1::Filter { event_types } => {
                        for event_type in &event_types {
                            if !EVENT_TYPES.contains(&event_type.as_str()) {
                                report(&field("event_types"), format!("`{event_type}` is not one of {}", EVENT_TYPES.join(", ")));
                            }
                        }
                        if source != Some(Source::Log) {
                            report(&field("kind"), "`filter` reads log events: use it with source = \"log\"".into());
                        }
                        stages.push(Stage::Filter { event_types });
                    }
                    StageV1::Fanout { large_conversation_members } => {
                        if !(1..=10_000_000).contains(&large_conversation_members) {
                            report(&field("large_conversation_members"), "must be between 1 and 10000000".into());
                        }
                        if source != Some(Source::Log) {
                            report(&field("kind"), "`fanout` delivers log events: use it with source = \"log\"".into());
                        }
                        if index != last {
                            report(&field("kind"), "`fanout` delivers to devices, so it must be the last stage".into());
                        }
                        stages.push(Stage::Fanout { large_conversation_members });
                    }
                    StageV1::AggregateReceipts { flush_interval_ms, max_receipts_per_record } => {
                        if !(10..=60_000).contains(&flush_interval_ms) {
                            report(&field("flush_interval_ms"), "must be between 10 and 60000".into());
                        }
                        if !(1..=10_000).contains(&max_receipts_per_record) {
                            report(&field("max_receipts_per_record"), "must be between 1 and 10000".into());
                        }
                        if source != Some(Source::DeviceReceipts) {
                            report(&field("kind"), "`aggregate_receipts` reads device receipts: use it with source = \"device_receipts\"".into());
                        }
                        stages.push(Stage::AggregateReceipts { flush_interval_ms, max_receipts_per_record });
                    }
                    StageV1::DeltaSink { flush_rows, flush_interval_ms, compact_every_commits } => {
                        if !(1..=1_000_000).contains(&flush_rows) {
                            report(&field("flush_rows"), "must be between 1 and 1000000".into());
                        }
                        if !(10..=300_000).contains(&flush_interval_ms) {
                            report(&field("flush_interval_ms"), "must be between 10 and 300000".into());
                        }
                        if !(1..=100_000).contains(&compact_every_commits) {
                            report(&field("compact_every_commits"), "must be between 1 and 100000".into());
                        }
                        if source != Some(Source::Log) {
                            report(&field("kind"), "`delta_sink` writes log events: use it with source = \"log\"".into());
                        }
                        if index != last {
                            report(&field("kind"), "`delta_sink` writes the history, so it must be the last stage".into());
                        }
                        stages.push(Stage::DeltaSink { flush_rows, flush_interval_ms, compact_every_commits });
                    }
                    StageV1::Push { large_conversation_members, ttl_secs } => {
                        if !(1..=10_000_000).contains(&large_conversation_members) {
                            report(&field("large_conversation_members"), "must be between 1 and 10000000".into());
                        }
                        if !(0..=2_419_200).contains(&ttl_secs) {
                            report(&field("ttl_secs"), "must be between 0 and 2419200 (four weeks, the services' limit)".into());
                        }
                        if source != Some(Source::Log) {
                            report(&field("kind"), "`push` reads new messages from the log: use it with source = \"log\"".into());
                        }
                        if index != last {
                            report(&field("kind"), "`push` sends to devices, so it must be the last stage".into());
                        }
                        stages.push(Stage::Push { large_conversation_members, ttl_secs });
                    }
                    StageV1::SearchIndex { commit_interval_ms } => {
                        if !(10..=60_000).contains(&commit_interval_ms) {
                            report(&field("commit_interval_ms"), "must be between 10 and 60000".into());
                        }
                        if source != Some(Source::Log) {
                            report(&field("kind"), "`search_index` indexes log events: use it with source = \"log\"".into());
                        }
                        if last != 0 {
                            report(&field("kind"), "`search_index` must be the only stage of its pipeline (it indexes every message, so a filter before it would hide some from search)".into());
                        }
                        stages.push(Stage::SearchIndex { commit_interval_ms });
                    }
                    StageV1::ClickhouseSink { flush_rows, flush_interval_ms } => {
                        if !(1..=500_000).contains(&flush_rows) {
                            report(&field("flush_rows"), "must be between 1 and 500000 (one insert per table per flush)".into());
                        }
                        if !(10..=600_000).contains(&flush_interval_ms) {
                            report(&field("flush_interval_ms"), "must be between 10 and 600000".into());
                        }
                        if source != Some(Source::Log) {
                            report(&field("kind"), "`clickhouse_sink` writes log events: use it with source = \"log\"".into());
                        }
                        if last != 0 {
                            report(&field("kind"), "`clickhouse_sink` must be the only stage of its pipeline (retention purges its tables by what the log holds, so a filter before it would leave them incomplete)".into());
                        }
                        stages.push(Stage::ClickhouseSink { flush_rows, flush_interval_ms });
                    }
                }
            }
            if problems.len() == before {
                if let Some(source) = source {
                    specs.push(PipelineSpec { name, source, stages, file: path.clone() });
                }
            }
        }
    }
    for (kind, count) in [
        ("fanout", count_stages(&specs, |stage| matches!(stage, Stage::Fanout { .. }))),
        ("aggregate_receipts", count_stages(&specs, |stage| matches!(stage, Stage::AggregateReceipts { .. }))),
        ("push", count_stages(&specs, |stage| matches!(stage, Stage::Push { .. }))),
        ("search_index", count_stages(&specs, |stage| matches!(stage, Stage::SearchIndex { .. }))),
        ("clickhouse_sink", count_stages(&specs, |stage| matches!(stage, Stage::ClickhouseSink { .. }))),
    ] {
        if count > 1 {
            let file = specs.iter().map(|spec| spec.file.clone()).next().unwrap_or_default();
            problems.push(Problem {
                file,
                pipeline: None,
                field: "stage.kind".into(),
                message: format!("{count} pipelines have a `{kind}` stage; at most one may, or events would be delivered or written twice"),
            });
        }
    }
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(problems)
    }
}

fn count_stages(specs: &[PipelineSpec], is_kind: impl Fn(&Stage) -> bool) -> usize {
    specs.iter().filter(|spec| spec.stages.iter().any(&is_kind)).count()
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-')
}

/// The field a TOML parse error is about, when the message names one.
fn field_of_parse_error(message: &str) -> String {
    ["unknown field `", "missing field `", "unknown variant `"]
        .iter()
        .find_map(|prefix| message.split(prefix).nth(1).and_then(|rest| rest.split('`').next()))
        .map_or_else(|| "(file)".to_string(), str::to_string)
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            format!("line {line}")
        }
        None => "unknown line".to_string(),
    }
}

/// Reads every `*.toml` file of a folder, sorted by name.
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "toml"))
        .collect();
    paths.sort();
    paths.into_iter().map(|path| std::fs::read_to_string(&path).map(|text| (path, text))).collect()
}

pub fn shipped() -> Vec<(PathBuf, String)> {
    SHIPPED.iter().map(|(path, text)| (PathBuf::from(path), text.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Vec<(PathBuf, String)> {
        vec![(PathBuf::from("ops.toml"), text.to_string())]
    }

    #[test]
    fn the_shipped_definitions_are_valid() {
        let specs = validate(&shipped()).unwrap();
        assert_eq!(specs.iter().map(|spec| spec.name.as_str()).collect::<Vec<_>>(), vec!["fanout", "receipts", "history", "analytics", "push", "search"]);
    }

    #[test]
    fn every_problem_is_reported_with_file_pipeline_and_field() {
        let text = r#"
version = 1
[[pipeline]]
name = "Bad Name"
source = "kafka"
[[pipeline.stage]]
kind = "fanout"
large_conversation_members = 0
[[pipeline.stage]]
kind = "filter"
event_types = ["message.nope"]
"#;
        let problems = validate(&file(text)).unwrap_err();
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "ops.toml: pipeline `Bad Name`: `name`: use 1 to 64 of a-z 0-9 _ -",
                "ops.toml: pipeline `Bad Name`: `source`: `kafka` is not one of log, device_receipts",
                "ops.toml: pipeline `Bad Name`: `stage[0].large_conversation_members`: must be between 1 and 10000000",
                "ops.toml: pipeline `Bad Name`: `stage[0].kind`: `fanout` delivers log events: use it with source = \"log\"",
                "ops.toml: pipeline `Bad Name`: `stage[0].kind`: `fanout` delivers to devices, so it must be the last stage",
                "ops.toml: pipeline `Bad Name`: `stage[1].event_types`: `message.nope` is not one of message.new, message.edit, message.delete, receipt.delivered, receipt.read, conversation.member",
                "ops.toml: pipeline `Bad Name`: `stage[1].kind`: `filter` reads log events: use it with source = \"log\"",
            ]
        );
    }

    #[test]
    fn unknown_fields_wrong_versions_and_duplicates_are_refused() {
        let problems = validate(&file("version = 1\n[[pipeline]]\nname = \"x\"\nsource = \"log\"\nspeed = 3\n")).unwrap_err();
        assert_eq!(problems[0].field, "speed");
        assert!(problems[0].message.contains("line"), "{}", problems[0]);
        let problems = validate(&file("version = 2\n")).unwrap_err();
        assert_eq!(problems[0].to_string(), "ops.toml: `version`: is 2; this confab reads version 1");
        let mut twice = shipped();
        twice.push((PathBuf::from("copy.toml"), SHIPPED[0].1.replace("name = \"fanout\"", "name = \"fanout-copy\"")));
        let problems = validate(&twice).unwrap_err();
        assert!(problems[0].message.contains("delivered or written twice"), "{}", problems[0]);
    }

    #[test]
    fn the_search_index_stage_is_alone_on_the_log_and_runs_once() {
        let text = "version = 1\n[[pipeline]]\nname = \"s\"\nsource = \"device_receipts\"\n[[pipeline.stage]]\nkind = \"filter\"\nevent_types = [\"message.new\"]\n[[pipeline.stage]]\nkind = \"search_index\"\ncommit_interval_ms = 5\n";
        let lines: Vec<String> = validate(&file(text)).unwrap_err().iter().map(ToString::to_string).collect();
        assert!(lines.contains(&"ops.toml: pipeline `s`: `stage[1].commit_interval_ms`: must be between 10 and 60000".to_string()), "{lines:?}");
        assert!(lines.iter().any(|line| line.contains("`stage[1].kind`: `search_index` indexes log events")), "{lines:?}");
        assert!(lines.iter().any(|line| line.contains("`stage[1].kind`: `search_index` must be the only stage")), "{lines:?}");
        let mut twice = shipped();
        twice.push((PathBuf::from("copy.toml"), SHIPPED[4].1.replace("name = \"search\"", "name = \"search-copy\"")));
        let problems = validate(&twice).unwrap_err();
        assert!(problems[0].message.contains("2 pipelines have a `search_index` stage"), "{}", problems[0]);
    }

    #[test]
    fn the_clickhouse_sink_is_alone_on_the_log_within_bounds() {
        let text = "version = 1\n[[pipeline]]\nname = \"a\"\nsource = \"device_receipts\"\n[[pipeline.stage]]\nkind = \"filter\"\nevent_types = [\"message.new\"]\n[[pipeline.stage]]\nkind = \"clickhouse_sink\"\nflush_rows = 0\nflush_interval_ms = 5\n";
        let lines: Vec<String> = validate(&file(text)).unwrap_err().iter().map(ToString::to_string).collect();
        assert!(
            lines.contains(&"ops.toml: pipeline `a`: `stage[1].flush_rows`: must be between 1 and 500000 (one insert per table per flush)".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"ops.toml: pipeline `a`: `stage[1].flush_interval_ms`: must be between 10 and 600000".to_string()), "{lines:?}");
        assert!(lines.iter().any(|line| line.contains("`stage[1].kind`: `clickhouse_sink` writes log events")), "{lines:?}");
        assert!(lines.iter().any(|line| line.contains("`stage[1].kind`: `clickhouse_sink` must be the only stage")), "{lines:?}");
        let shipped = validate(&shipped()).unwrap();
        let analytics = shipped.iter().find(|spec| spec.name == "analytics").expect("the shipped analytics pipeline");
        assert_eq!(analytics.stages, vec![Stage::ClickhouseSink { flush_rows: 50_000, flush_interval_ms: 1_000 }]);
    }

    #[test]
    fn the_server_s_own_reader_names_are_refused() {
        let problems = validate(&file("version = 1\n[[pipeline]]\nname = \"state\"\nsource = \"log\"\n")).unwrap_err();
        assert_eq!(problems[0].to_string(), "ops.toml: pipeline `state`: `name`: `state` is the name of the server's own reader of the log; choose another");
    }
}
