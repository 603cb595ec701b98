//! Reads of the state: history pages, conversation lists, members, and
//! `/v1/sync`. Every read checks membership.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use confab_schemas::api::{self, ClientEvent, CursoredEvent};

use crate::commands::{render_message, Caller, Ingest};
use crate::state::{ConversationState, EventRef, InboxEntry};
use crate::{Error, Result};
use confab_schemas::cursor::{Position, SyncCursor};

/// One page of `/v1/sync`.
#[derive(Debug)]
pub struct SyncPage {
    pub events: Vec<CursoredEvent>,
    pub next_cursor: String,
    pub has_more: bool,
}

/// Largest and default page sizes of history and sync.
pub const PAGE_MAX: usize = 200;
pub const PAGE_DEFAULT: usize = 50;
/// Largest sync page.
pub const SYNC_PAGE_MAX: usize = 1_000;

impl Ingest {
    /// Up to `limit` messages with `seq < before` (the newest when `before`
    /// is absent), ascending, and whether older ones exist.
    pub fn history(&self, caller: &Caller, conversation_id: &str, before: Option<u64>, limit: usize) -> Result<(Vec<api::Message>, bool)> {
        let handle = self.member_conversation(caller, conversation_id)?;
        let conversation = handle.state.read();
        let end = before.map_or(conversation.last_seq(), |before| before.saturating_sub(1).min(conversation.last_seq()));
        let start = end.saturating_sub(limit as u64);
        let messages = (start + 1..=end).map(|seq| render_message(conversation_id, seq, conversation.message(seq).expect("seq in range"))).collect();
        Ok((messages, start > 0))
    }

    /// The caller's conversations, most recently active first.
    pub fn list_conversations(&self, caller: &Caller) -> Vec<api::ConversationSummary> {
        let conversation_ids: Vec<String> = self.state.user_conversations.get(&caller.user_id).map(|ids| ids.iter().cloned().collect()).unwrap_or_default();
        let mut summaries: Vec<(i64, api::ConversationSummary)> = Vec::new();
        for conversation_id in conversation_ids {
            let Some(handle) = self.state.conversation(&conversation_id) else { continue };
            let conversation = handle.state.read();
            let Some(member) = conversation.members.get(&caller.user_id) else { continue };
            let last_seq = conversation.last_seq();
            let last_read_seq = member.last_read_seq.min(last_seq);
            let unread = conversation.live_messages.prefix(last_seq as usize) - conversation.live_messages.prefix(last_read_seq as usize);
            let last_message = conversation.message(last_seq).map(|message| render_message(&conversation_id, last_seq, message));
            let active_at = last_message.as_ref().map_or(conversation.created_at, |message| message.ts);
            summaries.push((
                active_at,
                api::ConversationSummary {
                    conversation_id: conversation_id.clone(),
                    conversation_type: conversation.conversation_type,
                    title: conversation.title.clone(),
                    last_seq,
                    last_read_seq,
                    unread_count: unread.max(0) as u64,
                    last_message,
                },
            ));
        }
        summaries.sort_by(|left, right| right.0.cmp(&left.0).then_with(|| left.1.conversation_id.cmp(&right.1.conversation_id)));
        summaries.into_iter().map(|(_, summary)| summary).collect()
    }

    pub fn members(&self, caller: &Caller, conversation_id: &str) -> Result<Vec<api::Member>> {
        let handle = self.member_conversation(caller, conversation_id)?;
        let conversation = handle.state.read();
        let mut members: Vec<api::Member> = conversation
            .members
            .iter()
            .map(|(user_id, member)| api::Member {
                user_id: user_id.clone(),
                role: member.role,
                joined_at: member.joined_at,
                last_delivered_seq: member.last_delivered_seq,
                last_read_seq: member.last_read_seq,
                devices: device_positions(member),
            })
            .collect();
        members.sort_by(|left, right| left.joined_at.cmp(&right.joined_at).then_with(|| left.user_id.cmp(&right.user_id)));
        Ok(members)
    }

