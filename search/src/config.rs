//! `[search]` in the server's config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which index serves `GET /v1/search`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// tantivy, under the data directory (no external service).
    #[default]
    Embedded,
    /// A ClickHouse server (`[search.clickhouse]`).
    Clickhouse,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub engine: EngineKind,
    /// The embedded index's folder; `<data_dir>/search` by default.
    pub dir: Option<PathBuf>,
    pub clickhouse: ClickhouseConfig,
}

pub use confab_clickhouse::ClickhouseConfig;

impl SearchConfig {
    /// Every problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.engine == EngineKind::Clickhouse {
            problems
                .extend(self.clickhouse.problems("[search.clickhouse]").into_iter().map(|problem| format!("{problem} (needed by engine = \"clickhouse\")")));
        }
        problems
    }
}
