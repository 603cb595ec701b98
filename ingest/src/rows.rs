//! The rows of the store, one type per [`Space`], with their keys.
//!
//! | space | key | row |
//! | --- | --- | --- |
//! | meta | `applied` p, `admin`, `format`, `devices_indexed` | applied offset of partition p; an admin exists; format; users' devices are indexed |
//! | users | user | [`UserRow`] (username, password hash, roles); and blocker, blocked: nothing (a block) |
//! | usernames | username | user |
//! | devices | device | [`DeviceRow`]; and user, device: nothing (a user's devices) |
//! | conversations | conversation | [`ConversationRow`] (type, title, creation) |
//! | dm_pairs | user, user (sorted) | conversation |
//! | members | conversation, user | [`MemberRow`]: role (none once left), membership intervals, read and delivered positions per device, where their receipt events are |
//! | user_conversations | user, conversation | [`UserConversationRow`]: the intervals again, so a sync needs no member rows |
//! | messages | conversation, seq | [`MessageRow`] in its current state |
//! | message_ids | message | conversation, seq |
//! | events | conversation, offset, index | [`EventRow`]: messages and membership changes, for sync |
//! | receipts | conversation, offset, index | [`ReceiptRow`]: each member's latest read and delivered receipt only |
//! | deleted | conversation, seq | nothing: deleted seqs, for unread counts |
//! | idempotency | sender, clientMsgId | [`IdempotencyRow`], its time first (the compaction filter reads it) |
//! | mentions | conversation, user (or `*` for `@channel`/`@here`), seq | nothing: who a message mentions, for `unreadMentions` |
//! | media | media | [`MediaRow`]; and uploader, media: the size (a user's uploads, for the quota) |
//!
//! Fields added after a row's first version are appended at its end and
//! read with a default when absent, so older stores still open.

use confab_schemas::api::MemberChange;
use confab_schemas::events::{AccountRole, ConversationType, HistoryVisibility, MediaVerdict, MemberRole, Mentions, Notify, PushPreview, PushProvider};
use serde_json::Value;

use crate::codec::{Decoder, Encoder};
use crate::store::{Space, StoreError};

/// A row that would not decode: the store is damaged (or from another version).
pub(crate) fn corrupt(space: Space, what: &str) -> StoreError {
    StoreError::Corrupt { path: "state".into(), space: space.name(), reason: format!("a {what} row does not decode") }
}

// ---- keys ----

pub(crate) fn applied_key(partition: u32) -> Vec<u8> {
    Encoder::new().str("applied").u32(partition).finish()
}
pub(crate) const ADMIN_KEY: &[u8] = b"admin";
/// Set once users' devices are indexed (`user_device_key`).
pub(crate) const DEVICES_INDEXED_KEY: &[u8] = b"devices_indexed";

pub(crate) fn id_key(id: &str) -> Vec<u8> {
    Encoder::new().id(id).finish()
}

/// In `users`, beside each user's row: blocker, blocked (nothing).
pub(crate) fn block_key(blocker: &str, blocked: &str) -> Vec<u8> {
    Encoder::new().id(blocker).id(blocked).finish()
}

/// In `devices`, beside each device's row: user, device (nothing), so a
/// user's devices can be listed. User and device IDs differ in their first
/// letter, so these keys never meet a device's own.
pub(crate) fn user_device_key(user_id: &str, device_id: &str) -> Vec<u8> {
    Encoder::new().id(user_id).id(device_id).finish()
}

pub(crate) fn pair_key(first: &str, second: &str) -> Vec<u8> {
    Encoder::new().id(first).id(second).finish()
}

pub(crate) fn conversation_prefix(conversation_id: &str) -> Vec<u8> {
    Encoder::new().id(conversation_id).finish()
}

pub(crate) fn member_key(conversation_id: &str, user_id: &str) -> Vec<u8> {
    Encoder::new().id(conversation_id).id(user_id).finish()
}

pub(crate) fn user_conversation_key(user_id: &str, conversation_id: &str) -> Vec<u8> {
    Encoder::new().id(user_id).id(conversation_id).finish()
}

pub(crate) fn user_prefix(user_id: &str) -> Vec<u8> {
    Encoder::new().id(user_id).finish()
}

pub(crate) fn seq_key(conversation_id: &str, seq: u64) -> Vec<u8> {
    Encoder::new().id(conversation_id).u64(seq).finish()
}

