//! The state: rows in the [`Store`], a bounded working set in memory.
//!
//! What is in memory, and only as a cache (`src/cache.rs`): conversations
//! with their members (and everyone who ever was one, for visibility) and
//! their newest messages; users; devices. What is in memory and not in the
//! store: the reservations of commands in flight (a username, a dm pair, an
//! idempotency key), which live only until their event is applied, and each
//! partition's recent record outcomes for the fanout (`src/partition.rs`).
//! Everything else is read from the store when asked for.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use confab_schemas::events::{AccountRole, ConversationType};
use dashmap::DashMap;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::cache::{Cache, Cacheable};
use crate::config::StateConfig;
use crate::rows::{self, ConversationRow, DeviceRow, IdempotencyRow, MemberRow, MessageRef, MessageRow, UserConversationRow, UserRow};
use crate::store::{prefix_range, Space, Store, StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub user_id: String,
    pub username: String,
    pub display_name: Option<String>,
    pub password_hash: String,
    pub roles: Vec<AccountRole>,
    pub created_at: i64,
    pub push_preview: confab_schemas::events::PushPreview,
}

impl Cacheable for User {}

impl User {
    pub(crate) fn from_row(user_id: &str, row: UserRow) -> User {
        User {
            user_id: user_id.to_string(),
            username: row.username,
            display_name: row.display_name,
            password_hash: row.password_hash,
            roles: row.roles,
            created_at: row.created_at,
            push_preview: row.push_preview,
        }
    }