    /// Everything that happened in the caller's conversations after
    /// `cursor`: per partition, a gap-free prefix of the events after the
    /// cursor's offset, merged across partitions by time.
    pub fn sync(&self, caller: &Caller, cursor: Option<&str>, limit: usize) -> Result<SyncPage> {
        let partition_count = self.partition_count();
        let start = match cursor {
            None => SyncCursor::start(partition_count),
            Some(text) => {
                SyncCursor::decode(text, partition_count).ok_or_else(|| Error::invalid("cursor", "not a cursor this server issued; start again without one"))?
            }
        };
        // Read each partition's applied end first: events below it are all in the state.
        let applied_ends: Vec<u64> = self.partitions.iter().map(|partition| partition.applied_end()).collect();
        let mut streams: Vec<Vec<StreamEvent>> = vec![Vec::new(); partition_count as usize];
        // Small conversations: the caller's inbox (copied out first, so no
        // inbox lock is held while conversations are read).
        let inboxed: Vec<(usize, Vec<InboxEntry>)> = match self.state.inboxes.get(&caller.user_id) {
            Some(inbox) => inbox
                .iter()
                .enumerate()
                .map(|(partition, entries)| {
                    let from = start.positions[partition];
                    let first = entries.partition_point(|entry| !from.admits(entry.offset, entry.index));
                    let taken = entries[first..].iter().take_while(|entry| entry.offset < applied_ends[partition]).take(limit + 1).cloned().collect();
                    (partition, taken)
                })
                .collect(),
            None => Vec::new(),
        };
        for (partition, entries) in inboxed {
            for entry in entries {
                if let Some(event) = self.render_inbox_entry(&entry) {
                    streams[partition].push(event);
                }
            }
        }
        // Large conversations: scanned for the events no inbox holds.
        let scanned: Vec<String> = self.state.scan_conversations.get(&caller.user_id).map(|ids| ids.iter().cloned().collect()).unwrap_or_default();
        for conversation_id in scanned {
            let Some(handle) = self.state.conversation(&conversation_id) else { continue };
            let partition = handle.partition as usize;
            let conversation = handle.state.read();
            let range = (start.positions[partition], applied_ends[partition]);
            collect_visible(&conversation, &caller.user_id, range, limit + 1, &mut streams[partition]);
        }
        for stream in &mut streams {
            stream.sort_by_key(|event| (event.offset, event.index));
            stream.truncate(limit + 1);
        }
        Ok(merge_streams(streams, start, &applied_ends, limit))
    }
}

fn device_positions(member: &crate::state::MemberState) -> Vec<api::DevicePositions> {
    let mut devices: Vec<api::DevicePositions> = member
        .delivered_by_device
        .iter()
        .map(|(device_id, delivered)| api::DevicePositions {
            device_id: device_id.clone(),
            last_delivered_seq: *delivered,
            last_read_seq: member.read_by_device.get(device_id).copied().unwrap_or(0),
        })
        .collect();
    devices.sort_by(|left, right| left.device_id.cmp(&right.device_id));
    devices
}

/// One event of a partition's stream: the `index`-th event of record `offset`.
#[derive(Debug, Clone)]
struct StreamEvent {
    offset: u64,
    index: u32,
    ts: i64,
    event: ClientEvent,
}

/// Appends to `out` up to `max` events of a large `conversation` from
/// position `from` up to offset `until` (exclusive) that `user_id` may see
/// and that no inbox holds.
fn collect_visible(conversation: &ConversationState, user_id: &str, (from, until): (Position, u64), max: usize, out: &mut Vec<StreamEvent>) {
    let first = conversation.events.partition_point(|event| event.offset < from.offset);
    let mut taken = 0;
    let mut previous_offset = None;
    let mut index = 0u32;
    for event in &conversation.events[first..] {
        if event.offset >= until || taken == max {
            break;
        }
        // The index counts every event of the record, visible or not, so it is stable.
        index = if previous_offset == Some(event.offset) { index + 1 } else { 0 };
        previous_offset = Some(event.offset);
        if !event.inboxed && from.admits(event.offset, index) && conversation.visible_to(user_id, event.offset) {
            out.push(StreamEvent { offset: event.offset, index, ts: event.ts, event: render_event(conversation, &event.event) });
            taken += 1;
        }
    }
}

