//! The records of the streaming log. Everything Confab knows is built by
//! applying these, in log order; they are JSON so that fields can be added
//! without rewriting history (new fields must be optional or defaulted).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ConversationId, DeviceId, MediaId, MessageId, UserId};
use crate::trace::TraceParent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationType {
    Dm,
    Group,
    Channel,
}

impl ConversationType {
    pub fn parse(text: &str) -> Option<ConversationType> {
        match text {
            "dm" => Some(ConversationType::Dm),
            "group" => Some(ConversationType::Group),
            "channel" => Some(ConversationType::Channel),
            _ => None,
        }
    }
}

/// Who reads a conversation's older messages: every member (`shared`, as in
/// a Slack channel), or each member only what was sent while they were one
/// (`joined`, as in a WhatsApp group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryVisibility {
    Shared,
    Joined,
}

impl HistoryVisibility {
    pub fn parse(text: &str) -> Option<HistoryVisibility> {
        match text {
            "shared" => Some(HistoryVisibility::Shared),
            "joined" => Some(HistoryVisibility::Joined),
            _ => None,
        }
    }

    /// The default of each type: `shared` for channels (and dms, whose two
    /// members are there from the start), `joined` for groups.
    pub fn default_for(conversation_type: ConversationType) -> HistoryVisibility {
        match conversation_type {
            ConversationType::Group => HistoryVisibility::Joined,
            ConversationType::Dm | ConversationType::Channel => HistoryVisibility::Shared,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Admin,
    Member,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountRole {
    Admin,
    Compliance,
}

/// Which of a conversation's messages push a member's phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notify {
    #[default]
    All,
    Mentions,
    None,
}

impl Notify {
    pub fn parse(text: &str) -> Option<Notify> {
        match text {
            "all" => Some(Notify::All),
            "mentions" => Some(Notify::Mentions),
            "none" => Some(Notify::None),
            _ => None,
        }
    }
}

/// How much of a message its push shows on a locked screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushPreview {
    /// Sender and text.
    #[default]
    Full,
    /// The sender only.
    Sender,
    /// A generic "new message".
    None,
}

impl PushPreview {
    pub fn parse(text: &str) -> Option<PushPreview> {
        match text {
            "full" => Some(PushPreview::Full),
            "sender" => Some(PushPreview::Sender),
            "none" => Some(PushPreview::None),
            _ => None,
        }
    }
}

/// The push service a device's token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushProvider {
    Apns,
    Fcm,
}

impl PushProvider {
    pub fn parse(text: &str) -> Option<PushProvider> {
        match text {
            "apns" => Some(PushProvider::Apns),
            "fcm" => Some(PushProvider::Fcm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PushProvider::Apns => "apns",
            PushProvider::Fcm => "fcm",
        }
    }
}

/// What the moderation of an upload decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaVerdict {
    Ready,
    Blocked,
}

/// Who a message mentions, worked out by the server from its body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mentions {
    /// Members named with `@username` (not those reached only by `@channel`).
    #[serde(default)]
    pub user_ids: Vec<UserId>,
    /// `@channel` or `@all`: every member.
    #[serde(default)]
    pub channel: bool,
    /// `@here`: the members online at that moment.
    #[serde(default)]
    pub here: bool,
}

impl Mentions {
    pub fn is_empty(&self) -> bool {
        self.user_ids.is_empty() && !self.channel && !self.here
    }

    /// Whether the message mentions `user_id` by name or with `@channel`.
    /// (`@here` depends on who is online, which the caller decides.)
    pub fn names(&self, user_id: &str) -> bool {
        self.channel || self.user_ids.iter().any(|id| id == user_id)
    }
}

