//! Applying durable log records to the state, one round at a time.
//!
//! A round is every durable record of one partition that waits to be
//! applied (a group-commit round's worth, or a replay batch). It changes
//! the cached conversations in place (they are pinned for the round),
//! collects every row it changes into one [`WriteBatch`] together with the
//! partition's new applied offset, and commits that batch atomically. So
//! the store always equals the log applied up to its recorded offset: a
//! crash before the commit loses the round, and the start applies those
//! records again; a crash after it loses nothing, and they are not applied
//! twice. Only after the commit are reservations released, caches updated
//! and waiters told.
//!
//! Deterministic: a replay of the same records makes the same rows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use confab_schemas::api::{ClientEvent, MemberChange};
use confab_schemas::events::{AccountRole, ConversationType, DeliveryReceipt, LogEvent, MemberRole, Mentions};
use parking_lot::RwLock;

use crate::queries::render_message;
use crate::rows::{
    self, ConversationRow, EventKind, EventRow, IdempotencyRow, MediaRow, MediaState, MemberRow, MessageRef, MessageRow, PushToken, ReceiptKind, ReceiptRow,
    UserConversationRow,
};
use crate::state::{dm_pair, ConversationHandle, ConversationState, Device, Pin, SendOutcome, State, User};
use crate::store::{Space, StoreResult, WriteBatch};

/// What one record produced for its conversation's devices, for the fanout.
#[derive(Debug, Clone)]
pub(crate) struct RecordOutcome {
    pub offset: u64,
    pub events: Vec<ClientEvent>,
    /// Everyone who was a member at this offset (shared by the record's events).
    pub recipients: Arc<[String]>,
    pub member_count: usize,
}

/// One event a record makes, before it gets its index.
enum Produced {
    Event(EventKind),
    Receipt { user_id: String, kind: ReceiptKind, seq: u64 },
}

pub(crate) struct Round<'a> {
    state: &'a State,
    partition: u32,
    batch: WriteBatch,
    /// The conversations this round touches, pinned until it has committed.
    pins: HashMap<String, Pin>,
    /// Members whose row changed; `true` when their membership did too.
    dirty_members: HashMap<(String, String), bool>,
    /// Changed messages that are not among the newest in memory.
    changed_messages: HashMap<(String, u64), MessageRow>,
    users: HashMap<String, Arc<User>>,
    devices: Vec<Arc<Device>>,
    /// Devices logged out this round: dropped from the cache once it is durable.
    ended_devices: Vec<String>,
    usernames: Vec<String>,
    dms: Vec<(String, String)>,
    sent_keys: Vec<(String, String)>,
    /// Uploads changed earlier in this round (`None`: removed).
    media: HashMap<String, Option<MediaRow>>,
    render: bool,
    outcomes: Vec<RecordOutcome>,
    applied_end: Option<u64>,
}

impl State {
    /// Applies `records` (ascending offsets of one partition) and commits
    /// them with the partition's new applied offset. With `render`, returns
    /// what each record produced, for the fanout.
    pub(crate) fn apply_round(&self, partition: u32, records: Vec<(u64, LogEvent)>, render: bool) -> StoreResult<Vec<RecordOutcome>> {
        let mut round = Round {
            state: self,
            partition,
            batch: WriteBatch::default(),
            pins: HashMap::new(),
            dirty_members: HashMap::new(),
            changed_messages: HashMap::new(),
            users: HashMap::new(),
            devices: Vec::new(),
            ended_devices: Vec::new(),
            usernames: Vec::new(),
            dms: Vec::new(),
            sent_keys: Vec::new(),
            media: HashMap::new(),
            render,
            outcomes: Vec::new(),
            applied_end: None,
        };
        for (offset, event) in records {
            round.apply(offset, event)?;
            round.applied_end = Some(offset + 1);
        }
        round.commit()
    }
}

