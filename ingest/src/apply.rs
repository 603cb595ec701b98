//! Applying one durable log event to the state. Deterministic: a replay of
//! the log after a crash rebuilds exactly the state that was served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use confab_schemas::api::MemberChange;
use confab_schemas::events::{ConversationType, LogEvent, MemberRole};
use parking_lot::RwLock;

use crate::fenwick::Fenwick;
use crate::state::{dm_pair, ConversationHandle, ConversationState, Device, EventRef, InboxEntry, MemberState, MessageRef, MessageState, State, User};

impl State {
    pub(crate) fn apply(&self, partition: u32, offset: u64, event: LogEvent) {
        let scoped = !matches!(event, LogEvent::UserCreated { .. } | LogEvent::SessionCreated { .. } | LogEvent::RoleGranted { .. } | LogEvent::Audited { .. });
        let conversation_id = event.partition_key().to_string();
        self.apply_event(partition, offset, event);
        if scoped {
            self.route_record(partition, offset, &conversation_id);
        }
    }

    /// Routes the events one record made: into every recipient's inbox if
    /// the conversation is small, or (large) into its members' scan sets.
    /// Inboxes are written after the conversation's lock is released, so no
    /// reader ever waits on both.
    fn route_record(&self, partition: u32, offset: u64, conversation_id: &str) {
        let Some(handle) = self.conversation(conversation_id) else { return };
        let (recipients, count, scanners) = {
            let mut conversation = handle.state.write();
            let first = conversation.events.partition_point(|event| event.offset < offset);
            let count = conversation.events.len() - first;
            if count == 0 {
                return;
            }
            if conversation.members.len() > self.inbox_max_members {
                let scanners: Vec<String> = if conversation.large {
                    // Already large: only the members this record brought in.
                    conversation.events[first..]
                        .iter()
                        .filter_map(|event| match &event.event {
                            EventRef::Member { user_id, change: MemberChange::Joined } => Some(user_id.clone()),
                            _ => None,
                        })
                        .collect()
                } else {
                    conversation.large = true;
                    conversation.members.keys().cloned().collect()
                };
                (Vec::new(), 0, scanners)
            } else {
                for event in &mut conversation.events[first..] {
                    event.inboxed = true;
                }
                let recipients: Vec<String> = conversation.membership.keys().filter(|user_id| conversation.visible_to(user_id, offset)).cloned().collect();
                (recipients, count, Vec::new())
            }
        };
        for user_id in scanners {
            self.scan_conversations.entry(user_id).or_default().insert(conversation_id.to_string());
        }
        let conversation_id: Arc<str> = Arc::from(conversation_id);
        for user_id in recipients {
            let mut inbox = self.inboxes.entry(user_id).or_default();
            if inbox.len() <= partition as usize {
                inbox.resize_with(partition as usize + 1, Vec::new);
            }
            for index in 0..count as u32 {
                inbox[partition as usize].push(InboxEntry { offset, index, conversation_id: conversation_id.clone() });
            }
        }
    }

