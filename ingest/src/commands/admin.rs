//! Administration: roles, the audit trail, and the live side of retention
//! and erasure (deleting messages in the state, then purging the store so
//! their bodies leave its files).

use std::ops::Bound;

use confab_schemas::events::{AccountRole, LogEvent};
use confab_schemas::ids::now_ms;

use crate::commands::{Caller, Ingest};
use crate::rows::{self, MessageRow};
use crate::store::{prefix_range, Space};
use crate::{Error, Result};

/// Which live messages a compliance deletion takes.
#[derive(Debug, Clone, Copy)]
pub enum ComplianceScope<'a> {
    /// Every message the user sent, everywhere (erasure).
    SentBy(&'a str),
    /// The conversation's messages sent before a time (retention).
    ConversationBefore { conversation_id: &'a str, before_ms: i64 },
}

impl ComplianceScope<'_> {
    fn takes(&self, message: &MessageRow) -> bool {
        !message.deleted
            && match self {
                ComplianceScope::SentBy(user_id) => message.sender_id == *user_id,
                ComplianceScope::ConversationBefore { before_ms, .. } => message.ts < *before_ms,
            }
    }
}

/// What a compliance deletion did in the live state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComplianceDeletion {
    pub messages: u64,
    /// Uploads that no message carries any more (their files are the
    /// media layer's to delete): those of the deleted messages, and for an
    /// erasure every upload of the user.
    pub released_media: Vec<String>,
}

/// Deletes appended at once by a compliance deletion.
const COMPLIANCE_DELETES_PER_APPEND: usize = 1_000;

impl Ingest {
    /// `NotAdmin` unless the caller holds the `admin` role.
    pub fn require_admin(&self, caller: &Caller) -> Result<()> {
        if self.has_role(&caller.user_id, AccountRole::Admin)? {
            Ok(())
        } else {
            Err(Error::NotAdmin)
        }
    }

    /// Gives `user_id` a role; administrators only. Recorded in the audit log.
    pub async fn grant_role(&self, caller: &Caller, user_id: &str, role: AccountRole) -> Result<()> {
        self.require_admin(caller)?;
        if self.user(user_id)?.is_none() {
            return Err(Error::invalid("userId", format!("user `{user_id}` does not exist")));
        }
        let ts = now_ms();
        let role_name = match role {
            AccountRole::Admin => "admin",
            AccountRole::Compliance => "compliance",
        };
        let details = serde_json::json!({"userId": user_id, "role": role_name}).to_string();
        let event = LogEvent::RoleGranted { user_id: user_id.to_string(), role, by: caller.user_id.clone(), ts };
        self.commit(self.partition_of(user_id), vec![event], None).await?;
        self.record_audit(&caller.user_id, "role.grant", details).await
    }

    /// Takes a role back; administrators only. Audited before it is done.
    /// An administrator cannot take their own `admin` role (someone must
    /// keep it); revoking a role the user does not hold is a no-op.
    pub async fn revoke_role(&self, caller: &Caller, user_id: &str, role: AccountRole) -> Result<()> {
        self.require_admin(caller)?;
        if self.user(user_id)?.is_none() {
            return Err(Error::invalid("userId", format!("user `{user_id}` does not exist")));
        }
        if role == AccountRole::Admin && user_id == caller.user_id {
            return Err(Error::invalid("role", "an administrator cannot revoke their own admin role; another administrator can".to_string()));
        }
        let role_name = match role {
            AccountRole::Admin => "admin",
            AccountRole::Compliance => "compliance",
        };
        let details = serde_json::json!({"userId": user_id, "role": role_name}).to_string();
        self.record_audit(&caller.user_id, "role.revoke", details).await?;
        let event = LogEvent::RoleRevoked { user_id: user_id.to_string(), role, by: caller.user_id.clone(), ts: now_ms() };
        self.commit(self.partition_of(user_id), vec![event], None).await
    }

    /// Another user's devices, for an administrator (`confab admin devices`).
    pub fn devices_for_admin(&self, caller: &Caller, user_id: &str) -> Result<Vec<std::sync::Arc<crate::state::Device>>> {
        self.require_admin(caller)?;
        if self.user(user_id)?.is_none() {
            return Err(Error::UserNotFound(user_id.to_string()));
        }
        self.devices(user_id)
    }

    /// Logs out one device of any user; administrators only. Audited before
    /// it is done (`device.logout`); once this returns, the device's tokens
    /// answer 401. The caller closes its sockets.
    pub async fn end_session_for_admin(&self, caller: &Caller, user_id: &str, device_id: &str) -> Result<()> {
        self.require_admin(caller)?;
        let owned = self.state.device(device_id)?.is_some_and(|device| device.user_id == user_id);
        if !owned {
            return Err(Error::DeviceNotFound(device_id.to_string()));
        }
        let details = serde_json::json!({"userId": user_id, "deviceId": device_id}).to_string();
        self.record_audit(&caller.user_id, "device.logout", details).await?;
        self.end_session(user_id, device_id, &caller.device_id).await
    }