impl Round<'_> {
    fn apply(&mut self, offset: u64, event: LogEvent) -> StoreResult<()> {
        match event {
            LogEvent::UserCreated { user_id, username, display_name, password_hash, roles, ts } => {
                if roles.contains(&AccountRole::Admin) {
                    self.state.admin_assigned.store(true, Ordering::Release);
                    self.batch.put(Space::Meta, rows::ADMIN_KEY.to_vec(), vec![1]);
                }
                let user = User {
                    user_id: user_id.clone(),
                    username: username.clone(),
                    display_name,
                    password_hash,
                    roles,
                    created_at: ts,
                    push_preview: Default::default(),
                };
                self.batch.put(Space::Users, rows::id_key(&user_id), user.row().encode());
                self.batch.put(Space::Usernames, username.as_bytes().to_vec(), user_id.as_bytes().to_vec());
                self.usernames.push(username);
                self.users.insert(user_id, Arc::new(user));
            }
            LogEvent::RoleGranted { user_id, role, .. } => self.change_user(&user_id, |user| {
                if user.roles.contains(&role) {
                    return false;
                }
                user.roles.push(role);
                true
            })?,
            LogEvent::RoleRevoked { user_id, role, .. } => self.change_user(&user_id, |user| {
                if !user.roles.contains(&role) {
                    return false;
                }
                user.roles.retain(|held| *held != role);
                true
            })?,
            LogEvent::BlockChanged { user_id, blocked_id, blocked, .. } => match blocked {
                true => self.batch.put(Space::Users, rows::block_key(&user_id, &blocked_id), Vec::new()),
                false => self.batch.remove(Space::Users, rows::block_key(&user_id, &blocked_id)),
            },
            LogEvent::UserSettingsChanged { user_id, push_preview, .. } => self.change_user(&user_id, |user| {
                user.push_preview = push_preview;
                true
            })?,
            LogEvent::PushTokenSet { device_id, provider, token, app_id, .. } => {
                self.change_device(&device_id, |device| device.push = Some(PushToken { provider, token, app_id }))?;
            }
            LogEvent::PushTokenRemoved { device_id, token, .. } => {
                self.change_device(&device_id, |device| {
                    let matches = match (&token, &device.push) {
                        (None, _) => true,
                        (Some(rejected), Some(current)) => *rejected == current.token,
                        (Some(_), None) => false,
                    };
                    if matches {
                        device.push = None;
                    }
                })?;
            }
            LogEvent::ConversationSettingsChanged { conversation_id, user_id, muted, muted_until, notify, .. } => {
                let Some(handle) = self.touch(&conversation_id)? else { return Ok(()) };
                let mut conversation = handle.state.write();
                let Some(member) = conversation.members.get_mut(&user_id).filter(|member| member.role.is_some()) else { return Ok(()) };
                member.muted = muted;
                member.muted_until = muted_until;
                member.notify = notify;
                self.dirty_members.entry((conversation_id, user_id)).or_insert(false);
            }
            LogEvent::Audited { .. } | LogEvent::PushAttempts { .. } | LogEvent::Lost {} => {}
            LogEvent::MediaDeclared { media_id, conversation_id, uploader_id, device_id, filename, content_type, size, sha256, upload_expires_at, ts } => {
                if self.media_row(&media_id)?.is_some() {
                    return Ok(()); // Applied already.
                }
                self.batch.put(Space::Media, rows::uploader_media_key(&uploader_id, &media_id), size.to_be_bytes().to_vec());
                let row = MediaRow {
                    conversation_id,
                    uploader_id,
                    device_id,
                    filename,
                    content_type,
                    size,
                    sha256,
                    state: MediaState::Declared,
                    reason: None,
                    width: None,
                    height: None,
                    served_content_type: None,
                    thumbnail: false,
                    created_at: ts,
                    upload_expires_at,
                    messages: Vec::new(),
                };
                self.put_media(media_id, row);
            }
            LogEvent::MediaUploaded { media_id, .. } => {
                let Some(mut row) = self.media_row(&media_id)? else { return Ok(()) };
                if row.state == MediaState::Declared {
                    row.state = MediaState::Uploaded;
                    self.put_media(media_id, row);
                }
            }
            LogEvent::MediaChecked { media_id, conversation_id, verdict, reason, width, height, served_content_type, thumbnail, ts } => {
                let Some(mut row) = self.media_row(&media_id)? else { return Ok(()) };
                if row.state.is_decided() {
                    return Ok(()); // Decided already: a verdict is final.
                }
                row.state = MediaState::of_verdict(verdict);
                row.reason = reason;
                row.width = width;
                row.height = height;
                row.served_content_type = served_content_type;
                row.thumbnail = thumbnail;
                let rendered = serde_json::to_value(row.render(&media_id)).expect("a media object serializes");
                let seqs = row.messages.clone();
                self.put_media(media_id.clone(), row);
                let Some(handle) = self.touch(&conversation_id)? else { return Ok(()) };
                let mut conversation = handle.state.write();
                let mut produced = Vec::new();
                for seq in seqs {
                    let changed = self.change_message(&mut conversation, seq, |message| {
                        for attachment in &mut message.attachments {
                            if attachment.get("mediaId").and_then(|id| id.as_str()) == Some(media_id.as_str()) {
                                *attachment = rendered.clone();
                            }
                        }
                    })?;
                    if changed {
                        produced.push(Produced::Event(EventKind::MediaUpdate { seq, media_id: media_id.clone() }));
                    }
                }
                self.record(&mut conversation, offset, ts, produced)?;
            }
            LogEvent::MediaRemoved { media_id, .. } => {
                let Some(row) = self.media_row(&media_id)? else { return Ok(()) };
                self.batch.remove(Space::Media, rows::uploader_media_key(&row.uploader_id, &media_id));
                self.batch.remove(Space::Media, rows::id_key(&media_id));
                self.media.insert(media_id, None);
            }
            LogEvent::SessionCreated { user_id, device_id, device_name, platform, ts } => {
                let device = Device { device_id: device_id.clone(), user_id: user_id.clone(), name: device_name, platform, created_at: ts, push: None };
                self.batch.put(Space::Devices, rows::id_key(&device_id), device.row().encode());
                self.batch.put(Space::Devices, rows::user_device_key(&user_id, &device_id), Vec::new());
                self.devices.push(Arc::new(device));
            }
            LogEvent::SessionEnded { user_id, device_id, .. } => {
                self.batch.remove(Space::Devices, rows::id_key(&device_id));
                self.batch.remove(Space::Devices, rows::user_device_key(&user_id, &device_id));
                self.devices.retain(|device| device.device_id != device_id);
                self.ended_devices.push(device_id);
            }
            LogEvent::ConversationCreated { conversation_id, conversation_type, title, creator_id, member_ids, ts, history_visibility } => {
                let visibility = history_visibility.unwrap_or_else(|| confab_schemas::events::HistoryVisibility::default_for(conversation_type));
                self.create_conversation(offset, conversation_id, (conversation_type, visibility), title, creator_id, member_ids, ts)?;
            }
            LogEvent::MembersAdded { conversation_id, user_ids, ts, .. } => {
                let Some(handle) = self.touch(&conversation_id)? else { return Ok(()) };
                let mut conversation = handle.state.write();
                let mut produced = Vec::new();
                for user_id in user_ids {
                    if !conversation.is_member(&user_id) {
                        self.join(&mut conversation, offset, ts, &user_id, MemberRole::Member);
                        produced.push(Produced::Event(EventKind::Member { user_id, change: MemberChange::Joined }));
                    }
                }
                self.record(&mut conversation, offset, ts, produced)?;
            }
            LogEvent::MemberRemoved { conversation_id, user_id, ts, .. } => {
                let Some(handle) = self.touch(&conversation_id)? else { return Ok(()) };
                let mut conversation = handle.state.write();
                let Some(member) = conversation.members.get_mut(&user_id).filter(|member| member.role.is_some()) else { return Ok(()) };
                member.role = None;
                if let Some(interval) = member.intervals.last_mut() {
                    interval.1 = Some(offset);
                }
                conversation.member_count -= 1;
                self.dirty_members.insert((conversation_id.clone(), user_id.clone()), true);
                self.record(&mut conversation, offset, ts, vec![Produced::Event(EventKind::Member { user_id, change: MemberChange::Left })])?;
            }
            LogEvent::MessageCreated { message_id, conversation_id, seq, sender_id, device_id, client_msg_id, body, attachments, ts, mentions, trace: _ } => {
                let Some(handle) = self.touch(&conversation_id)? else { return Ok(()) };
                let mut conversation = handle.state.write();
                if seq != conversation.last_seq + 1 {
                    tracing::error!(conversation_id, seq, last_seq = conversation.last_seq, offset, "skipping a message out of sequence");
                    return Ok(());
                }
                self.batch.put(Space::MessageIds, rows::id_key(&message_id), MessageRef { conversation_id: conversation_id.clone(), seq }.encode());
                let idempotency = IdempotencyRow { ts, conversation_id: conversation_id.clone(), seq };
                self.batch.put(Space::Idempotency, rows::idempotency_key(&sender_id, &client_msg_id), idempotency.encode());
                if let Some(sender) = conversation.members.get_mut(&sender_id).filter(|member| member.role.is_some()) {
                    // Sending reads everything before it, on the sending device too.
                    sender.last_read_seq = sender.last_read_seq.max(seq);
                    sender.last_delivered_seq = sender.last_delivered_seq.max(seq);
                    let device = sender.device_mut(&device_id);
                    device.read_seq = device.read_seq.max(seq);
                    device.delivered_seq = device.delivered_seq.max(seq);
                    self.dirty_members.entry((conversation_id.clone(), sender_id.clone())).or_insert(false);
                }
                let message = MessageRow {
                    message_id,
                    sender_id: sender_id.clone(),
                    device_id,
                    client_msg_id: client_msg_id.clone(),
                    ts,
                    body,
                    attachments,
                    edited: false,
                    deleted: false,
                    mentions,
                };
                self.write_mentions(&conversation_id, seq, &Mentions::default(), &message.mentions);
                self.link_media(&conversation_id, seq, &message.attachments, true)?;
                self.batch.put(Space::Messages, rows::seq_key(&conversation_id, seq), message.encode());
                conversation.recent.push_back(message);
                conversation.last_seq = seq;
                handle.assigned_seq.fetch_max(seq, Ordering::AcqRel);
                self.sent_keys.push((sender_id, client_msg_id));
                self.record(&mut conversation, offset, ts, vec![Produced::Event(EventKind::MessageNew { seq })])?;
            }
            LogEvent::MessageEdited { conversation_id, seq, body, ts, mentions, .. } => {
                let Some(handle) = self.touch(&conversation_id)? else { return Ok(()) };
                let mut conversation = handle.state.write();
                let mut old_mentions = Mentions::default();
                let new_mentions = mentions.clone();
                let changed = self.change_message(&mut conversation, seq, |message| {
                    message.body = body;
                    message.edited = true;
                    old_mentions = std::mem::replace(&mut message.mentions, mentions);
                })?;
                if changed {
                    self.write_mentions(&conversation_id, seq, &old_mentions, &new_mentions);
                    self.record(&mut conversation, offset, ts, vec![Produced::Event(EventKind::MessageEdit { seq })])?;
                }
            }
            LogEvent::MessageDeleted { conversation_id, seq, ts, .. } => {
                let Some(handle) = self.touch(&conversation_id)? else { return Ok(()) };
                let mut conversation = handle.state.write();
                let mut old_mentions = Mentions::default();
                let mut old_attachments = Vec::new();
                let changed = self.change_message(&mut conversation, seq, |message| {
                    message.deleted = true;
                    message.body.clear();
                    old_attachments = std::mem::take(&mut message.attachments);
                    old_mentions = std::mem::take(&mut message.mentions);
                })?;
                if changed {
                    self.link_media(&conversation_id, seq, &old_attachments, false)?;
                    self.write_mentions(&conversation_id, seq, &old_mentions, &Mentions::default());
                    self.batch.put(Space::Deleted, rows::seq_key(&conversation_id, seq), Vec::new());
                    self.record(&mut conversation, offset, ts, vec![Produced::Event(EventKind::MessageDelete { seq })])?;
                }
            }
            LogEvent::ReadCursorMoved { conversation_id, user_id, seq, device_id, ts } => {
                let Some(handle) = self.touch(&conversation_id)? else { return Ok(()) };
                let mut conversation = handle.state.write();
                let Some(member) = conversation.members.get_mut(&user_id).filter(|member| member.role.is_some()) else { return Ok(()) };
                if let Some(device_id) = device_id {
                    let device = member.device_mut(&device_id);
                    device.read_seq = device.read_seq.max(seq);
                    device.delivered_seq = device.delivered_seq.max(seq);
                }
                self.dirty_members.entry((conversation_id.clone(), user_id.clone())).or_insert(false);
                if seq <= member.last_read_seq {
                    return Ok(());
                }
                member.last_read_seq = seq;
                member.last_delivered_seq = member.last_delivered_seq.max(seq);
                self.record(&mut conversation, offset, ts, vec![Produced::Receipt { user_id, kind: ReceiptKind::Read, seq }])?;
            }
            LogEvent::DeliveryReceipts { conversation_id, receipts, ts } => {
                let Some(handle) = self.touch(&conversation_id)? else { return Ok(()) };
                let mut conversation = handle.state.write();
                let produced = self.deliveries(&mut conversation, receipts);
                self.record(&mut conversation, offset, ts, produced)?;
            }
        }
        Ok(())
    }

    /// Changes a user's row (one changed earlier in this round, or the
    /// stored one) when `change` says it changed; nothing if the user is gone.
    fn change_user(&mut self, user_id: &str, change: impl FnOnce(&mut User) -> bool) -> StoreResult<()> {
        let current = match self.users.get(user_id) {
            Some(user) => Some(user.clone()),
            None => self.state.user(user_id)?,
        };
        let Some(current) = current else { return Ok(()) };
        let mut changed = (*current).clone();
        if change(&mut changed) {
            self.batch.put(Space::Users, rows::id_key(user_id), changed.row().encode());
            self.users.insert(user_id.to_string(), Arc::new(changed));
        }
        Ok(())
    }

    /// Changes a device's row (one changed earlier in this round, or the
    /// stored one); nothing if it is gone.
    fn change_device(&mut self, device_id: &str, change: impl FnOnce(&mut Device)) -> StoreResult<()> {
        if self.ended_devices.iter().any(|ended| ended == device_id) {
            return Ok(());
        }
        let current = match self.devices.iter().rev().find(|device| device.device_id == device_id) {
            Some(device) => Some(device.clone()),
            None => self.state.device(device_id)?,
        };
        let Some(current) = current else { return Ok(()) };
        let mut changed = (*current).clone();
        change(&mut changed);
        self.batch.put(Space::Devices, rows::id_key(device_id), changed.row().encode());
        self.devices.push(Arc::new(changed));
        Ok(())
    }

    /// An upload as this round left it, else as stored.
    fn media_row(&self, media_id: &str) -> StoreResult<Option<MediaRow>> {
        match self.media.get(media_id) {
            Some(row) => Ok(row.clone()),
            None => self.state.media(media_id),
        }
    }

    fn put_media(&mut self, media_id: String, row: MediaRow) {
        self.batch.put(Space::Media, rows::id_key(&media_id), row.encode());
        self.media.insert(media_id, Some(row));
    }

    /// Records that message `seq` carries (or, deleted, no longer carries)
    /// each upload among its attachments.
    fn link_media(&mut self, conversation_id: &str, seq: u64, attachments: &[serde_json::Value], carried: bool) -> StoreResult<()> {
        for media_id in rows::media_ids(attachments) {
            let Some(mut row) = self.media_row(media_id)? else { continue };
            if row.conversation_id != conversation_id {
                continue;
            }
            match carried {
                true if !row.messages.contains(&seq) => row.messages.push(seq),
                false => row.messages.retain(|carrier| *carrier != seq),
                true => continue,
            }
            self.put_media(media_id.to_string(), row);
        }
        Ok(())
    }

    /// Moves a message's mention rows from what it mentioned to what it
    /// mentions now (`unreadMentions` counts them).
    fn write_mentions(&mut self, conversation_id: &str, seq: u64, old: &Mentions, new: &Mentions) {
        let everyone = |mentions: &Mentions| mentions.channel || mentions.here;
        let targets = |mentions: &Mentions| {
            let mut targets: Vec<String> = mentions.user_ids.clone();
            if everyone(mentions) {
                targets.push(rows::EVERYONE.to_string());
            }
            targets
        };
        let (before, after) = (targets(old), targets(new));
        for user_id in before.iter().filter(|user_id| !after.contains(user_id)) {
            self.batch.remove(Space::Mentions, rows::mention_key(conversation_id, user_id, seq));
        }
        for user_id in after.iter().filter(|user_id| !before.contains(user_id)) {
            self.batch.put(Space::Mentions, rows::mention_key(conversation_id, user_id, seq), Vec::new());
        }
    }

    /// The conversation, pinned for the round (loaded if it is not cached).
    fn touch(&mut self, conversation_id: &str) -> StoreResult<Option<Arc<ConversationHandle>>> {
        if let Some(pin) = self.pins.get(conversation_id) {
            return Ok(Some(pin.0.clone()));
        }
        let Some(pin) = self.state.conversation_pinned(conversation_id)? else { return Ok(None) };
        let handle = pin.0.clone();
        self.pins.insert(conversation_id.to_string(), pin);
        Ok(Some(handle))
    }

    /// Moves each device's delivered position forward; one event per user
    /// whose position moved, however many devices.
    fn deliveries(&mut self, conversation: &mut ConversationState, receipts: Vec<DeliveryReceipt>) -> Vec<Produced> {
        let last_seq = conversation.last_seq;
        let mut advanced: Vec<(String, u64)> = Vec::new();
        for receipt in receipts {
            let Some(member) = conversation.members.get_mut(&receipt.user_id).filter(|member| member.role.is_some()) else { continue };
            let seq = receipt.seq.min(last_seq);
            let device = member.device_mut(&receipt.device_id);
            device.delivered_seq = device.delivered_seq.max(seq);
            self.dirty_members.entry((conversation.conversation_id.clone(), receipt.user_id.clone())).or_insert(false);
            if seq > member.last_delivered_seq {
                member.last_delivered_seq = seq;
                match advanced.iter_mut().find(|(user_id, _)| *user_id == receipt.user_id) {
                    Some(entry) => entry.1 = seq,
                    None => advanced.push((receipt.user_id, seq)),
                }
            }
        }
        advanced.into_iter().map(|(user_id, seq)| Produced::Receipt { user_id, kind: ReceiptKind::Delivered, seq }).collect()
    }

    /// Changes a live message (among the newest, changed earlier in this
    /// round, or in the store); false if it is missing or deleted.
    fn change_message(&mut self, conversation: &mut ConversationState, seq: u64, change: impl FnOnce(&mut MessageRow)) -> StoreResult<bool> {
        let conversation_id = conversation.conversation_id.clone();
        if let Some(message) = conversation.recent_message_mut(seq) {
            if message.deleted {
                return Ok(false);
            }
            change(message);
            self.batch.put(Space::Messages, rows::seq_key(&conversation_id, seq), message.encode());
            return Ok(true);
        }
        let key = (conversation_id.clone(), seq);
        let stored = match self.changed_messages.get(&key) {
            Some(message) => Some(message.clone()),
            None if seq >= 1 && seq <= conversation.last_seq => self.state.stored_message(&conversation_id, seq)?,
            None => None,
        };
        let Some(mut message) = stored.filter(|message| !message.deleted) else { return Ok(false) };
        change(&mut message);
        self.batch.put(Space::Messages, rows::seq_key(&conversation_id, seq), message.encode());
        self.changed_messages.insert(key, message);
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    fn create_conversation(
        &mut self,
        offset: u64,
        conversation_id: String,
        (conversation_type, history_visibility): (ConversationType, confab_schemas::events::HistoryVisibility),
        title: Option<String>,
        creator_id: String,
        member_ids: Vec<String>,
        ts: i64,
    ) -> StoreResult<()> {
        if self.touch(&conversation_id)?.is_some() {
            return Ok(()); // Applied already: the log holds one creation per id.
        }
        let row = ConversationRow { conversation_type, title: title.clone(), created_at: ts, history_visibility };
        self.batch.put(Space::Conversations, rows::id_key(&conversation_id), row.encode());
        let mut conversation = ConversationState {
            conversation_id: conversation_id.clone(),
            conversation_type,
            title,
            created_at: ts,
            history_visibility,
            last_seq: 0,
            members: HashMap::new(),
            member_count: 0,
            recent: std::collections::VecDeque::new(),
        };
        let creator_role = match conversation_type {
            ConversationType::Dm => MemberRole::Member,
            ConversationType::Group | ConversationType::Channel => MemberRole::Admin,
        };
        let mut produced = Vec::new();
        self.join(&mut conversation, offset, ts, &creator_id, creator_role);
        produced.push(Produced::Event(EventKind::Member { user_id: creator_id.clone(), change: MemberChange::Joined }));
        let mut seen: HashSet<&str> = HashSet::from([creator_id.as_str()]);
        for member_id in &member_ids {
            if seen.insert(member_id) {
                self.join(&mut conversation, offset, ts, member_id, MemberRole::Member);
                produced.push(Produced::Event(EventKind::Member { user_id: member_id.clone(), change: MemberChange::Joined }));
            }
        }
        if conversation_type == ConversationType::Dm {
            if let Some(other) = member_ids.iter().find(|member| **member != creator_id) {
                let pair = dm_pair(&creator_id, other);
                self.batch.put(Space::DmPairs, rows::pair_key(&pair.0, &pair.1), conversation_id.as_bytes().to_vec());
                self.dms.push(pair);
            }
        }
        self.record(&mut conversation, offset, ts, produced)?;
        let handle = Arc::new(ConversationHandle {
            partition: self.partition,
            assigned_seq: std::sync::atomic::AtomicU64::new(0),
            pins: std::sync::atomic::AtomicU32::new(0),
            state: RwLock::new(conversation),
        });
        let mut pin = None;
        self.state.conversations.insert_then(conversation_id.clone(), handle, |handle| pin = Some(Pin::new(handle)));
        self.pins.insert(conversation_id, pin.expect("pinned on insert"));
        Ok(())
    }

    fn join(&mut self, conversation: &mut ConversationState, offset: u64, ts: i64, user_id: &str, role: MemberRole) {
        let last_seq = conversation.last_seq;
        // A new member starts with everything before joining read. Someone
        // who comes back keeps where their old receipt events are, so the
        // next receipt moves them instead of leaving them behind.
        let previous = conversation.members.remove(user_id);
        let mut intervals = previous.as_ref().map(|member| member.intervals.clone()).unwrap_or_default();
        intervals.push((offset, None));
        let member = MemberRow {
            role: Some(role),
            joined_at: ts,
            intervals,
            last_read_seq: last_seq,
            last_delivered_seq: last_seq,
            read_receipt_at: previous.as_ref().and_then(|member| member.read_receipt_at),
            delivered_receipt_at: previous.as_ref().and_then(|member| member.delivered_receipt_at),
            devices: Vec::new(),
            // Settings outlive a leave and return.
            muted: previous.as_ref().is_some_and(|member| member.muted),
            muted_until: previous.as_ref().and_then(|member| member.muted_until),
            notify: previous.as_ref().map(|member| member.notify).unwrap_or_default(),
        };
        conversation.members.insert(user_id.to_string(), member);
        conversation.member_count += 1;
        self.dirty_members.insert((conversation.conversation_id.clone(), user_id.to_string()), true);
    }

    /// Writes the events a record produced at `(offset, index)` and keeps
    /// what the fanout needs. A receipt replaces the member's previous one.
    fn record(&mut self, conversation: &mut ConversationState, offset: u64, ts: i64, produced: Vec<Produced>) -> StoreResult<()> {
        if produced.is_empty() {
            return Ok(());
        }
        let conversation_id = conversation.conversation_id.clone();
        let mut events = Vec::new();
        for (index, item) in produced.into_iter().enumerate() {
            let index = index as u32;
            match item {
                Produced::Event(kind) => {
                    if self.render {
                        events.push(self.render_event(conversation, &kind)?);
                    }
                    self.batch.put(Space::Events, rows::position_key(&conversation_id, offset, index), EventRow { ts, kind }.encode());
                }
                Produced::Receipt { user_id, kind, seq } => {
                    let member = conversation.members.get_mut(&user_id).expect("a receipt is for a member");
                    let slot = match kind {
                        ReceiptKind::Read => &mut member.read_receipt_at,
                        ReceiptKind::Delivered => &mut member.delivered_receipt_at,
                    };
                    if let Some((old_offset, old_index)) = slot.replace((offset, index)) {
                        self.batch.remove(Space::Receipts, rows::position_key(&conversation_id, old_offset, old_index));
                    }
                    self.dirty_members.entry((conversation_id.clone(), user_id.clone())).or_insert(false);
                    let row = ReceiptRow { ts, user_id: user_id.clone(), kind, seq };
                    self.batch.put(Space::Receipts, rows::position_key(&conversation_id, offset, index), row.encode());
                    if self.render {
                        events.push(render_receipt(&conversation_id, &row));
                    }
                }
            }
        }
        if self.render {
            let recipients: Arc<[String]> = conversation.recipients_at(offset).into();
            self.outcomes.push(RecordOutcome { offset, events, recipients, member_count: conversation.member_count });
        }
        Ok(())
    }

    fn render_event(&self, conversation: &ConversationState, kind: &EventKind) -> StoreResult<ClientEvent> {
        let conversation_id = &conversation.conversation_id;
        // The message is almost always among the newest in memory: render from there without a copy.
        let with_message = |seq: u64, render: &dyn Fn(&MessageRow) -> ClientEvent| -> StoreResult<ClientEvent> {
            if let Some(message) = conversation.recent_message(seq) {
                return Ok(render(message));
            }
            if let Some(message) = self.changed_messages.get(&(conversation_id.clone(), seq)) {
                return Ok(render(message));
            }
            let stored = self.state.stored_message(conversation_id, seq)?.ok_or_else(|| rows::corrupt(Space::Messages, "missing message"))?;
            Ok(render(&stored))
        };
        match kind {
            EventKind::MessageNew { seq } => with_message(*seq, &|message| ClientEvent::MessageNew { message: render_message(conversation_id, *seq, message) }),
            EventKind::MessageEdit { seq } => {
                with_message(*seq, &|message| ClientEvent::MessageEdit { message: render_message(conversation_id, *seq, message) })
            }
            EventKind::MessageDelete { seq } => with_message(*seq, &|message| ClientEvent::MessageDelete {
                conversation_id: conversation_id.clone(),
                message_id: message.message_id.clone(),
                seq: *seq,
            }),
            EventKind::Member { user_id, change } => {
                Ok(ClientEvent::ConversationMember { conversation_id: conversation_id.clone(), user_id: user_id.clone(), change: *change })
            }
            EventKind::MediaUpdate { seq, media_id } => with_message(*seq, &|message| media_update(conversation_id, message, media_id)),
        }
    }

    /// Writes the changed member rows and the applied offset, commits, and
    /// only then lets the rest of the server see the round.
    fn commit(mut self) -> StoreResult<Vec<RecordOutcome>> {
        for ((conversation_id, user_id), membership_changed) in std::mem::take(&mut self.dirty_members) {
            let handle = &self.pins.get(&conversation_id).expect("a dirty member's conversation is pinned").0;
            let conversation = handle.state.read();
            let member = conversation.members.get(&user_id).expect("a dirty member exists");
            self.batch.put(Space::Members, rows::member_key(&conversation_id, &user_id), member.encode());
            if membership_changed {
                let row = UserConversationRow { intervals: member.intervals.clone() };
                self.batch.put(Space::UserConversations, rows::user_conversation_key(&user_id, &conversation_id), row.encode());
            }
        }
        if let Some(end) = self.applied_end {
            self.batch.put(Space::Meta, rows::applied_key(self.partition), end.to_be_bytes().to_vec());
        }
        let batch = std::mem::take(&mut self.batch);
        if let Err(error) = self.state.store.write(batch) {
            self.state.fail(&error);
            for key in &self.sent_keys {
                if let Some((_, reservation)) = self.state.sending.remove(key) {
                    reservation.outcome.send_replace(SendOutcome::Failed);
                }
            }
            return Err(error);
        }
        let keep = self.state.config.recent_messages_per_conversation;
        for pin in self.pins.values() {
            pin.0.state.write().trim_recent(keep);
        }
        for (user_id, user) in self.users.drain() {
            self.state.users.insert(user_id, user);
        }
        for device in self.devices.drain(..) {
            self.state.devices.insert(device.device_id.clone(), device);
        }
        for device_id in self.ended_devices.drain(..) {
            self.state.devices.remove(&device_id);
        }
        for username in &self.usernames {
            self.state.pending_usernames.remove(username);
        }
        for pair in &self.dms {
            self.state.pending_dms.remove(pair);
        }
        for key in &self.sent_keys {
            if let Some((_, reservation)) = self.state.sending.remove(key) {
                reservation.outcome.send_replace(SendOutcome::Applied);
            }
        }
        Ok(std::mem::take(&mut self.outcomes))
    }
}