    fn apply_event(&self, partition: u32, offset: u64, event: LogEvent) {
        match event {
            LogEvent::UserCreated { user_id, username, display_name, password_hash, roles, ts } => {
                if roles.contains(&confab_schemas::events::AccountRole::Admin) {
                    self.admin_assigned.store(true, Ordering::Release);
                }
                self.usernames.insert(username.clone(), Some(user_id.clone()));
                let user = User { user_id: user_id.clone(), username, display_name, password_hash, roles, created_at: ts };
                self.users.insert(user_id, Arc::new(user));
            }
            LogEvent::RoleGranted { user_id, role, .. } => {
                let Some(user) = self.users.get(&user_id).map(|entry| entry.value().clone()) else { return };
                if user.roles.contains(&role) {
                    return;
                }
                let mut roles = user.roles.clone();
                roles.push(role);
                let updated = User {
                    user_id: user.user_id.clone(),
                    username: user.username.clone(),
                    display_name: user.display_name.clone(),
                    password_hash: user.password_hash.clone(),
                    roles,
                    created_at: user.created_at,
                };
                self.users.insert(user_id, Arc::new(updated));
            }
            LogEvent::Audited { .. } => {}
            LogEvent::SessionCreated { user_id, device_id, device_name, platform, ts } => {
                let device = Device { device_id: device_id.clone(), user_id, name: device_name, platform, created_at: ts };
                self.devices.insert(device_id, Arc::new(device));
            }
            LogEvent::ConversationCreated { conversation_id, conversation_type, title, creator_id, member_ids, ts } => {
                self.apply_conversation_created(partition, offset, conversation_id, conversation_type, title, creator_id, member_ids, ts);
            }
            LogEvent::MembersAdded { conversation_id, user_ids, ts, .. } => {
                let Some(handle) = self.conversation(&conversation_id) else { return };
                let mut conversation = handle.state.write();
                for user_id in user_ids {
                    if conversation.members.contains_key(&user_id) {
                        continue;
                    }
                    self.join(&mut conversation, offset, ts, user_id, MemberRole::Member);
                }
            }
            LogEvent::MemberRemoved { conversation_id, user_id, ts, .. } => {
                let Some(handle) = self.conversation(&conversation_id) else { return };
                let mut conversation = handle.state.write();
                if conversation.members.remove(&user_id).is_none() {
                    return;
                }
                if let Some(range) = conversation.membership.get_mut(&user_id).and_then(|ranges| ranges.last_mut()) {
                    range.1 = Some(offset);
                }
                conversation.push_event(offset, ts, EventRef::Member { user_id: user_id.clone(), change: MemberChange::Left });
                if let Some(mut joined) = self.user_conversations.get_mut(&user_id) {
                    joined.remove(&conversation_id);
                }
            }
            LogEvent::MessageCreated { message_id, conversation_id, seq, sender_id, device_id, client_msg_id, body, attachments, ts } => {
                let Some(handle) = self.conversation(&conversation_id) else { return };
                let mut conversation = handle.state.write();
                if seq != conversation.last_seq() + 1 {
                    tracing::error!(conversation_id, seq, last_seq = conversation.last_seq(), offset, "skipping a message out of sequence");
                    return;
                }
                let message_ref = MessageRef { conversation_id: conversation_id.clone(), seq };
                self.idempotency.insert((sender_id.clone(), client_msg_id.clone()), message_ref.clone());
                self.messages_by_id.insert(message_id.clone(), message_ref);
                if let Some(sender) = conversation.members.get_mut(&sender_id) {
                    // Sending reads everything before it, on the sending device too.
                    sender.last_read_seq = sender.last_read_seq.max(seq);
                    sender.last_delivered_seq = sender.last_delivered_seq.max(seq);
                    sender.read_by_device.insert(device_id.clone(), seq);
                    sender.delivered_by_device.insert(device_id.clone(), seq);
                }
                let message = MessageState { message_id, sender_id, device_id, client_msg_id, ts, body, attachments, edited: false, deleted: false };
                conversation.messages.push(message);
                conversation.live_messages.push(1);
                conversation.push_event(offset, ts, EventRef::MessageNew { seq });
                handle.assigned_seq.fetch_max(seq, Ordering::AcqRel);
            }
            LogEvent::MessageEdited { conversation_id, seq, body, ts, .. } => {
                let Some(handle) = self.conversation(&conversation_id) else { return };
                let mut conversation = handle.state.write();
                let Some(message) = conversation.messages.get_mut(seq as usize - 1) else { return };
                if message.deleted {
                    return;
                }
                message.body = body;
                message.edited = true;
                conversation.push_event(offset, ts, EventRef::MessageEdit { seq });
            }
            LogEvent::MessageDeleted { conversation_id, seq, ts, .. } => {
                let Some(handle) = self.conversation(&conversation_id) else { return };
                let mut conversation = handle.state.write();
                let Some(message) = conversation.messages.get_mut(seq as usize - 1) else { return };
                if message.deleted {
                    return;
                }
                message.deleted = true;
                message.body.clear();
                message.attachments.clear();
                conversation.live_messages.add(seq as usize, -1);
                conversation.push_event(offset, ts, EventRef::MessageDelete { seq });
            }
            LogEvent::ReadCursorMoved { conversation_id, user_id, seq, device_id, ts } => {
                let Some(handle) = self.conversation(&conversation_id) else { return };
                let mut conversation = handle.state.write();
                let Some(member) = conversation.members.get_mut(&user_id) else { return };
                if let Some(device_id) = device_id {
                    let read = member.read_by_device.entry(device_id.clone()).or_insert(0);
                    *read = (*read).max(seq);
                    let delivered = member.delivered_by_device.entry(device_id).or_insert(0);
                    *delivered = (*delivered).max(seq);
                }
                if seq <= member.last_read_seq {
                    return;
                }
                member.last_read_seq = seq;
                member.last_delivered_seq = member.last_delivered_seq.max(seq);
                conversation.push_event(offset, ts, EventRef::Read { user_id, seq });
            }
            LogEvent::DeliveryReceipts { conversation_id, receipts, ts } => {
                let Some(handle) = self.conversation(&conversation_id) else { return };
                let mut conversation = handle.state.write();
                let last_seq = conversation.last_seq();
                // One event per user whose delivered position moved, however many devices.
                let mut advanced: Vec<(String, u64)> = Vec::new();
                for receipt in receipts {
                    let Some(member) = conversation.members.get_mut(&receipt.user_id) else { continue };
                    let seq = receipt.seq.min(last_seq);
                    let device = member.delivered_by_device.entry(receipt.device_id).or_insert(0);
                    *device = (*device).max(seq);
                    if seq > member.last_delivered_seq {
                        member.last_delivered_seq = seq;
                        match advanced.iter_mut().find(|(user_id, _)| *user_id == receipt.user_id) {
                            Some(entry) => entry.1 = seq,
                            None => advanced.push((receipt.user_id, seq)),
                        }
                    }
                }
                for (user_id, seq) in advanced {
                    conversation.push_event(offset, ts, EventRef::Delivered { user_id, seq });
                }
            }
        }
    }

