//! Objects of the public API, serialized exactly as `shared/API.md` names them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::{ConversationType, MemberRole};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub message_id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub sender_id: String,
    pub sender_device_id: String,
    pub ts: i64,
    pub body: String,
    pub attachments: Vec<Value>,
    pub edited: bool,
    pub deleted: bool,
    pub client_msg_id: String,
    pub mentions: crate::events::Mentions,
}

/// An upload as the API shows it (`shared/API.md`, Media). Messages carry
/// it without the URLs (they are stored and replayed, and a signed URL in
/// them would go stale): `GET /v1/media/{mediaId}` signs fresh ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Media {
    pub media_id: String,
    pub conversation_id: String,
    pub uploader_id: String,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    /// `pending`, `ready` or `blocked`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_expires_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub conversation_id: String,
    #[serde(rename = "type")]
    pub conversation_type: ConversationType,
    pub title: Option<String>,
    pub member_ids: Vec<String>,
    pub created_at: i64,
    pub history_visibility: crate::events::HistoryVisibility,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationSummary {
    pub conversation_id: String,
    #[serde(rename = "type")]
    pub conversation_type: ConversationType,
    pub title: Option<String>,
    pub history_visibility: crate::events::HistoryVisibility,
    pub last_seq: u64,
    pub last_read_seq: u64,
    pub unread_count: u64,
    pub last_message: Option<Message>,
    pub muted: bool,
    pub notify: crate::events::Notify,
    pub unread_mentions: u64,
}

/// A member's notification settings for one conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationSettings {
    /// True while muted (for good, or until `muted_until`).
    pub muted: bool,
    pub muted_until: Option<i64>,
    pub notify: crate::events::Notify,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user_id: String,
    pub role: MemberRole,
    pub joined_at: i64,
    pub last_delivered_seq: u64,
    pub last_read_seq: u64,
    /// An extension of the API: the positions each of the member's devices
    /// confirmed.
    pub devices: Vec<DevicePositions>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevicePositions {
    pub device_id: String,
    pub last_delivered_seq: u64,
    pub last_read_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberChange {
    Joined,
    Left,
}

/// The durable events a device receives, over `/v1/sync` and the WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientEvent {
    #[serde(rename = "message.new")]
    MessageNew { message: Message },
    #[serde(rename = "message.edit")]
    MessageEdit { message: Message },
    #[serde(rename = "message.delete", rename_all = "camelCase")]
    MessageDelete { conversation_id: String, message_id: String, seq: u64 },
    #[serde(rename = "receipt.delivered", rename_all = "camelCase")]
    ReceiptDelivered { conversation_id: String, user_id: String, seq: u64 },
    #[serde(rename = "receipt.read", rename_all = "camelCase")]
    ReceiptRead { conversation_id: String, user_id: String, seq: u64 },
    #[serde(rename = "conversation.member", rename_all = "camelCase")]
    ConversationMember { conversation_id: String, user_id: String, change: MemberChange },
    /// An attachment's status changed (moderation decided).
    #[serde(rename = "media.update", rename_all = "camelCase")]
    MediaUpdate { conversation_id: String, message_id: String, media: Media },
}

/// A client event with the cursor a device resumes from after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CursoredEvent {
    #[serde(flatten)]
    pub event: ClientEvent,
    pub cursor: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_the_api_names() {
        let event = ClientEvent::MessageDelete { conversation_id: "c_1".into(), message_id: "m_1".into(), seq: 3 };
        let json = serde_json::to_value(CursoredEvent { event, cursor: "k".into() }).unwrap();
        assert_eq!(json, serde_json::json!({"type": "message.delete", "conversationId": "c_1", "messageId": "m_1", "seq": 3, "cursor": "k"}));
    }
}
