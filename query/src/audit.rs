//! Audit rows written straight to the `audit` table, by tools that do not
//! own the log (`confab sql` on a data directory, which may run beside a
//! server that holds the log).
//!
//! Such rows carry `log_partition` and `log_offset` -1: they were never in
//! the log. A blind append never conflicts with the sink's appends, and it
//! leaves the sink's application transactions alone.

use crate::rows::{Cell, Rows};
use crate::tables::{HistoryStore, Table};
use crate::{Error, Result};

/// Appends one audit row now; returns once it is committed.
pub async fn record_direct(store: &HistoryStore, actor_id: &str, action: &str, details: &str, now_ms: i64) -> Result<()> {
    let mut rows = Rows::default();
    let text = |value: &str| Cell::Text(Some(value.to_string()));
    rows.push(Table::Audit, 0, 0, now_ms, vec![Cell::Time(now_ms), text(actor_id), text(action), text(details)]);
    let mut cells = rows.by_table.remove(&Table::Audit).expect("one row was pushed");
    // Not from the log: no partition, no offset.
    let positions = cells[0].len() - 3;
    cells[0][positions] = Cell::Int(-1);
    cells[0][positions + 1] = Cell::Int(-1);
    let batch = Rows::batch(Table::Audit, &cells);
    let audit = store.open_or_create(Table::Audit).await?;
    audit.write(vec![batch]).with_partition_columns(["day"]).await.map_err(|source| Error::Delta { table: Table::Audit.name(), source })?;
    Ok(())
}
