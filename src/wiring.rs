//! Where layers that do not know each other meet: the pipelines see the
//! state and the write path only through the traits they define, and these
//! are their implementations over [`Ingest`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use confab_ingest::Ingest;
use confab_log::{FileLog, Offset};
use confab_pipelines::definition;
use confab_pipelines::runtime::BoxFuture;
use confab_pipelines::{DeliveryView, DeviceReceipt, PipelineSpec, ReceiptSink, RecordEvent};
use confab_schemas::events::{DeliveryReceipt, LogEvent};
use tokio::sync::watch;

/// The state and write path, as the pipelines see them.
pub struct IngestView(pub Arc<Ingest>);

impl DeliveryView for IngestView {
    fn applied(&self, partition: u32) -> watch::Receiver<Offset> {
        self.0.subscribe_applied(partition)
    }

    fn record_events(&self, partition: u32, offset: Offset, event: &LogEvent) -> Result<Vec<RecordEvent>, String> {
        let events = self.0.events_at(partition, offset, event).map_err(|error| error.to_string())?;
        Ok(events.into_iter().map(|at| RecordEvent { index: at.index, event: at.event, recipients: at.recipients, member_count: at.member_count }).collect())
    }
}

impl ReceiptSink for IngestView {
    fn write(&self, conversation_id: String, receipts: Vec<DeviceReceipt>) -> BoxFuture<Result<(), String>> {
        let ingest = self.0.clone();
        Box::pin(async move {
            let receipts =
                receipts.into_iter().map(|receipt| DeliveryReceipt { user_id: receipt.user_id, device_id: receipt.device_id, seq: receipt.seq }).collect();
            ingest.record_delivered(&conversation_id, receipts).await.map_err(|error| error.to_string())
        })
    }
}

/// Without a fanout stage, conversations above this size count as large.
const DEFAULT_LARGE_CONVERSATION_MEMBERS: usize = 1_000;

/// The fanout's size above which conversations are delivered online only,
/// without receipts, typing and membership changes broadcast to everyone.
pub fn large_conversation_members(specs: &[PipelineSpec]) -> usize {
    specs
        .iter()
        .flat_map(|spec| spec.stages.iter())
        .find_map(|stage| match stage {
            confab_pipelines::Stage::Fanout { large_conversation_members } => Some(*large_conversation_members),
            _ => None,
        })
        .unwrap_or(DEFAULT_LARGE_CONVERSATION_MEMBERS)
}

/// Logins and audit for the PostgreSQL protocol, over the accounts and
/// the login limits HTTP keeps.
pub struct PgAccountsView {
    pub state: confab_gateway::AppState,
}

#[async_trait::async_trait]
impl confab_query::pgwire::PgAccounts for PgAccountsView {
    async fn login(&self, username: &str, password: &str, peer: std::net::IpAddr) -> confab_query::pgwire::Login {
        use confab_gateway::login::LoginCheck;
        use confab_query::pgwire::Login;
        let user = match confab_gateway::login::check_password(&self.state, username, password, Some(peer)).await {
            Ok(LoginCheck::Valid(user)) => user,
            Ok(LoginCheck::Wrong) => return Login::Refused,
            Ok(LoginCheck::Limited(retry_after_secs)) => return Login::Limited { retry_after_secs },
            Err(error) => {
                tracing::error!(error = %error.message, "could not check a PostgreSQL-protocol login");
                return Login::Refused;
            }
        };
        match self.state.ingest.has_role(&user.user_id, confab_schemas::events::AccountRole::Compliance) {
            Ok(true) => Login::Allowed { user_id: user.user_id.clone() },
            _ => Login::Refused,
        }
    }

    async fn audit(&self, user_id: &str, details: String) -> Result<(), String> {
        self.state.ingest.record_audit(user_id, "sql.query", details).await.map_err(|error| error.to_string())
    }

    async fn still_allowed(&self, user_id: &str) -> bool {
        self.state.ingest.has_role(user_id, confab_schemas::events::AccountRole::Compliance).unwrap_or(false)
    }
}

