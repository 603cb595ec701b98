//! The history tables: their schemas, and where they live (a folder under
//! the data directory, or an object-store URL).

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::{DataType, PrimitiveType, StructField};
use deltalake::{DeltaTable, TableProperty};
use url::Url;

use crate::{Error, Result};

/// One history table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    MessageEvents,
    Conversations,
    MembershipEvents,
    Receipts,
    Audit,
    /// Accounts: who a `sender_id` is (never a password hash).
    Users,
    /// Every push request and its outcome.
    PushAttempts,
    /// Uploads: declared, uploaded, checked (ready or blocked), removed.
    Media,
    /// The legal-hold registry: written by [`crate::holds`], not by the sink.
    LegalHolds,
    /// Retention policies: written by [`crate::policies`], not by the sink.
    RetentionPolicies,
}

impl Table {
    /// Every table SQL sees.
    pub const ALL: [Table; 10] = [
        Table::MessageEvents,
        Table::Conversations,
        Table::MembershipEvents,
        Table::Receipts,
        Table::Audit,
        Table::Users,
        Table::PushAttempts,
        Table::Media,
        Table::LegalHolds,
        Table::RetentionPolicies,
    ];
    /// The tables the history sink fills from the log. A table added here
    /// later is backfilled: the sink starts from the lowest table's position.
    pub const SUNK: [Table; 8] =
        [Table::MessageEvents, Table::Conversations, Table::MembershipEvents, Table::Receipts, Table::Audit, Table::Users, Table::PushAttempts, Table::Media];

    /// Whether the rows come from the log (and carry their log position and day).
    pub fn is_sunk(self) -> bool {
        !matches!(self, Table::LegalHolds | Table::RetentionPolicies)
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::MessageEvents => "message_events",
            Table::Conversations => "conversations",
            Table::MembershipEvents => "membership_events",
            Table::Receipts => "receipts",
            Table::Audit => "audit",
            Table::Users => "users",
            Table::PushAttempts => "push_attempts",
            Table::Media => "media",
            Table::LegalHolds => "legal_holds",
            Table::RetentionPolicies => "retention_policies",
        }
    }

    /// `(name, type, nullable)`; every sunk table ends with the log position
    /// of the row (for exactly-once) and the day it is partitioned by.
    fn columns(self) -> Vec<(&'static str, Column, bool)> {
        use Column::{Int, Text, Time};
        let mut columns = match self {
            Table::MessageEvents => vec![
                ("message_id", Text, false),
                ("conversation_id", Text, false),
                ("seq", Int, false),
                ("sender_id", Text, false),
                ("device_id", Text, false),
                ("ts", Time, false),
                ("event_type", Text, false),
                ("body", Text, true),
                ("actor_id", Text, false),
            ],
            Table::Conversations => vec![
                ("conversation_id", Text, false),
                ("conversation_type", Text, false),
                ("title", Text, true),
                ("creator_id", Text, false),
                ("created_at", Time, false),
            ],
            Table::MembershipEvents => {
                vec![("conversation_id", Text, false), ("user_id", Text, false), ("change", Text, false), ("actor_id", Text, false), ("ts", Time, false)]
            }
            Table::Receipts => vec![
                ("conversation_id", Text, false),
                ("user_id", Text, false),
                ("device_id", Text, true),
                ("kind", Text, false),
                ("seq", Int, false),
                ("ts", Time, false),
            ],
            Table::Audit => vec![("ts", Time, false), ("actor_id", Text, false), ("action", Text, false), ("details", Text, false)],
            Table::Users => vec![("user_id", Text, false), ("username", Text, false), ("display_name", Text, true), ("created_at", Time, false)],
            Table::PushAttempts => vec![
                ("flow_id", Text, false),
                ("user_id", Text, false),
                ("device_id", Text, false),
                ("provider", Text, false),
                ("conversation_id", Text, false),
                ("seq", Int, false),
                ("attempt", Int, false),
                ("outcome", Text, false),
                ("reason", Text, true),
                ("ts", Time, false),
            ],
            Table::Media => vec![
                ("media_id", Text, false),
                ("conversation_id", Text, false),
                ("uploader_id", Text, true),
                ("event_type", Text, false),
                ("filename", Text, true),
                ("content_type", Text, true),
                ("size", Int, true),
                ("sha256", Text, true),
                ("reason", Text, true),
                ("ts", Time, false),
            ],
            Table::LegalHolds => {
                return vec![
                    ("hold_id", Text, false),
                    ("change", Text, false),
                    ("target_type", Text, false),
                    ("target_id", Text, false),
                    ("reason", Text, false),
                    ("actor_id", Text, false),
                    ("ts", Time, false),
                ]
            }
            Table::RetentionPolicies => {
                return vec![("conversation_id", Text, false), ("retention_days", Int, false), ("actor_id", Text, false), ("ts", Time, false)]
            }
        };
        columns.extend([("log_partition", Int, false), ("log_offset", Int, false), ("day", Text, false)]);
        columns
    }

    /// Free text that must never be copied into the Delta log: Delta keeps
    /// each file's min and max per column in the log, which a vacuum does
    /// not remove, so an erased body would live on there.
    fn is_free_text(column: &str) -> bool {
        matches!(column, "body" | "title" | "details" | "reason" | "display_name" | "filename")
    }

    /// The columns Delta keeps statistics for (to skip files): all but free text.
    fn stats_columns(self) -> String {
        // `day` is the partition: its value is in the path, not in statistics.
        let names: Vec<&str> = self.columns().into_iter().map(|(name, _, _)| name).filter(|name| !Table::is_free_text(name) && *name != "day").collect();
        names.join(",")
    }

    pub fn arrow_schema(self) -> SchemaRef {
        let fields: Vec<Field> = self.columns().into_iter().map(|(name, column, nullable)| Field::new(name, column.arrow(), nullable)).collect();
        Arc::new(Schema::new(fields))
    }

    fn delta_columns(self) -> Vec<StructField> {
        self.columns().into_iter().map(|(name, column, nullable)| StructField::new(name, column.delta(), nullable)).collect()
    }
}

