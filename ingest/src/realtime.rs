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
use crate::queries::render_event;
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

    /// The client events the record at `offset` produced, for fanout. Call
    /// only once the record is applied.
    pub fn events_at(&self, offset: Offset, event: &LogEvent) -> Vec<EventAt> {
        if matches!(event, LogEvent::UserCreated { .. } | LogEvent::SessionCreated { .. } | LogEvent::RoleGranted { .. } | LogEvent::Audited { .. }) {
            return Vec::new();
        }
        let Some(handle) = self.state.conversation(event.partition_key()) else { return Vec::new() };
        let conversation = handle.state.read();
        let first = conversation.events.partition_point(|event| event.offset < offset);
        if conversation.events.get(first).is_none_or(|event| event.offset != offset) {
            return Vec::new();
        }
        // Everyone who was a member at this offset; the same for every event of the record.
        let recipients: Arc<[String]> = conversation.membership.keys().filter(|user_id| conversation.visible_to(user_id, offset)).cloned().collect();
        let member_count = conversation.members.len();
        conversation.events[first..]
            .iter()
            .take_while(|event| event.offset == offset)
            .enumerate()
            .map(|(index, event)| EventAt {
                index: index as u32,
                event: render_event(&conversation, &event.event),
                recipients: recipients.clone(),
                member_count,
            })
            .collect()
    }

    /// Checks a device's receipt: a member, and a seq that exists.
    pub fn check_receipt(&self, caller: &Caller, conversation_id: &str, seq: u64) -> Result<()> {
        let handle = self.member_conversation(caller, conversation_id)?;
        let last_seq = handle.state.read().last_seq();
        if seq == 0 || seq > last_seq {
            return Err(Error::invalid("seq", format!("conversation `{conversation_id}` has seqs 1 to {last_seq}")));
        }
        Ok(())
    }

    /// Writes coalesced delivery receipts of one conversation to the log.
    pub async fn record_delivered(&self, conversation_id: &str, receipts: Vec<DeliveryReceipt>) -> Result<()> {
        let handle = self.state.conversation(conversation_id).ok_or_else(|| Error::ConversationNotFound(conversation_id.to_string()))?;
        let partition = &self.partitions[handle.partition as usize];
        let event = LogEvent::DeliveryReceipts { conversation_id: conversation_id.to_string(), receipts, ts: now_ms() };
        let ticket = {
            let _writer = partition.writer.lock().await;
            partition.append(&*self.log, vec![event])?
        };
        partition.finish(&*self.log, &self.state, ticket).await
    }

    /// Moves the read cursor to `seq` (the WebSocket's `receipt.read`).
    pub async fn mark_read_seq(&self, caller: &Caller, conversation_id: &str, seq: u64) -> Result<()> {
        self.check_receipt(caller, conversation_id, seq)?;
        let handle = self.member_conversation(caller, conversation_id)?;
        let message_id = handle.state.read().message(seq).map(|message| message.message_id.clone()).expect("checked seq exists");
        self.mark_read(caller, conversation_id, &message_id).await
    }

    /// The members of a conversation the caller is in, and its size.
    pub fn member_ids(&self, caller: &Caller, conversation_id: &str) -> Result<Vec<String>> {
        let handle = self.member_conversation(caller, conversation_id)?;
        let conversation = handle.state.read();
        Ok(conversation.members.keys().cloned().collect())
    }

    /// Everyone who shares a conversation of at most `max_members` with
    /// `user_id`: who hears about their presence.
    pub fn contacts(&self, user_id: &str, max_members: usize) -> Vec<String> {
        let conversation_ids: Vec<String> = self.state.user_conversations.get(user_id).map(|ids| ids.iter().cloned().collect()).unwrap_or_default();
        let mut contacts = HashSet::new();
        for conversation_id in conversation_ids {
            let Some(handle) = self.state.conversation(&conversation_id) else { continue };
            let conversation = handle.state.read();
            if conversation.members.len() <= max_members {
                contacts.extend(conversation.members.keys().filter(|member| *member != user_id).cloned());
            }
        }
        contacts.into_iter().collect()
    }
}
