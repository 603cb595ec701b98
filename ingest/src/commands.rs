//! The commands of the write path. Each validates against the state under
//! its partition's writer lock, appends, and returns once its events are
//! durable and applied.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use confab_log::Log;
use confab_schemas::api;
use confab_schemas::events::{AccountRole, ConversationType, LogEvent, MemberRole};
use confab_schemas::ids::{self, new_id, now_ms};
use dashmap::mapref::entry::Entry;
use serde_json::Value;

use crate::partition::PartitionWriter;
use crate::state::{dm_pair, ConversationHandle, MessageRef, State, User};
use crate::{Error, Limits, Result};

/// Who is asking: an authenticated user on one of their devices.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub device_id: String,
}

#[derive(Debug, Clone)]
pub struct NewConversation {
    pub conversation_type: ConversationType,
    pub member_ids: Vec<String>,
    pub title: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conversation_id: String,
    pub client_msg_id: String,
    pub body: String,
    pub attachments: Vec<Value>,
}

pub struct Ingest {
    pub(crate) log: Arc<dyn Log>,
    pub(crate) state: State,
    pub(crate) partitions: Vec<PartitionWriter>,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Ingest").field("partitions", &self.partitions.len()).finish_non_exhaustive()
    }
}

/// Records read at once while replaying the log.
const REPLAY_BATCH_RECORDS: usize = 4_096;

/// The state's name as a consumer of the log. It is rebuilt from offset 0,
/// so it holds every record against retention until it has snapshots.
pub const STATE_CONSUMER: &str = "state";

/// Conversations larger than this are not inboxed, unless configured otherwise.
pub const DEFAULT_INBOX_MAX_MEMBERS: usize = 1_000;

/// How long a retry waits for its in-flight original before giving up (503).
const IN_FLIGHT_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

impl Ingest {
    /// Rebuilds the state by replaying every partition of `log`, then is
    /// ready for commands.
    pub fn open(log: Arc<dyn Log>, limits: Limits) -> Result<Ingest> {
        Ingest::open_with_inbox_threshold(log, limits, DEFAULT_INBOX_MAX_MEMBERS)
    }