/// The history sink's settings, if a pipeline has a `delta_sink` stage.
pub fn history_sink(specs: &[PipelineSpec]) -> Option<confab_query::SinkConfig> {
    specs.iter().find_map(|spec| {
        spec.stages.iter().find_map(|stage| match stage {
            confab_pipelines::Stage::DeltaSink { flush_rows, flush_interval_ms, compact_every_commits } => Some(confab_query::SinkConfig {
                flush_rows: *flush_rows,
                flush_interval_ms: *flush_interval_ms,
                compact_every_commits: *compact_every_commits,
                consumer: spec.name.clone(),
                ..confab_query::SinkConfig::default()
            }),
            _ => None,
        })
    })
}

/// The search indexer's settings, if a pipeline has a `search_index` stage.
pub fn search_indexer(specs: &[PipelineSpec]) -> Option<confab_search::IndexerConfig> {
    specs.iter().find_map(|spec| {
        spec.stages.iter().find_map(|stage| match stage {
            confab_pipelines::Stage::SearchIndex { commit_interval_ms } => {
                Some(confab_search::IndexerConfig { consumer: spec.name.clone(), commit_interval: std::time::Duration::from_millis(*commit_interval_ms) })
            }
            _ => None,
        })
    })
}

/// Opens the configured index engine and starts the indexing pipeline into
/// it, both on the background runtime `spawner` (so that tantivy's threads,
/// created by the engine's writer, inherit its lower priority).
pub async fn start_search(
    config: &crate::config::Config,
    ingest: Arc<Ingest>,
    log: Arc<dyn confab_log::Log>,
    indexer: confab_search::IndexerConfig,
    spawner: &tokio::runtime::Handle,
    instance_id: &str,
) -> anyhow::Result<confab_search::Search> {
    use anyhow::Context;
    let (search_config, dir, instance_id) = (config.search.clone(), config.search_dir(), instance_id.to_string());
    let started = spawner.spawn(async move {
        let engine: Arc<dyn confab_search::Engine> = match search_config.engine {
            confab_search::EngineKind::Embedded => {
                let engine =
                    tokio::task::spawn_blocking(move || confab_search::embedded::Embedded::open(&dir)).await?.context("could not open the search index")?;
                Arc::new(engine)
            }
            confab_search::EngineKind::Clickhouse => {
                Arc::new(confab_search::clickhouse::Clickhouse::open(&search_config.clickhouse, &instance_id).await.with_context(|| {
                    format!("could not open the search index on ClickHouse at `{}` ([search.clickhouse] url)", search_config.clickhouse.url)
                })?)
            }
        };
        confab_search::Search::start(engine, ingest, log, indexer).await.context("could not start the search indexer")
    });
    started.await?
}

/// Starts the analytics sink on the background runtime `spawner`.
pub async fn start_analytics(
    clickhouse: &confab_analytics::ClickhouseConfig,
    log: Arc<dyn confab_log::Log>,
    sink: confab_analytics::SinkConfig,
    spawner: &tokio::runtime::Handle,
    instance_id: &str,
) -> anyhow::Result<confab_analytics::Analytics> {
    use anyhow::Context;
    let (clickhouse, instance_id) = (clickhouse.clone(), instance_id.to_string());
    let started = spawner.spawn(async move {
        confab_analytics::Analytics::start(&clickhouse, &instance_id, log, sink)
            .await
            .with_context(|| format!("could not start the analytics on ClickHouse at `{}` ([analytics.clickhouse] url)", clickhouse.url))
    });
    started.await?
}

/// The analytics sink's settings, if a pipeline has a `clickhouse_sink` stage.
pub fn analytics_sink(specs: &[PipelineSpec]) -> Option<confab_analytics::SinkConfig> {
    specs.iter().find_map(|spec| {
        spec.stages.iter().find_map(|stage| match stage {
            confab_pipelines::Stage::ClickhouseSink { flush_rows, flush_interval_ms } => Some(confab_analytics::SinkConfig {
                consumer: spec.name.clone(),
                flush_rows: *flush_rows,
                flush_interval: std::time::Duration::from_millis(*flush_interval_ms),
            }),
            _ => None,
        })
    })
}

