//! Retention and erasure: the primitives that delete or rewrite history,
//! for the workflows that will run them on a schedule or on request.
//!
//! Both follow the same steps, one operation at a time:
//! 1. refuse if a legal hold covers anything they would touch;
//! 2. delete the messages in the live store (a `MessageDeleted` per message,
//!    through the log, so devices are told and the state forgets the body);
//! 3. let the history sink write everything the log holds so far, so no row
//!    that should be deleted is still on its way;
//! 4. with the sink paused, commit a Delta delete (retention) or rewrite
//!    (erasure), then vacuum at once, so that the old bytes leave the disk
//!    or bucket rather than waiting out Delta's usual seven days;
//! 5. tell the sink to reopen its tables.
//!
//! A vacuum removes the files that older versions read, so `as_of` can no
//! longer show what was deleted or erased: that is the point.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use confab_log::Log;
use deltalake::datafusion::functions_aggregate::expr_fn::max;
use deltalake::datafusion::logical_expr::{col, lit};
use deltalake::datafusion::prelude::{DataFrame, Expr, SessionContext};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::DeltaTable;
use serde::Serialize;
use serde_json::Value;

use crate::holds::{Hold, HoldRegistry, HoldTarget};
use crate::sink::SinkHandle;
use crate::sql::QueryOutput;
use crate::tables::{HistoryStore, Table};
use crate::{Error, Result};

/// How long an operation waits for the sink to write what the log holds.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// What an operation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// `message_events` rows deleted (retention) or whose body was erased.
    pub rows: u64,
    /// Data files removed from storage by the vacuum.
    pub files_removed: u64,
    /// Messages deleted in the live store (they read as deleted in the API).
    pub live_messages: u64,
}

pub struct HistoryMaintenance {
    store: HistoryStore,
    log: Arc<dyn Log>,
    sink: Option<SinkHandle>,
    holds: HoldRegistry,
    /// One operation at a time, so a hold placed meanwhile is always seen.
    serial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for HistoryMaintenance {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("HistoryMaintenance").finish_non_exhaustive()
    }
}

impl HistoryMaintenance {
    /// `sink` is the running history sink, if the history pipeline is on.
    pub async fn open(store: HistoryStore, log: Arc<dyn Log>, sink: Option<SinkHandle>) -> Result<HistoryMaintenance> {
        let holds = HoldRegistry::open(store.clone()).await?;
        Ok(HistoryMaintenance { store, log, sink, holds, serial: tokio::sync::Mutex::new(()) })
    }

    pub async fn active_holds(&self) -> Vec<Hold> {
        self.holds.active().await
    }

    pub async fn place_hold(&self, target: HoldTarget, reason: &str, actor_id: &str) -> Result<Hold> {
        let _serial = self.serial.lock().await;
        self.holds.place(target, reason, actor_id, confab_schemas::ids::now_ms()).await
    }

    pub async fn release_hold(&self, hold_id: &str, actor_id: &str) -> Result<Hold> {
        let _serial = self.serial.lock().await;
        self.holds.release(hold_id, actor_id, confab_schemas::ids::now_ms()).await
    }

    /// Retention: deletes every event of the conversation's messages created
    /// before `before_ms` (their edits and deletes too, even if later).
    ///
    /// `live` deletes the same messages from the live store (through the
    /// log); it runs once no hold is in the way, and the history waits for
    /// what it writes.
    pub async fn delete_conversation_before<Live>(&self, conversation_id: &str, before_ms: i64, live: Live) -> Result<Outcome>
    where
        Live: std::future::Future<Output = std::result::Result<u64, String>>,
    {
        let _serial = self.serial.lock().await;
        let holds = self.holds.active().await;
        if let Some(hold) = holds.iter().find(|hold| hold.holds_conversation(conversation_id)) {
            return Err(under_hold(hold));
        }
        self.catch_up().await?;
        let events = self.store.open_or_create(Table::MessageEvents).await?;
        let in_conversation = col("conversation_id").eq(lit(conversation_id));
        let created_before = in_conversation.clone().and(col("event_type").eq(lit("created"))).and(col("ts").lt(lit_time(before_ms)));
        let last_seq = scalar_i64(scan(&events).await?.filter(created_before).map_err(query)?.aggregate(vec![], vec![max(col("seq"))]).map_err(query)?).await?;
        let doomed = in_conversation.and(col("seq").lt_eq(lit(last_seq.unwrap_or(0))));
        let senders = distinct_texts(scan(&events).await?.filter(doomed.clone()).map_err(query)?.select(vec![col("sender_id")]).map_err(query)?).await?;
        if let Some(hold) = holds.iter().find(|hold| senders.iter().any(|sender| hold.holds_user(sender))) {
            return Err(under_hold(hold));
        }
        let live_messages = live.await.map_err(Error::Live)?;
        if last_seq.is_none() {
            return Ok(Outcome { rows: 0, files_removed: 0, live_messages });
        }
        let (rows, files_removed) = self
            .rewrite_events(|events| async move {
                let (events, metrics) = events.delete().with_predicate(doomed).await.map_err(delta)?;
                Ok((events, metrics.num_deleted_rows.unwrap_or_default() as u64))
            })
            .await?;
        tracing::info!(conversation_id, before_ms, rows, files_removed, live_messages, "retention deleted history");
        Ok(Outcome { rows, files_removed, live_messages })
    }

