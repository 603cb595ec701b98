//! What the real-time side (fanout pipeline, WebSocket sessions) asks of
//! the write path and the state: the events of a log record with their
//! recipients, the head cursor, receipts, and who to tell about typing and
//! presence.

use std::collections::HashSet;
use std::sync::Arc;

use confab_log::Offset;
use confab_schemas::api::ClientEvent;
use confab_schemas::cursor::{Position, SyncCursor};
use confab_schemas::events::{DeliveryReceipt, LogEvent};
use confab_schemas::ids::now_ms;
use tokio::sync::watch;

use crate::commands::{Caller, Ingest};
use crate::queries::stored_record_events;
use crate::{Error, Result};

/// One client event of a log record, with the users who may see it.
#[derive(Debug, Clone)]
pub struct EventAt {
    pub index: u32,
    pub event: ClientEvent,
    /// Shared by every event of the record.
    pub recipients: Arc<[String]>,
    pub member_count: usize,
}

impl Ingest {
    /// One past the last applied offset of `partition`, as a watch.
    pub fn subscribe_applied(&self, partition: u32) -> watch::Receiver<Offset> {
        self.partitions[partition as usize].subscribe_applied()
    }

    /// A cursor at the current end of everything applied: "from now on".
    pub fn head_cursor(&self) -> SyncCursor {
        SyncCursor { positions: self.partitions.iter().map(|partition| Position::at(partition.applied_end())).collect() }
    }

    /// The client events the record at `offset` of `partition` produced,
    /// for fanout. Call only once the record is applied. Served from the
    /// partition's kept outcomes; a fanout further behind reads the store.
    pub fn events_at(&self, partition: u32, offset: Offset, event: &LogEvent) -> Result<Vec<EventAt>> {
        if matches!(
            event,
            LogEvent::UserCreated { .. }
                | LogEvent::SessionCreated { .. }
                | LogEvent::SessionEnded { .. }
                | LogEvent::RoleGranted { .. }
                | LogEvent::RoleRevoked { .. }
                | LogEvent::BlockChanged { .. }
                | LogEvent::UserSettingsChanged { .. }
                | LogEvent::PushTokenSet { .. }
                | LogEvent::PushTokenRemoved { .. }
                | LogEvent::PushAttempts { .. }
                | LogEvent::ConversationSettingsChanged { .. }
                | LogEvent::Lost {}
                | LogEvent::Audited { .. }
        ) {
            return Ok(Vec::new());
        }
        let writer = &self.partitions[partition as usize];
        if let Some(outcome) = writer.outcome(offset) {
            let recipients = outcome.recipients.clone();
            return Ok(outcome
                .events
                .iter()
                .cloned()
                .enumerate()
                .map(|(index, event)| EventAt { index: index as u32, event, recipients: recipients.clone(), member_count: outcome.member_count })
                .collect());
        }
        if writer.outcomes_cover(offset) {
            return Ok(Vec::new()); // The record produced nothing.
        }
        let Some(handle) = self.state.conversation(event.partition_key())? else { return Ok(Vec::new()) };
        let events = stored_record_events(self, &handle, offset)?;
        let (recipients, member_count): (Arc<[String]>, usize) = {
            let conversation = handle.state.read();
            (conversation.recipients_at(offset).into(), conversation.member_count)
        };
        Ok(events.into_iter().enumerate().map(|(index, event)| EventAt { index: index as u32, event, recipients: recipients.clone(), member_count }).collect())
    }

    /// Checks a device's receipt: a member, and a seq that exists.
    pub fn check_receipt(&self, caller: &Caller, conversation_id: &str, seq: u64) -> Result<()> {
        let handle = self.member_conversation(caller, conversation_id)?;
        let last_seq = handle.state.read().last_seq;
        if seq == 0 || seq > last_seq {
            return Err(Error::invalid("seq", format!("conversation `{conversation_id}` has seqs 1 to {last_seq}")));
        }
        Ok(())
    }

    /// Writes coalesced delivery receipts of one conversation to the log.
    pub async fn record_delivered(&self, conversation_id: &str, receipts: Vec<DeliveryReceipt>) -> Result<()> {
        let partition = self.partition_of(conversation_id);
        let event = LogEvent::DeliveryReceipts { conversation_id: conversation_id.to_string(), receipts, ts: now_ms() };
        let ticket = {
            let _writer = partition.writer.lock().await;
            self.check_writable()?;
            let pin = self.pinned_conversation(conversation_id)?;
            partition.append(&*self.log, vec![event], Some(pin))?
        };
        partition.finish(&*self.log, &self.state, ticket).await
    }

    /// Moves the read cursor to `seq` (the WebSocket's `receipt.read`).
    pub async fn mark_read_seq(&self, caller: &Caller, conversation_id: &str, seq: u64) -> Result<()> {
        self.check_receipt(caller, conversation_id, seq)?;
        self.move_read_cursor(caller, conversation_id, seq).await
    }

    /// The current members of a conversation the caller is in.
    pub fn member_ids(&self, caller: &Caller, conversation_id: &str) -> Result<Vec<String>> {
        let handle = self.member_conversation(caller, conversation_id)?;
        let conversation = handle.state.read();
        Ok(conversation.current_members().map(|(user_id, _)| user_id.clone()).collect())
    }

    /// Everyone who shares a conversation of at most `max_members` with
    /// `user_id`: who hears about their presence.
    pub fn contacts(&self, user_id: &str, max_members: usize) -> Result<Vec<String>> {
        let mut contacts = HashSet::new();
        for (conversation_id, row) in self.state.user_conversations(user_id)? {
            if !row.current() {
                continue;
            }
            let Some(handle) = self.state.conversation(&conversation_id)? else { continue };
            let conversation = handle.state.read();
            if conversation.member_count <= max_members {
                contacts.extend(conversation.current_members().map(|(member, _)| member).filter(|member| *member != user_id).cloned());
            }
        }
        Ok(contacts.into_iter().collect())
    }
}
