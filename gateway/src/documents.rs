//! The API's documents against the code: every route the router serves is
//! in `docs/openapi.json` with its methods (and nothing there is not
//! served), and every WebSocket frame and event the server writes or
//! reads is in `docs/asyncapi.json` with each of its fields. The
//! documents are written by `docs/api-tools/`; these tests fail when code
//! and documents drift apart.

use confab_schemas::api::{ClientEvent, Media, MemberChange, Message};
use confab_schemas::events::Mentions;
use confab_schemas::frames::{ClientCommand, PresenceStatus, ServerFrame};
use serde_json::{json, Value};

fn document(name: &str) -> Value {
    let text = match name {
        "openapi" => include_str!("../../docs/openapi.json"),
        _ => include_str!("../../docs/asyncapi.json"),
    };
    serde_json::from_str(text).unwrap()
}

/// `(path, method)` of every `.route(…)` in the router's source, plus the
/// web client's assets.
fn served_routes() -> Vec<(String, String)> {
    let source = include_str!("lib.rs");
    let mut routes = Vec::new();
    for piece in source.split(".route(\"").skip(1) {
        let (path, rest) = piece.split_once('"').unwrap();
        // The handlers run to the matching close of `.route(`.
        let mut depth = 1;
        let mut end = rest.len();
        for (index, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = index;
                        break;
                    }
                }
                _ => {}
            }
        }
        let handlers = &rest[..end];
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = handlers.match_indices(&format!("{method}(")).any(|(at, _)| at == 0 || !handlers.as_bytes()[at - 1].is_ascii_alphanumeric());
            if called {
                routes.push((path.to_string(), method.to_string()));
            }
        }
    }
    for asset in confab_web::ASSETS {
        routes.push((asset.path.to_string(), "get".to_string()));
    }
    routes
}

#[test]
fn every_route_is_in_the_openapi_document_and_every_documented_route_is_served() {
    let doc = document("openapi");
    assert_eq!(doc["openapi"], "3.1.0");
    let served = served_routes();
    assert!(served.len() > 40, "the route scan found {} routes: is the router still built with .route(\"…\")?", served.len());
    let mut missing = Vec::new();
    for (path, method) in &served {
        if doc["paths"][path][method].is_null() {
            missing.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    assert!(missing.is_empty(), "served but not in docs/openapi.json (edit docs/api-tools/openapi.py and run it): {missing:?}");
    let mut extra = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            if !served.iter().any(|(p, m)| p == path && m == method) {
                extra.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(extra.is_empty(), "in docs/openapi.json but not served: {extra:?}");
    // Every operation answers its errors in the API's shape.
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') {
                    let reference = response["$ref"].as_str().unwrap_or_default();
                    assert!(reference.starts_with("#/components/responses/"), "{method} {path} {status}: errors use the shared error responses");
                }
            }
        }
    }
}

fn message() -> Message {
    Message {
        message_id: "m_1".into(),
        conversation_id: "c_1".into(),
        seq: 1,
        sender_id: "u_1".into(),
        sender_device_id: "d_1".into(),
        ts: 1,
        body: "hi".into(),
        attachments: Vec::new(),
        edited: false,
        deleted: false,
        client_msg_id: "k".into(),
        mentions: Mentions::default(),
    }
}

fn media() -> Media {
    serde_json::from_value(json!({
        "mediaId": "md_1", "conversationId": "c_1", "uploaderId": "u_1", "filename": "a.png", "contentType": "image/png",
        "size": 1, "sha256": "00", "status": "ready"
    }))
    .unwrap()
}

