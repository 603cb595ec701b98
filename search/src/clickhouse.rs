//! The ClickHouse engine (`[search] engine = "clickhouse"`), for servers as
//! old as Debian's 18.16: no token skip indexes, no `hasToken`, no `ILIKE`.
//!
//! Happy path. Text is tokenized in Rust with the same tokenizer as the
//! embedded engine; each distinct term of a message is one row of
//! `search_postings`, ordered by `(term, conversation_key, seq)`, so a
//! word is a primary-key range and a prefix a range of terms. Every row
//! repeats what the filters need (conversation, time, sender, attachment),
//! so a search is one `GROUP BY` over the rows of the query's terms in the
//! caller's conversations, keeping the messages that hold every clause
//! (`HAVING`), newest first after the cursor. `search_messages` (one row
//! per message, ordered by `(conversation_key, seq)`) answers queries of
//! modifiers only. A phrase is matched as its words (any order): the query
//! side checks every hit against the current body, phrases in order
//! included, before it is shown.
//!
//! `apply` first deletes (one `ALTER TABLE … DELETE` mutation per table per
//! batch) the rows of every message it edits or removes, then inserts the
//! new rows, then one `search_positions` row per partition (a
//! `ReplacingMergeTree` keeping the highest offset, so merges fold the rows
//! of earlier commits away; reads take `max(offset)` either way). A mutation
//! only touches parts that existed when it was made, so the rows inserted
//! after it stay. Rows may be duplicated by a batch re-applied after a
//! crash (ClickHouse has no transaction over inserts): every query groups
//! by message, so a duplicate changes nothing.
//!
//! Failures. An unreachable server is `EngineError::Unavailable`; the
//! pipeline retries the batch with backoff. Mutations are asynchronous on
//! 18.16 (`mutations_sync` came in 20.1): until one is done a removed
//! message can still be found by the engine, and the query side's check
//! against the state drops it. `purge` (erasure, retention) waits until
//! every mutation of these tables is done, merges each table into one
//! part (`OPTIMIZE … FINAL`), and waits until the server has deleted the
//! replaced parts (kept one second, `old_parts_lifetime`, and collected
//! every second, `cleanup_delay_period`: in practice within ten), so the
//! removed text leaves the server's files before the operation answers. Inserts are not fsynced by ClickHouse's default
//! settings: a server crash can lose the last batches, and then positions
//! too, since they are written after the rows.

use std::fmt::Write as _;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use crate::config::ClickhouseConfig;
use crate::engine::{fnv1a, Change, Engine, EngineError, EngineResult, Hit, Positions, Request, SortKey};
use crate::query::Clause;
use crate::text;

/// Rows per insert request.
const INSERT_CHUNK: usize = 50_000;
/// Messages per delete mutation (about 50 bytes of SQL each).
const MUTATION_MESSAGES: usize = 2_000;

#[derive(Row, Serialize)]
struct PostingRow<'a> {
    term: &'a str,
    conversation_key: u64,
    seq: u64,
    conversation_id: &'a str,
    ts: i64,
    sender_id: &'a str,
    has_attachment: u8,
}

#[derive(Row, Serialize)]
struct MessageRow<'a> {
    conversation_key: u64,
    seq: u64,
    conversation_id: &'a str,
    ts: i64,
    sender_id: &'a str,
    has_attachment: u8,
}

#[derive(Row, Serialize, Deserialize)]
struct PositionRow {
    partition: u32,
    offset: u64,
}

#[derive(Row, Deserialize)]
struct HitRow {
    conversation_id: String,
    seq: u64,
    ts: i64,
    tiebreak: u64,
}

pub struct Clickhouse {
    client: Client,
    database: String,
}

impl std::fmt::Debug for Clickhouse {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Clickhouse").field("database", &self.database).finish_non_exhaustive()
    }
}

fn unavailable(error: clickhouse::error::Error) -> EngineError {
    match error {
        clickhouse::error::Error::Network(_) => EngineError::Unavailable(error.to_string()),
        error => EngineError::Index(error.to_string()),
    }
}

