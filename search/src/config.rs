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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickhouseConfig {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl Default for ClickhouseConfig {
    fn default() -> Self {
        ClickhouseConfig { url: String::new(), database: "confab".into(), user: "default".into(), password: String::new() }
    }
}

impl SearchConfig {
    /// Every problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.engine == EngineKind::Clickhouse {
            let clickhouse = &self.clickhouse;
            if !(clickhouse.url.starts_with("http://") || clickhouse.url.starts_with("https://")) {
                problems.push("[search.clickhouse] url: set the server's HTTP address, e.g. http://127.0.0.1:8123 (needed by engine = \"clickhouse\")".into());
            }
            if clickhouse.database.is_empty() || !clickhouse.database.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
                problems.push("[search.clickhouse] database: use letters, digits and _".into());
            }
        }
        problems
    }
}