    pub(crate) fn row(&self) -> UserRow {
        UserRow {
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            password_hash: self.password_hash.clone(),
            roles: self.roles.clone(),
            created_at: self.created_at,
            push_preview: self.push_preview,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub device_id: String,
    pub user_id: String,
    pub name: Option<String>,
    pub platform: Option<String>,
    pub created_at: i64,
    pub push: Option<rows::PushToken>,
}

impl Cacheable for Device {}

impl Device {
    pub(crate) fn from_row(device_id: &str, row: DeviceRow) -> Device {
        Device { device_id: device_id.to_string(), user_id: row.user_id, name: row.name, platform: row.platform, created_at: row.created_at, push: row.push }
    }

    pub(crate) fn row(&self) -> DeviceRow {
        DeviceRow {
            user_id: self.user_id.clone(),
            name: self.name.clone(),
            platform: self.platform.clone(),
            created_at: self.created_at,
            push: self.push.clone(),
        }
    }
}

/// A conversation as the write path and the readers use it.
#[derive(Debug)]
pub(crate) struct ConversationState {
    pub conversation_id: String,
    pub conversation_type: ConversationType,
    pub title: Option<String>,
    pub created_at: i64,
    pub history_visibility: confab_schemas::events::HistoryVisibility,
    pub last_seq: u64,
    /// Everyone who is or was a member (`role` is `None` once they left),
    /// with their positions and membership intervals.
    pub members: HashMap<String, MemberRow>,
    pub member_count: usize,
    /// The newest messages, ascending by seq, the last one `last_seq`. An
    /// apply round may leave more than the bound until it has committed.
    pub recent: VecDeque<MessageRow>,
}

impl ConversationState {
    pub fn is_member(&self, user_id: &str) -> bool {
        self.members.get(user_id).is_some_and(|member| member.role.is_some())
    }

    pub fn member(&self, user_id: &str) -> Option<&MemberRow> {
        self.members.get(user_id).filter(|member| member.role.is_some())
    }

    pub fn current_members(&self) -> impl Iterator<Item = (&String, &MemberRow)> {
        self.members.iter().filter(|(_, member)| member.role.is_some())
    }

    /// Everyone who was a member at `offset`.
    pub fn recipients_at(&self, offset: u64) -> Vec<String> {
        self.members.iter().filter(|(_, member)| rows::within(&member.intervals, offset)).map(|(user_id, _)| user_id.clone()).collect()
    }

    /// A message among the newest ones, if it is there.
    pub fn recent_message(&self, seq: u64) -> Option<&MessageRow> {
        let first = self.last_seq.checked_sub(self.recent.len() as u64)? + 1;
        if seq < first || seq > self.last_seq {
            return None;
        }
        self.recent.get((seq - first) as usize)
    }

    pub fn recent_message_mut(&mut self, seq: u64) -> Option<&mut MessageRow> {
        let first = self.last_seq.checked_sub(self.recent.len() as u64)? + 1;
        if seq < first || seq > self.last_seq {
            return None;
        }
        self.recent.get_mut((seq - first) as usize)
    }

    pub fn trim_recent(&mut self, keep: usize) {
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
    }
}

#[derive(Debug)]
pub(crate) struct ConversationHandle {
    pub partition: u32,
    /// The last seq handed out by the write path (ahead of the state while
    /// appends are in flight); changed only under the partition's writer lock.
    pub assigned_seq: AtomicU64,
    /// In-flight appends and apply rounds holding it in the cache.
    pub pins: AtomicU32,
    pub state: RwLock<ConversationState>,
}

impl Cacheable for ConversationHandle {
    fn pinned(&self) -> bool {
        self.pins.load(Ordering::Acquire) > 0
    }
}

/// Keeps a conversation in the cache while it lives.
#[derive(Debug)]
pub(crate) struct Pin(pub Arc<ConversationHandle>);

impl Pin {
    pub fn new(handle: &Arc<ConversationHandle>) -> Pin {
        handle.pins.fetch_add(1, Ordering::AcqRel);
        Pin(handle.clone())
    }
}

impl Clone for Pin {
    fn clone(&self) -> Pin {
        Pin::new(&self.0)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How an in-flight send ended, for retries waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendOutcome {
    InFlight,
    Applied,
    Failed,
}

/// An idempotency key whose message is appended but not yet in the store.
#[derive(Debug)]
pub(crate) struct Reservation {
    pub conversation_id: String,
    pub seq: u64,
    pub outcome: watch::Sender<SendOutcome>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub store: Arc<dyn Store>,
    pub config: StateConfig,
    pub partition_count: u32,
    pub conversations: Cache<ConversationHandle>,
    pub users: Cache<User>,
    pub devices: Cache<Device>,
    /// Usernames whose creation is in flight.
    pub pending_usernames: DashMap<String, ()>,
    /// Dms whose creation is in flight: (user, user) to the conversation.
    pub pending_dms: DashMap<(String, String), String>,
    /// Idempotency keys whose message is in flight.
    pub sending: DashMap<(String, String), Arc<Reservation>>,
    pub admin_assigned: AtomicBool,
    /// Set when the store failed: nothing more is applied until a restart.
    pub failed: AtomicBool,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Store({})", self.location())
    }
}

/// A store written before users' devices were indexed gets the index once,
/// at open (one pass over the devices); later sessions index themselves.
fn index_devices(store: &dyn Store) -> StoreResult<()> {
    if store.get(Space::Meta, rows::DEVICES_INDEXED_KEY)?.is_some() {
        return Ok(());
    }
    let mut batch = crate::store::WriteBatch::default();
    for entry in store.range(Space::Devices, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, false) {
        let (key, value) = entry?;
        // Index rows (user, device) are empty; a device's own row is not.
        if value.is_empty() {
            continue;
        }
        let device_id = crate::codec::Decoder::new(&key).id().ok_or_else(|| rows::corrupt(Space::Devices, "device key"))?;
        let row = DeviceRow::decode(&value).ok_or_else(|| rows::corrupt(Space::Devices, "device"))?;
        batch.put(Space::Devices, rows::user_device_key(&row.user_id, &device_id), Vec::new());
    }
    batch.put(Space::Meta, rows::DEVICES_INDEXED_KEY.to_vec(), vec![1]);
    store.write(batch)
}

pub(crate) fn dm_pair(first: &str, second: &str) -> (String, String) {
    if first <= second {
        (first.to_string(), second.to_string())
    } else {
        (second.to_string(), first.to_string())
    }
}

impl State {
    pub fn new(store: Arc<dyn Store>, config: StateConfig, partition_count: u32) -> StoreResult<State> {
        let admin_assigned = store.get(Space::Meta, rows::ADMIN_KEY)?.is_some();
        index_devices(&*store)?;
        Ok(State {
            conversations: Cache::new(config.conversations_cached_max),
            users: Cache::new(config.users_cached_max),
            devices: Cache::new(config.devices_cached_max),
            store,
            config,
            partition_count,
            pending_usernames: DashMap::new(),
            pending_dms: DashMap::new(),
            sending: DashMap::new(),
            admin_assigned: AtomicBool::new(admin_assigned),
            failed: AtomicBool::new(false),
        })
    }

    pub fn partition_of(&self, key: &str) -> u32 {
        (confab_schemas::ids::stable_hash(key) % self.partition_count as u64) as u32
    }

    pub fn user(&self, user_id: &str) -> StoreResult<Option<Arc<User>>> {
        self.users.get_or_load(user_id, || self.load_user(user_id), |_| {})
    }

    fn load_user(&self, user_id: &str) -> StoreResult<Option<User>> {
        let Some(bytes) = self.store.get(Space::Users, &rows::id_key(user_id))? else { return Ok(None) };
        let row = UserRow::decode(&bytes).ok_or_else(|| rows::corrupt(Space::Users, "user"))?;
        Ok(Some(User::from_row(user_id, row)))
    }

    pub fn user_id_by_name(&self, username: &str) -> StoreResult<Option<String>> {
        let value = self.store.get(Space::Usernames, username.as_bytes())?;
        value.map(|bytes| String::from_utf8(bytes).map_err(|_| rows::corrupt(Space::Usernames, "username"))).transpose()
    }

    pub fn device(&self, device_id: &str) -> StoreResult<Option<Arc<Device>>> {
        self.devices.get_or_load(
            device_id,
            || {
                let Some(bytes) = self.store.get(Space::Devices, &rows::id_key(device_id))? else { return Ok(None) };
                let row = DeviceRow::decode(&bytes).ok_or_else(|| rows::corrupt(Space::Devices, "device"))?;
                Ok(Some(Device::from_row(device_id, row)))
            },
            |_| {},
        )
    }

    /// The conversation; one not cached is loaded with its newest messages
    /// (up to `recent_messages_per_conversation`), for the reads that follow.
    pub fn conversation(&self, conversation_id: &str) -> StoreResult<Option<Arc<ConversationHandle>>> {
        let recent = self.config.recent_messages_per_conversation;
        self.conversations.get_or_load(conversation_id, || self.load_conversation(conversation_id, recent), |_| {})
    }

    /// The conversation, pinned in the cache until the pin is dropped. One
    /// not cached is loaded with only its newest message: a write needs its
    /// members and last seq, not its history, and loading the history for
    /// every write to a conversation that fell out of the cache is what
    /// made applying a log of many conversations slow. Its recent messages
    /// then fill as new ones are applied (a shorter suffix is still a
    /// suffix: a page that reaches before it reads the store).
    pub fn conversation_pinned(&self, conversation_id: &str) -> StoreResult<Option<Pin>> {
        let pinned: parking_lot::Mutex<Option<Pin>> = parking_lot::Mutex::new(None);
        self.conversations.get_or_load(
            conversation_id,
            || self.load_conversation(conversation_id, 1),
            |handle| {
                *pinned.lock() = Some(Pin::new(handle));
            },
        )?;
        Ok(pinned.into_inner())
    }

    /// Loads a conversation with its members and up to `recent_wanted` newest
    /// messages (at least the newest, which gives its last seq).
    fn load_conversation(&self, conversation_id: &str, recent_wanted: usize) -> StoreResult<Option<ConversationHandle>> {
        let Some(bytes) = self.store.get(Space::Conversations, &rows::id_key(conversation_id))? else { return Ok(None) };
        let row = ConversationRow::decode(&bytes).ok_or_else(|| rows::corrupt(Space::Conversations, "conversation"))?;
        let prefix = rows::conversation_prefix(conversation_id);
        let mut members = HashMap::new();
        let (start, end) = prefix_range(&prefix);
        for entry in self.store.range(Space::Members, start, end, false) {
            let (key, value) = entry?;
            let user_id = rows::second_str(&key).ok_or_else(|| rows::corrupt(Space::Members, "member key"))?;
            let member = MemberRow::decode(&value).ok_or_else(|| rows::corrupt(Space::Members, "member"))?;
            members.insert(user_id, member);
        }
        let (start, end) = prefix_range(&prefix);
        let mut recent = VecDeque::new();
        let mut last_seq = 0;
        for entry in self.store.range(Space::Messages, start, end, true).take(recent_wanted.clamp(1, self.config.recent_messages_per_conversation.max(1))) {
            let (key, value) = entry?;
            let seq = rows::seq_of(&key).ok_or_else(|| rows::corrupt(Space::Messages, "message key"))?;
            last_seq = last_seq.max(seq);
            recent.push_front(MessageRow::decode(&value).ok_or_else(|| rows::corrupt(Space::Messages, "message"))?);
        }
        if self.config.recent_messages_per_conversation == 0 {
            recent.clear();
        }
        let member_count = members.values().filter(|member| member.role.is_some()).count();
        let state = ConversationState {
            conversation_id: conversation_id.to_string(),
            conversation_type: row.conversation_type,
            title: row.title,
            created_at: row.created_at,
            history_visibility: row.history_visibility,
            last_seq,
            members,
            member_count,
            recent,
        };
        Ok(Some(ConversationHandle {
            partition: self.partition_of(conversation_id),
            assigned_seq: AtomicU64::new(last_seq),
            pins: AtomicU32::new(0),
            state: RwLock::new(state),
        }))
    }

    /// A message by seq: among the newest in memory, else from the store.
    pub fn message(&self, handle: &ConversationHandle, seq: u64) -> StoreResult<Option<MessageRow>> {
        let conversation_id = {
            let conversation = handle.state.read();
            if let Some(message) = conversation.recent_message(seq) {
                return Ok(Some(message.clone()));
            }
            if seq == 0 || seq > conversation.last_seq {
                return Ok(None);
            }
            conversation.conversation_id.clone()
        };
        self.stored_message(&conversation_id, seq)
    }

    pub fn stored_message(&self, conversation_id: &str, seq: u64) -> StoreResult<Option<MessageRow>> {
        let Some(bytes) = self.store.get(Space::Messages, &rows::seq_key(conversation_id, seq))? else { return Ok(None) };
        MessageRow::decode(&bytes).ok_or_else(|| rows::corrupt(Space::Messages, "message")).map(Some)
    }

    pub fn media(&self, media_id: &str) -> StoreResult<Option<rows::MediaRow>> {
        let Some(bytes) = self.store.get(Space::Media, &rows::id_key(media_id))? else { return Ok(None) };
        rows::MediaRow::decode(&bytes).ok_or_else(|| rows::corrupt(Space::Media, "media")).map(Some)
    }

    /// The bytes and count of a user's uploads that the store keeps.
    pub fn uploaded_by(&self, user_id: &str) -> StoreResult<(u64, u64)> {
        let uploads = self.uploads_of(user_id)?;
        Ok((uploads.iter().fold(0u64, |bytes, (_, size)| bytes.saturating_add(*size)), uploads.len() as u64))
    }

    /// A user's uploads not removed, with their sizes (the uploader index).
    pub fn uploads_of(&self, user_id: &str) -> StoreResult<Vec<(String, u64)>> {
        let (start, end) = crate::store::prefix_range(&rows::user_prefix(user_id));
        let mut uploads = Vec::new();
        for entry in self.store.range(Space::Media, start, end, false) {
            let (key, value) = entry?;
            let mut decoder = crate::codec::Decoder::new(&key);
            let media_id = decoder.id().and_then(|_| decoder.id()).ok_or_else(|| rows::corrupt(Space::Media, "uploader index"))?;
            uploads.push((media_id, rows::u64_value(&value).unwrap_or(0)));
        }
        Ok(uploads)
    }

    pub fn message_ref(&self, message_id: &str) -> StoreResult<Option<MessageRef>> {
        let Some(bytes) = self.store.get(Space::MessageIds, &rows::id_key(message_id))? else { return Ok(None) };
        MessageRef::decode(&bytes).ok_or_else(|| rows::corrupt(Space::MessageIds, "message id")).map(Some)
    }

    /// The dm between two users in the store (not one being created: the
    /// caller holds that map's entry).
    pub fn stored_dm(&self, pair: &(String, String)) -> StoreResult<Option<String>> {
        let value = self.store.get(Space::DmPairs, &rows::pair_key(&pair.0, &pair.1))?;
        value.map(|bytes| String::from_utf8(bytes).map_err(|_| rows::corrupt(Space::DmPairs, "dm pair"))).transpose()
    }

    /// The stored idempotency row of a key, if it is within the window.
    pub fn idempotency(&self, sender_id: &str, client_msg_id: &str, now_ms: i64) -> StoreResult<Option<IdempotencyRow>> {
        let Some(bytes) = self.store.get(Space::Idempotency, &rows::idempotency_key(sender_id, client_msg_id))? else { return Ok(None) };
        let row = IdempotencyRow::decode(&bytes).ok_or_else(|| rows::corrupt(Space::Idempotency, "idempotency"))?;
        Ok((row.ts >= now_ms - self.config.idempotency_window_ms()).then_some(row))
    }

    /// Whether `blocker` blocked `blocked`.
    pub fn is_blocked(&self, blocker: &str, blocked: &str) -> StoreResult<bool> {
        Ok(self.store.get(Space::Users, &rows::block_key(blocker, blocked))?.is_some())
    }

    /// The users `blocker` blocked.
    pub fn blocks_of(&self, blocker: &str) -> StoreResult<Vec<String>> {
        let prefix = rows::user_prefix(blocker);
        let (start, end) = prefix_range(&prefix);
        let mut blocked = Vec::new();
        for entry in self.store.range(Space::Users, start, end, false) {
            let (key, _) = entry?;
            if key.len() == prefix.len() {
                continue; // The user's own row.
            }
            blocked.push(rows::second_str(&key).ok_or_else(|| rows::corrupt(Space::Users, "block key"))?);
        }
        Ok(blocked)
    }

    /// A user's devices, oldest first.
    pub fn devices_of(&self, user_id: &str) -> StoreResult<Vec<Arc<Device>>> {
        let (start, end) = prefix_range(&rows::user_prefix(user_id));
        let mut devices = Vec::new();
        for entry in self.store.range(Space::Devices, start, end, false) {
            let (key, _) = entry?;
            let device_id = rows::second_str(&key).ok_or_else(|| rows::corrupt(Space::Devices, "user device key"))?;
            if let Some(device) = self.device(&device_id)? {
                devices.push(device);
            }
        }
        devices.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.device_id.cmp(&b.device_id)));
        Ok(devices)
    }

    /// The conversations a user is or was in, with their membership intervals.
    pub fn user_conversations(&self, user_id: &str) -> StoreResult<Vec<(String, UserConversationRow)>> {
        let (start, end) = prefix_range(&rows::user_prefix(user_id));
        let mut conversations = Vec::new();
        for entry in self.store.range(Space::UserConversations, start, end, false) {
            let (key, value) = entry?;
            let conversation_id = rows::second_str(&key).ok_or_else(|| rows::corrupt(Space::UserConversations, "key"))?;
            let row = UserConversationRow::decode(&value).ok_or_else(|| rows::corrupt(Space::UserConversations, "row"))?;
            conversations.push((conversation_id, row));
        }
        Ok(conversations)
    }

    pub fn applied_offset(&self, partition: u32) -> StoreResult<u64> {
        let value = self.store.get(Space::Meta, &rows::applied_key(partition))?;
        Ok(value.and_then(|bytes| rows::u64_value(&bytes)).unwrap_or(0))
    }

    pub fn fail(&self, error: &StoreError) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(%error, "the state store failed; refusing writes until the server restarts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::WriteBatch;

    /// A store from before the device index: its devices are listed once opened.
    #[test]
    fn devices_stored_before_the_index_are_indexed_at_open() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut batch = WriteBatch::default();
        for (device, created_at) in [("d_phone", 2), ("d_laptop", 1)] {
            let row = DeviceRow { user_id: "u_alice".into(), name: None, platform: None, created_at, push: None };
            batch.put(Space::Devices, rows::id_key(device), row.encode());
        }
        let row = DeviceRow { user_id: "u_bob".into(), name: None, platform: None, created_at: 3, push: None };
        batch.put(Space::Devices, rows::id_key("d_bobs"), row.encode());
        store.write(batch).unwrap();
        let state = State::new(store.clone(), StateConfig::default(), 1).unwrap();
        let listed: Vec<String> = state.devices_of("u_alice").unwrap().iter().map(|device| device.device_id.clone()).collect();
        assert_eq!(listed, vec!["d_laptop", "d_phone"], "oldest first");
        assert_eq!(state.devices_of("u_bob").unwrap().len(), 1);
        // Once: a second open finds the mark and does not scan again.
        assert!(store.get(Space::Meta, rows::DEVICES_INDEXED_KEY).unwrap().is_some());
        drop(state);
        let again = State::new(store, StateConfig::default(), 1).unwrap();
        assert_eq!(again.devices_of("u_alice").unwrap().len(), 2);
    }
}
