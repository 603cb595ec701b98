//! Retention and erasure as the history layer's own operations, so that the
//! HTTP routes and the retention workflow call the same thing; with the
//! retention policies ([`PolicyRegistry`]) and the plan of a scheduled run.
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

use crate::policies::{Policy, PolicyRegistry, RETENTION_DAYS_MAX};
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
    /// Every conversation's id (for the server's default retention).
    async fn conversations(&self) -> std::result::Result<Vec<String>, String>;
    /// Whether the conversation exists.
    async fn conversation_exists(&self, conversation_id: &str) -> std::result::Result<bool, String>;
}

/// One conversation a retention run deletes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedDeletion {
    pub conversation_id: String,
    /// Messages sent before this time go.
    pub before: i64,
    pub retention_days: u32,
}

/// Who runs scheduled retention, in the audit log and on deletions.
pub fn scheduler() -> Actor {
    Actor { user_id: "system:retention".to_string(), device_id: "system".to_string() }
}

/// Retention and erasure of messages, live and in the history.
pub struct Compliance {
    maintenance: Arc<HistoryMaintenance>,
    live: Arc<dyn LiveMessages>,
    policies: PolicyRegistry,
    default_retention_days: Option<u32>,
}

impl Compliance {
    pub fn new(maintenance: Arc<HistoryMaintenance>, live: Arc<dyn LiveMessages>, policies: PolicyRegistry, default_retention_days: Option<u32>) -> Compliance {
        Compliance { maintenance, live, policies, default_retention_days: default_retention_days.filter(|days| *days > 0) }
    }

    /// The server's default retention (`[history] default_retention_days`).
    pub fn default_retention_days(&self) -> Option<u32> {
        self.default_retention_days
    }

    /// The conversations' own retention policies.
    pub async fn policies(&self) -> Vec<Policy> {
        self.policies.current().await
    }

    /// Sets (or, with `None`, removes) a conversation's retention; audited first.
    pub async fn set_policy(&self, actor: &Actor, conversation_id: &str, retention_days: Option<u32>) -> Result<Option<Policy>> {
        if let Some(days) = retention_days {
            if days == 0 || days > RETENTION_DAYS_MAX {
                return Err(Error::Invalid(format!("`retentionDays` must be between 1 and {RETENTION_DAYS_MAX}, or null to remove the policy")));
            }
        }
        let exists = self.live.conversation_exists(conversation_id).await.map_err(Error::Live)?;
        if !exists {
            return Err(Error::ConversationNotFound(conversation_id.to_string()));
        }
        self.audit(actor, "retention.policy", json!({"conversationId": conversation_id, "retentionDays": retention_days})).await?;
        self.policies.set(conversation_id, retention_days, &actor.user_id, confab_schemas::ids::now_ms()).await
    }

    /// What a retention run at `now_ms` deletes: each conversation with a
    /// policy, and every other one when there is a server default. Held
    /// conversations are left out (and their holds say why).
    pub async fn plan_retention(&self, now_ms: i64) -> Result<(Vec<PlannedDeletion>, Vec<String>)> {
        let policies = self.policies.current().await;
        let mut days: std::collections::BTreeMap<String, u32> = std::collections::BTreeMap::new();
        if let Some(default) = self.default_retention_days {
            for conversation_id in self.live.conversations().await.map_err(Error::Live)? {
                days.insert(conversation_id, default);
            }
        }
        for policy in policies {
            days.insert(policy.conversation_id, policy.retention_days);
        }
        let holds = self.maintenance.active_holds().await;
        let (mut planned, mut held) = (Vec::new(), Vec::new());
        for (conversation_id, retention_days) in days {
            if holds.iter().any(|hold| hold.holds_conversation(&conversation_id)) {
                held.push(conversation_id);
                continue;
            }
            let before = now_ms - retention_days as i64 * 86_400_000;
            planned.push(PlannedDeletion { conversation_id, before, retention_days });
        }
        Ok((planned, held))
    }

    /// Writes a retention run's summary to the audit log.
    pub async fn audit_run(&self, actor: &Actor, summary: serde_json::Value) -> Result<()> {
        self.audit(actor, "retention.run", summary).await
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
