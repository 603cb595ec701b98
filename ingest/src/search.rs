//! What search needs of the state: the messages to index (their current
//! text), who may read which conversation now, and the found messages
//! rendered as a history page renders them.
//!
//! The index only narrows: every message it finds is checked here again
//! (the caller is a member now, the message is within what they may read,
//! it is not deleted) before anyone sees it, so an index that lags the
//! state by a moment can show fewer results, never a forbidden one.

use std::collections::HashMap;
use std::sync::Arc;

use confab_schemas::api;
use confab_schemas::events::HistoryVisibility;

use crate::commands::{Caller, Ingest};
use crate::queries::render_message;
use crate::rows::{self, MessageRow};
use crate::state::ConversationHandle;
use crate::store::{key_range, Space};
use crate::Result;

/// A message as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchableMessage {
    pub message_id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub sender_id: String,
    pub ts: i64,
    pub body: String,
    pub has_attachments: bool,
}

/// A conversation the caller may search, from `from_seq` on (1 unless
/// its history is `joined`: then the first message of the caller's
/// current membership).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadableConversation {
    pub conversation_id: String,
    pub from_seq: u64,
}

impl SearchableMessage {
    fn of(conversation_id: &str, seq: u64, row: MessageRow) -> SearchableMessage {
        SearchableMessage {
            has_attachments: !row.attachments.is_empty(),
            message_id: row.message_id,
            conversation_id: conversation_id.to_string(),
            seq,
            sender_id: row.sender_id,
            ts: row.ts,
            body: row.body,
        }
    }
}

impl Ingest {
    /// The message in its current state, or `None` once deleted (or never applied).
    pub fn searchable_message(&self, conversation_id: &str, seq: u64) -> Result<Option<SearchableMessage>> {
        let Some(handle) = self.state.conversation(conversation_id)? else { return Ok(None) };
        let row = self.state.message(&handle, seq)?;
        Ok(row.filter(|row| !row.deleted).map(|row| SearchableMessage::of(conversation_id, seq, row)))
    }

    /// Up to `limit` messages of a conversation with `seq > after`, ascending, deleted ones left out; and the last seq read (for the next page).
    pub fn searchable_messages(&self, conversation_id: &str, after: u64, limit: usize) -> Result<(Vec<SearchableMessage>, Option<u64>)> {
        let (start, end) = key_range(rows::seq_key(conversation_id, after.saturating_add(1)), rows::seq_key(conversation_id, u64::MAX));
        let mut messages = Vec::new();
        let mut last = None;
        for entry in self.state.store.range(Space::Messages, start, end, false).take(limit) {
            let (key, value) = entry?;
            let seq = rows::seq_of(&key).ok_or_else(|| rows::corrupt(Space::Messages, "message key"))?;
            let row = MessageRow::decode(&value).ok_or_else(|| rows::corrupt(Space::Messages, "message"))?;
            last = Some(seq);
            if !row.deleted {
                messages.push(SearchableMessage::of(conversation_id, seq, row));
            }
        }
        Ok((messages, last))
    }

    /// What the caller may search now: one conversation (403 unless a
    /// member, 404 if unknown), or every conversation they are a member of.
    pub fn search_scope(&self, caller: &Caller, conversation_id: Option<&str>) -> Result<Vec<ReadableConversation>> {
        let ids: Vec<String> = match conversation_id {
            Some(conversation_id) => {
                self.member_conversation(caller, conversation_id)?;
                vec![conversation_id.to_string()]
            }
            None => self.state.user_conversations(&caller.user_id)?.into_iter().filter(|(_, row)| row.current()).map(|(id, _)| id).collect(),
        };
        let mut scope = Vec::with_capacity(ids.len());
        for conversation_id in ids {
            let Some(handle) = self.state.conversation(&conversation_id)? else { continue };
            if let Some(from_seq) = self.readable_from(&handle, &caller.user_id, &conversation_id)? {
                scope.push(ReadableConversation { conversation_id, from_seq });
            }
        }
        Ok(scope)
    }

    /// The first seq `user_id` may read in the conversation now, or `None` if they are not a member.
    fn readable_from(&self, handle: &ConversationHandle, user_id: &str, conversation_id: &str) -> Result<Option<u64>> {
        let (visibility, intervals, last_seq) = {
            let conversation = handle.state.read();
            let Some(member) = conversation.member(user_id) else { return Ok(None) };
            (conversation.history_visibility, member.intervals.clone(), conversation.last_seq)
        };
        Ok(Some(match visibility {
            HistoryVisibility::Shared => 1,
            HistoryVisibility::Joined => self.visible_seqs(conversation_id, &intervals, last_seq)?.first().map_or(last_seq + 1, |&(low, _)| low),
        }))
    }

    /// The found messages the caller may read now, in the order given;
    /// the others (deleted, outside what they may read, in a conversation
    /// they left) are left out.
    pub fn readable_messages(&self, caller: &Caller, found: &[(String, u64)]) -> Result<Vec<api::Message>> {
        // Per conversation: its handle and the first seq the caller may read (`None`: nothing).
        let mut readable: HashMap<&str, Option<(Arc<ConversationHandle>, u64)>> = HashMap::new();
        let mut messages = Vec::with_capacity(found.len());
        for (conversation_id, seq) in found {
            if !readable.contains_key(conversation_id.as_str()) {
                let entry = match self.state.conversation(conversation_id)? {
                    Some(handle) => self.readable_from(&handle, &caller.user_id, conversation_id)?.map(|from| (handle, from)),
                    None => None,
                };
                readable.insert(conversation_id, entry);
            }
            let Some((handle, from)) = &readable[conversation_id.as_str()] else { continue };
            if *seq < *from {
                continue;
            }
            if let Some(row) = self.state.message(handle, *seq)?.filter(|row| !row.deleted) {
                messages.push(render_message(conversation_id, *seq, &row));
            }
        }
        Ok(messages)
    }

    /// The user with this username, if any.
    pub fn user_id_by_name(&self, username: &str) -> Result<Option<String>> {
        Ok(self.state.user_id_by_name(username)?)
    }
}
