//! Retention and erasure as the history layer's own operations, so that the
//! HTTP routes and (later) the retention workflow call the same thing.
//!
//! One run, on the happy path:
//!
//! 1. The request is written to the audit log (`retention.delete`,
//!    `erasure.request`): audit before action.
//! 2. [`HistoryMaintenance`] checks the legal holds, deletes the messages
//!    in the live store through the [`LiveMessages`] port (they read as
//!    deleted, devices are told), then deletes or blanks the history rows
//!    and vacuums.
//! 3. The outcome is audited (`retention.deleted`, `erasure.done`).
//!
//! A hold refuses the run after its request is audited, with nothing
//! deleted. A failure of the live store or the history leaves the request
//! audited and no outcome row; the run is idempotent, so it can be retried.
//! The binary implements the port over the state (`src/wiring.rs`), so the
//! history does not depend on the state crate.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use crate::{Error, HistoryMaintenance, Outcome, Result};

/// Who runs an operation: an account and its device (for the deletions the
/// devices are told about), or a scheduled job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    pub device_id: String,
}

/// What to delete in the live store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every message the user sent, everywhere (erasure).
    SentBy(&'a str),
    /// The conversation's messages sent before a time (retention).
    ConversationBefore { conversation_id: &'a str, before_ms: i64 },
}

/// The live store and the audit log, as retention and erasure use them.
#[async_trait]
pub trait LiveMessages: Send + Sync {
    /// Deletes the messages of `scope` (as their senders' deletes do);
    /// returns how many.
    async fn delete(&self, actor: &Actor, scope: Scope<'_>) -> std::result::Result<u64, String>;
    /// Writes one audit row.
    async fn audit(&self, actor_id: &str, action: &str, details: String) -> std::result::Result<(), String>;
}

/// Retention and erasure of messages, live and in the history.
pub struct Compliance {
    maintenance: Arc<HistoryMaintenance>,
    live: Arc<dyn LiveMessages>,
}

impl Compliance {
    pub fn new(maintenance: Arc<HistoryMaintenance>, live: Arc<dyn LiveMessages>) -> Compliance {
        Compliance { maintenance, live }
    }

    pub fn maintenance(&self) -> &Arc<HistoryMaintenance> {
        &self.maintenance
    }

    async fn audit(&self, actor: &Actor, action: &str, details: serde_json::Value) -> Result<()> {
        self.live.audit(&actor.user_id, action, details.to_string()).await.map_err(Error::AuditUnavailable)
    }

    /// Deletes a conversation's messages sent before `before_ms`, live and
    /// in the history, unless a legal hold covers them.
    pub async fn apply_retention(&self, actor: &Actor, conversation_id: &str, before_ms: i64) -> Result<Outcome> {
        self.audit(actor, "retention.delete", json!({"conversationId": conversation_id, "before": before_ms})).await?;
        let scope = Scope::ConversationBefore { conversation_id, before_ms };
        let live = self.live.delete(actor, scope);
        let outcome = self.maintenance.delete_conversation_before(conversation_id, before_ms, live).await?;
        self.audit(actor, "retention.deleted", json!({"conversationId": conversation_id, "before": before_ms, "outcome": outcome})).await?;
        Ok(outcome)
    }

    /// Deletes every message a user sent and blanks their bodies in the
    /// history, unless a legal hold covers them.
    pub async fn erase_user(&self, actor: &Actor, user_id: &str) -> Result<Outcome> {
        self.audit(actor, "erasure.request", json!({"userId": user_id})).await?;
        let live = self.live.delete(actor, Scope::SentBy(user_id));
        let outcome = self.maintenance.erase_user_bodies(user_id, live).await?;
        self.audit(actor, "erasure.done", json!({"userId": user_id, "outcome": outcome})).await?;
        Ok(outcome)
    }
}
