//! What decides a push: devices' push tokens, members' notification
//! settings per conversation, users' `pushPreview`, and the view of one
//! message that the push pipeline reads (`push_audience`).
//!
//! Tokens, settings and previews are log events like everything else
//! (`PushTokenSet`, `ConversationSettingsChanged`, `UserSettingsChanged`),
//! so they survive a crash and replay in order with the messages they
//! govern. A token the push service rejects is removed with the rejected
//! token named: if the device registered a new one meanwhile, that one
//! stays.

use confab_schemas::api;
use confab_schemas::events::{ConversationType, LogEvent, Notify, PushPreview, PushProvider};
use confab_schemas::ids::now_ms;

use crate::commands::{Caller, Ingest};
use crate::rows::{self, PushToken};
use crate::store::{prefix_range, Space};
use crate::{Error, Result};

/// Push tokens are opaque to us but not unbounded: APNs tokens are 64 hex
/// digits today, FCM registration tokens about 160 characters.
const TOKEN_MAX_BYTES: usize = 1024;
const APP_ID_MAX_BYTES: usize = 255;

/// A change to a member's settings; `None` keeps what is set.
#[derive(Debug, Clone, Default)]
pub struct SettingsChange {
    pub muted: Option<bool>,
    /// `Some(None)`: clear the time.
    pub muted_until: Option<Option<i64>>,
    pub notify: Option<Notify>,
}

/// One member's device that can be pushed.
#[derive(Debug, Clone)]
pub struct PushDevice {
    pub device_id: String,
    pub push: PushToken,
}

/// A member of a conversation as a push sees them.
#[derive(Debug, Clone)]
pub struct PushMember {
    pub user_id: String,
    pub muted: bool,
    pub notify: Notify,
    pub preview: PushPreview,
    /// The member blocked the message's sender: no push for it.
    pub blocked_sender: bool,
    pub devices: Vec<PushDevice>,
}

/// A new message and who might be pushed for it: the members at its
/// offset (but the sender) with at least one device with a token.
#[derive(Debug, Clone)]
pub struct PushAudience {
    pub conversation_type: ConversationType,
    pub title: Option<String>,
    pub member_count: usize,
    pub message: api::Message,
    /// The sender's display name, else username.
    pub sender_name: String,
    pub members: Vec<PushMember>,
}

/// What one member's push for a message says, read when it is sent.
#[derive(Debug, Clone)]
pub struct PushText {
    pub conversation_type: ConversationType,
    pub title: Option<String>,
    pub sender_name: String,
    pub body: String,
    pub preview: PushPreview,
}

fn check_token(token: &str, app_id: Option<&str>) -> Result<()> {
    if token.is_empty() || token.len() > TOKEN_MAX_BYTES || !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(Error::invalid("token", format!("a push token is 1 to {TOKEN_MAX_BYTES} printable ASCII characters without spaces")));
    }
    if let Some(app_id) = app_id {
        if app_id.is_empty() || app_id.len() > APP_ID_MAX_BYTES || !app_id.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(Error::invalid("appId", format!("an app id is 1 to {APP_ID_MAX_BYTES} printable ASCII characters without spaces")));
        }
    }
    Ok(())
}

impl Ingest {
    fn own_device(&self, caller: &Caller, device_id: &str) -> Result<()> {
        match self.state.device(device_id)? {
            Some(device) if device.user_id == caller.user_id => Ok(()),
            _ => Err(Error::DeviceNotFound(device_id.to_string())),
        }
    }

    /// Registers (or replaces) a device's push token: only the caller's own devices.
    pub async fn set_push_token(&self, caller: &Caller, device_id: &str, provider: PushProvider, token: String, app_id: Option<String>) -> Result<()> {
        check_token(&token, app_id.as_deref())?;
        self.own_device(caller, device_id)?;
        let event = LogEvent::PushTokenSet { user_id: caller.user_id.clone(), device_id: device_id.to_string(), provider, token, app_id, ts: now_ms() };
        self.commit(self.partition_of(&caller.user_id), vec![event], None).await
    }

    /// Removes a device's push token (the device asked).
    pub async fn remove_push_token(&self, caller: &Caller, device_id: &str) -> Result<()> {
        self.own_device(caller, device_id)?;
        let event = LogEvent::PushTokenRemoved {
            user_id: caller.user_id.clone(),
            device_id: device_id.to_string(),
            token: None,
            reason: "removed".into(),
            ts: now_ms(),
        };
        self.commit(self.partition_of(&caller.user_id), vec![event], None).await
    }