    /// Writes an administrative or compliance action to the log, and so to
    /// the audit table.
    pub async fn record_audit(&self, actor_id: &str, action: &str, details: String) -> Result<()> {
        let event = LogEvent::Audited { actor_id: actor_id.to_string(), action: action.to_string(), details, ts: now_ms() };
        self.commit(self.partition_of(actor_id), vec![event], None).await
    }

    /// Deletes live messages for a compliance action (retention, erasure):
    /// each becomes `deleted` with an empty body, exactly as a delete by its
    /// sender, and devices are told with `message.delete`. No membership is
    /// needed: the caller's role was checked by the gateway. Then the store
    /// is purged, so the old bodies leave its files (the log keeps them
    /// until log retention removes their segments). Returns how many
    /// messages it deleted, and the uploads no message carries any more.
    pub async fn delete_for_compliance(&self, caller: &Caller, scope: ComplianceScope<'_>) -> Result<ComplianceDeletion> {
        let conversation_ids: Vec<String> = match scope {
            // A user can only have sent where they were a member once.
            ComplianceScope::SentBy(user_id) => self.state.user_conversations(user_id)?.into_iter().map(|(conversation_id, _)| conversation_id).collect(),
            ComplianceScope::ConversationBefore { conversation_id, .. } => vec![conversation_id.to_string()],
        };
        let mut deleted = 0u64;
        let mut carried = Vec::new();
        for conversation_id in conversation_ids {
            deleted += self.delete_in_conversation(caller, &conversation_id, scope, &mut carried).await?;
        }
        if deleted > 0 {
            self.purge_store().await?;
        }
        let released_media = match scope {
            // Erasure: every upload of the user goes, sent or not (a message
            // carries only its sender's own uploads, so these are all of the
            // deleted messages' too).
            ComplianceScope::SentBy(user_id) => self.state.uploads_of(user_id)?.into_iter().map(|(media_id, _)| media_id).collect(),
            ComplianceScope::ConversationBefore { .. } => self.uncarried(carried)?,
        };
        Ok(ComplianceDeletion { messages: deleted, released_media })
    }

    async fn delete_in_conversation(&self, caller: &Caller, conversation_id: &str, scope: ComplianceScope<'_>, carried: &mut Vec<String>) -> Result<u64> {
        let partition = self.partition_of(conversation_id);
        let _writer = partition.writer.lock().await;
        let Some(pin) = self.state.conversation_pinned(conversation_id)? else { return Ok(0) };
        let mut deleted = 0u64;
        let mut after = Bound::Unbounded;
        loop {
            // A chunk of matching messages at a time, from the store (every
            // applied message is committed there; the writer lock keeps new
            // edits and deletes out meanwhile).
            let (start, end) = prefix_range(&rows::conversation_prefix(conversation_id));
            let start = match &after {
                Bound::Unbounded => start,
                bound => bound.clone(),
            };
            let ts = now_ms();
            let mut events = Vec::new();
            let mut last_key = None;
            for entry in self.state.store.range(Space::Messages, start, end, false) {
                let (key, value) = entry?;
                let message = MessageRow::decode(&value).ok_or_else(|| rows::corrupt(Space::Messages, "message"))?;
                let seq = rows::seq_of(&key).ok_or_else(|| rows::corrupt(Space::Messages, "message key"))?;
                last_key = Some(key);
                if scope.takes(&message) {
                    carried.extend(rows::media_ids(&message.attachments).map(str::to_string));
                    events.push(LogEvent::MessageDeleted {
                        message_id: message.message_id,
                        conversation_id: conversation_id.to_string(),
                        seq,
                        sender_id: Some(message.sender_id),
                        by: caller.user_id.clone(),
                        device_id: caller.device_id.clone(),
                        ts,
                    });
                    if events.len() == COMPLIANCE_DELETES_PER_APPEND {
                        break;
                    }
                }
            }
            let Some(last_key) = last_key else { break };
            let full = events.len() == COMPLIANCE_DELETES_PER_APPEND;
            if !events.is_empty() {
                deleted += events.len() as u64;
                self.commit_locked(partition, events, Some(pin.clone())).await?;
            }
            if !full {
                break;
            }
            after = Bound::Excluded(last_key);
        }
        Ok(deleted)
    }

    /// Rewrites the store's files so that deleted bodies leave the disk.
    pub async fn purge_store(&self) -> Result<()> {
        let store = self.state.store.clone();
        let outcome = tokio::task::spawn_blocking(move || store.purge()).await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(Error::StateFailed),
        }
    }
}
