//! The write path: [`Ingest`], how it opens (the store, then the log after
//! the store's checkpoint), how it checkpoints, and the helpers every
//! command uses. The commands themselves are split by concern:
//! `commands/accounts.rs`, `conversations.rs`, `messages.rs`, `admin.rs`.
//! Each validates against the state under its partition's writer lock,
//! appends, and returns once its events are durable and applied.

mod accounts;
mod admin;
mod conversations;
mod media;
mod messages;
mod notifications;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_log::{Log, StartAt, TailReader};
use confab_schemas::events::LogEvent;
use confab_schemas::trace::TraceParent;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::StateConfig;
use crate::partition::PartitionWriter;
use crate::state::{ConversationHandle, Pin, State};
use crate::store::Store;
use crate::{Error, Limits, Result};

pub use admin::{ComplianceDeletion, ComplianceScope};
pub use media::{is_content_type, MediaAllowance, MediaCheck, NewMedia};
pub use messages::PendingSend;
pub(crate) use notifications::settings_of;
pub use notifications::{PushAudience, PushDevice, PushMember, PushText, SettingsChange};

/// Who is asking: an authenticated user on one of their devices.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub device_id: String,
}

#[derive(Debug, Clone)]
pub struct NewConversation {
    pub conversation_type: confab_schemas::events::ConversationType,
    pub member_ids: Vec<String>,
    pub title: Option<String>,
    /// `None`: the type's default.
    pub history_visibility: Option<confab_schemas::events::HistoryVisibility>,
}

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conversation_id: String,
    pub client_msg_id: String,
    pub body: String,
    pub attachments: Vec<Value>,
    /// The send's span (when traced): its record carries it to every
    /// reader of the log, and the append and apply spans are its children.
    pub trace: Option<TraceParent>,
}

pub struct Ingest {
    pub(crate) log: Arc<dyn Log>,
    pub(crate) state: State,
    pub(crate) partitions: Vec<PartitionWriter>,
    pub(crate) limits: Limits,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Ingest").field("partitions", &self.partitions.len()).finish_non_exhaustive()
    }
}

/// Records read and applied at once while replaying the log at start.
const REPLAY_BATCH_RECORDS: usize = 4_096;
const REPLAY_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// How often the checkpoint task looks whether one is due.
const CHECKPOINT_POLL: Duration = Duration::from_millis(100);

/// The state's name as a consumer of the log: its committed offset is the
/// last checkpoint, and retention keeps every record after it.
pub const STATE_CONSUMER: &str = "state";

/// What a start did, for the log line and the benchmarks.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Per partition, the offset the store had applied when opened.
    pub checkpointed: Vec<u64>,
    /// Records read back from the log after it.
    pub replayed: u64,
}

impl Ingest {
    /// Opens the state: the store as it was at its last batch, then every
    /// record the log holds after that, applied. Ready for commands.
    pub fn open(log: Arc<dyn Log>, store: Arc<dyn Store>, limits: Limits, config: StateConfig) -> Result<Ingest> {
        Ok(Ingest::open_with_report(log, store, limits, config)?.0)
    }

    pub fn open_with_report(log: Arc<dyn Log>, store: Arc<dyn Store>, limits: Limits, config: StateConfig) -> Result<(Ingest, OpenReport)> {
        Ingest::open_with_progress(log, store, limits, config, &|_, _| {})
    }

