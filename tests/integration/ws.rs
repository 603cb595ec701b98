//! The WebSocket: live delivery to every other device, every event type,
//! resume without gaps or repeats, slow consumers, membership changes,
//! presence and typing, and bad frames, with real WebSocket clients.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{test_config, Client, TestServer};

/// Long enough for anything already decided to arrive.
const ARRIVAL: Duration = Duration::from_secs(10);

/// Reads until the server's close frame, skipping other frames; panics if
/// none comes in time or the socket breaks without one.
pub async fn close_frame<S>(reader: &mut S) -> tokio_tungstenite::tungstenite::protocol::CloseFrame
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(ARRIVAL, reader.next()).await.expect("the server closes the socket in time") {
            Some(Ok(Message::Close(frame))) => return frame.expect("a close frame with a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
    pub last_cursor: Option<String>,
}

impl Ws {
    pub async fn connect(client: &Client, cursor: Option<&str>) -> Ws {
        let base = client.base.replace("http://", "ws://");
        let url = match cursor {
            Some(cursor) => format!("{base}/v1/ws?cursor={cursor}"),
            None => format!("{base}/v1/ws"),
        };
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {}", client.token.as_ref().unwrap()).parse().unwrap());
        let (stream, _) = tokio_tungstenite::connect_async(request).await.expect("the upgrade succeeds");
        let mut ws = Ws { stream, hello: Value::Null, last_cursor: cursor.map(str::to_string) };
        ws.hello = ws.next_frame().await;
        assert_eq!(ws.hello["type"], "hello");
        ws
    }

    /// The next frame of any type.
    pub async fn next_frame(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(ARRIVAL, self.stream.next()).await.expect("a frame arrives in time").expect("the socket is open").unwrap();
            match message {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if let Some(cursor) = frame["cursor"].as_str() {
                        self.last_cursor = Some(cursor.to_string());
                    }
                    return frame;
                }
                Message::Close(frame) => panic!("the server closed the socket: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next durable event (presence and typing are skipped).
    pub async fn next_event(&mut self) -> Value {
        loop {
            let frame = self.next_frame().await;
            if !matches!(frame["type"].as_str(), Some("presence" | "typing")) {
                return frame;
            }
        }
    }

    /// The next `message.new`, skipping receipts and ephemeral frames.
    pub async fn next_message(&mut self) -> Value {
        loop {
            let frame = self.next_event().await;
            if frame["type"] != "receipt.delivered" && frame["type"] != "receipt.read" {
                assert_eq!(frame["type"], "message.new", "{frame}");
                return frame;
            }
        }
    }

    /// The next frame of `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next_frame().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// The underlying stream, for tests that read close frames.
    pub fn into_stream(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.stream
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream.send(Message::Text(frame.to_string().into())).await.unwrap();
    }

    /// Asserts that no durable event arrives for a while: used only after
    /// another recipient got the same record, so fanout has already decided.
    pub async fn assert_no_event(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    assert!(matches!(frame["type"].as_str(), Some("presence" | "typing")), "unexpected frame {frame}");
                }
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("the socket ended: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_message_reaches_every_other_device_but_not_the_sender() {
    let server = TestServer::start().await;
    let alice_phone = server.user("alice").await;
    let alice_laptop = server.client().login("alice", "password123").await;
    let bob = server.user("bob").await;
    let dm = alice_phone.conversation("dm", &[&bob]).await;
    let mut phone = Ws::connect(&alice_phone, None).await;
    assert_eq!(phone.hello["userId"], alice_phone.user_id.as_str());
    assert_eq!(phone.hello["deviceId"], alice_phone.device_id.as_str());
    assert!(phone.hello["heartbeatMs"].as_u64().unwrap() > 0);
    let mut laptop = Ws::connect(&alice_laptop, None).await;
    let mut bob_ws = Ws::connect(&bob, None).await;

    phone.send(json!({"type": "message.send", "id": "s1", "conversationId": dm, "clientMsgId": "ws-1", "body": "over the socket"})).await;
    let ack = phone.next_of("ack").await;
    assert_eq!(ack["id"], "s1");
    assert_eq!(ack["message"]["seq"], 1);
    for ws in [&mut laptop, &mut bob_ws] {
        let event = ws.next_event().await;
        assert_eq!(event["type"], "message.new");
        assert_eq!(event["message"], ack["message"]);
        assert!(event["cursor"].is_string());
    }
    // A retry over the socket is the same message, not a second one.
    phone.send(json!({"type": "message.send", "id": "s2", "conversationId": dm, "clientMsgId": "ws-1", "body": "over the socket"})).await;
    let again = phone.next_of("ack").await;
    assert_eq!(again["message"]["messageId"], ack["message"]["messageId"]);

    // A send over HTTP reaches the sockets too, the sender's other devices included.
    bob.say(&dm, "http-1", "from bob").await;
    let on_phone = phone.next_event().await;
    assert_eq!((on_phone["type"].clone(), on_phone["message"]["body"].clone()), (json!("message.new"), json!("from bob")));
    assert_eq!(laptop.next_event().await["message"]["body"], "from bob");
    // Bob's own socket got nothing of his HTTP send: its device is the sender.
    bob_ws.assert_no_event(Duration::from_millis(300)).await;
    assert_eq!(alice_phone.all_messages(&dm).await.len(), 2);
}

#[tokio::test]
async fn every_durable_event_type_arrives_live_with_a_cursor() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let group = alice.conversation("group", &[&bob]).await;
    let mut alice_ws = Ws::connect(&alice, None).await;
    let mut bob_ws = Ws::connect(&bob, None).await;

    let message = bob.say(&group, "m1", "first").await;
    let id = message["messageId"].as_str().unwrap().to_string();
    assert_eq!(alice_ws.next_event().await["type"], "message.new");

    bob.patch(&format!("/v1/messages/{id}"), json!({"body": "edited"})).await;
    let edit = alice_ws.next_event().await;
    assert_eq!(
        (edit["type"].clone(), edit["message"]["body"].clone(), edit["message"]["edited"].clone()),
        (json!("message.edit"), json!("edited"), json!(true))
    );

    // Delivery receipts are coalesced by the receipts pipeline, then fanned out.
    alice_ws.send(json!({"type": "receipt.delivered", "conversationId": group, "seq": 1})).await;
    let delivered = bob_ws.next_of("receipt.delivered").await;
    assert_eq!((delivered["userId"].as_str().unwrap(), delivered["seq"].as_u64().unwrap()), (alice.user_id.as_str(), 1));
    assert!(delivered["cursor"].is_string());
    alice_ws.send(json!({"type": "receipt.read", "conversationId": group, "seq": 1})).await;
    let read = bob_ws.next_of("receipt.read").await;
    assert_eq!((read["userId"].as_str().unwrap(), read["seq"].as_u64().unwrap()), (alice.user_id.as_str(), 1));
    let (_, members) = bob.get(&format!("/v1/conversations/{group}/members")).await;
    let alice_row = members["members"].as_array().unwrap().iter().find(|row| row["userId"] == alice.user_id.as_str()).unwrap().clone();
    assert_eq!((alice_row["lastDeliveredSeq"].clone(), alice_row["lastReadSeq"].clone()), (json!(1), json!(1)));
    // Per device too: the socket's device delivered and read 1.
    assert_eq!(alice_row["devices"], json!([{"deviceId": alice.device_id, "lastDeliveredSeq": 1, "lastReadSeq": 1}]));

    alice.delete(&format!("/v1/messages/{id}")).await;
    let deleted = bob_ws.next_of("message.delete").await;
    assert_eq!((deleted["messageId"].as_str().unwrap(), deleted["seq"].as_u64().unwrap()), (id.as_str(), 1));

    alice.post(&format!("/v1/conversations/{group}/members"), json!({"userIds": [carol.user_id]})).await;
    let joined = bob_ws.next_of("conversation.member").await;
    assert_eq!((joined["userId"].as_str().unwrap(), joined["change"].as_str().unwrap()), (carol.user_id.as_str(), "joined"));
    // The events a socket got are the ones sync gives, in the same order.
    let (_, synced) = bob.get("/v1/sync").await;
    let sync_types: Vec<String> = synced["events"].as_array().unwrap().iter().map(|event| event["type"].as_str().unwrap().to_string()).collect();
    assert!(
        sync_types.ends_with(&["message.new", "message.edit", "receipt.delivered", "receipt.read", "message.delete", "conversation.member"].map(String::from)),
        "{sync_types:?}"
    );
}

#[tokio::test]
async fn membership_changes_take_effect_for_the_very_next_message() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let group = alice.conversation("group", &[&bob]).await;
    let mut bob_ws = Ws::connect(&bob, None).await;
    let mut carol_ws = Ws::connect(&carol, None).await;

    alice.post(&format!("/v1/conversations/{group}/members"), json!({"userIds": [carol.user_id]})).await;
    assert_eq!(carol_ws.next_event().await["change"], "joined");
    alice.say(&group, "to-three", "carol is here").await;
    assert_eq!(carol_ws.next_event().await["message"]["body"], "carol is here");

    alice.delete(&format!("/v1/conversations/{group}/members/{}", bob.user_id)).await;
    // Bob saw carol join and the message, then his own leaving.
    let mut bob_view = Vec::new();
    loop {
        let event = bob_ws.next_event().await;
        bob_view.push(format!("{} {}", event["type"].as_str().unwrap(), event["change"].as_str().unwrap_or("")));
        if event["type"] == "conversation.member" && event["userId"] == bob.user_id.as_str() {
            break;
        }
    }
    assert_eq!(bob_view, vec!["conversation.member joined", "message.new ", "conversation.member left"]);
    alice.say(&group, "after-bob", "bob is gone").await;
    loop {
        let event = carol_ws.next_event().await;
        if event["type"] == "message.new" && event["message"]["body"] == "bob is gone" {
            break;
        }
    }
    // Carol has it, so fanout has decided; bob must not get it.
    bob_ws.assert_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn resuming_during_a_burst_misses_nothing_and_repeats_nothing() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.conversation("group", &[&bob]).await;
    let other = alice.conversation("dm", &[&bob]).await;
    let mut bob_ws = Ws::connect(&bob, None).await;
    const TOTAL: u64 = 300;
    let sender = {
        let alice = alice.clone();
        let (group, other) = (group.clone(), other.clone());
        tokio::spawn(async move {
            for index in 0..TOTAL {
                let conversation = if index % 3 == 0 { &other } else { &group };
                alice.say(conversation, &format!("burst-{index}"), &format!("{index}")).await;
            }
        })
    };
    let mut seen: Vec<String> = Vec::new();
    // Take some events, drop the connection mid-burst, resume from the last cursor.
    for round in 0..3 {
        for _ in 0..40 {
            let event = bob_ws.next_message().await;
            seen.push(event["message"]["clientMsgId"].as_str().unwrap().to_string());
        }
        let cursor = bob_ws.last_cursor.clone().expect("events carry cursors");
        drop(bob_ws);
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(50)).await; // Sends go on while bob is away.
        }
        bob_ws = Ws::connect(&bob, Some(&cursor)).await;
    }
    while (seen.len() as u64) < TOTAL {
        let event = bob_ws.next_message().await;
        seen.push(event["message"]["clientMsgId"].as_str().unwrap().to_string());
    }
    sender.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    // (Receipts caused by the replays may still arrive; messages may not.)
    assert_eq!(unique.len(), seen.len(), "an event came twice");
    let expected: BTreeSet<String> = (0..TOTAL).map(|index| format!("burst-{index}")).collect();
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    // Within each conversation, in seq order.
    for conversation in [&group, &other] {
        let order: Vec<u64> = alice.all_messages(conversation).await.iter().map(|message| message["body"].as_str().unwrap().parse().unwrap()).collect();
        let received: Vec<u64> = seen.iter().map(|id| id.trim_start_matches("burst-").parse::<u64>().unwrap()).filter(|index| order.contains(index)).collect();
        assert_eq!(received, order);
    }
}

