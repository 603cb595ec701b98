//! The WebSocket frames of `/v1/ws` other than events (which are
//! [`crate::api::CursoredEvent`]), typed on both sides so that a field name
//! cannot drift from `shared/API.md`.
//!
//! [`ServerFrame`] is what the server writes; [`ClientCommand`] is what a
//! client sends. The command's `id` is the client's own value (a number or
//! a string), echoed untouched in the `ack`, `error` or `pong` that answers
//! it, so it stays a [`serde_json::Value`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api;

/// A frame the server writes, other than an event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ServerFrame {
    /// The first frame of every connection.
    #[serde(rename = "hello")]
    Hello { user_id: String, device_id: String, heartbeat_ms: u64 },
    /// A command succeeded; for a send, the message as stored.
    #[serde(rename = "ack")]
    Ack { id: Value, message: api::Message },
    /// A command failed (with its `id`), or the connection must resume
    /// elsewhere (with the `cursor` to resume from).
    #[serde(rename = "error")]
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    #[serde(rename = "pong")]
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    #[serde(rename = "typing")]
    Typing { conversation_id: String, user_id: String },
    #[serde(rename = "presence")]
    Presence { user_id: String, status: PresenceStatus, last_seen: i64 },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    Online,
    Offline,
}

impl ServerFrame {
    pub fn error(id: Option<Value>, code: crate::ErrorCode, message: impl Into<String>) -> ServerFrame {
        ServerFrame::Error { id, code: code.as_str().to_string(), message: message.into(), cursor: None }
    }

    /// The frame as the JSON text the socket carries.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("frames serialize")
    }
}

/// A command a client sends (`id` is read separately, so that even a
/// command that does not parse is answered with its `id`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ClientCommand {
    #[serde(rename = "message.send")]
    Send {
        conversation_id: String,
        client_msg_id: String,
        body: String,
        #[serde(default)]
        attachments: Vec<Value>,
    },
    #[serde(rename = "receipt.delivered")]
    Delivered { conversation_id: String, seq: u64 },
    #[serde(rename = "receipt.read")]
    Read { conversation_id: String, seq: u64 },
    #[serde(rename = "typing")]
    Typing { conversation_id: String },
    #[serde(rename = "ping")]
    Ping {},
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_have_the_field_names_of_the_api() {
        let hello = ServerFrame::Hello { user_id: "u_1".into(), device_id: "d_1".into(), heartbeat_ms: 30_000 };
        assert_eq!(serde_json::to_value(&hello).unwrap(), json!({"type": "hello", "userId": "u_1", "deviceId": "d_1", "heartbeatMs": 30000}));
        let error = ServerFrame::error(Some(json!(7)), crate::ErrorCode::BadRequest, "no");
        assert_eq!(serde_json::to_value(&error).unwrap(), json!({"type": "error", "id": 7, "code": "bad_request", "message": "no"}));
        assert_eq!(serde_json::to_value(ServerFrame::Pong { id: None }).unwrap(), json!({"type": "pong"}));
        let presence = ServerFrame::Presence { user_id: "u_1".into(), status: PresenceStatus::Online, last_seen: 5 };
        assert_eq!(serde_json::to_value(&presence).unwrap(), json!({"type": "presence", "userId": "u_1", "status": "online", "lastSeen": 5}));
        let typing = ServerFrame::Typing { conversation_id: "c_1".into(), user_id: "u_1".into() };
        assert_eq!(serde_json::to_value(&typing).unwrap(), json!({"type": "typing", "conversationId": "c_1", "userId": "u_1"}));
    }

    #[test]
    fn commands_parse_as_the_api_writes_them() {
        let send: ClientCommand =
            serde_json::from_value(json!({"type": "message.send", "id": 1, "conversationId": "c_1", "clientMsgId": "k", "body": "hi"})).unwrap();
        assert_eq!(send, ClientCommand::Send { conversation_id: "c_1".into(), client_msg_id: "k".into(), body: "hi".into(), attachments: vec![] });
        let read: ClientCommand = serde_json::from_value(json!({"type": "receipt.read", "conversationId": "c_1", "seq": 3})).unwrap();
        assert_eq!(read, ClientCommand::Read { conversation_id: "c_1".into(), seq: 3 });
        assert!(serde_json::from_value::<ClientCommand>(json!({"type": "nope"})).is_err());
    }
}