/// One record of the log. `ts` is the server's clock when it was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    UserCreated {
        user_id: UserId,
        username: String,
        display_name: Option<String>,
        /// A PHC string (argon2id): never the password.
        password_hash: String,
        roles: Vec<AccountRole>,
        ts: i64,
    },
    SessionCreated {
        user_id: UserId,
        device_id: DeviceId,
        device_name: Option<String>,
        platform: Option<String>,
        ts: i64,
    },
    ConversationCreated {
        conversation_id: ConversationId,
        conversation_type: ConversationType,
        title: Option<String>,
        creator_id: UserId,
        member_ids: Vec<UserId>,
        ts: i64,
        /// Absent in records from before it was chosen: the type's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history_visibility: Option<HistoryVisibility>,
    },
    MembersAdded {
        conversation_id: ConversationId,
        user_ids: Vec<UserId>,
        by: UserId,
        ts: i64,
    },
    MemberRemoved {
        conversation_id: ConversationId,
        user_id: UserId,
        by: UserId,
        ts: i64,
    },
    MessageCreated {
        message_id: MessageId,
        conversation_id: ConversationId,
        seq: u64,
        sender_id: UserId,
        device_id: DeviceId,
        client_msg_id: String,
        body: String,
        #[serde(default)]
        attachments: Vec<Value>,
        ts: i64,
        #[serde(default, skip_serializing_if = "Mentions::is_empty")]
        mentions: Mentions,
        /// The send's trace, when it was sampled: the readers of this
        /// record add their spans to it (see `trace`).
        #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::trace::lenient")]
        trace: Option<TraceParent>,
    },
    MessageEdited {
        message_id: MessageId,
        conversation_id: ConversationId,
        seq: u64,
        body: String,
        /// The message's sender (absent in records written before it was kept).
        #[serde(default)]
        sender_id: Option<UserId>,
        by: UserId,
        device_id: DeviceId,
        ts: i64,
        /// Worked out again from the new body.
        #[serde(default, skip_serializing_if = "Mentions::is_empty")]
        mentions: Mentions,
    },
    MessageDeleted {
        message_id: MessageId,
        conversation_id: ConversationId,
        seq: u64,
        #[serde(default)]
        sender_id: Option<UserId>,
        by: UserId,
        device_id: DeviceId,
        ts: i64,
    },
    ReadCursorMoved {
        conversation_id: ConversationId,
        user_id: UserId,
        seq: u64,
        /// The device that read (absent in records from before devices were recorded).
        #[serde(default)]
        device_id: Option<DeviceId>,
        ts: i64,
    },
    /// An administrator gave a user a role.
    RoleGranted {
        user_id: UserId,
        role: AccountRole,
        by: UserId,
        ts: i64,
    },
    /// An administrator took a role back.
    RoleRevoked {
        user_id: UserId,
        role: AccountRole,
        by: UserId,
        ts: i64,
    },
    /// A device was logged out (by itself, or by another device of its user):
    /// its tokens stop working and its sockets close.
    SessionEnded {
        user_id: UserId,
        device_id: DeviceId,
        by_device: DeviceId,
        ts: i64,
    },
    /// A user blocked (or unblocked) another: the blocked one cannot open a
    /// dm with them, add them anywhere, or write in their dm.
    BlockChanged {
        user_id: UserId,
        blocked_id: UserId,
        blocked: bool,
        ts: i64,
    },
    /// A member's notification settings for one conversation.
    ConversationSettingsChanged {
        conversation_id: ConversationId,
        user_id: UserId,
        muted: bool,
        /// Muted until this time (ms), then not.
        muted_until: Option<i64>,
        notify: Notify,
        ts: i64,
    },
    /// A user's own settings.
    UserSettingsChanged {
        user_id: UserId,
        push_preview: PushPreview,
        ts: i64,
    },
    /// A device registered (or replaced) its push token.
    PushTokenSet {
        user_id: UserId,
        device_id: DeviceId,
        provider: PushProvider,
        token: String,
        app_id: Option<String>,
        ts: i64,
    },
    /// A device's push token was removed: by the device, or because the push
    /// service said it is no longer valid (then only if it is still `token`).
    PushTokenRemoved {
        user_id: UserId,
        device_id: DeviceId,
        /// Only this token (a rejected one); `None`: whatever it is.
        token: Option<String>,
        reason: String,
        ts: i64,
    },
    /// Push requests and how each went, coalesced by the push wiring; they
    /// become the history table `push_attempts`.
    PushAttempts {
        attempts: Vec<PushAttempt>,
        ts: i64,
    },
    /// An administrative or compliance action, for the audit table.
    Audited {
        actor_id: UserId,
        action: String,
        details: String,
        ts: i64,
    },
    /// A record lost to damage on disk: `confab log repair` put this in its
    /// place, at the same offset, so that positions after it still hold.
    /// Every reader skips it.
    Lost {},
    /// A member declared an upload: the bytes are to come through a
    /// pre-signed URL.
    MediaDeclared {
        media_id: MediaId,
        conversation_id: ConversationId,
        uploader_id: UserId,
        device_id: DeviceId,
        filename: String,
        content_type: String,
        size: u64,
        /// Lowercase hex SHA-256 of the bytes, as the uploader declared it.
        sha256: String,
        /// When the upload URL stops working (ms).
        upload_expires_at: i64,
        ts: i64,
    },
    /// The uploader said the bytes are in, and the store holds `size` bytes:
    /// moderation starts.
    MediaUploaded {
        media_id: MediaId,
        conversation_id: ConversationId,
        ts: i64,
    },
    /// Moderation's outcome: `ready` (with what it found) or `blocked`.
    MediaChecked {
        media_id: MediaId,
        conversation_id: ConversationId,
        verdict: MediaVerdict,
        /// Why it is blocked (`type_mismatch`, `malware`, ...).
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        width: Option<u32>,
        #[serde(default)]
        height: Option<u32>,
        /// The content type of the copy that is served (a cleaned image may
        /// be re-encoded); `None`: the upload itself is served.
        #[serde(default)]
        served_content_type: Option<String>,
        #[serde(default)]
        thumbnail: bool,
        ts: i64,
    },
    /// An upload is gone (never completed in time, its messages deleted,
    /// retention or erasure); its files are removed from the store.
    MediaRemoved {
        media_id: MediaId,
        conversation_id: ConversationId,
        reason: String,
        ts: i64,
    },
    /// Delivery receipts of many devices, coalesced by the receipts pipeline.
    DeliveryReceipts {
        conversation_id: ConversationId,
        receipts: Vec<DeliveryReceipt>,
        ts: i64,
    },
}