#[tokio::test]
async fn a_slow_reader_is_told_to_resume_and_never_slows_the_others() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.gateway.connection_queue_max_frames = 8;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let group = alice.conversation("group", &[&bob, &carol]).await;
    let mut slow = Ws::connect(&bob, None).await;
    let mut fast = Ws::connect(&carol, None).await;
    let body = "x".repeat(16_000);
    const TOTAL: usize = 1_000;
    let sender = {
        let (alice, group, body) = (alice.clone(), group.clone(), body.clone());
        tokio::spawn(async move {
            for index in 0..TOTAL {
                alice.say(&group, &format!("big-{index}"), &body).await;
            }
        })
    };
    // Carol keeps up with everything while bob reads nothing.
    for _ in 0..TOTAL {
        fast.next_message().await;
    }
    sender.await.unwrap();
    // Bob finally reads: what was queued, then an error telling him where to resume, then the close.
    let mut received = 0;
    let resume = loop {
        let frame = slow.next_frame().await;
        match frame["type"].as_str() {
            Some("message.new") => received += 1,
            Some("error") => {
                assert_eq!(frame["code"], "unavailable");
                break frame["cursor"].as_str().unwrap().to_string();
            }
            _ => {}
        }
    };
    assert!(received < TOTAL, "bob was disconnected before getting everything");
    let mut resumed = Ws::connect(&bob, Some(&resume)).await;
    for _ in received..TOTAL {
        resumed.next_message().await;
    }
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_usable() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let theirs = bob.conversation("dm", &[&carol]).await;
    let mine = alice.conversation("group", &[]).await;
    let mut ws = Ws::connect(&alice, None).await;
    let cases = [
        (Message::Text("not json".into()), None, "bad_request", "not JSON"),
        (Message::Text(json!({"type": "nope"}).to_string().into()), None, "bad_request", "unknown variant"),
        (Message::Text(json!({"type": "message.send", "id": 7, "conversationId": mine}).to_string().into()), Some(json!(7)), "bad_request", "clientMsgId"),
        (
            Message::Text(json!({"type": "message.send", "conversationId": mine, "clientMsgId": "a", "body": "x"}).to_string().into()),
            None,
            "bad_request",
            "`id`",
        ),
        (
            Message::Text(json!({"type": "message.send", "id": "f", "conversationId": theirs, "clientMsgId": "a", "body": "x"}).to_string().into()),
            Some(json!("f")),
            "forbidden",
            "not a member",
        ),
        (
            Message::Text(json!({"type": "message.send", "id": "e", "conversationId": mine, "clientMsgId": "a", "body": ""}).to_string().into()),
            Some(json!("e")),
            "bad_request",
            "`body`",
        ),
        (Message::Text(json!({"type": "receipt.delivered", "conversationId": mine, "seq": 99}).to_string().into()), None, "bad_request", "`seq`"),
        (Message::Binary(vec![1, 2, 3].into()), None, "bad_request", "text frames"),
    ];
    for (frame, id, code, needle) in cases {
        ws.stream.send(frame).await.unwrap();
        let error = ws.next_of("error").await;
        assert_eq!(error["code"], code, "{error}");
        assert!(error["message"].as_str().unwrap().contains(needle), "{error}");
        assert_eq!(error.get("id").cloned(), id, "{error}");
    }
    ws.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(ws.next_of("pong").await["id"], 1);
    ws.send(json!({"type": "message.send", "id": "ok", "conversationId": mine, "clientMsgId": "fine", "body": "still works"})).await;
    assert_eq!(ws.next_of("ack").await["message"]["body"], "still works");
}

