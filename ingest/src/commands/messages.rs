//! Messages: send (split in two so a socket can keep many in flight), the
//! idempotency of retries, edit, delete, and read cursors.
//!
//! A send's `(sender, clientMsgId)` is looked up first among the sends in
//! flight (reservations, in memory until their message is applied), then
//! in the store, where keys are kept for `idempotency_window_secs`. The
//! reservation's entry lock covers the store lookup and the reservation,
//! so two sends with one key cannot both create a message.

use std::sync::Arc;

use confab_log::AppendTicket;
use confab_schemas::api;
use confab_schemas::events::{ConversationType, LogEvent, MemberRole};
use confab_schemas::ids::{new_id, now_ms};
use confab_telemetry::{Kind, Span};
use dashmap::mapref::entry::Entry;
use serde_json::Value;
use tokio::sync::watch;

use crate::commands::{Caller, Ingest, NewMessage};
use crate::queries::render_message;
use crate::state::{ConversationHandle, Reservation, SendOutcome};
use crate::{Error, Result};

/// A send that holds its place in its conversation's order: appended (or
/// found to be a retry), not yet durable.
#[derive(Debug)]
pub struct PendingSend {
    inner: Pending,
}

#[derive(Debug)]
enum Pending {
    Appended {
        ticket: AppendTicket,
        handle: Arc<ConversationHandle>,
        seq: u64,
        key: (String, String),
        reservation: Arc<Reservation>,
        /// `log.append`: from the append until the record is durable.
        append_span: Span,
    },
    /// A retry whose original is still in flight.
    InFlight { client_msg_id: String, reservation: Arc<Reservation> },
    /// A retry whose original is in the store.
    Stored { conversation_id: String, seq: u64 },
}

impl Ingest {
    /// Sends a message; a retry with the same `clientMsgId` returns the
    /// original (with `false`) instead of creating a second one.
    pub async fn send_message(&self, caller: &Caller, request: NewMessage) -> Result<(api::Message, bool)> {
        let pending = self.begin_send(caller, request).await?;
        self.finish_send(pending).await
    }

    /// Validates, takes the seq and appends, in call order: sends begun one
    /// after another get seqs in that order.
    pub async fn begin_send(&self, caller: &Caller, request: NewMessage) -> Result<PendingSend> {
        self.check_body(&request.body, !request.attachments.is_empty())?;
        check_client_msg_id(&request.client_msg_id, self.limits.client_msg_id_max_bytes)?;
        self.check_attachments(&request.attachments)?;
        let partition = self.partition_of(&request.conversation_id);
        let _writer = partition.writer.lock().await;
        self.check_writable()?;
        let pin = self.pinned_conversation(&request.conversation_id)?;
        let dm_peer = {
            let conversation = pin.0.state.read();
            if !conversation.is_member(&caller.user_id) {
                return Err(Error::NotMember(request.conversation_id.clone()));
            }
            match conversation.conversation_type {
                ConversationType::Dm => conversation.current_members().map(|(user_id, _)| user_id.clone()).find(|user_id| *user_id != caller.user_id),
                _ => None,
            }
        };
        // In a dm, someone the other member blocked cannot write.
        if let Some(peer) = dm_peer {
            if self.state.is_blocked(&peer, &caller.user_id)? {
                return Err(Error::Blocked(format!("user `{peer}` blocked you: your messages in this dm are refused")));
            }
        }
        let key = (caller.user_id.clone(), request.client_msg_id.clone());
        let seq = pin.0.assigned_seq.load(std::sync::atomic::Ordering::Acquire) + 1;
        let reservation = match self.state.sending.entry(key.clone()) {
            Entry::Occupied(existing) => {
                let reservation = existing.get().clone();
                return match reservation.conversation_id == request.conversation_id {
                    true => Ok(PendingSend { inner: Pending::InFlight { client_msg_id: request.client_msg_id, reservation } }),
                    false => Err(Error::ClientMsgIdReused { client_msg_id: request.client_msg_id, conversation_id: reservation.conversation_id.clone() }),
                };
            }
            Entry::Vacant(vacant) => match self.state.idempotency(&caller.user_id, &request.client_msg_id, now_ms())? {
                Some(row) if row.conversation_id != request.conversation_id => {
                    return Err(Error::ClientMsgIdReused { client_msg_id: request.client_msg_id, conversation_id: row.conversation_id });
                }
                Some(row) => return Ok(PendingSend { inner: Pending::Stored { conversation_id: row.conversation_id, seq: row.seq } }),
                None => {
                    let reservation =
                        Arc::new(Reservation { conversation_id: request.conversation_id.clone(), seq, outcome: watch::channel(SendOutcome::InFlight).0 });
                    vacant.insert(reservation.clone());
                    reservation
                }
            },
        };
        let attachments = match self.resolve_attachments(caller, &request.conversation_id, request.attachments) {
            Ok(attachments) => attachments,
            Err(error) => {
                self.release_failed(&key, &reservation);
                return Err(error);
            }
        };
        let mentions = self.mentions_in(&pin.0, &request.body);
        let ts = now_ms();
        let event = LogEvent::MessageCreated {
            message_id: new_id("m", ts),
            conversation_id: request.conversation_id,
            seq,
            sender_id: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
            client_msg_id: request.client_msg_id,
            body: request.body,
            attachments,
            ts,
            mentions,
            trace: request.trace,
        };
        let handle = pin.0.clone();
        let mut append_span = Span::child("log.append", Kind::Internal, request.trace);
        match partition.append(&*self.log, vec![event], Some(pin)) {
            Ok(ticket) => {
                handle.assigned_seq.store(seq, std::sync::atomic::Ordering::Release);
                append_span.attr("confab.partition", partition.id as i64);
                append_span.attr("confab.offset", ticket.first_offset as i64);
                append_span.attr("confab.seq", seq as i64);
                Ok(PendingSend { inner: Pending::Appended { ticket, handle, seq, key, reservation, append_span } })
            }
            Err(error) => {
                self.release_failed(&key, &reservation);
                Err(error)
            }
        }
    }

