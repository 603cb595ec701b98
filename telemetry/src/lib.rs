//! Traces of a message's path, as OpenTelemetry spans exported over OTLP.
//!
//! ## The happy path
//! With `[telemetry] otlp_endpoint` set, the binary calls
//! [`Telemetry::start`]: an SDK tracer provider with a batch span
//! processor (its own thread, a bounded queue) and the OTLP/HTTP protobuf
//! exporter, installed as this process's tracer. A send then makes one
//! trace:
//!
//! ```text
//! send (POST /v1/messages | ws message.send)     server span, the root
//! ├── log.append           append → durable (the fsync round)
//! ├── state.apply          the apply round that committed it to the store
//! ├── fanout/fanout        the fanout stage: queued for every recipient
//! │   └── ws.write         per receiving device: queued → written to its socket
//! ├── push/push            the push stage: audience, rule, workflows started
//! ├── search/search_index  read → the index commit that makes it searchable
//! └── history/delta_sink   read → the Delta commit that holds it
//! ```
//!
//! The root's context is written into the `MessageCreated` record
//! (`trace`, a W3C `traceparent`), so every reader of the log, at its own
//! pace and after restarts, adds its span to the same trace. Spans are
//! sampled at the root (`sample_ratio`, by trace id); an unsampled send
//! writes no context and its readers make no spans. A client may send a
//! `traceparent` header with an HTTP send: the send then joins the
//! client's trace (when the client sampled it).
//!
//! ## Failures
//! - **No endpoint configured**: nothing is installed; every [`Span`] is
//!   empty and costs one atomic load.
//! - **The collector is down or slow**: the exporter's requests time out
//!   (`export_timeout_ms`); spans wait in the processor's queue
//!   (`queue_max_spans`) and past that are dropped: tracing never slows
//!   or fails a send.
//! - **A record's context does not parse** (an old or damaged record): the
//!   record is read as having none ([`confab_schemas::trace::lenient`]).
//! - **Shutdown**: [`Telemetry::shutdown`] exports what is queued (bounded
//!   by the export timeout) and uninstalls the tracer.

pub mod receiver;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};
use parking_lot::RwLock;

pub use confab_schemas::trace::TraceParent;
pub use opentelemetry::Value;

/// What `[telemetry]` asks for (validated by the binary's config).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP traces URL (a collector's `…:4318/v1/traces`).
    pub traces_url: String,
    pub service_name: String,
    /// The share of sends traced, 0 to 1.
    pub sample_ratio: f64,
    /// Sent with every export (a vendor's API key, say).
    pub headers: Vec<(String, String)>,
    pub export_timeout: Duration,
    /// Spans waiting for export past which new ones are dropped.
    pub queue_max_spans: usize,
}