#[tokio::test]
async fn a_frame_over_the_limit_is_closed_with_1009_and_the_server_serves_the_rest() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.conversation("group", &[&bob]).await;
    let Ws { stream, .. } = Ws::connect(&alice, None).await;
    let (mut writer, mut reader) = stream.split();
    // 8 MiB, far over the 64 KiB default: the server refuses it from the
    // frame's header. The write may fail once the server has closed.
    let huge = "x".repeat(8 * 1024 * 1024);
    let writing = tokio::spawn(async move {
        let _ = writer.send(Message::Text(huge.into())).await;
        writer
    });
    let close = close_frame(&mut reader).await;
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    assert!(close.reason.contains("65536 bytes"), "{close:?}");
    drop(writing.await);
    // Everyone else, alice included on a new socket, is served as before.
    let mut bob_ws = Ws::connect(&bob, None).await;
    let mut again = Ws::connect(&alice, None).await;
    again.send(json!({"type": "message.send", "id": 1, "conversationId": group, "clientMsgId": "after", "body": "still here"})).await;
    assert_eq!(again.next_of("ack").await["message"]["body"], "still here");
    assert_eq!(bob_ws.next_message().await["message"]["body"], "still here");
}

#[tokio::test]
async fn many_sends_in_flight_on_one_socket_are_each_answered_once_in_send_order() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    // A small bound, so that the socket also waits at it.
    config.gateway.ws_sends_in_flight_max = 8;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let group = alice.conversation("group", &[&carol]).await;
    let theirs = bob.conversation("dm", &[&carol]).await;
    let mut bob_ws = Ws::connect(&bob, None).await;
    let mut ws = Ws::connect(&alice, None).await;

    // 120 sends over two conversations without waiting for any ack, with a
    // refused one (not a member) and a retry of an earlier one among them.
    let mut expected = Vec::new();
    for index in 0..120 {
        let conversation = if index % 3 == 0 { &group } else { &dm };
        ws.send(json!({"type": "message.send", "id": index, "conversationId": conversation, "clientMsgId": format!("k{index}"), "body": format!("m{index}")}))
            .await;
        expected.push(json!(index));
        if index == 50 {
            ws.send(json!({"type": "message.send", "id": "refused", "conversationId": theirs, "clientMsgId": "x", "body": "no"})).await;
            expected.push(json!("refused"));
            ws.send(json!({"type": "message.send", "id": "retry", "conversationId": dm, "clientMsgId": "k1", "body": "m1"})).await;
            expected.push(json!("retry"));
        }
    }
    let mut answered = Vec::new();
    let mut acks = std::collections::HashMap::new();
    while answered.len() < expected.len() {
        let frame = ws.next_frame().await;
        match frame["type"].as_str() {
            Some("ack") => {
                answered.push(frame["id"].clone());
                acks.insert(frame["id"].to_string(), frame["message"].clone());
            }
            Some("error") => {
                assert_eq!((frame["id"].clone(), frame["code"].clone()), (json!("refused"), json!("forbidden")), "{frame}");
                answered.push(frame["id"].clone());
            }
            _ => {}
        }
    }
    // Every command answered once, in the order it was sent.
    assert_eq!(answered, expected);
    // Within each conversation the seqs follow the send order, with no gap.
    for (conversation, first) in [(&group, 0), (&dm, 1)] {
        let seqs: Vec<u64> =
            (0..120).filter(|index| (*index % 3 == 0) == (first == 0)).map(|index| acks[&index.to_string()]["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{conversation}");
    }
    assert_eq!(acks["\"retry\""]["messageId"], acks["1"]["messageId"], "a retry in flight is its original");
    // The recipient gets each message once, in order.
    let mut bodies = Vec::new();
    while bodies.len() < 80 {
        bodies.push(bob_ws.next_message().await["message"]["body"].as_str().unwrap().to_string());
    }
    let sent: Vec<String> = (0..120).filter(|index| index % 3 != 0).map(|index| format!("m{index}")).collect();
    assert_eq!(bodies, sent);
    assert_eq!(alice.all_messages(&dm).await.len(), 80);
    assert_eq!(alice.all_messages(&group).await.len(), 40);
}

