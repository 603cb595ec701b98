//! Traces across the whole path, exported over OTLP/HTTP to a receiver
//! built on the OTLP protobufs (`confab_telemetry::receiver`; no
//! OpenTelemetry Collector or Jaeger installs here): a message sent over
//! HTTP and one over the WebSocket each make one trace, from the send
//! through the log append, the apply, the fanout, search and history
//! stages, the push stage, to the socket write on the receiving device, every span linked
//! to its parent. The readers of the log learn the trace only from the
//! record, so the spans also show that the context travels inside it.

use std::collections::BTreeSet;
use std::time::Duration;

use confab_telemetry::receiver::{ReceivedSpan, Receiver};
use serde_json::json;

use crate::harness::TestServer;
use crate::push::{push_config, On};
use crate::ws::Ws;

const CLIENT_TRACE: u128 = 0x0af7651916cd43dd8448eb211c80319c;
const CLIENT_SPAN: u64 = 0xb7ad6b7169203331;

fn names(spans: &[ReceivedSpan], trace_id: u128) -> BTreeSet<String> {
    spans.iter().filter(|span| span.trace_id == trace_id).map(|span| span.name.clone()).collect()
}

fn one<'a>(spans: &'a [ReceivedSpan], trace_id: u128, name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|span| span.trace_id == trace_id && span.name == name).collect();
    assert_eq!(found.len(), 1, "expected one {name} in trace {trace_id:x}: {found:#?}");
    found[0]
}

/// Every stage of the path, by span name, and the parent each must have.
const STAGES: [(&str, Parent); 7] = [
    ("log.append", Parent::Send),
    ("state.apply", Parent::Send),
    ("fanout/fanout", Parent::Send),
    ("push/push", Parent::Send),
    ("search/search_index", Parent::Send),
    ("history/delta_sink", Parent::Send),
    ("ws.write", Parent::Fanout),
];

#[derive(Clone, Copy)]
enum Parent {
    Send,
    Fanout,
}

fn assert_path(spans: &[ReceivedSpan], trace_id: u128, root: &str, bob_device: &str) {
    let send = one(spans, trace_id, root);
    let fanout = one(spans, trace_id, "fanout/fanout");
    for (name, parent) in STAGES {
        let span = one(spans, trace_id, name);
        let expected = match parent {
            Parent::Send => send.span_id,
            Parent::Fanout => fanout.span_id,
        };
        assert_eq!(span.parent_span_id, Some(expected), "{name}'s parent in {spans:#?}");
        assert!(span.start_unix_nanos >= send.start_unix_nanos && span.end_unix_nanos >= span.start_unix_nanos, "{name} starts before its send: {span:#?}");
        assert_eq!(span.service, "confab");
        assert!(!span.failed, "{span:#?}");
    }
    let write = one(spans, trace_id, "ws.write");
    assert_eq!(write.attribute("confab.device_id"), Some(bob_device), "the write is on the receiving device");
    assert!(write.start_unix_nanos >= fanout.start_unix_nanos);
    let append = one(spans, trace_id, "log.append");
    assert_eq!(append.attribute("confab.offset"), fanout.attribute("confab.offset"), "the fanout read the record the send appended");
    assert_eq!(one(spans, trace_id, "search/search_index").attribute("confab.offset"), append.attribute("confab.offset"));
    // Consumers and the server span are of their kinds (OTLP: 2 server, 5 consumer).
    assert_eq!(send.kind, 2);
    assert_eq!(fanout.kind, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_send_is_one_trace_from_the_send_to_the_receiving_socket() {
    let receiver = Receiver::start(true).await.unwrap();
    // With the push services (the local fakes), so that the push stage runs too.
    let (mut config, _fakes, _data) = push_config(3, None, On::Embedded).await.expect("the embedded engine is always there");
    config.telemetry.otlp_endpoint = Some(receiver.endpoint());
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let mut bob_ws = Ws::connect(&bob, None).await;

    // Over HTTP, inside a client's own trace (its `traceparent` header).
    let traceparent = format!("00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01");
    let response = alice
        .http
        .post(format!("{}/v1/messages", alice.base))
        .bearer_auth(alice.token.as_ref().unwrap())
        .header("traceparent", &traceparent)
        .json(&json!({"conversationId": dm, "clientMsgId": "h1", "body": "over http"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let sent: serde_json::Value = response.json().await.unwrap();
    assert_eq!(bob_ws.next_message().await["message"]["body"], "over http");

    // Over the socket: a trace of its own.
    let mut alice_ws = Ws::connect(&alice, None).await;
    alice_ws.send(json!({"type": "message.send", "id": "1", "conversationId": dm, "clientMsgId": "w1", "body": "over the socket"})).await;
    assert_eq!(alice_ws.next_of("ack").await["message"]["body"], "over the socket");
    assert_eq!(bob_ws.next_message().await["message"]["body"], "over the socket");

    // A refused send is a trace of one failed span.
    let (status, _) = carol.post("/v1/messages", json!({"conversationId": dm, "clientMsgId": "x", "body": "not a member"})).await;
    assert_eq!(status, 403);

    let complete = |spans: &[ReceivedSpan]| {
        let ws_roots: Vec<&ReceivedSpan> = spans.iter().filter(|span| span.name == "ws message.send").collect();
        names(spans, CLIENT_TRACE).len() >= 8
            && ws_roots.len() == 1
            && names(spans, ws_roots[0].trace_id).len() >= 8
            && spans.iter().any(|span| span.name == "POST /v1/messages" && span.failed)
    };
    let spans = receiver.wait_for(Duration::from_secs(30), complete).await;
    let expected: BTreeSet<String> =
        ["POST /v1/messages", "log.append", "state.apply", "fanout/fanout", "push/push", "ws.write", "search/search_index", "history/delta_sink"]
            .map(String::from)
            .into();
    assert_eq!(names(&spans, CLIENT_TRACE), expected, "{spans:#?}");

    let http_send = one(&spans, CLIENT_TRACE, "POST /v1/messages");
    assert_eq!(http_send.parent_span_id, Some(CLIENT_SPAN), "the send joins the client's trace");
    assert_eq!(http_send.attribute("http.response.status_code"), Some("201"));
    assert_eq!(http_send.attribute("confab.message_id"), sent["messageId"].as_str());
    assert_path(&spans, CLIENT_TRACE, "POST /v1/messages", &bob.device_id);

    let ws_send = spans.iter().find(|span| span.name == "ws message.send").unwrap();
    assert_eq!(ws_send.parent_span_id, None, "a socket send starts its own trace");
    assert_ne!(ws_send.trace_id, CLIENT_TRACE);
    assert_path(&spans, ws_send.trace_id, "ws message.send", &bob.device_id);

    let refused = spans.iter().find(|span| span.name == "POST /v1/messages" && span.failed).unwrap();
    assert_eq!(refused.attribute("http.response.status_code"), Some("403"));
    assert_eq!(refused.attribute("confab.error_code"), Some("forbidden"));
    assert_eq!(names(&spans, refused.trace_id).len(), 1, "nothing was appended for a refused send");

    // Alice's own socket did not get her message back: one write per trace, on bob's device.
    assert_eq!(spans.iter().filter(|span| span.name == "ws.write").count(), 2);
    server.stop().await;
}