    /// Like [`open`](Self::open); conversations with more members than
    /// `inbox_max_members` are read by scanning instead of through inboxes
    /// (the fanout pipeline's `large_conversation_members`).
    pub fn open_with_inbox_threshold(log: Arc<dyn Log>, limits: Limits, inbox_max_members: usize) -> Result<Ingest> {
        let state = State::new(inbox_max_members);
        let mut partitions = Vec::new();
        for partition in 0..log.partition_count() {
            if log.committed_offset(STATE_CONSUMER, partition)?.is_none() {
                log.commit_offset(STATE_CONSUMER, partition, 0)?;
            }
            let mut next = log.earliest(partition)?;
            if next > 0 {
                // Only a log written without this guard can get here.
                return Err(Error::Log(confab_log::Error::OffsetRemoved { partition, requested: 0, earliest: next }));
            }
            let end = log.durable_end(partition)?;
            while next < end {
                let records = log.read(partition, next, REPLAY_BATCH_RECORDS, 16 * 1024 * 1024)?;
                for record in records {
                    let event = LogEvent::decode(&record.payload).map_err(|source| Error::UnreadableEvent { partition, offset: record.offset, source })?;
                    state.apply(partition, record.offset, event);
                    next = record.offset + 1;
                }
            }
            partitions.push(PartitionWriter::new(partition, end));
        }
        tracing::info!(users = state.users.len(), conversations = state.conversations.len(), "state rebuilt from the log");
        Ok(Ingest { log, state, partitions, limits })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    fn partition_of(&self, key: &str) -> &PartitionWriter {
        &self.partitions[(ids::stable_hash(key) % self.partitions.len() as u64) as usize]
    }

    /// Takes the partition's writer lock, appends `events`, and waits until
    /// they are durable and applied.
    async fn commit(&self, partition: &PartitionWriter, events: Vec<LogEvent>) -> Result<()> {
        let _writer = partition.writer.lock().await;
        self.commit_locked(partition, events).await
    }

    /// Appends `events` under the already held writer lock and waits until
    /// they are durable and applied.
    async fn commit_locked(&self, partition: &PartitionWriter, events: Vec<LogEvent>) -> Result<()> {
        let ticket = partition.append(&*self.log, events)?;
        partition.finish(&*self.log, &self.state, ticket).await
    }

    // ---- accounts and devices ----

    /// Creates an account; the first account on a fresh server is an administrator.
    pub async fn create_user(&self, username: &str, display_name: Option<String>, password_hash: String) -> Result<Arc<User>> {
        if let Some(name) = &display_name {
            check_chars("displayName", name, self.limits.display_name_max_chars)?;
        }
        match self.state.usernames.entry(username.to_string()) {
            Entry::Occupied(_) => return Err(Error::UsernameTaken(username.to_string())),
            Entry::Vacant(vacant) => {
                vacant.insert(None);
            }
        }
        let first = !self.state.admin_assigned.swap(true, Ordering::AcqRel);
        let user_id = new_id("u", now_ms());
        let roles = if first { vec![AccountRole::Admin] } else { Vec::new() };
        let event = LogEvent::UserCreated { user_id: user_id.clone(), username: username.to_string(), display_name, password_hash, roles, ts: now_ms() };
        let partition = self.partition_of(&user_id);
        let outcome = self.commit(partition, vec![event]).await;
        if let Err(error) = outcome {
            self.state.usernames.remove(username);
            if first {
                self.state.admin_assigned.store(false, Ordering::Release);
            }
            return Err(error);
        }
        Ok(self.state.users.get(&user_id).expect("applied").clone())
    }

    /// Records a new session: each session is a device of its own.
    pub async fn create_device(&self, user_id: &str, device_name: Option<String>, platform: Option<String>) -> Result<String> {
        if let Some(name) = &device_name {
            check_chars("deviceName", name, self.limits.device_name_max_chars)?;
        }
        if let Some(name) = &platform {
            check_chars("platform", name, self.limits.device_name_max_chars)?;
        }
        let device_id = new_id("d", now_ms());
        let event = LogEvent::SessionCreated { user_id: user_id.to_string(), device_id: device_id.clone(), device_name, platform, ts: now_ms() };
        self.commit(self.partition_of(user_id), vec![event]).await?;
        Ok(device_id)
    }

    // ---- conversations and members ----

    /// Creates a conversation, or returns the existing dm (with `false`).
    pub async fn create_conversation(&self, caller: &Caller, request: NewConversation) -> Result<(api::Conversation, bool)> {
        let mut member_ids: Vec<String> = Vec::new();
        for member_id in request.member_ids {
            if member_id != caller.user_id && !member_ids.contains(&member_id) {
                member_ids.push(member_id);
            }
        }
        if member_ids.len() > self.limits.members_per_request_max {
            return Err(Error::invalid("memberIds", format!("at most {} users per request", self.limits.members_per_request_max)));
        }
        for member_id in &member_ids {
            if !self.state.users.contains_key(member_id) {
                return Err(Error::invalid("memberIds", format!("user `{member_id}` does not exist")));
            }
        }
        let title = match request.conversation_type {
            ConversationType::Dm => None,
            _ => request.title,
        };
        if let Some(title) = &title {
            check_chars("title", title, self.limits.title_max_chars)?;
        }
        let conversation_id = new_id("c", now_ms());
        let mut dm_reservation = None;
        if request.conversation_type == ConversationType::Dm {
            if member_ids.len() != 1 {
                return Err(Error::invalid("memberIds", "a dm has exactly one member besides you"));
            }
            let pair = dm_pair(&caller.user_id, &member_ids[0]);
            match self.state.dm_pairs.entry(pair.clone()) {
                Entry::Occupied(existing) => {
                    let existing_id = existing.get().clone();
                    drop(existing);
                    let handle = self.wait_for_conversation(&existing_id).await?;
                    return Ok((conversation_view(&handle), false));
                }
                Entry::Vacant(vacant) => {
                    vacant.insert(conversation_id.clone());
                    dm_reservation = Some(pair);
                }
            }
        }
        let event = LogEvent::ConversationCreated {
            conversation_id: conversation_id.clone(),
            conversation_type: request.conversation_type,
            title,
            creator_id: caller.user_id.clone(),
            member_ids,
            ts: now_ms(),
        };
        let partition = self.partition_of(&conversation_id);
        let outcome = self.commit(partition, vec![event]).await;
        if let Err(error) = outcome {
            if let Some(pair) = dm_reservation {
                self.state.dm_pairs.remove(&pair);
            }
            return Err(error);
        }
        let handle = self.state.conversation(&conversation_id).expect("applied");
        Ok((conversation_view(&handle), true))
    }

    /// Waits until a conversation whose creation is in flight is applied.
    /// Bounded: if that creation failed, nothing will ever come.
    async fn wait_for_conversation(&self, conversation_id: &str) -> Result<Arc<ConversationHandle>> {
        let partition = self.partition_of(conversation_id);
        let mut applied = partition.subscribe_applied();
        let wait = async {
            loop {
                if let Some(handle) = self.state.conversation(conversation_id) {
                    return Ok(handle);
                }
                if applied.changed().await.is_err() {
                    return Err(Error::Log(confab_log::Error::Poisoned));
                }
            }
        };
        tokio::time::timeout(IN_FLIGHT_WAIT_MAX, wait).await.unwrap_or(Err(Error::Log(confab_log::Error::Poisoned)))
    }

    pub async fn add_members(&self, caller: &Caller, conversation_id: &str, user_ids: Vec<String>) -> Result<()> {
        if user_ids.len() > self.limits.members_per_request_max {
            return Err(Error::invalid("userIds", format!("at most {} users per request", self.limits.members_per_request_max)));
        }
        for user_id in &user_ids {
            if !self.state.users.contains_key(user_id) {
                return Err(Error::invalid("userIds", format!("user `{user_id}` does not exist")));
            }
        }
        let handle = self.member_conversation(caller, conversation_id)?;
        let partition = &self.partitions[handle.partition as usize];
        let _writer = partition.writer.lock().await;
        let new_members: Vec<String> = {
            let conversation = handle.state.read();
            let role = conversation.members.get(&caller.user_id).map(|member| member.role);
            match (conversation.conversation_type, role) {
                (_, None) => return Err(Error::NotMember(conversation_id.to_string())),
                (ConversationType::Dm, _) => {
                    return Err(Error::NotAllowed {
                        action: "changing members",
                        conversation_id: conversation_id.into(),
                        allowed: "groups and channels, never dms",
                    })
                }
                (ConversationType::Channel, Some(MemberRole::Member)) => {
                    return Err(Error::NotAllowed { action: "adding members", conversation_id: conversation_id.into(), allowed: "channel admins" })
                }
                _ => {}
            }
            let mut fresh: Vec<String> = Vec::new();
            for user_id in user_ids {
                if !conversation.members.contains_key(&user_id) && !fresh.contains(&user_id) {
                    fresh.push(user_id);
                }
            }
            let count = conversation.members.len() + fresh.len();
            if count > self.limits.members_per_conversation_max {
                return Err(Error::TooManyMembers { conversation_id: conversation_id.into(), count, max: self.limits.members_per_conversation_max });
            }
            fresh
        };
        if new_members.is_empty() {
            return Ok(());
        }
        let event = LogEvent::MembersAdded { conversation_id: conversation_id.to_string(), user_ids: new_members, by: caller.user_id.clone(), ts: now_ms() };
        self.commit_locked(partition, vec![event]).await
    }

    /// Removes a member: yourself (leaving), or anyone if you are an admin.
    pub async fn remove_member(&self, caller: &Caller, conversation_id: &str, user_id: &str) -> Result<()> {
        let handle = self.member_conversation(caller, conversation_id)?;
        let partition = &self.partitions[handle.partition as usize];
        let _writer = partition.writer.lock().await;
        {
            let conversation = handle.state.read();
            let Some(caller_member) = conversation.members.get(&caller.user_id) else {
                return Err(Error::NotMember(conversation_id.to_string()));
            };
            if conversation.conversation_type == ConversationType::Dm {
                return Err(Error::NotAllowed {
                    action: "changing members",
                    conversation_id: conversation_id.into(),
                    allowed: "groups and channels, never dms",
                });
            }
            if user_id != caller.user_id && caller_member.role != MemberRole::Admin {
                return Err(Error::NotAllowed { action: "removing other members", conversation_id: conversation_id.into(), allowed: "conversation admins" });
            }
            if !conversation.members.contains_key(user_id) {
                return Err(Error::MemberNotFound { conversation_id: conversation_id.into(), user_id: user_id.into() });
            }
        }
        let event =
            LogEvent::MemberRemoved { conversation_id: conversation_id.to_string(), user_id: user_id.to_string(), by: caller.user_id.clone(), ts: now_ms() };
        self.commit_locked(partition, vec![event]).await
    }

    /// The conversation, if it exists and the caller is a member of it now.
    pub(crate) fn member_conversation(&self, caller: &Caller, conversation_id: &str) -> Result<Arc<ConversationHandle>> {
        let handle = self.state.conversation(conversation_id).ok_or_else(|| Error::ConversationNotFound(conversation_id.to_string()))?;
        if !handle.state.read().members.contains_key(&caller.user_id) {
            return Err(Error::NotMember(conversation_id.to_string()));
        }
        Ok(handle)
    }

    // ---- messages ----

    /// Sends a message; a retry with the same `clientMsgId` returns the
    /// original (with `false`) instead of creating a second one.
    pub async fn send_message(&self, caller: &Caller, request: NewMessage) -> Result<(api::Message, bool)> {
        self.check_body(&request.body)?;
        check_client_msg_id(&request.client_msg_id, self.limits.client_msg_id_max_bytes)?;
        self.check_attachments(&request.attachments)?;
        let handle = self.state.conversation(&request.conversation_id).ok_or_else(|| Error::ConversationNotFound(request.conversation_id.clone()))?;
        let partition = &self.partitions[handle.partition as usize];
        let key = (caller.user_id.clone(), request.client_msg_id.clone());
        let ticket = {
            let _writer = partition.writer.lock().await;
            if !handle.state.read().members.contains_key(&caller.user_id) {
                return Err(Error::NotMember(request.conversation_id.clone()));
            }
            let seq = handle.assigned_seq.load(Ordering::Acquire) + 1;
            match self.state.idempotency.entry(key.clone()) {
                Entry::Occupied(existing) => {
                    let original = existing.get().clone();
                    drop(existing);
                    drop(_writer);
                    return Ok((self.wait_for_message(&key, &original).await?, false));
                }
                Entry::Vacant(vacant) => {
                    vacant.insert(MessageRef { conversation_id: request.conversation_id.clone(), seq });
                }
            }
            let ts = now_ms();
            let event = LogEvent::MessageCreated {
                message_id: new_id("m", ts),
                conversation_id: request.conversation_id.clone(),
                seq,
                sender_id: caller.user_id.clone(),
                device_id: caller.device_id.clone(),
                client_msg_id: request.client_msg_id,
                body: request.body,
                attachments: request.attachments,
                ts,
            };
            match partition.append(&*self.log, vec![event]) {
                Ok(ticket) => {
                    handle.assigned_seq.store(seq, Ordering::Release);
                    (ticket, seq)
                }
                Err(error) => {
                    self.state.idempotency.remove(&key);
                    return Err(error);
                }
            }
        };
        // The lock is released: other sends queue behind this one's fsync, sharing it.
        let (ticket, seq) = ticket;
        partition.finish(&*self.log, &self.state, ticket).await?;
        let conversation = handle.state.read();
        let message = conversation.message(seq).expect("applied message");
        Ok((render_message(&conversation.conversation_id, seq, message), true))
    }

    /// The message an idempotency key points at, once it is applied. If the
    /// original's append failed, its reservation is gone and so is the wait.
    async fn wait_for_message(&self, key: &(String, String), message_ref: &MessageRef) -> Result<api::Message> {
        let handle = self.wait_for_conversation(&message_ref.conversation_id).await?;
        let partition = &self.partitions[handle.partition as usize];
        let mut applied = partition.subscribe_applied();
        loop {
            {
                let conversation = handle.state.read();
                if let Some(message) = conversation.message(message_ref.seq) {
                    return Ok(render_message(&conversation.conversation_id, message_ref.seq, message));
                }
            }
            let reserved = self.state.idempotency.get(key).is_some_and(|entry| *entry.value() == *message_ref);
            if !reserved || applied.changed().await.is_err() {
                return Err(Error::Log(confab_log::Error::Poisoned));
            }
        }
    }

    pub async fn edit_message(&self, caller: &Caller, message_id: &str, body: String) -> Result<api::Message> {
        self.check_body(&body)?;
        let (handle, seq) = self.member_message(caller, message_id)?;
        let partition = &self.partitions[handle.partition as usize];
        let _writer = partition.writer.lock().await;
        let (conversation_id, sender_id) = {
            let conversation = handle.state.read();
            // Checked again under the lock: a removal may have landed since.
            if !conversation.members.contains_key(&caller.user_id) {
                return Err(Error::MessageNotFound(message_id.to_string()));
            }
            let message = conversation.message(seq).expect("indexed message exists");
            if message.sender_id != caller.user_id {
                return Err(Error::NotAllowed { action: "editing a message", conversation_id: conversation.conversation_id.clone(), allowed: "its sender" });
            }
            if message.deleted {
                return Err(Error::MessageDeleted(message_id.to_string()));
            }
            (conversation.conversation_id.clone(), message.sender_id.clone())
        };
        let event = LogEvent::MessageEdited {
            message_id: message_id.to_string(),
            conversation_id,
            seq,
            body,
            sender_id: Some(sender_id),
            by: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
            ts: now_ms(),
        };
        self.commit_locked(partition, vec![event]).await?;
        let conversation = handle.state.read();
        Ok(render_message(&conversation.conversation_id, seq, conversation.message(seq).expect("exists")))
    }

    /// Deletes a message (its sender or a conversation admin). Deleting a
    /// deleted message succeeds and changes nothing.
    pub async fn delete_message(&self, caller: &Caller, message_id: &str) -> Result<()> {
        let (handle, seq) = self.member_message(caller, message_id)?;
        let partition = &self.partitions[handle.partition as usize];
        let _writer = partition.writer.lock().await;
        let (conversation_id, sender_id) = {
            let conversation = handle.state.read();
            if !conversation.members.contains_key(&caller.user_id) {
                return Err(Error::MessageNotFound(message_id.to_string()));
            }
            let message = conversation.message(seq).expect("indexed message exists");
            let is_admin = conversation.members.get(&caller.user_id).is_some_and(|member| member.role == MemberRole::Admin);
            if message.sender_id != caller.user_id && !is_admin {
                return Err(Error::NotAllowed {
                    action: "deleting a message",
                    conversation_id: conversation.conversation_id.clone(),
                    allowed: "its sender and conversation admins",
                });
            }
            if message.deleted {
                return Ok(());
            }
            (conversation.conversation_id.clone(), message.sender_id.clone())
        };
        let event = LogEvent::MessageDeleted {
            message_id: message_id.to_string(),
            conversation_id,
            seq,
            sender_id: Some(sender_id),
            by: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
            ts: now_ms(),
        };
        self.commit_locked(partition, vec![event]).await
    }

    /// Deletes live messages for a compliance action (retention, erasure):
    /// each becomes `deleted` with an empty body, exactly as a delete by its
    /// sender, and devices are told with `message.delete`. No membership is
    /// needed: the caller's role was checked by the gateway. Returns how
    /// many messages it deleted.
    pub async fn delete_for_compliance(&self, caller: &Caller, scope: ComplianceScope<'_>) -> Result<u64> {
        let handles: Vec<Arc<ConversationHandle>> = match scope {
            ComplianceScope::SentBy(_) => self.state.conversations.iter().map(|entry| entry.value().clone()).collect(),
            ComplianceScope::ConversationBefore { conversation_id, .. } => {
                self.state.conversations.get(conversation_id).map(|entry| entry.value().clone()).into_iter().collect()
            }
        };
        let mut deleted = 0u64;
        for handle in handles {
            let partition = &self.partitions[handle.partition as usize];
            let _writer = partition.writer.lock().await;
            let events: Vec<LogEvent> = {
                let conversation = handle.state.read();
                let ts = now_ms();
                (1..=conversation.last_seq())
                    .filter_map(|seq| conversation.message(seq).map(|message| (seq, message)))
                    .filter(|(_, message)| !message.deleted && scope.takes(message.sender_id.as_str(), message.ts))
                    .map(|(seq, message)| LogEvent::MessageDeleted {
                        message_id: message.message_id.clone(),
                        conversation_id: conversation.conversation_id.clone(),
                        seq,
                        sender_id: Some(message.sender_id.clone()),
                        by: caller.user_id.clone(),
                        device_id: caller.device_id.clone(),
                        ts,
                    })
                    .collect()
            };
            for chunk in events.chunks(COMPLIANCE_DELETES_PER_APPEND) {
                self.commit_locked(partition, chunk.to_vec()).await?;
            }
            deleted += events.len() as u64;
        }
        Ok(deleted)
    }

    /// A message the caller may see: its conversation and seq.
    fn member_message(&self, caller: &Caller, message_id: &str) -> Result<(Arc<ConversationHandle>, u64)> {
        let message_ref = self.state.messages_by_id.get(message_id).map(|entry| entry.value().clone());
        let Some(message_ref) = message_ref else {
            return Err(Error::MessageNotFound(message_id.to_string()));
        };
        let handle = self.member_conversation(caller, &message_ref.conversation_id).map_err(|error| match error {
            // Whether a message exists is not told to non-members.
            Error::NotMember(_) => Error::MessageNotFound(message_id.to_string()),
            other => other,
        })?;
        Ok((handle, message_ref.seq))
    }

    /// Moves the caller's read cursor forward to a message (never back).
    pub async fn mark_read(&self, caller: &Caller, conversation_id: &str, message_id: &str) -> Result<()> {
        let handle = self.member_conversation(caller, conversation_id)?;
        let seq = match self.state.messages_by_id.get(message_id).map(|entry| entry.value().clone()) {
            Some(message_ref) if message_ref.conversation_id == conversation_id => message_ref.seq,
            _ => return Err(Error::invalid("lastReadMessageId", format!("message `{message_id}` is not in conversation `{conversation_id}`"))),
        };
        let partition = &self.partitions[handle.partition as usize];
        let ticket = {
            let _writer = partition.writer.lock().await;
            let current = handle.state.read().members.get(&caller.user_id).map(|member| member.last_read_seq);
            match current {
                None => return Err(Error::NotMember(conversation_id.to_string())),
                Some(current) if current >= seq => return Ok(()),
                Some(_) => {}
            }
            let event = LogEvent::ReadCursorMoved {
                conversation_id: conversation_id.to_string(),
                user_id: caller.user_id.clone(),
                seq,
                device_id: Some(caller.device_id.clone()),
                ts: now_ms(),
            };
            partition.append(&*self.log, vec![event])?
        };
        partition.finish(&*self.log, &self.state, ticket).await
    }

    fn check_body(&self, body: &str) -> Result<()> {
        if body.is_empty() {
            return Err(Error::invalid("body", "must not be empty"));
        }
        if body.len() > self.limits.body_max_bytes {
            return Err(Error::TooLarge { field: "body", size: body.len(), max: self.limits.body_max_bytes });
        }
        Ok(())
    }

    fn check_attachments(&self, attachments: &[Value]) -> Result<()> {
        if attachments.len() > self.limits.attachments_max_count {
            return Err(Error::invalid("attachments", format!("at most {} attachments per message", self.limits.attachments_max_count)));
        }
        for attachment in attachments {
            if !attachment.is_object() {
                return Err(Error::invalid("attachments", "each attachment must be an object"));
            }
            let size = serde_json::to_vec(attachment).map_or(usize::MAX, |bytes| bytes.len());
            if size > self.limits.attachment_max_bytes {
                return Err(Error::TooLarge { field: "attachments", size, max: self.limits.attachment_max_bytes });
            }
        }
        Ok(())
    }

    // ---- administration ----

    /// Gives `user_id` a role; administrators only. Recorded in the audit log.
    pub async fn grant_role(&self, caller: &Caller, user_id: &str, role: AccountRole) -> Result<()> {
        let is_admin = self.user(&caller.user_id).is_some_and(|user| user.roles.contains(&AccountRole::Admin));
        if !is_admin {
            return Err(Error::NotAdmin);
        }
        if self.user(user_id).is_none() {
            return Err(Error::invalid("userId", format!("user `{user_id}` does not exist")));
        }
        let ts = now_ms();
        let role_name = match role {
            AccountRole::Admin => "admin",
            AccountRole::Compliance => "compliance",
        };
        let details = serde_json::json!({"userId": user_id, "role": role_name}).to_string();
        self.commit(self.partition_of(user_id), vec![LogEvent::RoleGranted { user_id: user_id.to_string(), role, by: caller.user_id.clone(), ts }]).await?;
        self.record_audit(&caller.user_id, "role.grant", details).await
    }

    /// Writes an administrative or compliance action to the log, and so to
    /// the audit table.
    pub async fn record_audit(&self, actor_id: &str, action: &str, details: String) -> Result<()> {
        let event = LogEvent::Audited { actor_id: actor_id.to_string(), action: action.to_string(), details, ts: now_ms() };
        self.commit(self.partition_of(actor_id), vec![event]).await
    }

    pub fn has_role(&self, user_id: &str, role: AccountRole) -> bool {
        self.user(user_id).is_some_and(|user| user.roles.contains(&role))
    }

    // ---- lookups used by authentication ----

    pub fn user_by_username(&self, username: &str) -> Option<Arc<User>> {
        let user_id = self.state.usernames.get(username)?.value().clone()?;
        self.user(&user_id)
    }

    pub fn user(&self, user_id: &str) -> Option<Arc<User>> {
        self.state.users.get(user_id).map(|entry| entry.value().clone())
    }

    pub fn device(&self, device_id: &str) -> Option<Arc<crate::Device>> {
        self.state.devices.get(device_id).map(|entry| entry.value().clone())
    }

    pub fn conversation_exists(&self, conversation_id: &str) -> bool {
        self.state.conversations.contains_key(conversation_id)
    }
}

/// Which live messages a compliance deletion takes.
#[derive(Debug, Clone, Copy)]
pub enum ComplianceScope<'a> {
    /// Every message the user sent, everywhere (erasure).
    SentBy(&'a str),
    /// The conversation's messages sent before a time (retention).
    ConversationBefore { conversation_id: &'a str, before_ms: i64 },
}

impl ComplianceScope<'_> {
    fn takes(&self, sender_id: &str, ts: i64) -> bool {
        match self {
            ComplianceScope::SentBy(user_id) => sender_id == *user_id,
            ComplianceScope::ConversationBefore { before_ms, .. } => ts < *before_ms,
        }
    }
}

/// Deletes appended at once by a compliance deletion.
const COMPLIANCE_DELETES_PER_APPEND: usize = 1_000;

fn check_chars(field: &'static str, text: &str, max_chars: usize) -> Result<()> {
    let chars = text.chars().count();
    if chars == 0 || chars > max_chars {
        return Err(Error::invalid(field, format!("must be 1 to {max_chars} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_client_msg_id(client_msg_id: &str, max_bytes: usize) -> Result<()> {
    if client_msg_id.is_empty() || client_msg_id.len() > max_bytes {
        return Err(Error::invalid("clientMsgId", format!("must be 1 to {max_bytes} bytes")));
    }
    if client_msg_id.chars().any(char::is_control) {
        return Err(Error::invalid("clientMsgId", "must not contain control characters"));
    }
    Ok(())
}

pub(crate) fn render_message(conversation_id: &str, seq: u64, message: &crate::state::MessageState) -> api::Message {
    api::Message {
        message_id: message.message_id.clone(),
        conversation_id: conversation_id.to_string(),
        seq,
        sender_id: message.sender_id.clone(),
        sender_device_id: message.device_id.clone(),
        ts: message.ts,
        body: message.body.clone(),
        attachments: message.attachments.clone(),
        edited: message.edited,
        deleted: message.deleted,
        client_msg_id: message.client_msg_id.clone(),
    }
}

pub(crate) fn conversation_view(handle: &ConversationHandle) -> api::Conversation {
    let conversation = handle.state.read();
    let mut member_ids: Vec<String> = conversation.members.keys().cloned().collect();
    member_ids.sort();
    api::Conversation {
        conversation_id: conversation.conversation_id.clone(),
        conversation_type: conversation.conversation_type,
        title: conversation.title.clone(),
        member_ids,
        created_at: conversation.created_at,
    }
}