/// Every consumer of the log this configuration runs: the state, and each
/// pipeline that reads the log (named after it), but the analytics one
/// when analytics are off (it would hold the log back forever).
pub fn log_consumers(specs: &[PipelineSpec], analytics_on: bool) -> Vec<String> {
    let mut consumers = vec![confab_ingest::STATE_CONSUMER.to_string()];
    consumers.extend(
        specs
            .iter()
            .filter(|spec| spec.source == confab_pipelines::definition::Source::Log)
            .filter(|spec| analytics_on || !spec.stages.iter().any(|stage| matches!(stage, confab_pipelines::Stage::ClickhouseSink { .. })))
            .map(|spec| spec.name.clone()),
    );
    consumers
}

/// Forgets the consumers of pipelines that no longer run (an operator
/// removed or renamed one), so that they stop holding the log against
/// retention. A pipeline added back later starts at the head again.
pub fn drop_stale_consumers(log: &dyn confab_log::Log, wanted: &[String]) -> anyhow::Result<()> {
    for consumer in log.consumers()? {
        if !wanted.contains(&consumer) {
            tracing::warn!(consumer, "a log consumer no longer runs: forgetting it so it stops holding the log");
            log.remove_consumer(&consumer)?;
        }
    }
    Ok(())
}

/// The pipeline definitions to run: the operator's folder, or the shipped
/// ones. Any problem in any file stops the server before it starts.
pub fn load_pipelines(dir: Option<&PathBuf>) -> anyhow::Result<Vec<PipelineSpec>> {
    let files = match dir {
        Some(dir) => definition::read_dir(dir).map_err(|error| anyhow::anyhow!("could not read pipeline definitions in `{}`: {error}", dir.display()))?,
        None => definition::shipped(),
    };
    match definition::validate(&files) {
        Ok(specs) => Ok(specs),
        Err(problems) => {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            bail!("invalid pipeline definitions; nothing was started:\n{}", lines.join("\n"))
        }
    }
}

/// `/readyz` over the log and the history sink.
pub struct ReadinessView {
    pub log: Arc<FileLog>,
    pub sink: Option<confab_query::SinkHandle>,
    pub push: Option<Arc<crate::push::PushWiring>>,
    pub workflows: crate::workflows::Workflows,
    pub analytics: Option<Arc<confab_analytics::Analytics>>,
    pub log_metrics: LogMetrics,
    /// Where everything is stored (for the bytes on disk `confab status` shows).
    pub data_dir: PathBuf,
}

/// Bytes of the files under `path`, all the way down (symlinks not followed;
/// files that vanish while it walks are skipped).
fn bytes_under(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => bytes_under(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |metadata| metadata.len()),
            _ => 0,
        })
        .sum()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
    partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct PartitionLabels {
    partition: u32,
}

/// The log's part of `/metrics`: its fsync histogram (kept by the writer)
/// and, read at each scrape, how far behind the log's durable end each
/// consumer's committed offset and the history sink's written offset are.
pub struct LogMetrics {
    registry: prometheus_client::registry::Registry,
    consumer_lag: prometheus_client::metrics::family::Family<ConsumerLabels, prometheus_client::metrics::gauge::Gauge>,
    sink_lag: prometheus_client::metrics::family::Family<PartitionLabels, prometheus_client::metrics::gauge::Gauge>,
}

impl LogMetrics {
    pub fn new(log: &FileLog) -> LogMetrics {
        let mut registry = prometheus_client::registry::Registry::with_prefix("confab");
        registry.register("log_fsync_duration_seconds", "One group commit's fsyncs (every durable append waits for one)", log.fsync_histogram());
        let consumer_lag = prometheus_client::metrics::family::Family::default();
        registry.register(
            "log_consumer_lag_records",
            "Records durable in the log and not yet committed by a consumer, by consumer and partition",
            consumer_lag.clone(),
        );
        let sink_lag = prometheus_client::metrics::family::Family::default();
        registry.register("history_sink_lag_records", "Records durable in the log and not yet written to the Delta history, by partition", sink_lag.clone());
        LogMetrics { registry, consumer_lag, sink_lag }
    }

    fn render(&self, log: &FileLog, sink: Option<&confab_query::SinkHandle>, out: &mut String) {
        // Cleared first: a consumer dropped since the last scrape disappears.
        self.consumer_lag.clear();
        self.sink_lag.clear();
        let (ends, consumers) = consumer_positions(log);
        for consumer in consumers {
            for position in consumer.partitions {
                let labels = ConsumerLabels { consumer: consumer.name.clone(), partition: position.partition };
                self.consumer_lag.get_or_create(&labels).set(position.lag as i64);
            }
        }
        if let Some(sink) = sink {
            for (partition, lag) in sink_lags(sink, &ends).into_iter().enumerate() {
                self.sink_lag.get_or_create(&PartitionLabels { partition: partition as u32 }).set(lag as i64);
            }
        }
        let _ = prometheus_client::encoding::prometheus_text::encode(out, &self.registry);
    }
}