    /// Waits until the message is durable and applied; `true` when it was
    /// created (false: a retry, answered with its original).
    pub async fn finish_send(&self, pending: PendingSend) -> Result<(api::Message, bool)> {
        match pending.inner {
            Pending::Appended { ticket, handle, seq, key, reservation, append_span } => {
                let partition = &self.partitions[handle.partition as usize];
                if let Err(error) = partition.finish_traced(&*self.log, &self.state, ticket, append_span).await {
                    self.release_failed(&key, &reservation);
                    return Err(error);
                }
                Ok((self.render_sent(&handle, seq)?, true))
            }
            Pending::InFlight { client_msg_id, reservation } => {
                let mut outcome = reservation.outcome.subscribe();
                let settled = tokio::time::timeout(self.state.config.in_flight_wait_max(), outcome.wait_for(|outcome| *outcome != SendOutcome::InFlight)).await;
                match settled {
                    Ok(Ok(outcome)) if *outcome == SendOutcome::Applied => {}
                    _ => return Err(Error::OriginalSendFailed(client_msg_id)),
                }
                let handle = self.state.conversation(&reservation.conversation_id)?.ok_or(Error::StateFailed)?;
                Ok((self.render_sent(&handle, reservation.seq)?, false))
            }
            Pending::Stored { conversation_id, seq } => {
                let handle = self.state.conversation(&conversation_id)?.ok_or(Error::StateFailed)?;
                Ok((self.render_sent(&handle, seq)?, false))
            }
        }
    }

    fn render_sent(&self, handle: &ConversationHandle, seq: u64) -> Result<api::Message> {
        let conversation_id = handle.state.read().conversation_id.clone();
        let message = self.state.message(handle, seq)?.ok_or(Error::StateFailed)?;
        Ok(render_message(&conversation_id, seq, &message))
    }

    /// Who `body` mentions among the conversation's members (see `mentions`).
    fn mentions_in(&self, handle: &ConversationHandle, body: &str) -> confab_schemas::events::Mentions {
        crate::mentions::resolve(body, |name| {
            let user_id = self.state.user_id_by_name(name).ok().flatten()?;
            handle.state.read().is_member(&user_id).then_some(user_id)
        })
    }

    /// Forgets a reservation whose send failed and tells its waiting retries.
    fn release_failed(&self, key: &(String, String), reservation: &Arc<Reservation>) {
        self.state.sending.remove_if(key, |_, current| Arc::ptr_eq(current, reservation));
        reservation.outcome.send_replace(SendOutcome::Failed);
    }

    pub async fn edit_message(&self, caller: &Caller, message_id: &str, body: String) -> Result<api::Message> {
        self.check_body(&body, false)?;
        let (conversation_id, seq) = self.member_message(caller, message_id)?;
        let partition = self.partition_of(&conversation_id);
        let _writer = partition.writer.lock().await;
        let pin = self.pinned_conversation(&conversation_id)?;
        {
            let conversation = pin.0.state.read();
            // Checked again under the lock: a removal may have landed since.
            if !conversation.is_member(&caller.user_id) {
                return Err(Error::MessageNotFound(message_id.to_string()));
            }
        }
        let message = self.state.message(&pin.0, seq)?.ok_or_else(|| Error::MessageNotFound(message_id.to_string()))?;
        if message.sender_id != caller.user_id {
            return Err(Error::NotAllowed { action: "editing a message", conversation_id, allowed: "its sender" });
        }
        if message.deleted {
            return Err(Error::MessageDeleted(message_id.to_string()));
        }
        let mentions = self.mentions_in(&pin.0, &body);
        let event = LogEvent::MessageEdited {
            message_id: message_id.to_string(),
            conversation_id: conversation_id.clone(),
            seq,
            body,
            mentions,
            sender_id: Some(message.sender_id),
            by: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
            ts: now_ms(),
        };
        let handle = pin.0.clone();
        self.commit_locked(partition, vec![event], Some(pin)).await?;
        self.render_sent(&handle, seq)
    }

