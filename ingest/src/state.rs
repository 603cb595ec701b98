//! The state built from the log: users, devices, conversations, their
//! members and messages, and the indexes the write path needs. It is only
//! ever changed by [`State::apply`](crate::apply), in log order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use confab_schemas::api::MemberChange;
use confab_schemas::events::{AccountRole, ConversationType, MemberRole};
use confab_schemas::ids::{ConversationId, DeviceId, MessageId, UserId};
use dashmap::DashMap;
use parking_lot::RwLock;
use serde_json::Value;

use crate::fenwick::Fenwick;

#[derive(Debug)]
pub struct User {
    pub user_id: UserId,
    pub username: String,
    pub display_name: Option<String>,
    pub password_hash: String,
    pub roles: Vec<AccountRole>,
    pub created_at: i64,
}

#[derive(Debug)]
pub struct Device {
    pub device_id: DeviceId,
    pub user_id: UserId,
    pub name: Option<String>,
    pub platform: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct MessageState {
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub device_id: DeviceId,
    pub client_msg_id: String,
    pub ts: i64,
    pub body: String,
    pub attachments: Vec<Value>,
    pub edited: bool,
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct MemberState {
    pub role: MemberRole,
    pub joined_at: i64,
    pub last_read_seq: u64,
    /// The highest seq any of the member's devices has (a message is
    /// delivered to a user once one of their devices has it).
    pub last_delivered_seq: u64,
    /// Per device, the highest seq it confirmed having.
    pub delivered_by_device: HashMap<DeviceId, u64>,
    /// Per device, the highest seq read on it.
    pub read_by_device: HashMap<DeviceId, u64>,
}

/// What happened at one log offset of a conversation, for `/v1/sync`. Message
/// events are rendered from the message's current state when read, so a
/// deleted message's body is never served again.
#[derive(Debug, Clone)]
pub(crate) enum EventRef {
    MessageNew { seq: u64 },
    MessageEdit { seq: u64 },
    MessageDelete { seq: u64 },
    Read { user_id: UserId, seq: u64 },
    Delivered { user_id: UserId, seq: u64 },
    Member { user_id: UserId, change: MemberChange },
}

/// One event of a conversation, at the log offset of the record that made it.
#[derive(Debug, Clone)]
pub(crate) struct ConversationEvent {
    pub offset: u64,
    pub ts: i64,
    pub event: EventRef,
    /// Written to each recipient's inbox (fanout-on-write); otherwise
    /// readers find it by scanning the conversation (fanout-on-read).
    pub inboxed: bool,
}

/// One entry of a user's inbox: the `index`-th event of record `offset`.
#[derive(Debug, Clone)]
pub(crate) struct InboxEntry {
    pub offset: u64,
    pub index: u32,
    pub conversation_id: Arc<str>,
}

#[derive(Debug)]
pub(crate) struct ConversationState {
    pub conversation_id: ConversationId,
    pub conversation_type: ConversationType,
    pub title: Option<String>,
    pub created_at: i64,
    pub members: HashMap<UserId, MemberState>,
    /// `messages[seq - 1]`.
    pub messages: Vec<MessageState>,
    pub live_messages: Fenwick,
    /// Ascending by offset.
    pub events: Vec<ConversationEvent>,
    /// Whether the conversation has been above the inbox threshold: its
    /// members then have it in their scan sets.
    pub large: bool,
    /// Per user, the offset ranges during which they were a member (inclusive).
    pub membership: HashMap<UserId, Vec<(u64, Option<u64>)>>,
}

impl ConversationState {
    pub fn push_event(&mut self, offset: u64, ts: i64, event: EventRef) {
        self.events.push(ConversationEvent { offset, ts, event, inboxed: false });
    }

    pub fn last_seq(&self) -> u64 {
        self.messages.len() as u64
    }

    pub fn message(&self, seq: u64) -> Option<&MessageState> {
        seq.checked_sub(1).and_then(|index| self.messages.get(index as usize))
    }

    /// Whether `user_id` was a member when the event at `offset` happened.
    pub fn visible_to(&self, user_id: &str, offset: u64) -> bool {
        self.membership.get(user_id).is_some_and(|ranges| ranges.iter().any(|&(from, until)| offset >= from && until.is_none_or(|until| offset <= until)))
    }
}

#[derive(Debug)]
pub(crate) struct ConversationHandle {
    pub partition: u32,
    /// The last seq handed out by the write path (ahead of the state while
    /// appends are in flight); changed only under the partition's writer lock.
    pub assigned_seq: AtomicU64,
    pub state: RwLock<ConversationState>,
}

/// Where an idempotency key's message lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageRef {
    pub conversation_id: ConversationId,
    pub seq: u64,
}

#[derive(Debug)]
pub(crate) struct State {
    pub users: DashMap<UserId, Arc<User>>,
    /// Username to user; a name being created is reserved with `None`.
    pub usernames: DashMap<String, Option<UserId>>,
    pub admin_assigned: AtomicBool,
    pub devices: DashMap<DeviceId, Arc<Device>>,
    pub conversations: DashMap<ConversationId, Arc<ConversationHandle>>,
    /// The conversations a user is a member of now.
    pub user_conversations: DashMap<UserId, HashSet<ConversationId>>,
    /// Per user and partition, the events of small conversations they may
    /// see, in log order (fanout-on-write).
    pub inboxes: DashMap<UserId, Vec<Vec<InboxEntry>>>,
    /// Per user, the conversations that were large while they were in
    /// them: sync scans these for events not in the inbox (fanout-on-read).
    pub scan_conversations: DashMap<UserId, HashSet<ConversationId>>,
    /// Conversations with more members than this are not inboxed.
    pub inbox_max_members: usize,
    /// The idempotency index: (sender, clientMsgId) to the message.
    pub idempotency: DashMap<(UserId, String), MessageRef>,
    pub messages_by_id: DashMap<MessageId, MessageRef>,
    /// The dm between two users (ordered pair).
    pub dm_pairs: DashMap<(UserId, UserId), ConversationId>,
}

pub(crate) fn dm_pair(first: &str, second: &str) -> (UserId, UserId) {
    if first <= second {
        (first.to_string(), second.to_string())
    } else {
        (second.to_string(), first.to_string())
    }
}

impl State {
    pub fn new(inbox_max_members: usize) -> State {
        State {
            users: DashMap::new(),
            usernames: DashMap::new(),
            admin_assigned: AtomicBool::new(false),
            devices: DashMap::new(),
            conversations: DashMap::new(),
            user_conversations: DashMap::new(),
            inboxes: DashMap::new(),
            scan_conversations: DashMap::new(),
            inbox_max_members,
            idempotency: DashMap::new(),
            messages_by_id: DashMap::new(),
            dm_pairs: DashMap::new(),
        }
    }
}