impl Ingest {
    /// The client event an inbox entry points at.
    fn render_inbox_entry(&self, entry: &InboxEntry) -> Option<StreamEvent> {
        let handle = self.state.conversation(&entry.conversation_id)?;
        let conversation = handle.state.read();
        let first = conversation.events.partition_point(|event| event.offset < entry.offset);
        let event = conversation.events.get(first + entry.index as usize).filter(|event| event.offset == entry.offset)?;
        Some(StreamEvent { offset: entry.offset, index: entry.index, ts: event.ts, event: render_event(&conversation, &event.event) })
    }
}

pub(crate) fn render_event(conversation: &ConversationState, event: &EventRef) -> ClientEvent {
    let conversation_id = conversation.conversation_id.clone();
    match event {
        EventRef::MessageNew { seq } => {
            ClientEvent::MessageNew { message: render_message(&conversation_id, *seq, conversation.message(*seq).expect("applied")) }
        }
        EventRef::MessageEdit { seq } => {
            ClientEvent::MessageEdit { message: render_message(&conversation_id, *seq, conversation.message(*seq).expect("applied")) }
        }
        EventRef::MessageDelete { seq } => {
            let message_id = conversation.message(*seq).expect("applied").message_id.clone();
            ClientEvent::MessageDelete { conversation_id, message_id, seq: *seq }
        }
        EventRef::Read { user_id, seq } => ClientEvent::ReceiptRead { conversation_id, user_id: user_id.clone(), seq: *seq },
        EventRef::Delivered { user_id, seq } => ClientEvent::ReceiptDelivered { conversation_id, user_id: user_id.clone(), seq: *seq },
        EventRef::Member { user_id, change } => ClientEvent::ConversationMember { conversation_id, user_id: user_id.clone(), change: *change },
    }
}

/// Merges per-partition streams by time, keeping each partition's taken
/// events a prefix of its stream so that the cursor has no gaps.
fn merge_streams(streams: Vec<Vec<StreamEvent>>, start: SyncCursor, applied_ends: &[u64], limit: usize) -> SyncPage {
    let mut cursor = start;
    let mut heap = BinaryHeap::new();
    for (partition, stream) in streams.iter().enumerate() {
        if let Some(first) = stream.first() {
            heap.push(Reverse((first.ts, partition, first.offset, first.index)));
        }
    }
    let mut streams: Vec<std::vec::IntoIter<StreamEvent>> = streams.into_iter().map(Vec::into_iter).collect();
    let mut events = Vec::new();
    while events.len() < limit {
        let Some(Reverse((_, partition, _, _))) = heap.pop() else { break };
        let taken = streams[partition].next().expect("heap entries exist in their stream");
        cursor.positions[partition] = Position { offset: taken.offset, skip: taken.index + 1 };
        events.push(CursoredEvent { event: taken.event, cursor: cursor.encode() });
        if let Some(next) = streams[partition].as_slice().first() {
            heap.push(Reverse((next.ts, partition, next.offset, next.index)));
        }
    }
    let mut has_more = false;
    for (partition, stream) in streams.iter().enumerate() {
        if stream.as_slice().is_empty() {
            // Nothing more for this caller below the applied end: skip ahead.
            cursor.positions[partition] = cursor.positions[partition].max(Position::at(applied_ends[partition]));
        } else {
            has_more = true;
        }
    }
    SyncPage { events, next_cursor: cursor.encode(), has_more }
}
