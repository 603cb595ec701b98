//! Prometheus metrics of the gateway: `confab_http_*`, labelled by the
//! matched route (never the raw URI, which would hold IDs).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use dashmap::DashMap;

use crate::AppState;

const BUCKETS_SECONDS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        for (bound, bucket) in BUCKETS_SECONDS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct RouteMetrics {
    /// Requests by (method, status).
    requests: DashMap<(Method, u16), AtomicU64>,
    duration: Histogram,
}

#[derive(Default)]
pub struct Metrics {
    routes: DashMap<String, RouteMetrics>,
}

impl Metrics {
    /// Counts one request; allocates only the first time a route is seen.
    pub fn observe_request(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        let route_metrics = match self.routes.get(route) {
            Some(existing) => existing,
            None => self.routes.entry(route.to_string()).or_default().downgrade(),
        };
        match route_metrics.requests.get(&(method.clone(), status)) {
            Some(counter) => counter.fetch_add(1, Ordering::Relaxed),
            None => route_metrics.requests.entry((method.clone(), status)).or_default().fetch_add(1, Ordering::Relaxed),
        };
        route_metrics.duration.observe(seconds);
    }

    pub fn render(&self, state: &AppState) -> String {
        let mut out = String::new();
        out.push_str("# HELP confab_http_requests_total HTTP requests by matched route, method and status.\n");
        out.push_str("# TYPE confab_http_requests_total counter\n");
        let mut rows: Vec<(String, String, u16, u64)> = Vec::new();
        for route in self.routes.iter() {
            for entry in route.requests.iter() {
                let (method, status) = entry.key();
                rows.push((route.key().clone(), method.to_string(), *status, entry.value().load(Ordering::Relaxed)));
            }
        }
        rows.sort();
        for (route, method, status, count) in rows {
            let _ = writeln!(out, "confab_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}");
        }
        out.push_str("# HELP confab_http_request_duration_seconds Time to answer a request, by matched route.\n");
        out.push_str("# TYPE confab_http_request_duration_seconds histogram\n");
        let mut routes: Vec<String> = self.routes.iter().map(|entry| entry.key().clone()).collect();
        routes.sort();
        for route in routes {
            let Some(route_metrics) = self.routes.get(&route) else { continue };
            let histogram = &route_metrics.duration;
            for (bound, bucket) in BUCKETS_SECONDS.iter().zip(&histogram.buckets) {
                let _ = writeln!(out, "confab_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}", bucket.load(Ordering::Relaxed));
            }
            let count = histogram.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "confab_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}");
            let _ =
                writeln!(out, "confab_http_request_duration_seconds_sum{{route=\"{route}\"}} {}", histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
            let _ = writeln!(out, "confab_http_request_duration_seconds_count{{route=\"{route}\"}} {count}");
        }
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
