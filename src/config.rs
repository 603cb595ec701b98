//! The config file (TOML). Every table is optional; flags on the command
//! line win over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use confab_gateway::GatewayConfig;
use confab_ingest::{Limits, StateConfig};
use confab_log::LogConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Everything Confab stores lives under this folder.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Where to serve the history over the PostgreSQL protocol (off if absent).
    pub sql_listen: Option<SocketAddr>,
    /// A folder of pipeline definitions (`*.toml`) replacing the shipped ones.
    pub pipelines_dir: Option<PathBuf>,
    pub log: LogConfig,
    /// The state's store on disk, its caches and checkpoints.
    pub state: StateConfig,
    pub limits: Limits,
    pub gateway: GatewayConfig,
    pub history: HistoryConfig,
    /// Compliance SQL: its limits, and the PostgreSQL protocol's doors.
    pub sql: confab_query::SqlConfig,
    /// Push notifications: the services, and how hard to retry.
    pub push: crate::push::PushConfig,
    /// Where durable workflows run.
    pub workflows: crate::workflows::WorkflowsConfig,
    /// Uploads: where their bytes are stored, their limits and checks.
    pub media: confab_media::MediaConfig,
    /// Search: which index engine, and where.
    pub search: confab_search::SearchConfig,
    /// Analytics in ClickHouse (off unless `[analytics.clickhouse]` is set).
    pub analytics: confab_analytics::AnalyticsConfig,
    /// Traces over OTLP (off unless `otlp_endpoint` is set).
    pub telemetry: crate::telemetry::TelemetrySection,
}

/// Where the history tables live.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// A folder, or an `s3://bucket/prefix` URL; `<data_dir>/history` by default.
    pub location: Option<String>,
    /// Object-store settings, e.g. `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`.
    pub storage_options: std::collections::HashMap<String, String>,
    /// Days a conversation without a policy of its own keeps its messages
    /// (no default: they are kept).
    pub default_retention_days: Option<u32>,
    /// How often the retention workflow runs (seconds; 3600 by default).
    pub retention_interval_secs: Option<u64>,
}

impl Config {
    /// The history's location: the configured one, or under the data directory.
    pub fn search_dir(&self) -> PathBuf {
        self.search.dir.clone().unwrap_or_else(|| self.data_dir.join("search"))
    }

    pub fn history_location(&self) -> String {
        self.history.location.clone().unwrap_or_else(|| self.data_dir.join("history").to_string_lossy().into_owned())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            sql_listen: None,
            pipelines_dir: None,
            log: LogConfig::default(),
            state: StateConfig::default(),
            limits: Limits::default(),
            gateway: GatewayConfig::default(),
            history: HistoryConfig::default(),
            sql: confab_query::SqlConfig::default(),
            push: Default::default(),
            workflows: Default::default(),
            media: Default::default(),
            search: Default::default(),
            analytics: Default::default(),
            telemetry: Default::default(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("could not read the config file `{}`", path.display()))?;
        let config: Config = toml::from_str(&text).with_context(|| format!("invalid config file `{}`", path.display()))?;
        let mut problems = config.state.problems();
        problems.extend(config.sql.problems());
        problems.extend(config.gateway.problems());
        problems.extend(config.media.problems());
        problems.extend(config.search.problems());
        problems.extend(config.analytics.problems());
        problems.extend(config.telemetry.problems());
        if !problems.is_empty() {
            anyhow::bail!("invalid config file `{}`:\n{}", path.display(), problems.join("\n"));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = toml::from_str::<Config>("listen = \"127.0.0.1:1\"\n[gateway]\ntoken_ttl = 5\n").unwrap_err();
        assert!(error.to_string().contains("unknown field `token_ttl`"), "{error}");
        let config: Config = toml::from_str("[gateway.rate_limits]\nsend_per_account = { per_second = 1.0, burst = 2 }\n").unwrap();
        assert_eq!(config.gateway.rate_limits.send_per_account.unwrap().burst, 2);
        assert!(config.gateway.rate_limits.enabled);
        let config: Config = toml::from_str("[gateway.rate_limits]\nenabled = false\n").unwrap();
        assert!(!config.gateway.rate_limits.enabled);
    }
}