#[tokio::test]
async fn sends_in_flight_when_the_socket_closes_are_still_applied_and_delivered() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let mut bob_ws = Ws::connect(&bob, None).await;
    let mut ws = Ws::connect(&alice, None).await;
    for index in 0..20 {
        ws.send(json!({"type": "message.send", "id": index, "conversationId": dm, "clientMsgId": format!("gone-{index}"), "body": format!("b{index}")})).await;
    }
    // Hang up without reading a single ack.
    ws.stream.close(None).await.unwrap();
    drop(ws);
    // Nothing else is written: the messages must not wait for another send.
    let mut bodies = Vec::new();
    while bodies.len() < 20 {
        bodies.push(bob_ws.next_message().await["message"]["body"].as_str().unwrap().to_string());
    }
    assert_eq!(bodies, (0..20).map(|index| format!("b{index}")).collect::<Vec<_>>());
    // A retry after reconnecting finds each message instead of a second one.
    let mut again = Ws::connect(&alice, None).await;
    again.send(json!({"type": "message.send", "id": "r", "conversationId": dm, "clientMsgId": "gone-19", "body": "b19"})).await;
    assert_eq!(again.next_of("ack").await["message"]["seq"], 20);
    assert_eq!(alice.all_messages(&dm).await.len(), 20);
}