/// `media.update` for attachment `media_id` of `message`, as the message carries it now.
pub(crate) fn media_update(conversation_id: &str, message: &MessageRow, media_id: &str) -> ClientEvent {
    let media = message
        .attachments
        .iter()
        .find(|attachment| attachment.get("mediaId").and_then(|id| id.as_str()) == Some(media_id))
        .and_then(|attachment| serde_json::from_value::<confab_schemas::api::Media>(attachment.clone()).ok());
    // A deleted message carries nothing: the event then says only that the upload is gone.
    let media = media.unwrap_or_else(|| confab_schemas::api::Media {
        media_id: media_id.to_string(),
        conversation_id: conversation_id.to_string(),
        uploader_id: message.sender_id.clone(),
        filename: String::new(),
        content_type: String::new(),
        size: 0,
        sha256: String::new(),
        status: "blocked".into(),
        reason: Some("deleted".into()),
        width: None,
        height: None,
        url: None,
        thumbnail_url: None,
        url_expires_at: None,
    });
    ClientEvent::MediaUpdate { conversation_id: conversation_id.to_string(), message_id: message.message_id.clone(), media }
}

pub(crate) fn render_receipt(conversation_id: &str, row: &ReceiptRow) -> ClientEvent {
    match row.kind {
        ReceiptKind::Read => ClientEvent::ReceiptRead { conversation_id: conversation_id.to_string(), user_id: row.user_id.clone(), seq: row.seq },
        ReceiptKind::Delivered => ClientEvent::ReceiptDelivered { conversation_id: conversation_id.to_string(), user_id: row.user_id.clone(), seq: row.seq },
    }
}
