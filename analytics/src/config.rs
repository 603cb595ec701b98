//! `[analytics]` in the server's config.

use serde::{Deserialize, Serialize};

/// Analytics are off unless `[analytics.clickhouse]` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    pub clickhouse: Option<ClickhouseConfig>,
}

pub use confab_clickhouse::ClickhouseConfig;

impl AnalyticsConfig {
    /// Every problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(clickhouse) = &self.clickhouse {
            problems.extend(clickhouse.problems("[analytics.clickhouse]"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_analytics_section_and_none_when_off() {
        let config = AnalyticsConfig { clickhouse: Some(ClickhouseConfig { url: "127.0.0.1:8123".into(), ..Default::default() }) };
        let problems = config.problems();
        assert!(problems.len() == 1 && problems[0].starts_with("[analytics.clickhouse] url:"), "{problems:?}");
        assert!(AnalyticsConfig::default().problems().is_empty());
    }
}
