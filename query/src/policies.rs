//! Retention policies: how many days each conversation keeps its messages.
//!
//! The Delta table `retention_policies`, one row per change (a
//! `retention_days` of 0 removes the conversation's policy), so compliance can
//! query the policies and their past like the rest of the history; the
//! current ones are kept in memory, read from the table at start. A
//! conversation without a policy follows the server's default
//! (`[history] default_retention_days`), if there is one.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::rows::{Cell, Rows};
use crate::tables::{HistoryStore, Table};
use crate::{Error, Result};

/// The longest retention a policy may set (about 100 years).
pub const RETENTION_DAYS_MAX: u32 = 36_500;

/// One conversation's policy, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub conversation_id: String,
    pub retention_days: u32,
    pub set_by: String,
    pub set_at: i64,
}

pub struct PolicyRegistry {
    store: HistoryStore,
    current: tokio::sync::Mutex<BTreeMap<String, Policy>>,
}

impl std::fmt::Debug for PolicyRegistry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("PolicyRegistry").finish_non_exhaustive()
    }
}

impl PolicyRegistry {
    /// Reads the current policies (creating the table the first time).
    pub async fn open(store: HistoryStore) -> Result<PolicyRegistry> {
        let sql = "SELECT conversation_id, retention_days, actor_id, CAST(CAST(ts AS BIGINT) / 1000 AS BIGINT) AS ts_ms FROM retention_policies ORDER BY ts";
        let mut current = BTreeMap::new();
        for row in store.read_registry(Table::RetentionPolicies, sql).await? {
            let conversation_id = row.first().and_then(Value::as_str).unwrap_or_default().to_string();
            match row.get(1).and_then(Value::as_i64).filter(|days| *days > 0) {
                None => {
                    current.remove(&conversation_id);
                }
                Some(days) => {
                    let policy = Policy {
                        conversation_id: conversation_id.clone(),
                        retention_days: days as u32,
                        set_by: row.get(2).and_then(Value::as_str).unwrap_or_default().to_string(),
                        set_at: row.get(3).and_then(Value::as_i64).unwrap_or_default(),
                    };
                    current.insert(conversation_id, policy);
                }
            }
        }
        Ok(PolicyRegistry { store, current: tokio::sync::Mutex::new(current) })
    }

    /// The current policies, by conversation.
    pub async fn current(&self) -> Vec<Policy> {
        self.current.lock().await.values().cloned().collect()
    }

    /// Sets (`Some`) or removes (`None`) a conversation's policy; durable
    /// when this returns.
    pub async fn set(&self, conversation_id: &str, retention_days: Option<u32>, actor_id: &str, now_ms: i64) -> Result<Option<Policy>> {
        let mut current = self.current.lock().await;
        let days = Cell::Int(retention_days.unwrap_or(0) as i64);
        let text = |value: &str| Cell::Text(Some(value.to_string()));
        let batch = Rows::batch(Table::RetentionPolicies, &[vec![text(conversation_id), days, text(actor_id), Cell::Time(now_ms)]]);
        let delta = self.store.open_or_create(Table::RetentionPolicies).await?;
        delta.write(vec![batch]).await.map_err(|source| Error::Delta { table: Table::RetentionPolicies.name(), source })?;
        Ok(match retention_days {
            Some(retention_days) => {
                let policy = Policy { conversation_id: conversation_id.to_string(), retention_days, set_by: actor_id.to_string(), set_at: now_ms };
                current.insert(conversation_id.to_string(), policy.clone());
                Some(policy)
            }
            None => {
                current.remove(conversation_id);
                None
            }
        })
    }
}