/// One push request to a push service and its outcome: `sent`,
/// `retryable` (tried again later), `unregistered` (the token is
/// forgotten), `refused` (a permanent error), or `dead_letter` (the last
/// try failed; the push is given up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAttempt {
    pub flow_id: String,
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub provider: PushProvider,
    pub conversation_id: ConversationId,
    /// The message's seq; 0 for a silent badge update.
    pub seq: u64,
    pub attempt: u32,
    pub outcome: String,
    pub reason: Option<String>,
    pub ts: i64,
}

/// Every push attempt record goes to one partition, by this key.
pub const PUSH_ATTEMPTS_KEY: &str = "push_attempts";

/// A device has every message of a conversation up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReceipt {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub seq: u64,
}

impl LogEvent {
    /// The key that chooses the event's partition: a conversation's events
    /// share one partition, so they stay in order.
    pub fn partition_key(&self) -> &str {
        match self {
            LogEvent::UserCreated { user_id, .. }
            | LogEvent::SessionCreated { user_id, .. }
            | LogEvent::SessionEnded { user_id, .. }
            | LogEvent::RoleGranted { user_id, .. }
            | LogEvent::RoleRevoked { user_id, .. }
            | LogEvent::BlockChanged { user_id, .. }
            | LogEvent::UserSettingsChanged { user_id, .. }
            | LogEvent::PushTokenSet { user_id, .. }
            | LogEvent::PushTokenRemoved { user_id, .. } => user_id,
            LogEvent::Audited { actor_id, .. } => actor_id,
            LogEvent::PushAttempts { .. } => PUSH_ATTEMPTS_KEY,
            LogEvent::ConversationCreated { conversation_id, .. }
            | LogEvent::MembersAdded { conversation_id, .. }
            | LogEvent::MemberRemoved { conversation_id, .. }
            | LogEvent::MessageCreated { conversation_id, .. }
            | LogEvent::MessageEdited { conversation_id, .. }
            | LogEvent::MessageDeleted { conversation_id, .. }
            | LogEvent::ReadCursorMoved { conversation_id, .. }
            | LogEvent::ConversationSettingsChanged { conversation_id, .. }
            | LogEvent::MediaDeclared { conversation_id, .. }
            | LogEvent::MediaUploaded { conversation_id, .. }
            | LogEvent::MediaChecked { conversation_id, .. }
            | LogEvent::MediaRemoved { conversation_id, .. }
            | LogEvent::DeliveryReceipts { conversation_id, .. } => conversation_id,
            LogEvent::Lost {} => "",
        }
    }

    /// When the server accepted the event (ms since the epoch); `None` for
    /// a placeholder of a lost record.
    pub fn ts(&self) -> Option<i64> {
        match self {
            LogEvent::UserCreated { ts, .. }
            | LogEvent::SessionCreated { ts, .. }
            | LogEvent::ConversationCreated { ts, .. }
            | LogEvent::MembersAdded { ts, .. }
            | LogEvent::MemberRemoved { ts, .. }
            | LogEvent::MessageCreated { ts, .. }
            | LogEvent::MessageEdited { ts, .. }
            | LogEvent::MessageDeleted { ts, .. }
            | LogEvent::ReadCursorMoved { ts, .. }
            | LogEvent::RoleGranted { ts, .. }
            | LogEvent::RoleRevoked { ts, .. }
            | LogEvent::SessionEnded { ts, .. }
            | LogEvent::BlockChanged { ts, .. }
            | LogEvent::ConversationSettingsChanged { ts, .. }
            | LogEvent::UserSettingsChanged { ts, .. }
            | LogEvent::PushTokenSet { ts, .. }
            | LogEvent::PushTokenRemoved { ts, .. }
            | LogEvent::PushAttempts { ts, .. }
            | LogEvent::Audited { ts, .. }
            | LogEvent::MediaDeclared { ts, .. }
            | LogEvent::MediaUploaded { ts, .. }
            | LogEvent::MediaChecked { ts, .. }
            | LogEvent::MediaRemoved { ts, .. }
            | LogEvent::DeliveryReceipts { ts, .. } => Some(*ts),
            LogEvent::Lost {} => None,
        }
    }

    /// The device whose action this event records, if any: fanout does not
    /// send an event back to the device that caused it.
    pub fn origin_device(&self) -> Option<&str> {
        match self {
            LogEvent::MessageCreated { device_id, .. } | LogEvent::MessageEdited { device_id, .. } | LogEvent::MessageDeleted { device_id, .. } => {
                Some(device_id)
            }
            _ => None,
        }
    }

    /// The trace this record's readers add their spans to (a sampled send's).
    pub fn trace(&self) -> Option<TraceParent> {
        match self {
            LogEvent::MessageCreated { trace, .. } => *trace,
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("log events always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<LogEvent, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