impl TelemetryConfig {
    /// The traces URL for `endpoint`: a base address (no path) gets the
    /// OTLP/HTTP path `/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT` does;
    /// a URL with a path is used as it is.
    pub fn traces_url_for(endpoint: &str) -> String {
        let endpoint = endpoint.trim();
        let after_scheme = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
        match after_scheme.find('/') {
            None => format!("{endpoint}/v1/traces"),
            Some(slash) if after_scheme[slash..] == *"/" => format!("{}v1/traces", endpoint),
            Some(_) => endpoint.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the OTLP exporter could not be built: {0}; check [telemetry] otlp_endpoint and headers")]
    Exporter(String),
    #[error("telemetry is already running in this process; stop it before starting another")]
    AlreadyRunning,
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::Exporter(_) => "telemetry_exporter",
            Error::AlreadyRunning => "telemetry_running",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: RwLock<Option<SdkTracer>> = RwLock::new(None);

/// Whether traces are being made (an endpoint is configured and running).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The running exporter; [`Telemetry::shutdown`] flushes it.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Builds the exporter and installs this process's tracer.
    pub fn start(config: &TelemetryConfig) -> Result<Telemetry, Error> {
        let mut tracer = TRACER.write();
        if tracer.is_some() {
            return Err(Error::AlreadyRunning);
        }
        let headers: HashMap<String, String> = config.headers.iter().cloned().collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.traces_url.clone())
            .with_timeout(config.export_timeout)
            .with_headers(headers)
            .build()
            .map_err(|error| Error::Exporter(error.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.queue_max_spans.max(1))
            .with_max_export_batch_size(config.queue_max_spans.clamp(1, 2_048))
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
            .with_resource(resource)
            .build();
        *tracer = Some(provider.tracer("confab"));
        ENABLED.store(true, Ordering::Release);
        Ok(Telemetry { provider: Some(provider) })
    }

    /// Uninstalls the tracer and exports what is queued (blocks up to the
    /// export timeout: call it off the async runtime's threads).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(provider) = self.provider.take() else { return };
        ENABLED.store(false, Ordering::Release);
        TRACER.write().take();
        if let Err(error) = provider.shutdown() {
            tracing::warn!(%error, "some spans could not be exported at shutdown");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a span stands for, in OpenTelemetry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request from a client (a send).
    Server,
    /// A reader of the log working on a record.
    Consumer,
    /// Work inside one step.
    Internal,
}

impl Kind {
    fn otel(self) -> SpanKind {
        match self {
            Kind::Server => SpanKind::Server,
            Kind::Consumer => SpanKind::Consumer,
            Kind::Internal => SpanKind::Internal,
        }
    }
}

/// One span, or nothing when traces are off or its trace is not sampled.
/// It ends when dropped (or at [`Span::end_at`]). Boxed: the SDK's span is
/// hundreds of bytes, and an empty one should cost a pointer.
#[derive(Debug, Default)]
pub struct Span(Option<Box<opentelemetry_sdk::trace::Span>>);

impl Span {
    /// A span that records nothing.
    pub const NONE: Span = Span(None);

    /// A trace's first span in this process: a new trace, or a child of a
    /// caller's sampled `remote` context; the sampler decides.
    pub fn root(name: &'static str, kind: Kind, remote: Option<TraceParent>) -> Span {
        if !enabled() {
            return Span::NONE;
        }
        let parent = remote.map_or_else(Context::new, remote_context);
        Span::build(SpanBuilder::from_name(name).with_kind(kind.otel()), &parent)
    }

    /// A child of `parent` starting now; nothing without a parent.
    pub fn child(name: impl Into<Cow<'static, str>>, kind: Kind, parent: Option<TraceParent>) -> Span {
        match parent {
            Some(parent) if enabled() => Span::build(SpanBuilder::from_name(name).with_kind(kind.otel()), &remote_context(parent)),
            _ => Span::NONE,
        }
    }

    /// A child of `parent` that began at `start` (work measured before the
    /// span could be made, such as a wait in a queue).
    pub fn child_since(name: impl Into<Cow<'static, str>>, kind: Kind, parent: Option<TraceParent>, start: SystemTime) -> Span {
        match parent {
            Some(parent) if enabled() => Span::build(SpanBuilder::from_name(name).with_kind(kind.otel()).with_start_time(start), &remote_context(parent)),
            _ => Span::NONE,
        }
    }

    /// A log reader's span for the record at `partition`/`offset` whose
    /// context is `parent` (a stage of a pipeline, the search indexer, the
    /// history sink): nothing for a record without one.
    pub fn record(name: impl FnOnce() -> String, parent: Option<TraceParent>, partition: u32, offset: u64) -> Span {
        let Some(parent) = parent else { return Span::NONE };
        let mut span = Span::child(name(), Kind::Consumer, Some(parent));
        span.attr("confab.partition", partition as i64);
        span.attr("confab.offset", offset as i64);
        span
    }

    fn build(builder: SpanBuilder, parent: &Context) -> Span {
        let tracer = TRACER.read();
        let Some(tracer) = tracer.as_ref() else { return Span::NONE };
        let span = builder.start_with_context(tracer, parent);
        match span.span_context().is_sampled() {
            true => Span(Some(Box::new(span))),
            false => Span::NONE,
        }
    }

    /// Whether this span records (set attributes only then, if making
    /// them costs anything).
    pub fn recording(&self) -> bool {
        self.0.is_some()
    }

    /// The context children of this span take (and a log record carries).
    pub fn context(&self) -> Option<TraceParent> {
        let context = self.0.as_ref()?.span_context();
        TraceParent::new(u128::from_be_bytes(context.trace_id().to_bytes()), u64::from_be_bytes(context.span_id().to_bytes()))
    }

    pub fn attr(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(span) = self.0.as_mut() {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// An attribute whose value is only made when the span records.
    pub fn attr_with<V: Into<Value>>(&mut self, key: &'static str, value: impl FnOnce() -> V) {
        if let Some(span) = self.0.as_mut() {
            span.set_attribute(KeyValue::new(key, value()));
        }
    }

    /// Marks the span failed, with what went wrong.
    pub fn fail(&mut self, description: impl Into<Cow<'static, str>>) {
        if let Some(span) = self.0.as_mut() {
            span.set_status(Status::error(description));
        }
    }

    pub fn end(self) {
        drop(self);
    }

    /// Ends the span at `end` (work whose end was measured already).
    pub fn end_at(mut self, end: SystemTime) {
        if let Some(span) = self.0.as_mut() {
            span.end_with_timestamp(end);
        }
    }
}

fn remote_context(parent: TraceParent) -> Context {
    let context = SpanContext::new(
        TraceId::from_bytes(parent.trace_id.to_be_bytes()),
        SpanId::from_bytes(parent.span_id.to_be_bytes()),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    Context::new().with_remote_span_context(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_endpoint_gets_the_traces_path_and_a_full_url_is_kept() {
        assert_eq!(TelemetryConfig::traces_url_for("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(TelemetryConfig::traces_url_for("http://collector:4318/"), "http://collector:4318/v1/traces");
        assert_eq!(TelemetryConfig::traces_url_for("https://otlp.example.com/api/traces"), "https://otlp.example.com/api/traces");
    }

    #[test]
    fn spans_record_nothing_when_traces_are_off() {
        let parent = TraceParent::new(1, 2);
        let mut span = Span::child("x", Kind::Internal, parent);
        span.attr("k", 1_i64);
        assert!(!span.recording());
        assert_eq!(span.context(), None);
        assert!(!Span::root("send", Kind::Server, None).recording());
    }
}
