//! Reads of the state: history pages, conversation lists, members, and
//! `/v1/sync`. Every read checks membership.
//!
//! Sync reads each of the caller's conversations in the partition (the
//! `user_conversations` rows carry their membership intervals) from the
//! cursor on: the `events` rows (messages, membership) and the `receipts`
//! rows (each member's latest read and delivered receipt), lazily merged by
//! `(offset, index)`, so a page costs about its own size whatever the
//! conversations' length. Nothing is written per recipient: a message costs
//! the same in a dm and in a channel.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use confab_schemas::api::{self, ClientEvent, CursoredEvent};
use confab_schemas::cursor::{Position, SyncCursor};
use confab_schemas::events::HistoryVisibility;

use crate::apply::render_receipt;
use crate::commands::{Caller, Ingest};
use crate::rows::{self, EventKind, EventRow, MemberRow, MessageRow, ReceiptRow, UserConversationRow};
use crate::state::ConversationHandle;
use crate::store::{key_range, prefix_range, RangeIter, Space};
use crate::{Error, Result};

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
    ///
    /// In a `joined` conversation the caller reads only messages sent since
    /// they last joined: a member who was removed and added back reads none
    /// from before (those pages would show messages in their current state,
    /// edits made while they were away included).
    pub fn history(&self, caller: &Caller, conversation_id: &str, before: Option<u64>, limit: usize) -> Result<(Vec<api::Message>, bool)> {
        let handle = self.member_conversation(caller, conversation_id)?;
        let joined = {
            let conversation = handle.state.read();
            match conversation.history_visibility {
                HistoryVisibility::Shared => None,
                HistoryVisibility::Joined => conversation.members.get(&caller.user_id).map(|member| (member.intervals.clone(), conversation.last_seq)),
            }
        };
        let (mut messages, mut has_more) = self.history_page(&handle, conversation_id, before, limit)?;
        if let Some((intervals, last_seq)) = joined {
            let visible = self.visible_seqs(conversation_id, &intervals, last_seq)?;
            let page_low = messages.first().map(|message| message.seq);
            messages.retain(|message| visible.iter().any(|&(low, high)| message.seq >= low && message.seq <= high));
            has_more = has_more && page_low.is_some_and(|page_low| visible.iter().any(|&(low, _)| low < page_low));
        }
        Ok((messages, has_more))
    }

    /// The seqs sent during the current membership interval, inclusive.
    pub(crate) fn visible_seqs(&self, conversation_id: &str, intervals: &rows::Intervals, last_seq: u64) -> Result<Vec<(u64, u64)>> {
        let Some(&(from, None)) = intervals.last() else { return Ok(Vec::new()) };
        let (start, stop) = key_range(rows::position_key(conversation_id, from, 0), rows::position_key(conversation_id, u64::MAX, 0));
        Ok(self.first_message_new(self.state.store.range(Space::Events, start, stop, false))?.map(|first| (first, last_seq)).into_iter().collect())
    }

    /// For a `joined` conversation, each membership interval's start and the
    /// first seq sent from then on (`None` for a shared one).
    fn joined_from(&self, conversation_id: &str, intervals: &rows::Intervals) -> Result<Option<Vec<(u64, u64)>>> {
        let Some(handle) = self.state.conversation(conversation_id)? else { return Ok(None) };
        let (visibility, last_seq) = {
            let conversation = handle.state.read();
            (conversation.history_visibility, conversation.last_seq)
        };
        if visibility == HistoryVisibility::Shared {
            return Ok(None);
        }
        let mut starts = Vec::with_capacity(intervals.len());
        for &(from, _) in intervals {
            let (start, stop) = key_range(rows::position_key(conversation_id, from, 0), rows::position_key(conversation_id, u64::MAX, 0));
            let first = self.first_message_new(self.state.store.range(Space::Events, start, stop, false))?.unwrap_or(last_seq + 1);
            starts.push((from, first));
        }
        Ok(Some(starts))
    }

    /// The seq of the first `message.new` among `rows` (events rows).
    fn first_message_new(&self, rows: RangeIter<'_>) -> Result<Option<u64>> {
        for entry in rows {
            let (_, value) = entry?;
            let row = EventRow::decode(&value).ok_or_else(|| rows::corrupt(Space::Events, "event"))?;
            if let EventKind::MessageNew { seq } = row.kind {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    fn history_page(&self, handle: &ConversationHandle, conversation_id: &str, before: Option<u64>, limit: usize) -> Result<(Vec<api::Message>, bool)> {
        let (end, mut messages) = {
            let conversation = handle.state.read();
            let end = before.map_or(conversation.last_seq, |before| before.saturating_sub(1).min(conversation.last_seq));
            let start = end.saturating_sub(limit as u64);
            // The newest messages are in memory: a page among them reads no store.
            let cached: Option<Vec<api::Message>> =
                (start + 1..=end).map(|seq| conversation.recent_message(seq).map(|message| render_message(conversation_id, seq, message))).collect();
            if let Some(cached) = cached {
                return Ok((cached, start > 0));
            }
            (end, Vec::with_capacity(limit))
        };
        let start = end.saturating_sub(limit as u64);
        let range = key_range(rows::seq_key(conversation_id, start + 1), rows::seq_key(conversation_id, end + 1));
        for entry in self.state.store.range(Space::Messages, range.0, range.1, false) {
            let (key, value) = entry?;
            let seq = rows::seq_of(&key).ok_or_else(|| rows::corrupt(Space::Messages, "message key"))?;
            let message = MessageRow::decode(&value).ok_or_else(|| rows::corrupt(Space::Messages, "message"))?;
            messages.push(render_message(conversation_id, seq, &message));
        }
        Ok((messages, start > 0))
    }

    /// Whether the caller is a member of the conversation now.
    pub fn is_member(&self, caller: &Caller, conversation_id: &str) -> Result<bool> {
        Ok(self.state.conversation(conversation_id)?.is_some_and(|handle| handle.state.read().is_member(&caller.user_id)))
    }

    /// The caller's conversations, most recently active first.
    pub fn list_conversations(&self, caller: &Caller) -> Result<Vec<api::ConversationSummary>> {
        let mut summaries: Vec<(i64, api::ConversationSummary)> = Vec::new();
        for (conversation_id, row) in self.state.user_conversations(&caller.user_id)? {
            if !row.current() {
                continue;
            }
            let Some(handle) = self.state.conversation(&conversation_id)? else { continue };
            let (settings, last_seq, last_read_seq, conversation_type, title, created_at, history_visibility) = {
                let conversation = handle.state.read();
                let Some(member) = conversation.member(&caller.user_id) else { continue };
                (
                    crate::commands::settings_of(member.muted, member.muted_until, member.notify, confab_schemas::ids::now_ms()),
                    conversation.last_seq,
                    member.last_read_seq.min(conversation.last_seq),
                    conversation.conversation_type,
                    conversation.title.clone(),
                    conversation.created_at,
                    conversation.history_visibility,
                )
            };
            let deleted_unread = self.deleted_between(&conversation_id, last_read_seq, last_seq)?;
            let unread_mentions = self.unread_mentions(&conversation_id, &caller.user_id, last_read_seq)?;
            let last_message = self.state.message(&handle, last_seq)?.map(|message| render_message(&conversation_id, last_seq, &message));
            let active_at = last_message.as_ref().map_or(created_at, |message| message.ts);
            summaries.push((
                active_at,
                api::ConversationSummary {
                    conversation_id,
                    conversation_type,
                    title,
                    history_visibility,
                    last_seq,
                    last_read_seq,
                    unread_count: (last_seq - last_read_seq).saturating_sub(deleted_unread),
                    last_message,
                    muted: settings.muted,
                    notify: settings.notify,
                    unread_mentions,
                },
            ));
        }
        summaries.sort_by(|left, right| right.0.cmp(&left.0).then_with(|| left.1.conversation_id.cmp(&right.1.conversation_id)));
        Ok(summaries.into_iter().map(|(_, summary)| summary).collect())
    }

    /// How many messages with `after < seq <= until` are deleted.
    fn deleted_between(&self, conversation_id: &str, after: u64, until: u64) -> Result<u64> {
        if until <= after {
            return Ok(0);
        }
        let range = key_range(rows::seq_key(conversation_id, after + 1), rows::seq_key(conversation_id, until + 1));
        let mut count = 0;
        for entry in self.state.store.range(Space::Deleted, range.0, range.1, false) {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    pub fn members(&self, caller: &Caller, conversation_id: &str) -> Result<Vec<api::Member>> {
        let handle = self.member_conversation(caller, conversation_id)?;
        let conversation = handle.state.read();
        let mut members: Vec<api::Member> = conversation
            .current_members()
            .map(|(user_id, member)| api::Member {
                user_id: user_id.clone(),
                role: member.role.expect("current members have a role"),
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
        // Read each partition's applied end first: events below it are all in the store.
        let applied_ends: Vec<u64> = self.partitions.iter().map(|partition| partition.applied_end()).collect();
        let mut by_partition: Vec<Vec<(String, UserConversationRow)>> = vec![Vec::new(); partition_count as usize];
        for (conversation_id, row) in self.state.user_conversations(&caller.user_id)? {
            let partition = self.state.partition_of(&conversation_id) as usize;
            by_partition[partition].push((conversation_id, row));
        }
        let mut streams = Vec::with_capacity(partition_count as usize);
        for (partition, conversations) in by_partition.into_iter().enumerate() {
            let window = (start.positions[partition], applied_ends[partition]);
            streams.push(self.partition_stream(partition as u32, conversations, window, limit + 1)?);
        }
        Ok(merge_streams(streams, start, &applied_ends, limit))
    }

    /// Up to `max` events of one partition in `[from, until)`, ascending.
    fn partition_stream(
        &self,
        partition: u32,
        conversations: Vec<(String, UserConversationRow)>,
        (from, until): (Position, u64),
        max: usize,
    ) -> Result<Vec<StreamEvent>> {
        let mut sources: Vec<Source<'_>> = Vec::new();
        for (conversation_id, row) in conversations {
            // Only the part of the window the caller was a member in.
            let first = row.intervals.first().map_or(u64::MAX, |interval| interval.0);
            let last = row.intervals.last().and_then(|interval| interval.1).map_or(u64::MAX, |until| until.saturating_add(1));
            let low = if first > from.offset { Position::at(first) } else { from };
            let high = until.min(last);
            if low.offset >= high {
                continue;
            }
            let range = || key_range(rows::position_key(&conversation_id, low.offset, low.skip), rows::position_key(&conversation_id, high, 0));
            let joined_from = self.joined_from(&conversation_id, &row.intervals)?;
            for space in [Space::Events, Space::Receipts] {
                let (start, end) = range();
                let rows = self.state.store.range(space, start, end, false);
                sources.push(Source {
                    conversation_id: conversation_id.clone(),
                    intervals: row.intervals.clone(),
                    joined_from: joined_from.clone(),
                    space,
                    rows,
                    next: None,
                });
            }
        }
        let mut heap = BinaryHeap::new();
        for (index, source) in sources.iter_mut().enumerate() {
            if let Some(position) = source.advance()? {
                heap.push(Reverse((position, index)));
            }
        }
        let mut stream = Vec::new();
        while stream.len() < max {
            let Some(Reverse((_, index))) = heap.pop() else { break };
            let source = &mut sources[index];
            let (offset, event_index, value) = source.next.take().expect("a source in the heap holds its next row");
            // In a membership that has ended, a message is shown as it was
            // then (from its own record), never in its current state: a
            // later edit is after the member left.
            if source.space == Space::Events && !source.may_see(offset, &value)? {
                if let Some(position) = source.advance()? {
                    heap.push(Reverse((position, index)));
                }
                continue;
            }
            let rendered = if source.space == Space::Events && rows::within_closed(&source.intervals, offset) {
                self.render_as_it_was(&source.conversation_id, partition, offset, &value)?
            } else {
                Some(self.render_row(&source.conversation_id, source.space, &value)?)
            };
            if let Some((ts, event)) = rendered {
                stream.push(StreamEvent { offset, index: event_index, ts, event });
            }
            if let Some(position) = source.advance()? {
                heap.push(Reverse((position, index)));
            }
        }
        Ok(stream)
    }

    /// A message event of an ended membership as it was at its own record:
    /// the body it was sent or edited with, read back from the log. `None`
    /// when the log no longer holds the record (retention): then the event
    /// is left out rather than shown in a later state.
    fn render_as_it_was(&self, conversation_id: &str, partition: u32, offset: u64, value: &[u8]) -> Result<Option<(i64, ClientEvent)>> {
        let row = EventRow::decode(value).ok_or_else(|| rows::corrupt(Space::Events, "event"))?;
        let seq = match &row.kind {
            EventKind::MessageNew { seq } | EventKind::MessageEdit { seq } => *seq,
            EventKind::MessageDelete { .. } | EventKind::Member { .. } | EventKind::MediaUpdate { .. } => {
                return self.render_row(conversation_id, Space::Events, value).map(Some)
            }
        };
        let record = match self.log.read(partition, offset, 1, usize::MAX) {
            Ok(records) => records.into_iter().next().filter(|record| record.offset == offset),
            Err(_) => None,
        };
        let Some(record) = record else { return Ok(None) };
        let Ok(event) = confab_schemas::events::LogEvent::decode(&record.payload) else { return Ok(None) };
        let handle = self.state.conversation(conversation_id)?.ok_or(Error::StateFailed)?;
        let Some(current) = self.state.message(&handle, seq)? else { return Ok(None) };
        if current.deleted {
            // Deleted (or erased) since: never bring the body back.
            return self.render_row(conversation_id, Space::Events, value).map(Some);
        }
        let mut then = current.clone();
        then.deleted = false;
        let event = match (&row.kind, event) {
            (EventKind::MessageNew { .. }, confab_schemas::events::LogEvent::MessageCreated { body, attachments, .. }) => {
                then.body = body;
                then.attachments = attachments;
                then.edited = false;
                ClientEvent::MessageNew { message: render_message(conversation_id, seq, &then) }
            }
            (EventKind::MessageEdit { .. }, confab_schemas::events::LogEvent::MessageEdited { body, .. }) => {
                then.body = body;
                then.edited = true;
                ClientEvent::MessageEdit { message: render_message(conversation_id, seq, &then) }
            }
            _ => return Ok(None),
        };
        Ok(Some((row.ts, event)))
    }

    fn render_row(&self, conversation_id: &str, space: Space, value: &[u8]) -> Result<(i64, ClientEvent)> {
        if space == Space::Receipts {
            let row = ReceiptRow::decode(value).ok_or_else(|| rows::corrupt(space, "receipt"))?;
            return Ok((row.ts, render_receipt(conversation_id, &row)));
        }
        let row = EventRow::decode(value).ok_or_else(|| rows::corrupt(space, "event"))?;
        let message = |seq: u64| -> Result<MessageRow> {
            let handle = self.state.conversation(conversation_id)?.ok_or(Error::StateFailed)?;
            self.state.message(&handle, seq)?.ok_or(Error::StateFailed)
        };
        let conversation_id = conversation_id.to_string();
        let event = match row.kind {
            EventKind::MessageNew { seq } => ClientEvent::MessageNew { message: render_message(&conversation_id, seq, &message(seq)?) },
            EventKind::MessageEdit { seq } => ClientEvent::MessageEdit { message: render_message(&conversation_id, seq, &message(seq)?) },
            EventKind::MessageDelete { seq } => ClientEvent::MessageDelete { message_id: message(seq)?.message_id, conversation_id, seq },
            EventKind::Member { user_id, change } => ClientEvent::ConversationMember { conversation_id, user_id, change },
            EventKind::MediaUpdate { seq, media_id } => crate::apply::media_update(&conversation_id, &message(seq)?, &media_id),
        };
        Ok((row.ts, event))
    }
}

/// One conversation's rows of one space, read lazily for the merge.
struct Source<'a> {
    conversation_id: String,
    intervals: rows::Intervals,
    /// In a `joined` conversation, per membership interval (by its start
    /// offset), the first seq sent during it: edits and deletes of older
    /// messages are not the member's to see.
    joined_from: Option<Vec<(u64, u64)>>,
    space: Space,
    rows: RangeIter<'a>,
    next: Option<(u64, u32, Vec<u8>)>,
}

impl Source<'_> {
    /// Whether the member may see this events row: in a `joined`
    /// conversation, an edit or delete only of a message sent while they
    /// were a member.
    fn may_see(&self, offset: u64, value: &[u8]) -> Result<bool> {
        let Some(joined_from) = &self.joined_from else { return Ok(true) };
        let row = EventRow::decode(value).ok_or_else(|| rows::corrupt(Space::Events, "event"))?;
        let seq = match row.kind {
            EventKind::MessageEdit { seq } | EventKind::MessageDelete { seq } | EventKind::MediaUpdate { seq, .. } => seq,
            EventKind::MessageNew { .. } | EventKind::Member { .. } => return Ok(true),
        };
        // The interval holding this offset: the last one starting at or before it.
        let first_seq = joined_from.iter().rev().find(|(start, _)| *start <= offset).map_or(u64::MAX, |(_, first_seq)| *first_seq);
        Ok(seq >= first_seq)
    }

    /// Reads the next row the member may see; returns its position.
    fn advance(&mut self) -> Result<Option<(u64, u32)>> {
        for entry in self.rows.by_ref() {
            let (key, value) = entry?;
            let (offset, index) = rows::position_of(&key).ok_or_else(|| rows::corrupt(self.space, "position key"))?;
            if rows::within(&self.intervals, offset) {
                self.next = Some((offset, index, value));
                return Ok(Some((offset, index)));
            }
        }
        Ok(None)
    }
}

pub(crate) fn device_positions(member: &MemberRow) -> Vec<api::DevicePositions> {
    let mut devices: Vec<api::DevicePositions> = member
        .devices
        .iter()
        .map(|device| api::DevicePositions { device_id: device.device_id.clone(), last_delivered_seq: device.delivered_seq, last_read_seq: device.read_seq })
        .collect();
    devices.sort_by(|left, right| left.device_id.cmp(&right.device_id));
    devices
}

pub(crate) fn render_message(conversation_id: &str, seq: u64, message: &MessageRow) -> api::Message {
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
        mentions: message.mentions.clone(),
    }
}

/// The events of one record, read back from the store (for a fanout that
/// fell behind the kept outcomes).
pub(crate) fn stored_record_events(ingest: &Ingest, handle: &ConversationHandle, offset: u64) -> Result<Vec<ClientEvent>> {
    let conversation_id = handle.state.read().conversation_id.clone();
    let mut events: Vec<(u32, ClientEvent)> = Vec::new();
    for space in [Space::Events, Space::Receipts] {
        let (start, end) = prefix_range(&rows::record_prefix(&conversation_id, offset));
        for entry in ingest.state.store.range(space, start, end, false) {
            let (key, value) = entry?;
            let (_, index) = rows::position_of(&key).ok_or_else(|| rows::corrupt(space, "position key"))?;
            events.push((index, ingest.render_row(&conversation_id, space, &value)?.1));
        }
    }
    events.sort_by_key(|(index, _)| *index);
    Ok(events.into_iter().map(|(_, event)| event).collect())
}

/// One event of a partition's stream: the `index`-th event of record `offset`.
#[derive(Debug, Clone)]
struct StreamEvent {
    offset: u64,
    index: u32,
    ts: i64,
    event: ClientEvent,
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
