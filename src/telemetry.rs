//! `[telemetry]`: traces over OTLP (see `confab-telemetry` for the spans a
//! message makes). Off unless `otlp_endpoint` is set.

use std::collections::BTreeMap;
use std::time::Duration;

use confab_telemetry::{Telemetry, TelemetryConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// An OpenTelemetry collector's OTLP/HTTP address (`http://host:4318`,
    /// to which `/v1/traces` is added; a URL with a path is used as is).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// The share of sends traced, from 0 to 1 (by trace id; a client's
    /// sampled `traceparent` is always followed).
    pub sample_ratio: f64,
    /// Headers sent with every export (a vendor's API key, say).
    pub headers: BTreeMap<String, String>,
    pub export_timeout_ms: u64,
    /// Spans waiting for export past which new ones are dropped.
    pub queue_max_spans: usize,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            otlp_endpoint: None,
            service_name: "confab".into(),
            sample_ratio: 1.0,
            headers: BTreeMap::new(),
            export_timeout_ms: 10_000,
            queue_max_spans: 65_536,
        }
    }
}

impl TelemetrySection {
    /// Every problem, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(endpoint) = &self.otlp_endpoint {
            let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            let host_ok = endpoint.split_once("://").is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'));
            if !scheme_ok || !host_ok || endpoint.contains(char::is_whitespace) {
                problems.push(format!(
                    "[telemetry] otlp_endpoint: `{endpoint}` is not an http:// or https:// URL with a host (a collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318)"
                ));
            }
        }
        if self.service_name.trim().is_empty() {
            problems.push("[telemetry] service_name: must not be empty".into());
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problems.push(format!("[telemetry] sample_ratio: {} is not between 0 and 1", self.sample_ratio));
        }
        for (name, value) in &self.headers {
            let token = !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte));
            if !token {
                problems.push(format!("[telemetry] headers: `{name}` is not a valid header name"));
            }
            if !value.bytes().all(|byte| byte == b'\t' || (0x20..0x7f).contains(&byte)) {
                problems.push(format!("[telemetry] headers: the value of `{name}` has characters a header cannot carry"));
            }
        }
        if self.export_timeout_ms == 0 {
            problems.push("[telemetry] export_timeout_ms: must be at least 1".into());
        }
        if self.queue_max_spans == 0 {
            problems.push("[telemetry] queue_max_spans: must be at least 1".into());
        }
        problems
    }

    /// Starts the exporter when an endpoint is set.
    pub fn start(&self) -> anyhow::Result<Option<Telemetry>> {
        let Some(endpoint) = &self.otlp_endpoint else { return Ok(None) };
        let config = TelemetryConfig {
            traces_url: TelemetryConfig::traces_url_for(endpoint),
            service_name: self.service_name.clone(),
            sample_ratio: self.sample_ratio,
            headers: self.headers.iter().map(|(name, value)| (name.clone(), value.clone())).collect(),
            export_timeout: Duration::from_millis(self.export_timeout_ms),
            queue_max_spans: self.queue_max_spans,
        };
        let telemetry = Telemetry::start(&config)?;
        tracing::info!(traces = config.traces_url, sample_ratio = config.sample_ratio, "exporting traces over OTLP");
        Ok(Some(telemetry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_is_named() {
        let section = TelemetrySection {
            otlp_endpoint: Some("collector:4318".into()),
            service_name: " ".into(),
            sample_ratio: 1.5,
            headers: BTreeMap::from([("bad name".into(), "v".into()), ("x-key".into(), "line\nbreak".into())]),
            export_timeout_ms: 0,
            queue_max_spans: 0,
        };
        let problems = section.problems();
        for field in
            ["otlp_endpoint", "service_name", "sample_ratio", "headers: `bad name`", "headers: the value of `x-key`", "export_timeout_ms", "queue_max_spans"]
        {
            assert!(problems.iter().any(|problem| problem.contains(field)), "{field} not reported in {problems:?}");
        }
        assert!(TelemetrySection::default().problems().is_empty());
        let on = TelemetrySection { otlp_endpoint: Some("https://otlp.example.com".into()), ..Default::default() };
        assert!(on.problems().is_empty());
    }
}
