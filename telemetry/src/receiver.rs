//! An OTLP/HTTP trace receiver built on the OTLP protobufs, for the tests
//! and benchmarks (no OpenTelemetry Collector or Jaeger installs on this
//! machine). It speaks the protocol as a collector does:
//! `POST /v1/traces` with `Content-Type: application/x-protobuf` and an
//! `ExportTraceServiceRequest` body is answered `200` with an
//! `ExportTraceServiceResponse`; another content type is `415`, a body
//! that does not decode `400`. Each span is kept flattened (ids as
//! integers, attributes as text), or only counted for a benchmark.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use parking_lot::Mutex;
use prost::Message;

/// One received span.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub trace_id: u128,
    pub span_id: u64,
    /// `None` for a trace's root.
    pub parent_span_id: Option<u64>,
    pub name: String,
    /// OTLP's span kind (2 server, 5 consumer, 1 internal).
    pub kind: i32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: BTreeMap<String, String>,
    /// The status was set to error.
    pub failed: bool,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    count: AtomicU64,
    requests: AtomicU64,
    keep: bool,
}

/// A running receiver on a loopback port; it stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    address: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on a free loopback port. `keep`: keep every span (tests);
    /// otherwise only count them (benchmarks).
    pub async fn start(keep: bool) -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let received = Arc::new(Received { keep, ..Received::default() });
        let app = Router::new().route("/v1/traces", post(export)).with_state(received.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "the OTLP receiver stopped");
            }
        });
        Ok(Receiver { address, received, task })
    }

    /// The base address to configure as `otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().clone()
    }

    pub fn span_count(&self) -> u64 {
        self.received.count.load(Ordering::Acquire)
    }

    /// Export requests answered so far.
    pub fn requests(&self) -> u64 {
        self.received.requests.load(Ordering::Acquire)
    }

    /// Waits until `done` holds of the kept spans, up to `timeout`; returns
    /// them either way (the caller's assertions say what was missing).
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn export(State(received): State<Arc<Received>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/x-protobuf") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "this receiver takes application/x-protobuf").into_response();
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("not an ExportTraceServiceRequest: {error}")).into_response(),
    };
    let mut count = 0;
    let mut kept = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|resource| resource.attributes.iter().find(|attribute| attribute.key == "service.name"))
            .map(text_of)
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                count += 1;
                if !received.keep {
                    continue;
                }
                let id = |bytes: &[u8]| -> Option<u128> { (!bytes.is_empty()).then(|| bytes.iter().fold(0u128, |id, byte| (id << 8) | *byte as u128)) };
                kept.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: id(&span.trace_id).unwrap_or(0),
                    span_id: id(&span.span_id).unwrap_or(0) as u64,
                    parent_span_id: id(&span.parent_span_id).map(|id| id as u64),
                    name: span.name,
                    kind: span.kind,
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    attributes: span.attributes.iter().map(|attribute| (attribute.key.clone(), text_of(attribute))).collect(),
                    // STATUS_CODE_ERROR is 2.
                    failed: span.status.is_some_and(|status| status.code == 2),
                });
            }
        }
    }
    received.spans.lock().extend(kept);
    received.count.fetch_add(count, Ordering::AcqRel);
    received.requests.fetch_add(1, Ordering::AcqRel);
    let answer = ExportTraceServiceResponse { partial_success: None };
    ([(header::CONTENT_TYPE, "application/x-protobuf")], answer.encode_to_vec()).into_response()
}

fn text_of(attribute: &KeyValue) -> String {
    match attribute.value.as_ref().and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