#[derive(Debug, Clone, Copy)]
enum Column {
    Text,
    Int,
    Time,
}

impl Column {
    fn arrow(self) -> ArrowType {
        match self {
            Column::Text => ArrowType::Utf8,
            Column::Int => ArrowType::Int64,
            Column::Time => ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    fn delta(self) -> DataType {
        DataType::Primitive(match self {
            Column::Text => PrimitiveType::String,
            Column::Int => PrimitiveType::Long,
            Column::Time => PrimitiveType::Timestamp,
        })
    }
}

/// Where the history tables live.
#[derive(Debug, Clone)]
pub struct HistoryStore {
    root: Url,
    storage_options: HashMap<String, String>,
}

impl HistoryStore {
    /// `location` is a folder path or an `s3://bucket/prefix` URL; storage
    /// options (endpoint, keys, region) are for object stores.
    pub fn new(location: &str, storage_options: HashMap<String, String>) -> Result<HistoryStore> {
        let root = if location.contains("://") {
            Url::parse(&format!("{}/", location.trim_end_matches('/'))).map_err(|_| Error::Location(location.to_string()))?
        } else {
            std::fs::create_dir_all(location).map_err(|_| Error::Location(location.to_string()))?;
            let absolute = std::fs::canonicalize(location).map_err(|_| Error::Location(location.to_string()))?;
            Url::from_directory_path(absolute).map_err(|_| Error::Location(location.to_string()))?
        };
        Ok(HistoryStore { root, storage_options })
    }

    pub fn table_url(&self, table: Table) -> Result<Url> {
        let url = self.root.join(&format!("{}/", table.name())).map_err(|_| Error::Location(self.root.to_string()))?;
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|_| Error::Location(url.to_string()))?;
            std::fs::create_dir_all(path).map_err(|_| Error::Location(url.to_string()))?;
        }
        Ok(url)
    }

    /// Every row of a registry table (`legal_holds`, `retention_policies`)
    /// that `sql` selects, as JSON values; the table is created the first time.
    pub(crate) async fn read_registry(&self, table: Table, sql: &str) -> Result<Vec<Vec<serde_json::Value>>> {
        let delta = self.open_or_create(table).await?;
        let provider = delta.table_provider().await.map_err(|source| Error::Delta { table: table.name(), source: source.into() })?;
        let context = deltalake::datafusion::prelude::SessionContext::new();
        context.register_table(table.name(), provider).map_err(|error| Error::Query(error.to_string()))?;
        let frame = context.sql(sql).await.map_err(|error| Error::Query(error.to_string()))?;
        let columns = frame.schema().fields().iter().map(|field| field.name().clone()).collect();
        let batches = frame.collect().await.map_err(|error| Error::Query(error.to_string()))?;
        crate::output::to_json_rows(&crate::sql::QueryOutput { columns, batches })
    }

    /// Opens a table, creating it (empty; a sunk one partitioned by day) the first time.
    pub async fn open_or_create(&self, table: Table) -> Result<DeltaTable> {
        let url = self.table_url(table)?;
        let delta = |source| Error::Delta { table: table.name(), source };
        match deltalake::open_table_with_storage_options(url.clone(), self.storage_options.clone()).await {
            Ok(opened) => Ok(opened),
            Err(deltalake::DeltaTableError::NotATable(_)) => {
                let fresh = DeltaTable::try_from_url_with_storage_options(url, self.storage_options.clone()).await.map_err(delta)?;
                let create = fresh
                    .create()
                    .with_table_name(table.name())
                    .with_columns(table.delta_columns())
                    .with_configuration_property(TableProperty::DataSkippingStatsColumns, Some(table.stats_columns()));
                let create = if table.is_sunk() { create.with_partition_columns(["day"]) } else { create };
                create.await.map_err(delta)
            }
            Err(other) => Err(delta(other)),
        }
    }

    /// Opens a table as it was at a moment, for time travel.
    pub async fn open_at(&self, table: Table, moment: chrono::DateTime<chrono::Utc>) -> Result<DeltaTable> {
        let url = self.table_url(table)?;
        let mut opened = deltalake::open_table_with_storage_options(url, self.storage_options.clone())
            .await
            .map_err(|source| Error::Delta { table: table.name(), source })?;
        opened.load_with_datetime(moment).await.map_err(|source| Error::Delta { table: table.name(), source })?;
        Ok(opened)
    }

    /// Opens a table as of a version, for time travel.
    pub async fn open_version(&self, table: Table, version: u64) -> Result<DeltaTable> {
        let url = self.table_url(table)?;
        let mut opened = deltalake::open_table_with_storage_options(url, self.storage_options.clone())
            .await
            .map_err(|source| Error::Delta { table: table.name(), source })?;
        opened.load_version(version).await.map_err(|source| Error::Delta { table: table.name(), source })?;
        Ok(opened)
    }
}