    pub(crate) fn conversation(&self, conversation_id: &str) -> Option<Arc<ConversationHandle>> {
        self.conversations.get(conversation_id).map(|entry| entry.value().clone())
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_conversation_created(
        &self,
        partition: u32,
        offset: u64,
        conversation_id: String,
        conversation_type: ConversationType,
        title: Option<String>,
        creator_id: String,
        member_ids: Vec<String>,
        ts: i64,
    ) {
        let mut conversation = ConversationState {
            conversation_id: conversation_id.clone(),
            conversation_type,
            title,
            created_at: ts,
            members: HashMap::new(),
            messages: Vec::new(),
            live_messages: Fenwick::default(),
            events: Vec::new(),
            large: false,
            membership: HashMap::new(),
        };
        let creator_role = match conversation_type {
            ConversationType::Dm => MemberRole::Member,
            ConversationType::Group | ConversationType::Channel => MemberRole::Admin,
        };
        self.join(&mut conversation, offset, ts, creator_id.clone(), creator_role);
        for member_id in &member_ids {
            if !conversation.members.contains_key(member_id) {
                self.join(&mut conversation, offset, ts, member_id.clone(), MemberRole::Member);
            }
        }
        if conversation_type == ConversationType::Dm {
            if let Some(other) = member_ids.iter().find(|member| **member != creator_id) {
                self.dm_pairs.insert(dm_pair(&creator_id, other), conversation_id.clone());
            }
        }
        let handle = ConversationHandle { partition, assigned_seq: AtomicU64::new(0), state: RwLock::new(conversation) };
        self.conversations.insert(conversation_id, Arc::new(handle));
    }

    fn join(&self, conversation: &mut ConversationState, offset: u64, ts: i64, user_id: String, role: MemberRole) {
        let conversation_id = conversation.conversation_id.clone();
        let last_seq = conversation.last_seq();
        // A new member starts with everything before joining read.
        let member = MemberState {
            role,
            joined_at: ts,
            last_read_seq: last_seq,
            last_delivered_seq: last_seq,
            delivered_by_device: HashMap::new(),
            read_by_device: HashMap::new(),
        };
        conversation.members.insert(user_id.clone(), member);
        conversation.membership.entry(user_id.clone()).or_default().push((offset, None));
        conversation.push_event(offset, ts, EventRef::Member { user_id: user_id.clone(), change: MemberChange::Joined });
        self.user_conversations.entry(user_id).or_default().insert(conversation_id);
    }
}
