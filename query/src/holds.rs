//! The legal-hold registry: which users and conversations must keep their
//! history untouched, whatever retention or erasure asks.
//!
//! It is the Delta table `legal_holds`, one row per placement and per
//! release, so that compliance can query it (and its own past) like the rest
//! of the history. The active holds are kept in memory, read from the table
//! at start.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::rows::{Cell, Rows};
use crate::tables::{HistoryStore, Table};
use crate::{Error, Result};

/// What a hold protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldTarget {
    /// Every message the user sent, in every conversation.
    User(String),
    /// Every message of the conversation.
    Conversation(String),
}

impl HoldTarget {
    fn kind(&self) -> &'static str {
        match self {
            HoldTarget::User(_) => "user",
            HoldTarget::Conversation(_) => "conversation",
        }
    }

    fn id(&self) -> &str {
        match self {
            HoldTarget::User(id) | HoldTarget::Conversation(id) => id,
        }
    }
}

/// An active hold, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub hold_id: String,
    pub target_type: String,
    pub target_id: String,
    pub reason: String,
    pub placed_by: String,
    pub placed_at: i64,
}

impl Hold {
    pub fn holds_user(&self, user_id: &str) -> bool {
        self.target_type == "user" && self.target_id == user_id
    }

    pub fn holds_conversation(&self, conversation_id: &str) -> bool {
        self.target_type == "conversation" && self.target_id == conversation_id
    }
}

/// Longest reason kept.
pub const REASON_MAX_BYTES: usize = 1_024;

pub struct HoldRegistry {
    store: HistoryStore,
    /// Active holds by id; writes go through this lock, so the table and
    /// the map change together.
    active: tokio::sync::Mutex<BTreeMap<String, Hold>>,
}

impl std::fmt::Debug for HoldRegistry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("HoldRegistry").finish_non_exhaustive()
    }
}

impl HoldRegistry {
    /// Reads the active holds from `legal_holds` (creating the table the first time).
    pub async fn open(store: HistoryStore) -> Result<HoldRegistry> {
        let sql = "SELECT hold_id, change, target_type, target_id, reason, actor_id, CAST(CAST(ts AS BIGINT) / 1000 AS BIGINT) AS ts_ms \
                   FROM legal_holds ORDER BY ts, change DESC";
        let rows = store.read_registry(Table::LegalHolds, sql).await?;
        let mut active = BTreeMap::new();
        for row in rows {
            let text = |index: usize| row.get(index).and_then(Value::as_str).unwrap_or_default().to_string();
            let hold_id = text(0);
            if text(1) == "released" {
                active.remove(&hold_id);
                continue;
            }
            let placed_at = row.get(6).and_then(Value::as_i64).unwrap_or_default();
            let hold = Hold { hold_id: hold_id.clone(), target_type: text(2), target_id: text(3), reason: text(4), placed_by: text(5), placed_at };
            active.insert(hold_id, hold);
        }
        Ok(HoldRegistry { store, active: tokio::sync::Mutex::new(active) })
    }

    /// The active holds, oldest first.
    pub async fn active(&self) -> Vec<Hold> {
        let mut holds: Vec<Hold> = self.active.lock().await.values().cloned().collect();
        holds.sort_by(|left, right| left.placed_at.cmp(&right.placed_at).then_with(|| left.hold_id.cmp(&right.hold_id)));
        holds
    }

    /// Places a hold; it is durable (committed to `legal_holds`) when this returns.
    pub async fn place(&self, target: HoldTarget, reason: &str, actor_id: &str, now_ms: i64) -> Result<Hold> {
        let mut active = self.active.lock().await;
        let hold = Hold {
            hold_id: confab_schemas::ids::new_id("hold", now_ms),
            target_type: target.kind().to_string(),
            target_id: target.id().to_string(),
            reason: reason.to_string(),
            placed_by: actor_id.to_string(),
            placed_at: now_ms,
        };
        self.append(&hold, "placed", actor_id, now_ms).await?;
        active.insert(hold.hold_id.clone(), hold.clone());
        Ok(hold)
    }

    /// Releases an active hold.
    pub async fn release(&self, hold_id: &str, actor_id: &str, now_ms: i64) -> Result<Hold> {
        let mut active = self.active.lock().await;
        let hold = active.get(hold_id).cloned().ok_or_else(|| Error::HoldNotFound(hold_id.to_string()))?;
        self.append(&hold, "released", actor_id, now_ms).await?;
        active.remove(hold_id);
        Ok(hold)
    }

    async fn append(&self, hold: &Hold, change: &str, actor_id: &str, now_ms: i64) -> Result<()> {
        let text = |value: &str| Cell::Text(Some(value.to_string()));
        let cells =
            vec![text(&hold.hold_id), text(change), text(&hold.target_type), text(&hold.target_id), text(&hold.reason), text(actor_id), Cell::Time(now_ms)];
        let batch = Rows::batch(Table::LegalHolds, &[cells]);
        let delta = self.store.open_or_create(Table::LegalHolds).await?;
        delta.write(vec![batch]).await.map_err(|source| Error::Delta { table: Table::LegalHolds.name(), source })?;
        Ok(())
    }
}