/// One of each frame the server writes; the match makes a new variant
/// fail to compile here until it has a sample (and so a check).
fn server_frames() -> Vec<Value> {
    let frames = vec![
        ServerFrame::Hello { user_id: "u".into(), device_id: "d".into(), heartbeat_ms: 1 },
        ServerFrame::Ack { id: json!(1), message: message() },
        ServerFrame::Error { id: Some(json!(1)), code: "bad_request".into(), message: "m".into(), cursor: Some("c".into()) },
        ServerFrame::Pong { id: Some(json!(1)) },
        ServerFrame::Typing { conversation_id: "c".into(), user_id: "u".into() },
        ServerFrame::Presence { user_id: "u".into(), status: PresenceStatus::Online, last_seen: 1 },
    ];
    for frame in &frames {
        match frame {
            ServerFrame::Hello { .. }
            | ServerFrame::Ack { .. }
            | ServerFrame::Error { .. }
            | ServerFrame::Pong { .. }
            | ServerFrame::Typing { .. }
            | ServerFrame::Presence { .. } => {}
        }
    }
    let events = vec![
        ClientEvent::MessageNew { message: message() },
        ClientEvent::MessageEdit { message: message() },
        ClientEvent::MessageDelete { conversation_id: "c".into(), message_id: "m".into(), seq: 1 },
        ClientEvent::ReceiptDelivered { conversation_id: "c".into(), user_id: "u".into(), seq: 1 },
        ClientEvent::ReceiptRead { conversation_id: "c".into(), user_id: "u".into(), seq: 1 },
        ClientEvent::ConversationMember { conversation_id: "c".into(), user_id: "u".into(), change: MemberChange::Joined },
        ClientEvent::MediaUpdate { conversation_id: "c".into(), message_id: "m".into(), media: media() },
    ];
    for event in &events {
        match event {
            ClientEvent::MessageNew { .. }
            | ClientEvent::MessageEdit { .. }
            | ClientEvent::MessageDelete { .. }
            | ClientEvent::ReceiptDelivered { .. }
            | ClientEvent::ReceiptRead { .. }
            | ClientEvent::ConversationMember { .. }
            | ClientEvent::MediaUpdate { .. } => {}
        }
    }
    let mut values: Vec<Value> = frames.iter().map(|frame| serde_json::to_value(frame).unwrap()).collect();
    for event in events {
        let mut value = serde_json::to_value(event).unwrap();
        value["cursor"] = json!("cursor");
        values.push(value);
    }
    values
}

fn client_commands() -> Vec<Value> {
    let commands = vec![
        ClientCommand::Send { conversation_id: "c".into(), client_msg_id: "k".into(), body: "b".into(), attachments: vec![json!({"mediaId": "md"})] },
        ClientCommand::Delivered { conversation_id: "c".into(), seq: 1 },
        ClientCommand::Read { conversation_id: "c".into(), seq: 1 },
        ClientCommand::Typing { conversation_id: "c".into() },
        ClientCommand::Ping {},
    ];
    for command in &commands {
        match command {
            ClientCommand::Send { .. }
            | ClientCommand::Delivered { .. }
            | ClientCommand::Read { .. }
            | ClientCommand::Typing { .. }
            | ClientCommand::Ping {} => {}
        }
    }
    commands
        .iter()
        .map(|command| {
            let mut value = serde_json::to_value(command).unwrap();
            value["id"] = json!(1);
            value
        })
        .collect()
}

#[test]
fn every_websocket_frame_and_field_is_in_the_asyncapi_document() {
    let doc = document("asyncapi");
    assert_eq!(doc["asyncapi"], "3.0.0");
    let messages = doc["components"]["messages"].as_object().unwrap();
    for (side, frames) in [("server", server_frames()), ("client", client_commands())] {
        for frame in frames {
            let kind = frame["type"].as_str().unwrap();
            let key = format!("{side}_{}", kind.replace('.', "_"));
            let documented =
                &messages.get(&key).unwrap_or_else(|| panic!("`{kind}` ({side}) is not in docs/asyncapi.json: edit docs/api-tools/asyncapi.py"))["payload"];
            let properties = documented["properties"].as_object().unwrap();
            for field in frame.as_object().unwrap().keys() {
                assert!(properties.contains_key(field), "`{kind}` ({side}) has `{field}`, which docs/asyncapi.json does not describe");
            }
            for required in documented["required"].as_array().unwrap() {
                let required = required.as_str().unwrap();
                // `id` may be absent from a pong or an error that answers no command.
                assert!(frame.get(required).is_some(), "docs/asyncapi.json requires `{required}` in `{kind}` ({side}), which the code does not write");
            }
        }
    }
    // And the other way: nothing documented that the code has no frame for.
    let known: Vec<String> = server_frames()
        .iter()
        .map(|frame| format!("server_{}", frame["type"].as_str().unwrap().replace('.', "_")))
        .chain(client_commands().iter().map(|frame| format!("client_{}", frame["type"].as_str().unwrap().replace('.', "_"))))
        .collect();
    for key in messages.keys() {
        assert!(known.contains(key), "docs/asyncapi.json documents `{key}`, which the code has no frame for");
    }
}