impl Clickhouse {
    /// Connects, creates the database and tables if missing, and logs the server's version.
    /// `source` is the data directory's instance id: a database another one
    /// claimed is refused (its positions are another log's offsets).
    pub async fn open(config: &ClickhouseConfig, source: &str) -> EngineResult<Clickhouse> {
        let client = config
            .client()
            // A search over thousands of conversations names each one
            // (the default limit is 256 KiB of SQL).
            .with_setting("max_query_size", "16777216");
        let version: String = client.query("SELECT version()").fetch_one().await.map_err(unavailable)?;
        tracing::info!(version, url = config.url, database = config.database, "search index on ClickHouse");
        let database = config.database.clone();
        client.query(&format!("CREATE DATABASE IF NOT EXISTS {database}")).execute().await.map_err(unavailable)?;
        confab_clickhouse::claim(&client, &database, "search_source", source).await.map_err(|error| match error {
            confab_clickhouse::ClaimError::Clickhouse(error) => unavailable(error),
            confab_clickhouse::ClaimError::OwnedBy(owner) => EngineError::Index(format!(
                "the search database `{database}` holds the index of another data directory (instance {owner}); set [search.clickhouse] database to a new one, or drop that one"
            )),
        })?;
        let tables = [
            "search_postings (term String, conversation_key UInt64, seq UInt64, conversation_id String, ts Int64, sender_id String, has_attachment UInt8) \
             ENGINE = MergeTree ORDER BY (term, conversation_key, seq) SETTINGS index_granularity = 1024, old_parts_lifetime = 1, cleanup_delay_period = 1",
            "search_messages (conversation_key UInt64, seq UInt64, conversation_id String, ts Int64, sender_id String, has_attachment UInt8) \
             ENGINE = MergeTree ORDER BY (conversation_key, seq) SETTINGS index_granularity = 1024, old_parts_lifetime = 1, cleanup_delay_period = 1",
            "search_positions (partition UInt32, offset UInt64) ENGINE = ReplacingMergeTree(offset) ORDER BY partition SETTINGS old_parts_lifetime = 1, cleanup_delay_period = 1",
        ];
        for table in tables {
            client.query(&format!("CREATE TABLE IF NOT EXISTS {database}.{table}")).execute().await.map_err(unavailable)?;
        }
        // Inserts name their table alone (the crate quotes `db.table` as one name).
        Ok(Clickhouse { client: client.with_database(&database), database })
    }

    /// One number about this database's `search_` tables, from a system table (`?` is the database).
    async fn system_number(&self, sql: &str) -> EngineResult<u64> {
        self.client.query(sql).bind(&self.database).fetch_one::<u64>().await.map_err(unavailable)
    }
}

/// Inserts `rows` into `table` in chunks (a macro: the crate's rows borrow, which a generic function cannot name).
macro_rules! insert_rows {
    ($engine:expr, $row:ident, $table:expr, $rows:expr) => {{
        for chunk in $rows.chunks(INSERT_CHUNK) {
            let mut insert = $engine.client.insert::<$row>($table).await.map_err(unavailable)?;
            for row in chunk {
                insert.write(row).await.map_err(unavailable)?;
            }
            insert.end().await.map_err(unavailable)?;
        }
    }};
}

/// `(toUInt64(k), toUInt64(s)), …` for a mutation's `has([…], (conversation_key, seq))`.
fn message_tuples(messages: &[(u64, u64)]) -> String {
    let mut text = String::with_capacity(messages.len() * 40);
    for (index, (key, seq)) in messages.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        let _ = write!(text, "(toUInt64({key}),toUInt64({seq}))");
    }
    text
}

/// One condition on `term` a message must meet at least once; its SQL and binds.
struct Condition {
    sql: String,
    binds: Vec<String>,
}

fn conditions(clauses: &[Clause]) -> Vec<Condition> {
    let mut conditions = Vec::new();
    for clause in clauses {
        let (words, prefix) = match clause {
            Clause::Terms(words) => (words.as_slice(), None),
            Clause::Prefix { leading, prefix } => (leading.as_slice(), Some(prefix)),
        };
        for word in words {
            conditions.push(Condition { sql: "term = ?".into(), binds: vec![word.clone()] });
        }
        if let Some(prefix) = prefix {
            let length = prefix.len();
            conditions.push(match text::prefix_end(prefix).and_then(|end| String::from_utf8(end).ok()) {
                Some(end) => Condition { sql: "(term >= ? AND term < ?)".into(), binds: vec![prefix.clone(), end] },
                None => Condition { sql: format!("(term >= ? AND substring(term, 1, {length}) = ?)"), binds: vec![prefix.clone(), prefix.clone()] },
            });
        }
    }
    conditions
}