    /// Deletes a message (its sender or a conversation admin). Deleting a
    /// deleted message succeeds and changes nothing.
    /// Deletes a message (its sender or a conversation admin). Returns the
    /// uploads it carried that no message carries any more, whose files the
    /// media layer then removes.
    pub async fn delete_message(&self, caller: &Caller, message_id: &str) -> Result<Vec<String>> {
        let (conversation_id, seq) = self.member_message(caller, message_id)?;
        let partition = self.partition_of(&conversation_id);
        let _writer = partition.writer.lock().await;
        let pin = self.pinned_conversation(&conversation_id)?;
        let is_admin = {
            let conversation = pin.0.state.read();
            let Some(member) = conversation.member(&caller.user_id) else {
                return Err(Error::MessageNotFound(message_id.to_string()));
            };
            member.role == Some(MemberRole::Admin)
        };
        let message = self.state.message(&pin.0, seq)?.ok_or_else(|| Error::MessageNotFound(message_id.to_string()))?;
        if message.sender_id != caller.user_id && !is_admin {
            return Err(Error::NotAllowed { action: "deleting a message", conversation_id, allowed: "its sender and conversation admins" });
        }
        if message.deleted {
            return Ok(Vec::new());
        }
        let carried: Vec<String> = crate::rows::media_ids(&message.attachments).map(str::to_string).collect();
        let event = LogEvent::MessageDeleted {
            message_id: message_id.to_string(),
            conversation_id,
            seq,
            sender_id: Some(message.sender_id),
            by: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
            ts: now_ms(),
        };
        self.commit_locked(partition, vec![event], Some(pin)).await?;
        self.uncarried(carried)
    }

    /// A message the caller may see: its conversation and seq.
    /// The conversation of a message the caller can see (for per-conversation
    /// limits, before an edit or delete); `MessageNotFound` otherwise.
    pub fn message_conversation(&self, caller: &Caller, message_id: &str) -> Result<String> {
        self.member_message(caller, message_id).map(|(conversation_id, _)| conversation_id)
    }

    fn member_message(&self, caller: &Caller, message_id: &str) -> Result<(String, u64)> {
        let Some(message_ref) = self.state.message_ref(message_id)? else {
            return Err(Error::MessageNotFound(message_id.to_string()));
        };
        self.member_conversation(caller, &message_ref.conversation_id).map_err(|error| match error {
            // Whether a message exists is not told to non-members.
            Error::NotMember(_) => Error::MessageNotFound(message_id.to_string()),
            other => other,
        })?;
        Ok((message_ref.conversation_id, message_ref.seq))
    }

    /// Moves the caller's read cursor forward to a message (never back).
    pub async fn mark_read(&self, caller: &Caller, conversation_id: &str, message_id: &str) -> Result<()> {
        self.member_conversation(caller, conversation_id)?;
        let seq = match self.state.message_ref(message_id)? {
            Some(message_ref) if message_ref.conversation_id == conversation_id => message_ref.seq,
            _ => return Err(Error::invalid("lastReadMessageId", format!("message `{message_id}` is not in conversation `{conversation_id}`"))),
        };
        self.move_read_cursor(caller, conversation_id, seq).await
    }

    pub(crate) async fn move_read_cursor(&self, caller: &Caller, conversation_id: &str, seq: u64) -> Result<()> {
        let partition = self.partition_of(conversation_id);
        let ticket = {
            let _writer = partition.writer.lock().await;
            self.check_writable()?;
            let pin = self.pinned_conversation(conversation_id)?;
            let current = pin.0.state.read().member(&caller.user_id).map(|member| member.last_read_seq);
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
            partition.append(&*self.log, vec![event], Some(pin))?
        };
        partition.finish(&*self.log, &self.state, ticket).await
    }

    /// A message with attachments may have an empty body.
    fn check_body(&self, body: &str, has_attachments: bool) -> Result<()> {
        if body.is_empty() && !has_attachments {
            return Err(Error::invalid("body", "must not be empty"));
        }
        if body.len() > self.limits.body_max_bytes {
            return Err(Error::TooLarge { field: "body", size: body.len(), max: self.limits.body_max_bytes });
        }
        Ok(())
    }

    fn check_attachments(&self, attachments: &[Value]) -> Result<()> {
        if attachments.len() > self.limits.attachments_max_count {
            return Err(Error::TooMany { field: "attachments", count: attachments.len(), max: self.limits.attachments_max_count });
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