#[tokio::test]
async fn presence_and_typing_reach_the_other_members() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.gateway.heartbeat_ms = 300;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let mut alice_ws = Ws::connect(&alice, None).await;
    // Keep alice's connection alive while the test waits on bob.
    let mut bob_ws = Ws::connect(&bob, None).await;
    let online = alice_ws.next_of("presence").await;
    assert_eq!((online["userId"].as_str().unwrap(), online["status"].as_str().unwrap()), (bob.user_id.as_str(), "online"));
    assert!(online["lastSeen"].as_i64().unwrap() > 0);
    bob_ws.send(json!({"type": "typing", "conversationId": dm})).await;
    alice_ws.send(json!({"type": "ping"})).await;
    let typing = alice_ws.next_of("typing").await;
    assert_eq!((typing["conversationId"].as_str().unwrap(), typing["userId"].as_str().unwrap()), (dm.as_str(), bob.user_id.as_str()));
    // Bob goes silent: after two heartbeats the server drops him and he is offline.
    let offline = loop {
        alice_ws.send(json!({"type": "ping"})).await;
        let frame = alice_ws.next_frame().await;
        if frame["type"] == "presence" {
            break frame;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((offline["userId"].as_str().unwrap(), offline["status"].as_str().unwrap()), (bob.user_id.as_str(), "offline"));
    drop(bob_ws);
}

#[tokio::test]
async fn the_upgrade_refuses_bad_tokens_and_cursors_in_the_api_format() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let anonymous = server.client();
    let (status, body) = anonymous.get("/v1/ws").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")));
    let (status, body) = anonymous.get(&format!("/v1/ws?accessToken={}&cursor=bogus", alice.token.as_ref().unwrap())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")));
    assert!(body["error"]["message"].as_str().unwrap().contains("`cursor`"));
    // The token may come as a query parameter, for browsers.
    let base = alice.base.replace("http://", "ws://");
    let (mut stream, _) = tokio_tungstenite::connect_async(format!("{base}/v1/ws?accessToken={}", alice.token.as_ref().unwrap())).await.unwrap();
    let hello = stream.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"hello\""));
}

