//! Audit rows written straight to the `audit` table, by tools that do not
//! own the log (`confab sql` on a data directory, which may run beside a
//! server that holds the log).
//!
//! Such rows carry `log_partition` and `log_offset` -1: they were never in
//! the log. A blind append never conflicts with the sink's appends, and it
//! leaves the sink's application transactions alone.

use crate::rows::{day_of, Cell, Rows};
use crate::tables::{HistoryStore, Table};
use crate::{Error, Result};

/// Appends one audit row now; returns once it is committed.
pub async fn record_direct(store: &HistoryStore, actor_id: &str, action: &str, details: &str, now_ms: i64) -> Result<()> {
    let text = |value: &str| Cell::Text(Some(value.to_string()));
    // Not from the log: partition and offset -1; then the day, as the sink writes it.
    let row = vec![Cell::Time(now_ms), text(actor_id), text(action), text(details), Cell::Int(-1), Cell::Int(-1), text(&day_of(now_ms))];
    let batch = Rows::batch(Table::Audit, &[row]);
    let audit = store.open_or_create(Table::Audit).await?;
    audit.write(vec![batch]).with_partition_columns(["day"]).await.map_err(|source| Error::Delta { table: Table::Audit.name(), source })?;
    Ok(())
}