    /// Forgets `token` on a device because its push service rejected it;
    /// a newer token the device registered since is kept.
    pub async fn forget_push_token(&self, device_id: &str, token: &str, reason: &str) -> Result<()> {
        let Some(device) = self.state.device(device_id)? else { return Ok(()) };
        if device.push.as_ref().is_none_or(|push| push.token != token) {
            return Ok(());
        }
        let event = LogEvent::PushTokenRemoved {
            user_id: device.user_id.clone(),
            device_id: device_id.to_string(),
            token: Some(token.to_string()),
            reason: reason.to_string(),
            ts: now_ms(),
        };
        self.commit(self.partition_of(&device.user_id), vec![event], None).await
    }

    /// The caller's settings for a conversation (members only).
    pub fn conversation_settings(&self, caller: &Caller, conversation_id: &str) -> Result<api::ConversationSettings> {
        let handle = self.state.conversation(conversation_id)?.ok_or_else(|| Error::ConversationNotFound(conversation_id.to_string()))?;
        let conversation = handle.state.read();
        let member = conversation.member(&caller.user_id).ok_or_else(|| Error::NotMember(conversation_id.to_string()))?;
        Ok(settings_of(member.muted, member.muted_until, member.notify, now_ms()))
    }

    /// Changes the caller's settings for a conversation and returns them.
    pub async fn set_conversation_settings(&self, caller: &Caller, conversation_id: &str, change: SettingsChange) -> Result<api::ConversationSettings> {
        let partition = self.partition_of(conversation_id);
        let _writer = partition.writer.lock().await;
        let pin = self.pinned_conversation(conversation_id)?;
        let now = now_ms();
        let (muted, muted_until, notify) = {
            let conversation = pin.0.state.read();
            let member = conversation.member(&caller.user_id).ok_or_else(|| Error::NotMember(conversation_id.to_string()))?;
            let (mut muted, mut muted_until) = (member.muted, member.muted_until.filter(|until| *until > now));
            match change.muted {
                // Unmuting ends a timed mute too.
                Some(false) => (muted, muted_until) = (false, None),
                Some(true) if change.muted_until.is_none() => (muted, muted_until) = (true, None),
                _ => {}
            }
            if let Some(until) = change.muted_until {
                muted_until = until;
                if until.is_some() {
                    muted = false;
                }
            }
            (muted, muted_until, change.notify.unwrap_or(member.notify))
        };
        let event = LogEvent::ConversationSettingsChanged {
            conversation_id: conversation_id.to_string(),
            user_id: caller.user_id.clone(),
            muted,
            muted_until,
            notify,
            ts: now,
        };
        self.commit_locked(partition, vec![event], Some(pin)).await?;
        Ok(settings_of(muted, muted_until, notify, now))
    }

    pub fn push_preview(&self, caller: &Caller) -> Result<PushPreview> {
        Ok(self.state.user(&caller.user_id)?.ok_or(Error::StateFailed)?.push_preview)
    }

    pub async fn set_push_preview(&self, caller: &Caller, push_preview: PushPreview) -> Result<PushPreview> {
        let event = LogEvent::UserSettingsChanged { user_id: caller.user_id.clone(), push_preview, ts: now_ms() };
        self.commit(self.partition_of(&caller.user_id), vec![event], None).await?;
        Ok(push_preview)
    }

    /// A user's devices that have a push token.
    pub fn push_devices(&self, user_id: &str) -> Result<Vec<PushDevice>> {
        let devices = self.state.devices_of(user_id)?;
        Ok(devices.iter().filter_map(|device| Some(PushDevice { device_id: device.device_id.clone(), push: device.push.clone()? })).collect())
    }