#[tokio::test]
async fn syncing_past_a_message_marks_it_delivered() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let mut alice_ws = Ws::connect(&alice, None).await;
    alice.say(&dm, "one", "hello").await;
    alice.say(&dm, "two", "again").await;
    let (status, _) = bob.get("/v1/sync").await;
    assert_eq!(status, 200);
    let delivered = alice_ws.next_of("receipt.delivered").await;
    assert_eq!((delivered["userId"].as_str().unwrap(), delivered["seq"].as_u64().unwrap()), (bob.user_id.as_str(), 2));
    let (_, members) = alice.get(&format!("/v1/conversations/{dm}/members")).await;
    let bob_row = members["members"].as_array().unwrap().iter().find(|row| row["userId"] == bob.user_id.as_str()).unwrap().clone();
    assert_eq!((bob_row["lastDeliveredSeq"].clone(), bob_row["lastReadSeq"].clone()), (json!(2), json!(0)));
}

#[tokio::test]
async fn an_operators_pipeline_folder_replaces_the_shipped_one_and_errors_stop_the_start() {
    let definitions = tempfile::tempdir().unwrap();
    // Fanout without read receipts.
    std::fs::write(
        definitions.path().join("fanout.toml"),
        "version = 1\n[[pipeline]]\nname = \"quiet-fanout\"\nsource = \"log\"\n[[pipeline.stage]]\nkind = \"filter\"\nevent_types = [\"message.new\"]\n[[pipeline.stage]]\nkind = \"fanout\"\nlarge_conversation_members = 50\n",
    )
    .unwrap();
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.pipelines_dir = Some(definitions.path().to_path_buf());
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let mut alice_ws = Ws::connect(&alice, None).await;
    let message = bob.say(&dm, "one", "hi").await;
    bob.post(&format!("/v1/conversations/{dm}/read"), json!({"lastReadMessageId": message["messageId"]})).await;
    bob.say(&dm, "two", "marker").await;
    assert_eq!(alice_ws.next_event().await["message"]["body"], "hi");
    // The read receipt came between the two messages; the filter dropped it.
    assert_eq!(alice_ws.next_event().await["message"]["body"], "marker");

    std::fs::write(definitions.path().join("broken.toml"), "version = 1\n[[pipeline]]\nname = \"x\"\nsource = \"nowhere\"\n").unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut config = test_config(other.path());
    config.pipelines_dir = Some(definitions.path().to_path_buf());
    let error = confab::server::start(config).await.err().expect("a broken definition stops the start").to_string();
    assert!(error.contains("broken.toml: pipeline `x`: `source`: `nowhere` is not one of log, device_receipts"), "{error}");
}