#[async_trait::async_trait]
impl Engine for Clickhouse {
    async fn positions(&self) -> EngineResult<Positions> {
        let rows = self
            .client
            .query(&format!("SELECT partition, max(offset) FROM {}.search_positions GROUP BY partition", self.database))
            .fetch_all::<PositionRow>()
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().map(|row| (row.partition, row.offset)).collect())
    }

    async fn apply(&self, changes: Vec<Change>, positions: Positions) -> EngineResult<()> {
        // Only each message's last change counts: the deletes run before
        // the inserts, so [add, remove] of one message must not insert it,
        // and [add, edit] must insert the edit only.
        let message_of = |change: &Change| match change {
            Change::Add(doc) | Change::Upsert(doc) => (fnv1a(doc.conversation_id.as_bytes()), doc.seq),
            Change::Remove { conversation_id, seq } => (fnv1a(conversation_id.as_bytes()), *seq),
        };
        let mut last: std::collections::HashMap<(u64, u64), (usize, usize)> = std::collections::HashMap::new();
        for (index, change) in changes.iter().enumerate() {
            let entry = last.entry(message_of(change)).or_insert((index, 0));
            *entry = (index, entry.1 + 1);
        }
        let mut replaced: Vec<(u64, u64)> = Vec::new();
        let mut docs = Vec::new();
        for (index, change) in changes.iter().enumerate() {
            let message = message_of(change);
            let (final_index, count) = last[&message];
            if index != final_index {
                continue;
            }
            match change {
                Change::Add(doc) if count == 1 => docs.push(doc),
                Change::Add(doc) | Change::Upsert(doc) => {
                    replaced.push(message);
                    docs.push(doc);
                }
                Change::Remove { .. } => replaced.push(message),
            }
        }
        for chunk in replaced.chunks(MUTATION_MESSAGES) {
            let tuples = message_tuples(chunk);
            for table in ["search_postings", "search_messages"] {
                let sql = format!("ALTER TABLE {}.{table} DELETE WHERE has([{tuples}], (conversation_key, seq))", self.database);
                self.client.query(&sql).execute().await.map_err(unavailable)?;
            }
        }
        let mut term_texts = Vec::with_capacity(docs.len());
        for doc in &docs {
            let mut terms = text::term_texts(&doc.body);
            terms.sort_unstable();
            terms.dedup();
            term_texts.push(terms);
        }
        let mut postings = Vec::new();
        let mut messages = Vec::with_capacity(docs.len());
        for (doc, terms) in docs.iter().zip(&term_texts) {
            let conversation_key = fnv1a(doc.conversation_id.as_bytes());
            let has_attachment = u8::from(doc.has_attachments);
            for term in terms {
                postings.push(PostingRow {
                    term,
                    conversation_key,
                    seq: doc.seq,
                    conversation_id: &doc.conversation_id,
                    ts: doc.ts,
                    sender_id: &doc.sender_id,
                    has_attachment,
                });
            }
            messages.push(MessageRow {
                conversation_key,
                seq: doc.seq,
                conversation_id: &doc.conversation_id,
                ts: doc.ts,
                sender_id: &doc.sender_id,
                has_attachment,
            });
        }
        // Messages first: once a text query finds a message, so does a query of modifiers only.
        insert_rows!(self, MessageRow, "search_messages", messages);
        insert_rows!(self, PostingRow, "search_postings", postings);
        let positions: Vec<PositionRow> = positions.into_iter().map(|(partition, offset)| PositionRow { partition, offset }).collect();
        insert_rows!(self, PositionRow, "search_positions", positions);
        Ok(())
    }

    async fn search(&self, request: &Request) -> EngineResult<Vec<Hit>> {
        if request.scope.is_empty() || request.limit == 0 {
            return Ok(Vec::new());
        }
        let conditions = conditions(&request.query.clauses);
        let mut binds: Vec<&str> = Vec::new();
        let mut sql = String::from("SELECT conversation_id, seq, any(ts) AS t, bitXor(conversation_key, seq) AS k FROM ");
        sql.push_str(&self.database);
        sql.push_str(if conditions.is_empty() { ".search_messages WHERE " } else { ".search_postings WHERE (" });
        for (index, condition) in conditions.iter().enumerate() {
            if index > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&condition.sql);
            binds.extend(condition.binds.iter().map(String::as_str));
        }
        if !conditions.is_empty() {
            sql.push_str(") AND ");
        }
        sql.push_str("conversation_key IN (");
        for (index, scope) in request.scope.iter().enumerate() {
            if index > 0 {
                sql.push(',');
            }
            let _ = write!(sql, "{}", fnv1a(scope.conversation_id.as_bytes()));
        }
        sql.push(')');
        for scope in request.scope.iter().filter(|scope| scope.from_seq > 1) {
            let _ = write!(sql, " AND NOT (conversation_key = {} AND seq < {})", fnv1a(scope.conversation_id.as_bytes()), scope.from_seq);
        }
        if let Some(sender) = &request.sender_id {
            sql.push_str(" AND sender_id = ?");
            binds.push(sender);
        }
        if request.query.has_attachment {
            sql.push_str(" AND has_attachment = 1");
        }
        if let Some(after) = request.query.after_ms {
            let _ = write!(sql, " AND ts >= {after}");
        }
        if let Some(before) = request.query.before_ms {
            let _ = write!(sql, " AND ts < {before}");
        }
        if let Some(SortKey { ts, tiebreak }) = request.after {
            let _ = write!(sql, " AND (ts < {ts} OR (ts = {ts} AND bitXor(conversation_key, seq) < {tiebreak}))");
        }
        sql.push_str(" GROUP BY conversation_key, conversation_id, seq");
        for (index, condition) in conditions.iter().enumerate() {
            sql.push_str(if index == 0 { " HAVING " } else { " AND " });
            let _ = write!(sql, "max({}) = 1", condition.sql);
            binds.extend(condition.binds.iter().map(String::as_str));
        }
        let _ = write!(sql, " ORDER BY t DESC, k DESC LIMIT {}", request.limit);
        let mut query = self.client.query(&sql);
        for bind in binds {
            query = query.bind(bind);
        }
        let rows = query.fetch_all::<HitRow>().await.map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|row| Hit { conversation_id: row.conversation_id, seq: row.seq, key: SortKey { ts: row.ts, tiebreak: row.tiebreak } })
            .collect())
    }

    async fn purge(&self) -> EngineResult<u64> {
        // Every delete made so far has rewritten its parts.
        let tables = ["search_postings", "search_messages", "search_positions"];
        confab_clickhouse::wait_for_mutations(&self.client, &self.database, &tables, std::time::Duration::from_secs(60)).await.map_err(
            |error| match error {
                confab_clickhouse::WaitError::Clickhouse(error) => unavailable(error),
                confab_clickhouse::WaitError::Pending { .. } => EngineError::Index("ClickHouse has not finished the index's deletes in 60 s".into()),
            },
        )?;
        for table in tables {
            self.client.query(&format!("OPTIMIZE TABLE {}.{table} FINAL", self.database)).execute().await.map_err(unavailable)?;
        }
        // The replaced parts are deleted by the server's cleanup (every
        // `cleanup_delay_period`, once `old_parts_lifetime` has passed: a few seconds).
        for _ in 0..1_200 {
            let inactive = self.system_number("SELECT count() FROM system.parts WHERE database = ? AND table LIKE 'search\\_%' AND NOT active").await?;
            if inactive == 0 {
                return Ok(0);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(EngineError::Index("ClickHouse has not deleted the replaced parts of the index in 60 s".into()))
    }

    async fn clear(&self) -> EngineResult<()> {
        for table in ["search_postings", "search_messages", "search_positions"] {
            self.client.query(&format!("TRUNCATE TABLE {}.{table}", self.database)).execute().await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn size_bytes(&self) -> EngineResult<u64> {
        self.system_number("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = ? AND table LIKE 'search\\_%' AND active").await
    }
}
