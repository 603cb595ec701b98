//! The exporter against the receiver, both real: spans made through
//! [`Span`] arrive over OTLP/HTTP protobuf with their parent links, and a
//! context carried as a `traceparent` string joins the same trace.

use std::time::Duration;

use confab_telemetry::receiver::Receiver;
use confab_telemetry::{Kind, Span, Telemetry, TelemetryConfig, TraceParent};

fn config(endpoint: &str, sample_ratio: f64) -> TelemetryConfig {
    TelemetryConfig {
        traces_url: TelemetryConfig::traces_url_for(endpoint),
        service_name: "confab-test".into(),
        sample_ratio,
        headers: vec![("x-api-key".into(), "k".into())],
        export_timeout: Duration::from_secs(5),
        queue_max_spans: 4_096,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_with_their_parents_across_a_carried_context() {
    let receiver = Receiver::start(true).await.unwrap();
    let telemetry = Telemetry::start(&config(&receiver.endpoint(), 1.0)).unwrap();
    assert!(matches!(Telemetry::start(&config(&receiver.endpoint(), 1.0)), Err(confab_telemetry::Error::AlreadyRunning)));

    let mut root = Span::root("send", Kind::Server, None);
    root.attr("confab.conversation_id", "c_1");
    let carried: String = root.context().expect("sampled").to_string();
    // What a log reader does: parse the record's context, make a child.
    let parent: TraceParent = carried.parse().unwrap();
    let mut stage = Span::child("fanout/fanout", Kind::Consumer, Some(parent));
    let write = Span::child("ws.write", Kind::Internal, stage.context());
    write.end();
    stage.fail("one device's queue overflowed");
    stage.end();
    root.end();
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let spans = receiver.wait_for(Duration::from_secs(10), |spans| spans.len() >= 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let by_name = |name: &str| spans.iter().find(|span| span.name == name).unwrap_or_else(|| panic!("no span {name}: {spans:#?}"));
    let (send, fanout, write) = (by_name("send"), by_name("fanout/fanout"), by_name("ws.write"));
    assert_eq!(send.parent_span_id, None);
    assert_eq!(fanout.parent_span_id, Some(send.span_id));
    assert_eq!(write.parent_span_id, Some(fanout.span_id));
    assert!(spans.iter().all(|span| span.trace_id == parent.trace_id && span.service == "confab-test"));
    assert_eq!((send.kind, fanout.kind, write.kind), (2, 5, 1));
    assert_eq!(send.attribute("confab.conversation_id"), Some("c_1"));
    assert!(fanout.failed && !send.failed);
    assert!(send.start_unix_nanos <= fanout.start_unix_nanos && fanout.end_unix_nanos <= send.end_unix_nanos + 1_000_000_000);
    // After shutdown nothing records.
    assert!(!Span::root("send", Kind::Server, None).recording());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_root_makes_no_spans_and_no_context() {
    let receiver = Receiver::start(true).await.unwrap();
    let telemetry = Telemetry::start(&config(&receiver.endpoint(), 0.0)).unwrap();
    let root = Span::root("send", Kind::Server, None);
    assert!(!root.recording());
    assert_eq!(root.context(), None, "an unsampled send writes no context into its record");
    drop(root);
    // A client's sampled context is honoured even at ratio 0 (parent-based).
    let client = TraceParent::new(7, 9);
    let joined = Span::root("send", Kind::Server, client);
    assert_eq!(joined.context().map(|context| context.trace_id), Some(7));
    joined.end();
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();
    let spans = receiver.wait_for(Duration::from_secs(10), |spans| !spans.is_empty()).await;
    assert_eq!(spans.len(), 1);
    assert_eq!((spans[0].trace_id, spans[0].parent_span_id), (7, Some(9)));
}

#[tokio::test]
async fn the_receiver_refuses_what_is_not_otlp_protobuf() {
    let receiver = Receiver::start(true).await.unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/v1/traces", receiver.endpoint());
    let json = client.post(&url).header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_eq!(json.status(), 415);
    let garbage = client.post(&url).header("content-type", "application/x-protobuf").body(vec![0xff, 0xff, 0xff]).send().await.unwrap();
    assert_eq!(garbage.status(), 400);
    assert_eq!(receiver.span_count(), 0);
}