/// The log's durable end of each partition, and each registered consumer's
/// committed offset against it (for `/metrics` and `confab status` alike).
fn consumer_positions(log: &FileLog) -> (Vec<u64>, Vec<confab_gateway::ConsumerStatus>) {
    use confab_gateway::{ConsumerPosition, ConsumerStatus};
    use confab_log::Log;
    let ends: Vec<u64> = (0..log.partition_count()).map(|partition| log.durable_end(partition).unwrap_or(0)).collect();
    let consumers = log
        .consumers()
        .unwrap_or_default()
        .into_iter()
        .map(|name| {
            let positions: Vec<ConsumerPosition> = ends
                .iter()
                .enumerate()
                .filter_map(|(partition, &end)| {
                    let committed = log.committed_offset(&name, partition as u32).ok().flatten()?;
                    Some(ConsumerPosition { partition: partition as u32, committed, end, lag: end.saturating_sub(committed) })
                })
                .collect();
            ConsumerStatus { lag: positions.iter().map(|position| position.lag).sum(), name, partitions: positions }
        })
        .collect();
    (ends, consumers)
}

/// Per partition, the records durable in the log and not yet in the history.
fn sink_lags(sink: &confab_query::SinkHandle, ends: &[u64]) -> Vec<u64> {
    ends.iter().enumerate().map(|(partition, end)| end.saturating_sub(sink.written_up_to(partition as u32))).collect()
}

impl confab_gateway::Readiness for ReadinessView {
    fn parts(&self) -> Vec<(&'static str, Option<String>)> {
        let poisoned = self.log.poisoned_partitions();
        let log = (!poisoned.is_empty())
            .then(|| format!("log partitions {poisoned:?} refuse writes after a failed write to disk; fix the disk and restart the server"));
        let sink = self.sink.as_ref().and_then(|sink| {
            let failing = sink.failing();
            (!failing.is_empty()).then(|| {
                let listed: Vec<String> = failing.iter().map(|(partition, error)| format!("partition {partition}: {error}")).collect();
                format!("the history sink is failing and restarting with backoff ({})", listed.join("; "))
            })
        });
        let analytics = self.analytics.as_ref().and_then(|analytics| {
            let failing = analytics.failing();
            (!failing.is_empty()).then(|| {
                let listed: Vec<String> = failing.iter().map(|(partition, error)| format!("partition {partition}: {error}")).collect();
                format!("the analytics sink is failing and restarting with backoff ({})", listed.join("; "))
            })
        });
        vec![("log", log), ("history_sink", sink), ("analytics", analytics)]
    }

    fn sink_restarts(&self) -> u64 {
        self.sink.as_ref().map_or(0, confab_query::SinkHandle::restarts)
    }

    fn status(&self) -> confab_gateway::PartsStatus {
        use confab_gateway::{DiskUse, LogStatus, SinkStatus};
        use confab_log::Log;
        let (ends, consumers) = consumer_positions(&self.log);
        let mut log = LogStatus { partitions: self.log.partition_count(), ..LogStatus::default() };
        for (partition, end) in ends.iter().enumerate() {
            log.records += end.saturating_sub(self.log.earliest(partition as u32).unwrap_or(0));
            let segments = self.log.segments(partition as u32).unwrap_or_default();
            log.segments += segments.len() as u64;
            log.bytes += segments.iter().map(|segment| segment.size_bytes).sum::<u64>();
        }
        let history_sink = self.sink.as_ref().map(|sink| SinkStatus {
            lag: sink_lags(sink, &ends).iter().sum(),
            restarts: sink.restarts(),
            failing: sink.failing().into_iter().map(|(partition, error)| format!("partition {partition}: {error}")).collect(),
        });
        let mut disk: Vec<DiskUse> = std::fs::read_dir(&self.data_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                    .map(|entry| DiskUse { part: entry.file_name().to_string_lossy().into_owned(), bytes: bytes_under(&entry.path()) })
                    .collect()
            })
            .unwrap_or_default();
        disk.sort_by(|a, b| a.part.cmp(&b.part));
        confab_gateway::PartsStatus { log, consumers, history_sink, disk }
    }

    fn extra_metrics(&self, out: &mut String) {
        self.log_metrics.render(&self.log, self.sink.as_ref(), out);
        match &self.push {
            Some(push) => push.metrics.render(self.workflows.stats(), out),
            None => crate::push::PushMetrics::default().render(self.workflows.stats(), out),
        }
    }
}