    /// Erasure (GDPR): clears the body of every event of every message the
    /// user sent; who sent what, where and when stays. `live` deletes the
    /// user's messages from the live store, as for retention.
    pub async fn erase_user_bodies<Live>(&self, user_id: &str, live: Live) -> Result<Outcome>
    where
        Live: std::future::Future<Output = std::result::Result<u64, String>>,
    {
        let _serial = self.serial.lock().await;
        let holds = self.holds.active().await;
        if let Some(hold) = holds.iter().find(|hold| hold.holds_user(user_id)) {
            return Err(under_hold(hold));
        }
        self.catch_up().await?;
        let events = self.store.open_or_create(Table::MessageEvents).await?;
        let with_body = col("sender_id").eq(lit(user_id)).and(col("body").is_not_null());
        let conversations =
            distinct_texts(scan(&events).await?.filter(with_body.clone()).map_err(query)?.select(vec![col("conversation_id")]).map_err(query)?).await?;
        if let Some(hold) = holds.iter().find(|hold| conversations.iter().any(|conversation| hold.holds_conversation(conversation))) {
            return Err(under_hold(hold));
        }
        let live_messages = live.await.map_err(Error::Live)?;
        if conversations.is_empty() {
            return Ok(Outcome { rows: 0, files_removed: 0, live_messages });
        }
        let (rows, files_removed) = self
            .rewrite_events(|events| async move {
                let cleared = lit(deltalake::datafusion::common::ScalarValue::Utf8(None));
                let (events, metrics) = events.update().with_predicate(with_body).with_update("body", cleared).await.map_err(delta)?;
                Ok((events, metrics.num_updated_rows as u64))
            })
            .await?;
        tracing::info!(user_id, rows, files_removed, live_messages, "erasure cleared message bodies");
        Ok(Outcome { rows, files_removed, live_messages })
    }

    /// Steps 3 to 5 of both operations: once the sink has written what the
    /// log holds (the live deletes included), and with the sink paused,
    /// `change` commits to `message_events`; then the vacuum, then the sink
    /// reopens its tables. Returns the rows `change` reports and the files
    /// the vacuum removed.
    async fn rewrite_events<Change, Changed>(&self, change: Change) -> Result<(u64, u64)>
    where
        Change: FnOnce(DeltaTable) -> Changed,
        Changed: std::future::Future<Output = Result<(DeltaTable, u64)>>,
    {
        self.catch_up().await?;
        let _alone = self.pause_sink().await;
        let events = self.store.open_or_create(Table::MessageEvents).await?;
        let (events, rows) = change(events).await?;
        let files_removed = self.vacuum(events).await?;
        self.reopen_sink();
        Ok((rows, files_removed))
    }

    /// Waits until the sink has written every record durable in the log now.
    async fn catch_up(&self) -> Result<()> {
        let Some(sink) = &self.sink else { return Ok(()) };
        let mut heads = Vec::new();
        for partition in 0..self.log.partition_count() {
            heads.push(*self.log.subscribe(partition)?.borrow());
        }
        sink.flush_requests.send_modify(|requests| *requests += 1);
        for (written, head) in sink.written.iter().zip(heads) {
            let mut written = written.clone();
            let caught_up = tokio::time::timeout(CATCH_UP_TIMEOUT, written.wait_for(|offset| *offset >= head)).await;
            match caught_up {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return Err(Error::HistoryBehind),
            }
        }
        Ok(())
    }

    async fn pause_sink(&self) -> Option<tokio::sync::OwnedRwLockWriteGuard<()>> {
        match &self.sink {
            Some(sink) => Some(sink.writers.clone().write_owned().await),
            None => None,
        }
    }

    fn reopen_sink(&self) {
        if let Some(sink) = &self.sink {
            sink.rewrites.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Removes the files the last commit made unreachable, now.
    async fn vacuum(&self, events: DeltaTable) -> Result<u64> {
        let (_, metrics) = events
            .vacuum()
            .with_mode(VacuumMode::Lite)
            .with_retention_period(chrono::Duration::zero())
            .with_enforce_retention_duration(false)
            .await
            .map_err(delta)?;
        Ok(metrics.files_deleted.len() as u64)
    }
}

fn under_hold(hold: &Hold) -> Error {
    Error::UnderHold { hold_id: hold.hold_id.clone(), target: format!("{} `{}`", hold.target_type, hold.target_id) }
}

fn delta(source: deltalake::DeltaTableError) -> Error {
    Error::Delta { table: Table::MessageEvents.name(), source }
}

fn query(error: deltalake::datafusion::error::DataFusionError) -> Error {
    Error::Query(error.to_string())
}

fn lit_time(ms: i64) -> Expr {
    lit(deltalake::datafusion::common::ScalarValue::TimestampMicrosecond(Some(ms.saturating_mul(1_000)), Some("UTC".into())))
}

async fn scan(table: &DeltaTable) -> Result<DataFrame> {
    let provider = table.table_provider().await.map_err(|source| Error::Delta { table: Table::MessageEvents.name(), source: source.into() })?;
    SessionContext::new().read_table(provider).map_err(query)
}

async fn collect(frame: DataFrame) -> Result<Vec<Vec<Value>>> {
    let columns = frame.schema().fields().iter().map(|field| field.name().clone()).collect();
    let batches = frame.collect().await.map_err(query)?;
    crate::output::to_json_rows(&QueryOutput { columns, batches })
}

async fn scalar_i64(frame: DataFrame) -> Result<Option<i64>> {
    Ok(collect(frame).await?.first().and_then(|row| row.first()).and_then(Value::as_i64))
}

async fn distinct_texts(frame: DataFrame) -> Result<BTreeSet<String>> {
    let rows = collect(frame.distinct().map_err(query)?).await?;
    Ok(rows.into_iter().filter_map(|row| row.into_iter().next()).filter_map(|value| value.as_str().map(str::to_string)).collect())
}
