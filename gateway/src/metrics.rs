//! Prometheus metrics of the gateway, by `prometheus-client`, in the
//! Prometheus text format (0.0.4) that `/metrics` answers:
//!
//! - `confab_http_*`: every request, labelled by the matched route (never
//!   the raw URI, which would hold IDs), its method and status.
//! - `confab_send_duration_seconds{transport}`: a message send from the
//!   request (HTTP) or the `message.send` frame (WebSocket) to its
//!   acknowledgement, which waits for the append's fsync. Refused sends
//!   (bad input, no membership, rate limits) are not in it: they are in
//!   the HTTP statuses and would hide the durable path's latency.
//! - `confab_delivery_lag_seconds`: from the server accepting an event (its
//!   `ts`) to its frame written on a receiving device's socket; events a
//!   reconnecting device replays from its cursor are not in it (their lag is
//!   the device's absence, not the server's).
//! - `confab_ws_connected_users` and `_devices`, read from the hub at scrape.
//!
//! Then the parts the gateway does not own add theirs
//! ([`crate::Readiness::extra_metrics`]: the log, consumers, push, workflows).

use std::fmt::Write;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::AppState;

/// Request and send latency buckets, in seconds.
const BUCKETS_SECONDS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Delivery lag buckets, in seconds: the server's clock is read in ms.
const LAG_BUCKETS_SECONDS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// How a message send arrived.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Transport {
    Http,
    Ws,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<RouteLabels>,
    sends: HistogramFamily<TransportLabels>,
    delivery_lag: Histogram,
    connected_users: Gauge,
    connected_devices: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("confab");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by matched route, method and status", requests.clone());
        let durations: HistogramFamily<RouteLabels> = Family::new_with_constructor(|| Histogram::new(BUCKETS_SECONDS));
        registry.register("http_request_duration_seconds", "Time to answer a request, by matched route", durations.clone());
        let sends: HistogramFamily<TransportLabels> = Family::new_with_constructor(|| Histogram::new(BUCKETS_SECONDS));
        registry.register("send_duration_seconds", "A message send from its request to its durable acknowledgement, by transport (http, ws)", sends.clone());
        let delivery_lag = Histogram::new(LAG_BUCKETS_SECONDS);
        registry.register(
            "delivery_lag_seconds",
            "From the server accepting an event to its frame written on a receiving device's socket",
            delivery_lag.clone(),
        );
        let connected_users = Gauge::default();
        registry.register("ws_connected_users", "Users with at least one live WebSocket", connected_users.clone());
        let connected_devices = Gauge::default();
        registry.register("ws_connected_devices", "Devices with at least one live WebSocket", connected_devices.clone());
        Metrics { registry, requests, durations, sends, delivery_lag, connected_users, connected_devices }
    }
}

impl Metrics {
    /// Counts and times one request.
    pub fn observe_request(&self, route: &str, method: &axum::http::Method, status: u16, seconds: f64) {
        self.requests.get_or_create(&RequestLabels { route: route.to_string(), method: method.to_string(), status }).inc();
        self.durations.get_or_create(&RouteLabels { route: route.to_string() }).observe(seconds);
    }

    /// One acknowledged message send, `took` from request to acknowledgement.
    pub fn observe_send(&self, transport: Transport, took: Duration) {
        let transport = match transport {
            Transport::Http => "http",
            Transport::Ws => "ws",
        };
        self.sends.get_or_create(&TransportLabels { transport }).observe(took.as_secs_f64());
    }

    /// One live event written on a socket, accepted by the server at `ts_ms`.
    pub fn observe_delivery(&self, ts_ms: i64) {
        if ts_ms > 0 {
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64);
            let lag_ms = (now_ms - ts_ms).max(0);
            self.delivery_lag.observe(lag_ms as f64 / 1000.0);
        }
    }

    pub fn render(&self, state: &AppState) -> String {
        self.connected_users.set(state.hub.online_users() as i64);
        self.connected_devices.set(state.hub.online_device_count() as i64);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        let _ = writeln!(out, "# TYPE confab_gateway_uptime_seconds gauge\nconfab_gateway_uptime_seconds {}", state.started_at.elapsed().as_secs());
        let _ = writeln!(out, "# TYPE confab_sql_statements_running gauge\nconfab_sql_statements_running {}", state.history.statements_running());
        let _ = writeln!(out, "# TYPE confab_sql_memory_bytes gauge\nconfab_sql_memory_bytes {}", state.history.memory_in_use());
        out.push_str("# HELP confab_ready Whether each part works (1) or not (0); /readyz says why.\n# TYPE confab_ready gauge\n");
        for (part, problem) in crate::routes::ops::readiness(state) {
            let _ = writeln!(out, "confab_ready{{part=\"{part}\"}} {}", u8::from(problem.is_none()));
        }
        if let Some(readiness) = state.readiness.get() {
            let _ = writeln!(out, "# TYPE confab_history_sink_restarts_total counter\nconfab_history_sink_restarts_total {}", readiness.sink_restarts());
            readiness.extra_metrics(&mut out);
        }
        out
    }
}

/// Middleware: counts and times every request by its matched route.
pub async fn track_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state.metrics.observe_request(route, &method, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_prometheus_text_format() {
        let metrics = Metrics::default();
        metrics.observe_request("/v1/users", &axum::http::Method::POST, 201, 0.002);
        metrics.observe_send(Transport::Ws, Duration::from_millis(3));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &metrics.registry).unwrap();
        assert!(out.contains("confab_http_requests_total{route=\"/v1/users\",method=\"POST\",status=\"201\"} 1\n"), "{out}");
        assert!(
            out.contains("confab_http_request_duration_seconds_bucket{le=\"0.0025\",route=\"/v1/users\"} 1\n")
                || out.contains("confab_http_request_duration_seconds_bucket{route=\"/v1/users\",le=\"0.0025\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("confab_send_duration_seconds_count{transport=\"ws\"} 1\n"), "{out}");
        assert!(out.contains("# TYPE confab_delivery_lag_seconds histogram\n"), "{out}");
        assert!(!out.contains("# EOF"), "the 0.0.4 text format has no EOF marker: {out}");
    }
}
