//! The analytics database on ClickHouse: creating it, appending batches,
//! reading back how far each table got, and retention's purge.

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use crate::config::ClickhouseConfig;
use crate::rows::{Batch, ConversationRow, MessageEventRow, ReceiptRow, Starts};
use crate::schema;
use crate::{AnalyticsError, Result};

pub struct Store {
    client: Client,
    database: String,
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Store").field("url", &self.url).field("database", &self.database).finish_non_exhaustive()
    }
}

#[derive(Row, Serialize, Deserialize)]
struct PositionRow {
    log_partition: u32,
    next_offset: u64,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Purged {
    pub message_events: u64,
    pub receipts: u64,
}

/// How long retention waits for ClickHouse to finish its deletes.
const MUTATIONS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Store {
    /// A client of the database for reading (queries, tests): nothing is
    /// created or claimed.
    pub fn connect(config: &ClickhouseConfig) -> Store {
        Store { client: config.client().with_database(&config.database), database: config.database.clone(), url: config.url.clone() }
    }

    /// Connects, claims the database for `source` (the data directory's
    /// instance id; one another claimed is refused with
    /// [`AnalyticsError::OwnedBy`]), creates the tables and view if missing,
    /// and logs the server's version.
    pub async fn open(config: &ClickhouseConfig, source: &str) -> Result<Store> {
        let client = config.client();
        let store = Store { client, database: config.database.clone(), url: config.url.clone() };
        let version: String = store.client.query("SELECT version()").fetch_one().await.map_err(|error| store.error(error))?;
        tracing::info!(version, url = config.url, database = config.database, "analytics on ClickHouse");
        let database = &store.database;
        store.execute(&format!("CREATE DATABASE IF NOT EXISTS {database}")).await?;
        confab_clickhouse::claim(&store.client, database, "analytics_source", source).await.map_err(|error| match error {
            confab_clickhouse::ClaimError::Clickhouse(error) => store.error(error),
            confab_clickhouse::ClaimError::OwnedBy(owner) => AnalyticsError::OwnedBy { database: database.clone(), owner },
        })?;
        for (name, definition) in schema::TABLES {
            store.execute(&format!("CREATE TABLE IF NOT EXISTS {database}.{name} {definition}")).await?;
        }
        for view in schema::views(database) {
            store.execute(&view).await?;
        }
        // Inserts name their table alone (the crate quotes `db.table` as one name).
        Ok(Store { client: store.client.clone().with_database(database), ..store })
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    fn error(&self, error: clickhouse::error::Error) -> AnalyticsError {
        match error {
            clickhouse::error::Error::Network(_) => AnalyticsError::Unavailable { url: self.url.clone(), detail: error.to_string() },
            error => AnalyticsError::Refused(error.to_string()),
        }
    }

    async fn execute(&self, sql: &str) -> Result<()> {
        self.client.query(sql).execute().await.map_err(|error| self.error(error))
    }

    /// Per table, the first offset of `partition` it lacks: past its
    /// highest row, and past the recorded position (rows retention deleted
    /// are not written again).
    pub async fn starts(&self, partition: u32) -> Result<Starts> {
        let database = &self.database;
        let position: u64 = self
            .client
            .query(&format!("SELECT toUInt64(max(next_offset)) FROM {database}.analytics_positions WHERE log_partition = ?"))
            .bind(partition)
            .fetch_one()
            .await
            .map_err(|error| self.error(error))?;
        let mut next = [position; 3];
        for (index, table) in schema::SUNK.iter().enumerate() {
            let (rows, highest): (u64, u64) = self
                .client
                .query(&format!("SELECT count(), toUInt64(max(log_offset)) FROM {database}.{table} WHERE log_partition = ?"))
                .bind(partition)
                .fetch_one()
                .await
                .map_err(|error| self.error(error))?;
            if rows > 0 {
                next[index] = next[index].max(highest + 1);
            }
        }
        Ok(Starts { message_events: next[0], receipts: next[1], conversations: next[2] })
    }

    /// Appends the batch, one insert per table (ClickHouse writes each
    /// insert of up to a million rows atomically), then the partition's
    /// position.
    pub async fn append(&self, batch: &Batch, partition: u32, next: u64) -> Result<()> {
        macro_rules! insert {
            ($row:ty, $table:literal, $rows:expr) => {
                if !$rows.is_empty() {
                    let mut insert = self.client.insert::<$row>($table).await.map_err(|error| self.error(error))?;
                    for row in $rows {
                        insert.write(row).await.map_err(|error| self.error(error))?;
                    }
                    insert.end().await.map_err(|error| self.error(error))?;
                }
            };
        }
        insert!(MessageEventRow, "message_events", &batch.message_events);
        insert!(ReceiptRow, "receipts", &batch.receipts);
        insert!(ConversationRow, "conversations", &batch.conversations);
        let position = [PositionRow { log_partition: partition, next_offset: next }];
        insert!(PositionRow, "analytics_positions", &position);
        Ok(())
    }

    /// Retention: deletes the rows of the conversation's messages sent
    /// before `before_ms` (their edits, deletes and receipts included, by
    /// `seq`), then counts the conversation's days again in
    /// `conversation_daily`, which the view filled from the deleted rows.
    /// Run with the sink paused, so no insert lands between the steps.
    pub async fn purge_conversation_before(&self, conversation_id: &str, before_ms: i64) -> Result<Purged> {
        let database = &self.database;
        let (created, last_seq): (u64, u64) = self
            .client
            .query(&format!(
                "SELECT count(), toUInt64(max(seq)) FROM {database}.message_events WHERE conversation_id = ? AND event_type = 'created' AND ts_ms < ?"
            ))
            .bind(conversation_id)
            .bind(before_ms)
            .fetch_one()
            .await
            .map_err(|error| self.error(error))?;
        if created == 0 {
            return Ok(Purged::default());
        }
        let mut purged = Purged::default();
        let mut last_day = String::new();
        for table in ["message_events", "receipts"] {
            let (rows, day): (u64, String) = self
                .client
                .query(&format!("SELECT count(), toString(max(day)) FROM {database}.{table} WHERE conversation_id = ? AND seq <= ?"))
                .bind(conversation_id)
                .bind(last_seq)
                .fetch_one()
                .await
                .map_err(|error| self.error(error))?;
            if table == "message_events" {
                (purged.message_events, last_day) = (rows, day);
            } else {
                purged.receipts = rows;
            }
            if rows > 0 {
                self.client
                    .query(&format!("ALTER TABLE {database}.{table} DELETE WHERE conversation_id = ? AND seq <= ?"))
                    .bind(conversation_id)
                    .bind(last_seq)
                    .execute()
                    .await
                    .map_err(|error| self.error(error))?;
            }
        }
        self.wait_for_mutations().await?;
        // The rollup's rows of those days go, and what is left of the days
        // is counted again. Every day up to the last purged one is recounted,
        // so a run that failed between the two steps is mended by the next.
        self.client
            .query(&format!("ALTER TABLE {database}.conversation_daily DELETE WHERE conversation_id = ? AND day <= toDate(?)"))
            .bind(conversation_id)
            .bind(&last_day)
            .execute()
            .await
            .map_err(|error| self.error(error))?;
        self.wait_for_mutations().await?;
        self.client.query(&schema::recount(database)).bind(conversation_id).bind(&last_day).execute().await.map_err(|error| self.error(error))?;
        Ok(purged)
    }

    /// Waits until every delete of the analytics tables is done.
    async fn wait_for_mutations(&self) -> Result<()> {
        let tables = ["message_events", "receipts", "conversation_daily"];
        confab_clickhouse::wait_for_mutations(&self.client, &self.database, &tables, MUTATIONS_WAIT).await.map_err(|error| match error {
            confab_clickhouse::WaitError::Clickhouse(error) => self.error(error),
            confab_clickhouse::WaitError::Pending { waited, .. } => AnalyticsError::MutationsPending(waited.as_secs()),
        })
    }

    /// Runs a read-only query and returns its rows as tab-separated text
    /// (for tests and operators' checks).
    pub async fn query_text(&self, sql: &str) -> Result<String> {
        let mut cursor = self.client.query(sql).fetch_bytes("TabSeparated").map_err(|error| self.error(error))?;
        let bytes = cursor.collect().await.map_err(|error| self.error(error))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