pub(crate) fn position_key(conversation_id: &str, offset: u64, index: u32) -> Vec<u8> {
    Encoder::new().id(conversation_id).u64(offset).u32(index).finish()
}

/// Every event key of one record of a conversation.
pub(crate) fn record_prefix(conversation_id: &str, offset: u64) -> Vec<u8> {
    Encoder::new().id(conversation_id).u64(offset).finish()
}

/// Who a mention row is for when a message mentions everyone.
pub(crate) const EVERYONE: &str = "*";

pub(crate) fn mention_key(conversation_id: &str, user_id: &str, seq: u64) -> Vec<u8> {
    Encoder::new().id(conversation_id).id(user_id).u64(seq).finish()
}

/// Every mention row of one user (or `EVERYONE`) in a conversation.
pub(crate) fn mention_prefix(conversation_id: &str, user_id: &str) -> Vec<u8> {
    Encoder::new().id(conversation_id).id(user_id).finish()
}

pub(crate) fn idempotency_key(sender_id: &str, client_msg_id: &str) -> Vec<u8> {
    Encoder::new().id(sender_id).str(client_msg_id).finish()
}

/// The second string of a two-string key (`user_conversations`, `members`).
pub(crate) fn second_str(key: &[u8]) -> Option<String> {
    let mut decoder = Decoder::new(key);
    decoder.id()?;
    decoder.id()
}

/// The `(offset, index)` at the end of an events or receipts key.
pub(crate) fn position_of(key: &[u8]) -> Option<(u64, u32)> {
    let mut decoder = Decoder::new(key);
    decoder.id()?;
    Some((decoder.u64()?, decoder.u32()?))
}

/// The seq at the end of a messages or deleted key.
pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    let mut decoder = Decoder::new(key);
    decoder.id()?;
    decoder.u64()
}

