//! `[analytics]` in the server's config.

use serde::{Deserialize, Serialize};

/// Analytics are off unless `[analytics.clickhouse]` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    pub clickhouse: Option<ClickhouseConfig>,
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
        ClickhouseConfig { url: String::new(), database: "confab_analytics".into(), user: "default".into(), password: String::new() }
    }
}

impl AnalyticsConfig {
    /// Every problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(clickhouse) = &self.clickhouse {
            if !(clickhouse.url.starts_with("http://") || clickhouse.url.starts_with("https://")) {
                problems.push("[analytics.clickhouse] url: set the server's HTTP address, e.g. http://127.0.0.1:8123".into());
            }
            if clickhouse.database.is_empty() || !clickhouse.database.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
                problems.push("[analytics.clickhouse] database: use letters, digits and _".into());
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_names_its_key() {
        let config = AnalyticsConfig { clickhouse: Some(ClickhouseConfig { url: "127.0.0.1:8123".into(), database: "a-b".into(), ..Default::default() }) };
        assert_eq!(
            config.problems(),
            vec![
                "[analytics.clickhouse] url: set the server's HTTP address, e.g. http://127.0.0.1:8123".to_string(),
                "[analytics.clickhouse] database: use letters, digits and _".to_string(),
            ]
        );
        assert!(AnalyticsConfig::default().problems().is_empty());
    }
}