/// Logging out ends a device: its token answers 401, its open socket is
/// closed with 4401, the user's other devices go on; a device of someone
/// else is not found.
#[tokio::test]
async fn a_logged_out_device_loses_its_token_and_its_socket() {
    let server = TestServer::start().await;
    let phone = server.user("alice").await;
    let laptop = server.client().login("alice", "password123").await;
    let bob = server.user("bob").await;

    let (status, listed) = laptop.get("/v1/devices").await;
    assert_eq!(status, 200, "{listed}");
    let devices = listed["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{listed}");
    assert_eq!(devices[0]["deviceId"], phone.device_id.as_str(), "oldest first");
    assert_eq!(devices[0]["current"], false);
    assert_eq!(devices[1]["deviceId"], laptop.device_id.as_str());
    assert_eq!(devices[1]["current"], true);
    assert!(devices[1]["lastSeen"].as_i64().is_some(), "{listed}");

    let Ws { stream, .. } = Ws::connect(&phone, None).await;
    let (_writer, mut reader) = stream.split();
    crate::harness::assert_error(&bob.delete(&format!("/v1/devices/{}", phone.device_id)).await, 404, "not_found");
    let (status, body) = laptop.delete(&format!("/v1/devices/{}", phone.device_id)).await;
    assert_eq!(status, 204, "{body}");
    let close = close_frame(&mut reader).await;
    assert_eq!(u16::from(close.code), 4401, "{close:?}");
    crate::harness::assert_error(&phone.get("/v1/conversations").await, 401, "unauthenticated");
    let upgrade = tokio_tungstenite::connect_async({
        let mut request = format!("{}/v1/ws", phone.base.replace("http://", "ws://")).into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {}", phone.token.as_ref().unwrap()).parse().unwrap());
        request
    })
    .await;
    assert!(upgrade.is_err(), "a logged-out token cannot open a socket");

    let (status, listed) = laptop.get("/v1/devices").await;
    assert_eq!(status, 200);
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1, "{listed}");
    // The laptop logs itself out; then it is out too.
    let (status, _) = laptop.delete("/v1/sessions/current").await;
    assert_eq!(status, 204);
    crate::harness::assert_error(&laptop.get("/v1/devices").await, 401, "unauthenticated");
    // The account itself is fine: a new login works.
    let again = server.client().login("alice", "password123").await;
    assert_eq!(again.user_id, phone.user_id);
}