    /// The message at `seq` of a conversation and the members at `offset`
    /// who could be pushed for it; `None` when it is gone or deleted.
    pub fn push_audience(&self, conversation_id: &str, seq: u64, offset: u64) -> Result<Option<PushAudience>> {
        let Some(handle) = self.state.conversation(conversation_id)? else { return Ok(None) };
        let Some(message) = self.state.message(&handle, seq)?.filter(|message| !message.deleted) else { return Ok(None) };
        let now = now_ms();
        let (conversation_type, title, member_count, candidates) = {
            let conversation = handle.state.read();
            let candidates: Vec<(String, bool, Notify)> = conversation
                .members
                .iter()
                .filter(|(user_id, member)| **user_id != message.sender_id && member.role.is_some() && rows::within(&member.intervals, offset))
                .map(|(user_id, member)| (user_id.clone(), member.muted_at(now), member.notify))
                .collect();
            (conversation.conversation_type, conversation.title.clone(), conversation.member_count, candidates)
        };
        let sender = self.state.user(&message.sender_id)?;
        let sender_name = sender.as_ref().map(|user| user.display_name.clone().unwrap_or_else(|| user.username.clone())).unwrap_or_default();
        let mut members = Vec::new();
        for (user_id, muted, notify) in candidates {
            let devices = self.push_devices(&user_id)?;
            if devices.is_empty() {
                continue;
            }
            let preview = self.state.user(&user_id)?.map(|user| user.push_preview).unwrap_or_default();
            let blocked_sender = self.state.is_blocked(&user_id, &message.sender_id)?;
            members.push(PushMember { user_id, muted, notify, preview, blocked_sender, devices });
        }
        let message = crate::queries::render_message(conversation_id, seq, &message);
        Ok(Some(PushAudience { conversation_type, title, member_count, message, sender_name, members }))
    }

    /// The text of `user_id`'s push for message `seq`, read at send time
    /// so that no message text waits in a workflow's store (which erasure
    /// and retention do not reach), and a message deleted or erased
    /// meanwhile is not pushed: None then.
    pub fn push_text(&self, conversation_id: &str, seq: u64, user_id: &str) -> Result<Option<PushText>> {
        let Some(handle) = self.state.conversation(conversation_id)? else { return Ok(None) };
        let Some(message) = self.state.message(&handle, seq)?.filter(|message| !message.deleted) else { return Ok(None) };
        let (conversation_type, title) = {
            let conversation = handle.state.read();
            (conversation.conversation_type, conversation.title.clone())
        };
        let sender = self.state.user(&message.sender_id)?;
        let sender_name = sender.as_ref().map(|user| user.display_name.clone().unwrap_or_else(|| user.username.clone())).unwrap_or_default();
        let preview = self.state.user(user_id)?.map(|user| user.push_preview).unwrap_or_default();
        let body = crate::queries::render_message(conversation_id, seq, &message).body;
        Ok(Some(PushText { conversation_type, title, sender_name, body, preview }))
    }

    /// Writes push attempts to the log (for the `push_attempts` history).
    pub async fn record_push_attempts(&self, attempts: Vec<confab_schemas::events::PushAttempt>) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        let event = LogEvent::PushAttempts { attempts, ts: now_ms() };
        self.commit(self.partition_of(confab_schemas::events::PUSH_ATTEMPTS_KEY), vec![event], None).await
    }

    /// The badge of a user's app: unread messages over their unmuted conversations.
    pub fn badge(&self, user_id: &str) -> Result<u64> {
        let caller = Caller { user_id: user_id.to_string(), device_id: String::new() };
        Ok(self.list_conversations(&caller)?.iter().filter(|summary| !summary.muted).map(|summary| summary.unread_count).sum())
    }

    /// Messages after `read_seq` that mention `user_id` (by name, `@channel`
    /// or `@here`), deleted ones excluded.
    pub(crate) fn unread_mentions(&self, conversation_id: &str, user_id: &str, read_seq: u64) -> Result<u64> {
        let mut count = 0;
        for target in [user_id, rows::EVERYONE] {
            let (_, end) = prefix_range(&rows::mention_prefix(conversation_id, target));
            let start = std::ops::Bound::Excluded(rows::mention_key(conversation_id, target, read_seq));
            for entry in self.state.store.range(Space::Mentions, start, end, false) {
                entry?;
                count += 1;
            }
        }
        Ok(count)
    }
}

/// Settings as the API shows them at `now`: a timed mute that has passed reads as none.
pub(crate) fn settings_of(muted: bool, muted_until: Option<i64>, notify: Notify, now: i64) -> api::ConversationSettings {
    api::ConversationSettings { muted: rows::muted_at(muted, muted_until, now), muted_until: muted_until.filter(|until| *until > now), notify }
}