/// Retention and erasure's view of the state: deletions as a sender's
/// deletes, and the audit log.
pub struct LiveMessagesView {
    pub ingest: Arc<Ingest>,
    /// The media layer, which deletes the files of the uploads the deleted
    /// messages carried. Weakly: the media layer holds the workflow engine,
    /// which holds the retention activities, which hold this.
    pub media: std::sync::Weak<confab_media::Media>,
    /// The search index, whose files must lose the deleted text too.
    pub search: Option<Arc<confab_search::Search>>,
    /// The analytics tables, which retention purges too.
    pub analytics: Option<Arc<confab_analytics::Analytics>>,
}

#[async_trait::async_trait]
impl confab_query::LiveMessages for LiveMessagesView {
    async fn delete(&self, actor: &confab_query::Actor, scope: confab_query::Scope<'_>) -> Result<u64, String> {
        let caller = confab_ingest::Caller { user_id: actor.user_id.clone(), device_id: actor.device_id.clone() };
        let asked = scope;
        let (scope, reason) = match scope {
            confab_query::Scope::SentBy(user_id) => (confab_ingest::ComplianceScope::SentBy(user_id), "erasure"),
            confab_query::Scope::ConversationBefore { conversation_id, before_ms } => {
                (confab_ingest::ComplianceScope::ConversationBefore { conversation_id, before_ms }, "retention")
            }
        };
        let deletion = self.ingest.delete_for_compliance(&caller, scope).await.map_err(|error| error.to_string())?;
        // Then the files of what the messages carried (a failure here fails
        // the run, which is retried; the sweep is the last resort).
        if !deletion.released_media.is_empty() {
            let media = self.media.upgrade().ok_or("the server is stopping")?;
            let removed = media.release(&deletion.released_media, reason).await.map_err(|error| format!("deleting the media of deleted messages: {error}"))?;
            tracing::info!(removed, reason, "deleted the media of deleted messages");
        }
        // Then the index: once it has seen the deletes, what held the text
        // is rewritten (a failure fails the run, which is retried).
        if let Some(search) = &self.search {
            // Also when this run deleted nothing new: a retried run after a failed purge.
            if deletion.messages > 0 || search.purge_pending() {
                let dropped = search.purge_removed().await.map_err(|error| format!("purging the search index: {error}"))?;
                tracing::info!(dropped, reason, "purged deleted messages from the search index files");
            }
        }
        // Then the analytics (retention only: they hold no body to erase).
        if let (Some(analytics), confab_query::Scope::ConversationBefore { conversation_id, before_ms }) = (&self.analytics, asked) {
            // Also when this run deleted nothing new: a retried run after a failed purge.
            let purged = analytics
                .purge_conversation_before(conversation_id, before_ms)
                .await
                .map_err(|error| format!("purging the analytics ({}): {error}", error.code()))?;
            tracing::info!(conversation_id, message_events = purged.message_events, receipts = purged.receipts, "retention purged the analytics");
        }
        Ok(deletion.messages)
    }

    async fn audit(&self, actor_id: &str, action: &str, details: String) -> Result<(), String> {
        self.ingest.record_audit(actor_id, action, details).await.map_err(|error| error.to_string())
    }

    async fn conversations(&self) -> Result<Vec<String>, String> {
        let ingest = self.ingest.clone();
        tokio::task::spawn_blocking(move || ingest.conversation_ids()).await.map_err(|error| error.to_string())?.map_err(|error| error.to_string())
    }

    async fn conversation_exists(&self, conversation_id: &str) -> Result<bool, String> {
        self.ingest.conversation_exists(conversation_id).map_err(|error| error.to_string())
    }
}