pub(crate) fn u64_value(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

// ---- rows ----

fn role_code(role: AccountRole) -> u8 {
    match role {
        AccountRole::Admin => 0,
        AccountRole::Compliance => 1,
    }
}

fn role_of(code: u8) -> Option<AccountRole> {
    match code {
        0 => Some(AccountRole::Admin),
        1 => Some(AccountRole::Compliance),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UserRow {
    pub username: String,
    pub display_name: Option<String>,
    pub password_hash: String,
    pub roles: Vec<AccountRole>,
    pub created_at: i64,
    pub push_preview: PushPreview,
}

fn preview_code(preview: PushPreview) -> u8 {
    match preview {
        PushPreview::Full => 0,
        PushPreview::Sender => 1,
        PushPreview::None => 2,
    }
}

fn notify_code(notify: Notify) -> u8 {
    match notify {
        Notify::All => 0,
        Notify::Mentions => 1,
        Notify::None => 2,
    }
}

impl UserRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut encoder = Encoder::new().str(&self.username).opt_str(self.display_name.as_deref()).str(&self.password_hash).i64(self.created_at);
        encoder = encoder.u8(self.roles.len() as u8);
        for role in &self.roles {
            encoder = encoder.u8(role_code(*role));
        }
        encoder.u8(preview_code(self.push_preview)).finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<UserRow> {
        let mut decoder = Decoder::new(bytes);
        let username = decoder.str()?;
        let display_name = decoder.opt_str()?;
        let password_hash = decoder.str()?;
        let created_at = decoder.i64()?;
        let count = decoder.u8()?;
        let roles = (0..count).map(|_| decoder.u8().and_then(role_of)).collect::<Option<Vec<_>>>()?;
        let push_preview = match decoder.u8() {
            Some(1) => PushPreview::Sender,
            Some(2) => PushPreview::None,
            _ => PushPreview::Full,
        };
        Some(UserRow { username, display_name, password_hash, roles, created_at, push_preview })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceRow {
    pub user_id: String,
    pub name: Option<String>,
    pub platform: Option<String>,
    pub created_at: i64,
    pub push: Option<PushToken>,
}

/// A device's push token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushToken {
    pub provider: PushProvider,
    pub token: String,
    pub app_id: Option<String>,
}

impl DeviceRow {
    pub fn encode(&self) -> Vec<u8> {
        let encoder = Encoder::new().str(&self.user_id).opt_str(self.name.as_deref()).opt_str(self.platform.as_deref()).i64(self.created_at);
        match &self.push {
            None => encoder.u8(0),
            Some(push) => {
                let provider = match push.provider {
                    PushProvider::Apns => 1,
                    PushProvider::Fcm => 2,
                };
                encoder.u8(provider).str(&push.token).opt_str(push.app_id.as_deref())
            }
        }
        .finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<DeviceRow> {
        let mut decoder = Decoder::new(bytes);
        let (user_id, name, platform, created_at) = (decoder.str()?, decoder.opt_str()?, decoder.opt_str()?, decoder.i64()?);
        let provider = match decoder.u8() {
            Some(1) => Some(PushProvider::Apns),
            Some(2) => Some(PushProvider::Fcm),
            _ => None,
        };
        let push = match provider {
            Some(provider) => Some(PushToken { provider, token: decoder.str()?, app_id: decoder.opt_str()? }),
            None => None,
        };
        Some(DeviceRow { user_id, name, platform, created_at, push })
    }
}

fn type_code(conversation_type: ConversationType) -> u8 {
    match conversation_type {
        ConversationType::Dm => 0,
        ConversationType::Group => 1,
        ConversationType::Channel => 2,
    }
}

fn type_of(code: u8) -> Option<ConversationType> {
    match code {
        0 => Some(ConversationType::Dm),
        1 => Some(ConversationType::Group),
        2 => Some(ConversationType::Channel),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConversationRow {
    pub conversation_type: ConversationType,
    pub title: Option<String>,
    pub created_at: i64,
    pub history_visibility: HistoryVisibility,
}

impl ConversationRow {
    pub fn encode(&self) -> Vec<u8> {
        let visibility = match self.history_visibility {
            HistoryVisibility::Shared => 0,
            HistoryVisibility::Joined => 1,
        };
        Encoder::new().u8(type_code(self.conversation_type)).opt_str(self.title.as_deref()).i64(self.created_at).u8(visibility).finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<ConversationRow> {
        let mut decoder = Decoder::new(bytes);
        let conversation_type = type_of(decoder.u8()?)?;
        let (title, created_at) = (decoder.opt_str()?, decoder.i64()?);
        // Rows written before the field: the type's default.
        let history_visibility = match decoder.u8() {
            Some(1) => HistoryVisibility::Joined,
            Some(_) => HistoryVisibility::Shared,
            None => HistoryVisibility::default_for(conversation_type),
        };
        Some(ConversationRow { conversation_type, title, created_at, history_visibility })
    }
}

/// Offset ranges of membership, inclusive; `None` while still a member.
pub(crate) type Intervals = Vec<(u64, Option<u64>)>;

fn encode_intervals(mut encoder: Encoder, intervals: &Intervals) -> Encoder {
    encoder = encoder.u32(intervals.len() as u32);
    for (from, until) in intervals {
        encoder = encoder.u64(*from).opt_u64(*until);
    }
    encoder
}

fn decode_intervals(decoder: &mut Decoder<'_>) -> Option<Intervals> {
    let count = decoder.u32()?;
    (0..count).map(|_| Some((decoder.u64()?, decoder.opt_u64()?))).collect()
}

/// Whether `offset` falls in a membership interval that has ended.
pub(crate) fn within_closed(intervals: &Intervals, offset: u64) -> bool {
    intervals.iter().any(|&(from, until)| until.is_some_and(|until| offset >= from && offset <= until))
}

/// Whether `offset` falls in one of the intervals.
pub(crate) fn within(intervals: &Intervals, offset: u64) -> bool {
    intervals.iter().any(|&(from, until)| offset >= from && until.is_none_or(|until| offset <= until))
}

/// One device's positions in a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DevicePosition {
    pub device_id: String,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

/// Muted for good, or until a time still to come.
pub(crate) fn muted_at(muted: bool, muted_until: Option<i64>, now: i64) -> bool {
    muted || muted_until.is_some_and(|until| until > now)
}

/// A member, or someone who was one (`role` is `None` once they left).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MemberRow {
    pub role: Option<MemberRole>,
    pub joined_at: i64,
    pub intervals: Intervals,
    pub last_read_seq: u64,
    /// The highest seq any of the member's devices has.
    pub last_delivered_seq: u64,
    /// Where the member's latest `receipt.read` event is in the receipts space.
    pub read_receipt_at: Option<(u64, u32)>,
    pub delivered_receipt_at: Option<(u64, u32)>,
    pub devices: Vec<DevicePosition>,
    /// Notification settings: muted for good, muted until a time, which messages push.
    pub muted: bool,
    pub muted_until: Option<i64>,
    pub notify: Notify,
}

impl MemberRow {
    /// Whether the member's pushes for this conversation are off at `now`.
    pub fn muted_at(&self, now: i64) -> bool {
        muted_at(self.muted, self.muted_until, now)
    }

    pub fn device_mut(&mut self, device_id: &str) -> &mut DevicePosition {
        let index = match self.devices.iter().position(|device| device.device_id == device_id) {
            Some(index) => index,
            None => {
                self.devices.push(DevicePosition { device_id: device_id.to_string(), delivered_seq: 0, read_seq: 0 });
                self.devices.len() - 1
            }
        };
        &mut self.devices[index]
    }

    pub fn encode(&self) -> Vec<u8> {
        let role = match self.role {
            None => 0,
            Some(MemberRole::Member) => 1,
            Some(MemberRole::Admin) => 2,
        };
        let mut encoder = encode_intervals(Encoder::new().u8(role).i64(self.joined_at), &self.intervals);
        encoder = encoder.u64(self.last_read_seq).u64(self.last_delivered_seq);
        for at in [self.read_receipt_at, self.delivered_receipt_at] {
            encoder = match at {
                Some((offset, index)) => encoder.u8(1).u64(offset).u32(index),
                None => encoder.u8(0),
            };
        }
        encoder = encoder.u32(self.devices.len() as u32);
        for device in &self.devices {
            encoder = encoder.str(&device.device_id).u64(device.delivered_seq).u64(device.read_seq);
        }
        let muted_until = self.muted_until.map(|until| until.max(0) as u64);
        encoder.bool(self.muted).opt_u64(muted_until).u8(notify_code(self.notify)).finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<MemberRow> {
        let mut decoder = Decoder::new(bytes);
        let role = match decoder.u8()? {
            0 => None,
            1 => Some(MemberRole::Member),
            2 => Some(MemberRole::Admin),
            _ => return None,
        };
        let joined_at = decoder.i64()?;
        let intervals = decode_intervals(&mut decoder)?;
        let last_read_seq = decoder.u64()?;
        let last_delivered_seq = decoder.u64()?;
        let mut receipts_at = [None, None];
        for at in &mut receipts_at {
            *at = match decoder.u8()? {
                0 => None,
                1 => Some((decoder.u64()?, decoder.u32()?)),
                _ => return None,
            };
        }
        let count = decoder.u32()?;
        let devices = (0..count)
            .map(|_| Some(DevicePosition { device_id: decoder.str()?, delivered_seq: decoder.u64()?, read_seq: decoder.u64()? }))
            .collect::<Option<Vec<_>>>()?;
        let [read_receipt_at, delivered_receipt_at] = receipts_at;
        let muted = decoder.bool().unwrap_or(false);
        let muted_until = decoder.opt_u64().flatten().map(|until| until as i64);
        let notify = match decoder.u8() {
            Some(1) => Notify::Mentions,
            Some(2) => Notify::None,
            _ => Notify::All,
        };
        Some(MemberRow {
            role,
            joined_at,
            intervals,
            last_read_seq,
            last_delivered_seq,
            read_receipt_at,
            delivered_receipt_at,
            devices,
            muted,
            muted_until,
            notify,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UserConversationRow {
    pub intervals: Intervals,
}

impl UserConversationRow {
    pub fn encode(&self) -> Vec<u8> {
        encode_intervals(Encoder::new(), &self.intervals).finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<UserConversationRow> {
        Some(UserConversationRow { intervals: decode_intervals(&mut Decoder::new(bytes))? })
    }

    /// A member now (the last interval is open).
    pub fn current(&self) -> bool {
        self.intervals.last().is_some_and(|(_, until)| until.is_none())
    }
}

/// A message in its current state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MessageRow {
    pub message_id: String,
    pub sender_id: String,
    pub device_id: String,
    pub client_msg_id: String,
    pub ts: i64,
    pub body: String,
    pub attachments: Vec<Value>,
    pub edited: bool,
    pub deleted: bool,
    pub mentions: Mentions,
}

impl MessageRow {
    pub fn encode(&self) -> Vec<u8> {
        let attachments = if self.attachments.is_empty() { String::new() } else { Value::Array(self.attachments.clone()).to_string() };
        let encoder = Encoder::new()
            .str(&self.message_id)
            .str(&self.sender_id)
            .str(&self.device_id)
            .str(&self.client_msg_id)
            .i64(self.ts)
            .text(&self.body)
            .text(&attachments)
            .bool(self.edited)
            .bool(self.deleted);
        let flags = u8::from(self.mentions.channel) | (u8::from(self.mentions.here) << 1);
        let mut encoder = encoder.u8(flags).u32(self.mentions.user_ids.len() as u32);
        for user_id in &self.mentions.user_ids {
            encoder = encoder.str(user_id);
        }
        encoder.finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<MessageRow> {
        let mut decoder = Decoder::new(bytes);
        let message_id = decoder.str()?;
        let sender_id = decoder.str()?;
        let device_id = decoder.str()?;
        let client_msg_id = decoder.str()?;
        let ts = decoder.i64()?;
        let body = decoder.text()?;
        let attachments_text = decoder.text()?;
        let attachments = match attachments_text.is_empty() {
            true => Vec::new(),
            false => match serde_json::from_str::<Value>(&attachments_text).ok()? {
                Value::Array(values) => values,
                _ => return None,
            },
        };
        let (edited, deleted) = (decoder.bool()?, decoder.bool()?);
        let mentions = match decoder.u8() {
            None => Mentions::default(),
            Some(flags) => {
                let count = decoder.u32()?;
                let user_ids = (0..count).map(|_| decoder.str()).collect::<Option<Vec<_>>>()?;
                Mentions { user_ids, channel: flags & 1 != 0, here: flags & 2 != 0 }
            }
        };
        Some(MessageRow { message_id, sender_id, device_id, client_msg_id, ts, body, attachments, edited, deleted, mentions })
    }
}

/// Where an upload is: declared (its bytes awaited), uploaded (being
/// checked), ready or blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaState {
    Declared,
    Uploaded,
    Ready,
    Blocked,
}

impl MediaState {
    /// As the API names it: `pending` until moderation decided.
    pub fn status(self) -> &'static str {
        match self {
            MediaState::Declared | MediaState::Uploaded => "pending",
            MediaState::Ready => "ready",
            MediaState::Blocked => "blocked",
        }
    }

    /// Whether moderation decided (a verdict is final).
    pub fn is_decided(self) -> bool {
        matches!(self, MediaState::Ready | MediaState::Blocked)
    }

    fn code(self) -> u8 {
        match self {
            MediaState::Declared => 0,
            MediaState::Uploaded => 1,
            MediaState::Ready => 2,
            MediaState::Blocked => 3,
        }
    }

    fn of(code: u8) -> Option<MediaState> {
        Some(match code {
            0 => MediaState::Declared,
            1 => MediaState::Uploaded,
            2 => MediaState::Ready,
            3 => MediaState::Blocked,
            _ => return None,
        })
    }

    pub(crate) fn of_verdict(verdict: MediaVerdict) -> MediaState {
        match verdict {
            MediaVerdict::Ready => MediaState::Ready,
            MediaVerdict::Blocked => MediaState::Blocked,
        }
    }
}

/// An upload: what was declared, where moderation got, and the messages
/// that carry it (by seq, in its conversation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRow {
    pub conversation_id: String,
    pub uploader_id: String,
    pub device_id: String,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub state: MediaState,
    pub reason: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The type of the cleaned copy that is served, when there is one.
    pub served_content_type: Option<String>,
    pub thumbnail: bool,
    pub created_at: i64,
    pub upload_expires_at: i64,
    pub messages: Vec<u64>,
}

impl MediaRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut encoder = Encoder::new()
            .str(&self.conversation_id)
            .str(&self.uploader_id)
            .str(&self.device_id)
            .str(&self.filename)
            .str(&self.content_type)
            .u64(self.size)
            .str(&self.sha256)
            .u8(self.state.code())
            .opt_str(self.reason.as_deref())
            .opt_u64(self.width.map(u64::from))
            .opt_u64(self.height.map(u64::from))
            .opt_str(self.served_content_type.as_deref())
            .bool(self.thumbnail)
            .i64(self.created_at)
            .i64(self.upload_expires_at)
            .u32(self.messages.len() as u32);
        for seq in &self.messages {
            encoder = encoder.u64(*seq);
        }
        encoder.finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<MediaRow> {
        let mut decoder = Decoder::new(bytes);
        let conversation_id = decoder.str()?;
        let uploader_id = decoder.str()?;
        let device_id = decoder.str()?;
        let filename = decoder.str()?;
        let content_type = decoder.str()?;
        let size = decoder.u64()?;
        let sha256 = decoder.str()?;
        let state = MediaState::of(decoder.u8()?)?;
        let reason = decoder.opt_str()?;
        let width = decoder.opt_u64()?.map(|value| value as u32);
        let height = decoder.opt_u64()?.map(|value| value as u32);
        let served_content_type = decoder.opt_str()?;
        let thumbnail = decoder.bool()?;
        let created_at = decoder.i64()?;
        let upload_expires_at = decoder.i64()?;
        let count = decoder.u32()?;
        let messages = (0..count).map(|_| decoder.u64()).collect::<Option<Vec<_>>>()?;
        Some(MediaRow {
            conversation_id,
            uploader_id,
            device_id,
            filename,
            content_type,
            size,
            sha256,
            state,
            reason,
            width,
            height,
            served_content_type,
            thumbnail,
            created_at,
            upload_expires_at,
            messages,
        })
    }

    /// The media object without URLs (messages and `media.update` carry this).
    pub fn render(&self, media_id: &str) -> confab_schemas::api::Media {
        confab_schemas::api::Media {
            media_id: media_id.to_string(),
            conversation_id: self.conversation_id.clone(),
            uploader_id: self.uploader_id.clone(),
            filename: self.filename.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            status: self.state.status().to_string(),
            reason: self.reason.clone(),
            width: self.width,
            height: self.height,
            url: None,
            thumbnail_url: None,
            url_expires_at: None,
        }
    }
}

/// The uploads a message's attachments refer to (`{mediaId}`).
pub(crate) fn media_ids(attachments: &[Value]) -> impl Iterator<Item = &str> {
    attachments.iter().filter_map(|attachment| attachment.get("mediaId")?.as_str())
}

/// In `media`, beside each upload's row: uploader, media -> size.
pub(crate) fn uploader_media_key(user_id: &str, media_id: &str) -> Vec<u8> {
    Encoder::new().id(user_id).id(media_id).finish()
}

/// A message's place: its conversation and seq (`message_ids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageRef {
    pub conversation_id: String,
    pub seq: u64,
}

impl MessageRef {
    pub fn encode(&self) -> Vec<u8> {
        Encoder::new().str(&self.conversation_id).u64(self.seq).finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<MessageRef> {
        let mut decoder = Decoder::new(bytes);
        Some(MessageRef { conversation_id: decoder.str()?, seq: decoder.u64()? })
    }
}

/// What happened at one `(offset, index)` of a conversation, for sync.
/// Message events are rendered from the message's current state when read,
/// so a deleted message's body is never served again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EventKind {
    MessageNew {
        seq: u64,
    },
    MessageEdit {
        seq: u64,
    },
    MessageDelete {
        seq: u64,
    },
    Member {
        user_id: String,
        change: MemberChange,
    },
    /// Attachment `media_id` of message `seq` changed status.
    MediaUpdate {
        seq: u64,
        media_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventRow {
    pub ts: i64,
    pub kind: EventKind,
}

impl EventRow {
    pub fn encode(&self) -> Vec<u8> {
        let encoder = Encoder::new().i64(self.ts);
        match &self.kind {
            EventKind::MessageNew { seq } => encoder.u8(0).u64(*seq),
            EventKind::MessageEdit { seq } => encoder.u8(1).u64(*seq),
            EventKind::MessageDelete { seq } => encoder.u8(2).u64(*seq),
            EventKind::Member { user_id, change: MemberChange::Joined } => encoder.u8(3).str(user_id),
            EventKind::Member { user_id, change: MemberChange::Left } => encoder.u8(4).str(user_id),
            EventKind::MediaUpdate { seq, media_id } => encoder.u8(5).u64(*seq).str(media_id),
        }
        .finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<EventRow> {
        let mut decoder = Decoder::new(bytes);
        let ts = decoder.i64()?;
        let kind = match decoder.u8()? {
            0 => EventKind::MessageNew { seq: decoder.u64()? },
            1 => EventKind::MessageEdit { seq: decoder.u64()? },
            2 => EventKind::MessageDelete { seq: decoder.u64()? },
            3 => EventKind::Member { user_id: decoder.str()?, change: MemberChange::Joined },
            4 => EventKind::Member { user_id: decoder.str()?, change: MemberChange::Left },
            5 => EventKind::MediaUpdate { seq: decoder.u64()?, media_id: decoder.str()? },
            _ => return None,
        };
        Some(EventRow { ts, kind })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiptKind {
    Read,
    Delivered,
}

/// A member's latest read or delivered receipt: the event sync and replay
/// serve. When the member moves on, this row moves to the new position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReceiptRow {
    pub ts: i64,
    pub user_id: String,
    pub kind: ReceiptKind,
    pub seq: u64,
}

impl ReceiptRow {
    pub fn encode(&self) -> Vec<u8> {
        let kind = match self.kind {
            ReceiptKind::Read => 0,
            ReceiptKind::Delivered => 1,
        };
        Encoder::new().i64(self.ts).str(&self.user_id).u8(kind).u64(self.seq).finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<ReceiptRow> {
        let mut decoder = Decoder::new(bytes);
        let ts = decoder.i64()?;
        let user_id = decoder.str()?;
        let kind = match decoder.u8()? {
            0 => ReceiptKind::Read,
            1 => ReceiptKind::Delivered,
            _ => return None,
        };
        Some(ReceiptRow { ts, user_id, kind, seq: decoder.u64()? })
    }
}

/// Where a `(sender, clientMsgId)` was sent, and when (the window counts from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyRow {
    pub ts: i64,
    pub conversation_id: String,
    pub seq: u64,
}

impl IdempotencyRow {
    pub fn encode(&self) -> Vec<u8> {
        // The time comes first: the store's compaction filter reads it there.
        Encoder::new().i64(self.ts).str(&self.conversation_id).u64(self.seq).finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<IdempotencyRow> {
        let mut decoder = Decoder::new(bytes);
        Some(IdempotencyRow { ts: decoder.i64()?, conversation_id: decoder.str()?, seq: decoder.u64()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let member = MemberRow {
            role: Some(MemberRole::Admin),
            joined_at: 5,
            intervals: vec![(1, Some(4)), (9, None)],
            last_read_seq: 3,
            last_delivered_seq: 4,
            read_receipt_at: Some((7, 1)),
            delivered_receipt_at: None,
            devices: vec![DevicePosition { device_id: "d_1".into(), delivered_seq: 4, read_seq: 3 }],
            muted: false,
            muted_until: Some(99),
            notify: Notify::Mentions,
        };
        assert_eq!(MemberRow::decode(&member.encode()), Some(member));
        let message = MessageRow {
            message_id: "m_1".into(),
            sender_id: "u_1".into(),
            device_id: "d_1".into(),
            client_msg_id: "k".into(),
            ts: 9,
            body: "héllo".into(),
            attachments: vec![serde_json::json!({"a": 1})],
            edited: true,
            deleted: false,
            mentions: Mentions { user_ids: vec!["u_2".into()], channel: false, here: true },
        };
        assert_eq!(MessageRow::decode(&message.encode()), Some(message));
        let user = UserRow {
            username: "a".into(),
            display_name: None,
            password_hash: "$argon2id$x".into(),
            roles: vec![AccountRole::Admin, AccountRole::Compliance],
            created_at: 1,
            push_preview: PushPreview::Sender,
        };
        assert_eq!(UserRow::decode(&user.encode()), Some(user));
        let device = DeviceRow {
            user_id: "u_1".into(),
            name: None,
            platform: Some("ios".into()),
            created_at: 2,
            push: Some(PushToken { provider: PushProvider::Apns, token: "ab".into(), app_id: None }),
        };
        assert_eq!(DeviceRow::decode(&device.encode()), Some(device));
        let event = EventRow { ts: 3, kind: EventKind::Member { user_id: "u_2".into(), change: MemberChange::Left } };
        assert_eq!(EventRow::decode(&event.encode()), Some(event));
        let idempotency = IdempotencyRow { ts: 11, conversation_id: "c_1".into(), seq: 2 };
        assert_eq!(&idempotency.encode()[..8], &11i64.to_be_bytes(), "the time leads the row");
        assert!(within(&vec![(1, Some(4)), (9, None)], 4) && !within(&vec![(1, Some(4)), (9, None)], 5));
    }
}