/// Presence is debounced: a reconnect within `presence_debounce_ms` is
/// announced to nobody; a real disconnect is, once the time has passed.
/// Typing is shed per user and conversation, whichever socket it comes from.
#[tokio::test]
async fn presence_is_debounced_and_typing_is_limited_per_user() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.gateway.presence_debounce_ms = 1_500;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let mut alice_ws = Ws::connect(&alice, None).await;
    let bob_ws = Ws::connect(&bob, None).await;
    assert_eq!(alice_ws.next_of("presence").await["status"], "online");
    // Bob's connection drops and comes back at once: nothing to tell.
    drop(bob_ws);
    let mut bob_ws = Ws::connect(&bob, None).await;
    let bob_on_phone = server.client().login("bob", "password123").await;
    let mut bob_phone = Ws::connect(&bob_on_phone, None).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // Two sockets, one user: one typing notice reaches alice.
    bob_ws.send(json!({"type": "typing", "conversationId": dm})).await;
    bob_phone.send(json!({"type": "typing", "conversationId": dm})).await;
    bob_ws.send(json!({"type": "message.send", "id": "s", "conversationId": dm, "clientMsgId": "after-typing", "body": "hi"})).await;
    let mut seen = Vec::new();
    loop {
        let frame = alice_ws.next_frame().await;
        let kind = frame["type"].as_str().unwrap().to_string();
        seen.push(kind.clone());
        if kind == "message.new" {
            break;
        }
    }
    assert_eq!(seen, vec!["typing", "message.new"], "no presence for the reconnect, one typing notice");
    // Now bob really goes: after the debounce alice hears he is offline.
    drop(bob_ws);
    drop(bob_phone);
    let offline = alice_ws.next_of("presence").await;
    assert_eq!((offline["userId"].as_str().unwrap(), offline["status"].as_str().unwrap()), (bob.user_id.as_str(), "offline"));
}

/// Sockets are capped per address too, and in all.
#[tokio::test]
async fn sockets_are_capped_per_address_and_in_all() {
    for (per_ip, total, refused) in [(2, 100, "429"), (100, 2, "503")] {
        sockets_over_a_cap(per_ip, total, refused).await;
    }
}

async fn sockets_over_a_cap(per_ip: usize, total: usize, refused_with: &str) {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.gateway.ws_per_ip_max = per_ip;
    config.gateway.ws_max = total;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let _first = Ws::connect(&alice, None).await;
    let _second = Ws::connect(&bob, None).await;
    let mut request = format!("{}/v1/ws", bob.base.replace("http://", "ws://")).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", bob.token.as_ref().unwrap()).parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(refused.to_string().contains(refused_with), "{refused}");
}

/// A burst of simultaneous upgrades cannot pass a cap: the slots are taken
/// before each upgrade, not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_upgrades_gets_exactly_the_cap() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.gateway.ws_per_user_max = 3;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let attempts: Vec<_> = (0..12)
        .map(|_| {
            let mut request = format!("{}/v1/ws", alice.base.replace("http://", "ws://")).into_client_request().unwrap();
            request.headers_mut().insert("authorization", format!("Bearer {}", alice.token.as_ref().unwrap()).parse().unwrap());
            tokio::spawn(tokio_tungstenite::connect_async(request))
        })
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok((stream, _)) => open.push(stream),
            Err(error) => {
                assert!(error.to_string().contains("429"), "{error}");
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (3, 9));
}