    /// Like [`Ingest::open_with_report`], telling `progress` after each
    /// replayed batch how many records it has applied and how many it will
    /// (the log after the checkpoint, all partitions): for a progress bar.
    pub fn open_with_progress(
        log: Arc<dyn Log>,
        store: Arc<dyn Store>,
        limits: Limits,
        config: StateConfig,
        progress: &dyn Fn(u64, u64),
    ) -> Result<(Ingest, OpenReport)> {
        let partition_count = log.partition_count();
        let state = State::new(store, config, partition_count)?;
        let mut partitions = Vec::new();
        let mut report = OpenReport::default();
        let applied_offsets = (0..partition_count).map(|partition| state.applied_offset(partition)).collect::<std::result::Result<Vec<_>, _>>()?;
        let mut to_replay = 0;
        for (partition, applied) in (0..partition_count).zip(&applied_offsets) {
            to_replay += log.durable_end(partition)?.saturating_sub(*applied);
        }
        progress(0, to_replay);
        for (partition, applied) in (0..partition_count).zip(applied_offsets) {
            let earliest = log.earliest(partition)?;
            if applied < earliest {
                return Err(Error::StateBehindLog { partition, applied, earliest });
            }
            let mut reader = TailReader::open(log.clone(), STATE_CONSUMER, partition, StartAt::Earliest)?;
            reader.seek(applied)?;
            let writer = PartitionWriter::new(partition, applied);
            loop {
                let records = reader.read_available(REPLAY_BATCH_RECORDS, REPLAY_BATCH_BYTES)?;
                if records.is_empty() {
                    break;
                }
                let mut decoded = Vec::with_capacity(records.len());
                for record in records {
                    let event = LogEvent::decode(&record.payload).map_err(|source| Error::UnreadableEvent { partition, offset: record.offset, source })?;
                    decoded.push((record.offset, event));
                }
                report.replayed += decoded.len() as u64;
                writer.replay(&state, decoded)?;
                progress(report.replayed, to_replay.max(report.replayed));
            }
            report.checkpointed.push(applied);
            partitions.push(writer);
        }
        let ingest = Ingest { log, state, partitions, limits, checkpointing: Mutex::new(()) };
        // What was just replayed need not be replayed again.
        ingest.checkpoint()?;
        tracing::info!(replayed = report.replayed, "state opened from its store and the log after its checkpoint");
        Ok((ingest, report))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the state store failed (nothing more is applied until a restart).
    pub fn store_failed(&self) -> bool {
        self.state.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    pub(crate) fn partition_of(&self, key: &str) -> &PartitionWriter {
        &self.partitions[self.state.partition_of(key) as usize]
    }

    /// Makes the store durable up to what it has applied, then commits that
    /// as the state's log offset, so retention may drop the records before
    /// it. Blocking (an fsync): call it off the async threads.
    pub fn checkpoint(&self) -> Result<()> {
        let _one_at_a_time = self.checkpointing.lock();
        if self.state.failed.load(Ordering::Acquire) {
            return Err(Error::StateFailed);
        }
        // Read before persisting: the store holds at least this much, so the
        // persist covers it.
        let applied: Vec<u64> = self.partitions.iter().map(PartitionWriter::applied_end).collect();
        for partition in &self.partitions {
            partition.applied_since_checkpoint.store(0, Ordering::Relaxed);
        }
        if let Err(error) = self.state.store.persist() {
            self.state.fail(&error);
            return Err(error.into());
        }
        for (partition, offset) in applied.into_iter().enumerate() {
            self.log.commit_offset(STATE_CONSUMER, partition as u32, offset)?;
        }
        Ok(())
    }

    /// Checkpoints every `checkpoint_interval_ms`, or sooner once
    /// `checkpoint_max_records` were applied, until `stopped` turns true.
    /// At every poll it also applies records whose senders hung up before
    /// they were durable (see [`PartitionWriter::sweep`]).
    pub async fn run_checkpoints(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.state.config.checkpoint_interval_ms);
        let max_records = self.state.config.checkpoint_max_records;
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECKPOINT_POLL.min(interval)) => {}
                _ = stopped.changed() => return,
            }
            for partition in &self.partitions {
                if let Err(error) = partition.sweep(&*self.log, &self.state) {
                    tracing::error!(%error, partition = partition.id, "applying records whose senders hung up failed");
                }
            }
            let applied: u64 = self.partitions.iter().map(|partition| partition.applied_since_checkpoint.load(Ordering::Relaxed)).sum();
            if applied == 0 || (last.elapsed() < interval && applied < max_records) {
                continue;
            }
            let ingest = self.clone();
            match tokio::task::spawn_blocking(move || ingest.checkpoint()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "checkpoint failed; the log keeps every record since the last one"),
                Err(error) => tracing::error!(%error, "checkpoint task panicked"),
            }
            last = Instant::now();
        }
    }

    /// Takes the partition's writer lock, appends `events`, and waits until
    /// they are durable and applied.
    pub(crate) async fn commit(&self, partition: &PartitionWriter, events: Vec<LogEvent>, pin: Option<Pin>) -> Result<()> {
        let _writer = partition.writer.lock().await;
        self.commit_locked(partition, events, pin).await
    }

    /// Appends `events` under the already held writer lock and waits until
    /// they are durable and applied.
    pub(crate) async fn commit_locked(&self, partition: &PartitionWriter, events: Vec<LogEvent>, pin: Option<Pin>) -> Result<()> {
        self.check_writable()?;
        let ticket = partition.append(&*self.log, events, pin)?;
        partition.finish(&*self.log, &self.state, ticket).await
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.state.failed.load(Ordering::Acquire) {
            return Err(Error::StateFailed);
        }
        Ok(())
    }

    /// The conversation, if it exists and the caller is a member of it now.
    pub(crate) fn member_conversation(&self, caller: &Caller, conversation_id: &str) -> Result<Arc<ConversationHandle>> {
        let handle = self.state.conversation(conversation_id)?.ok_or_else(|| Error::ConversationNotFound(conversation_id.to_string()))?;
        if !handle.state.read().is_member(&caller.user_id) {
            return Err(Error::NotMember(conversation_id.to_string()));
        }
        Ok(handle)
    }

    /// The conversation pinned in the cache (for a command that will append to it).
    pub(crate) fn pinned_conversation(&self, conversation_id: &str) -> Result<Pin> {
        self.state.conversation_pinned(conversation_id)?.ok_or_else(|| Error::ConversationNotFound(conversation_id.to_string()))
    }

    /// Every conversation's id (a scan of the store: for scheduled jobs).
    pub fn conversation_ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in self.state.store.range(crate::store::Space::Conversations, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, false) {
            let (key, _) = entry?;
            if let Some(id) = crate::codec::Decoder::new(&key).id() {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    pub fn conversation_exists(&self, conversation_id: &str) -> Result<bool> {
        Ok(self.state.conversation(conversation_id)?.is_some())
    }
}

pub(crate) fn check_chars(field: &'static str, text: &str, max_chars: usize) -> Result<()> {
    let chars = text.chars().count();
    if chars == 0 || chars > max_chars {
        return Err(Error::invalid(field, format!("must be 1 to {max_chars} characters")));
    }
    if let Some(found) = text.chars().find(|&c| c.is_control() || is_invisible_format(c)) {
        return Err(Error::invalid(field, format!("must not contain control, bidirectional or zero-width characters (found U+{:04X})", found as u32)));
    }
    Ok(())
}

/// Characters that change how a name or title reads without being seen:
/// bidirectional overrides, embeddings, isolates and marks (which can turn
/// `evil\u{202E}gpj.exe` into what reads as `evilexe.jpg`), and the
/// zero-width ones (which make two names that look alike differ). Text a
/// person reads as someone's name must be what it looks like. The
/// zero-width joiner and non-joiner stay allowed: emoji sequences (👩‍💻)
/// and Persian and Indic spelling need them.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{061C}' // Arabic letter mark
        | '\u{200B}' // zero-width space
        | '\u{200E}' | '\u{200F}' // left-to-right and right-to-left marks
        | '\u{202A}'..='\u{202E}' // embeddings and overrides
        | '\u{2060}'..='\u{2064}' // word joiner and invisible operators
        | '\u{2066}'..='\u{2069}' // isolates
        | '\u{FEFF}' // zero-width no-break space
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_invisible_or_reordering_characters_are_refused_naming_the_character() {
        for text in ["evil\u{202E}gpj.exe", "ad\u{200B}min", "a\u{2067}b", "\u{FEFF}x", "tab\there"] {
            let error = check_chars("displayName", text, 64).unwrap_err().to_string();
            assert!(error.contains("displayName") && error.contains("U+"), "{text:?}: {error}");
        }
        for text in ["Zoë", "محمد", "李小龍", "Ana-María O'Neil", "👩\u{200D}💻 dev", "می\u{200C}خواهم"] {
            assert!(check_chars("displayName", text, 64).is_ok(), "{text:?} is a fine name");
        }
    }
}
