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

/// SQL longer than this is stored cut, with its length and hash.
pub const SQL_AUDIT_MAX_BYTES: usize = 4 * 1024;

/// The audit details of one SQL attempt: the text (cut at
/// [`SQL_AUDIT_MAX_BYTES`], on a character boundary), its length and its
/// SHA-256, the interface (`via`), and the phase or refusal in `extra`.
/// Small enough for any log record, whatever was sent.
pub fn sql_attempt(sql: &str, via: &str, extra: &[(&str, &str)]) -> String {
    use sha2::Digest;
    let mut cut = sql.len().min(SQL_AUDIT_MAX_BYTES);
    while !sql.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = sha2::Sha256::digest(sql.as_bytes());
    let hash: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut details = serde_json::Map::new();
    details.insert("sql".into(), sql[..cut].into());
    details.insert("sqlBytes".into(), sql.len().into());
    details.insert("sqlSha256".into(), hash.into());
    if cut < sql.len() {
        details.insert("truncated".into(), true.into());
    }
    details.insert("via".into(), via.into());
    for (key, value) in extra {
        details.insert((*key).into(), (*value).into());
    }
    serde_json::Value::Object(details).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_sql_is_stored_cut_with_its_length_and_hash() {
        let sql = format!("SELECT '{}'", "é".repeat(10_000));
        let details: serde_json::Value = serde_json::from_str(&super::sql_attempt(&sql, "http", &[("refused", "too_long")])).unwrap();
        assert!(details["sql"].as_str().unwrap().len() <= super::SQL_AUDIT_MAX_BYTES);
        assert_eq!(details["sqlBytes"], sql.len());
        assert_eq!(details["truncated"], true);
        assert_eq!(details["sqlSha256"].as_str().unwrap().len(), 64);
        assert_eq!(details["refused"], "too_long");
        let short: serde_json::Value = serde_json::from_str(&super::sql_attempt("SELECT 1", "cli", &[])).unwrap();
        assert_eq!(short["sql"], "SELECT 1");
        assert!(short.get("truncated").is_none());
    }
}
