//! Running validated pipelines: one task per partition for a log-sourced
//! pipeline, one aggregator task for device receipts.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use confab_log::{Log, Offset, StartAt, TailReader};
use confab_schemas::api::ClientEvent;
use confab_schemas::cursor::Position;
use confab_schemas::events::LogEvent;
use confab_schemas::trace::TraceParent;
use confab_telemetry::Span;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::definition::{PipelineSpec, Source, Stage};
use crate::hub::{Hub, Outbound, Traced};

/// What the fanout pipeline needs to know of the state built from the log.
pub trait DeliveryView: Send + Sync + 'static {
    /// One past the last offset of `partition` applied to the state.
    fn applied(&self, partition: u32) -> watch::Receiver<Offset>;
    /// The client events of the record at `offset`, each with who may see it.
    fn record_events(&self, partition: u32, offset: Offset, event: &LogEvent) -> Result<Vec<RecordEvent>, String>;
}

/// One client event of a log record, and its recipients.
#[derive(Debug, Clone)]
pub struct RecordEvent {
    /// Its index among the record's events (a record can yield several).
    pub index: u32,
    pub event: ClientEvent,
    /// Users who were members when it happened (shared by the record's events).
    pub recipients: Arc<[String]>,
    pub member_count: usize,
}

/// A device has every message of a conversation up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReceipt {
    pub conversation_id: String,
    pub user_id: String,
    pub device_id: String,
    pub seq: u64,
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The push stage's rules, from its pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushRules {
    pub large_conversation_members: usize,
    pub ttl_secs: u64,
}

/// Where the push stage hands the records that may push, a read batch at
/// a time (the binary implements it: it reads the state, decides with
/// [`crate::push::wants_push`] and starts the push workflows). It must be
/// idempotent per offset: after a restart the stage reads again from its
/// last commit.
pub trait Pusher: Send + Sync + 'static {
    fn records(&self, partition: u32, records: Vec<(Offset, LogEvent)>, rules: PushRules) -> BoxFuture<()>;
}

/// Where coalesced receipts go (the log, through the write path).
pub trait ReceiptSink: Send + Sync + 'static {
    fn write(&self, conversation_id: String, receipts: Vec<DeviceReceipt>) -> BoxFuture<Result<(), String>>;
}

/// Records read from the log at once.
const READ_BATCH_RECORDS: usize = 1_024;
const READ_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How often a pipeline commits its offsets (each commit is an fsync).
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Device receipts queued for the aggregator before new ones are dropped
/// (receipts are cumulative: a dropped one is made good by the next).
const RECEIPT_QUEUE_MAX: usize = 65_536;

/// The running pipelines.
pub struct Runtime {
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    receipts: Option<mpsc::Sender<DeviceReceipt>>,
    large_conversation_members: usize,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Runtime").field("tasks", &self.tasks.lock().len()).finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn start(
        specs: Vec<PipelineSpec>,
        log: Arc<dyn Log>,
        view: Arc<dyn DeliveryView>,
        hub: Arc<Hub>,
        sink: Arc<dyn ReceiptSink>,
        pusher: Option<Arc<dyn Pusher>>,
    ) -> Runtime {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut receipts = None;
        let mut large_conversation_members = usize::MAX;
        for spec in specs {
            // The history sink is run by the query layer, the search index
            // by the search layer and the analytics by theirs (see the
            // binary's wiring).
            if spec.stages.iter().any(|stage| matches!(stage, Stage::DeltaSink { .. } | Stage::SearchIndex { .. } | Stage::ClickhouseSink { .. })) {
                continue;
            }
            match spec.source {
                Source::Log => {
                    let mut plan = LogPlan::from_stages(&spec.stages);
                    if plan.push.is_some() && pusher.is_none() {
                        tracing::warn!(pipeline = spec.name, "no push service is configured ([push.apns] or [push.fcm]): the push stage is idle");
                        plan.push = None;
                    }
                    let plan = Arc::new(plan);
                    if let Some(threshold) = plan.fanout_threshold {
                        large_conversation_members = threshold;
                    }
                    for partition in 0..log.partition_count() {
                        let task = LogTask {
                            name: spec.name.clone(),
                            partition,
                            log: log.clone(),
                            view: view.clone(),
                            hub: hub.clone(),
                            plan: plan.clone(),
                            pusher: pusher.clone(),
                        };
                        tasks.push(tokio::spawn(task.run(stopped.clone())));
                    }
                }
                Source::DeviceReceipts => {
                    let (sender, receiver) = mpsc::channel(RECEIPT_QUEUE_MAX);
                    let (flush, per_record) = spec
                        .stages
                        .iter()
                        .find_map(|stage| match stage {
                            Stage::AggregateReceipts { flush_interval_ms, max_receipts_per_record } => Some((*flush_interval_ms, *max_receipts_per_record)),
                            _ => None,
                        })
                        .unwrap_or((250, 1_000));
                    tasks.push(tokio::spawn(aggregate_receipts(receiver, sink.clone(), Duration::from_millis(flush), per_record, stopped.clone())));
                    receipts = Some(sender);
                }
            }
        }
        Runtime { tasks: parking_lot::Mutex::new(tasks), stop, receipts, large_conversation_members }
    }

    /// Hands a device's receipt to the aggregator; false if it was dropped.
    pub fn submit_receipt(&self, receipt: DeviceReceipt) -> bool {
        self.receipts.as_ref().is_some_and(|sender| sender.try_send(receipt).is_ok())
    }

    /// Conversations above this size get online-only delivery and no broadcast receipts or typing.
    pub fn large_conversation_members(&self) -> usize {
        self.large_conversation_members
    }

    /// Stops every pipeline after its current batch and commits its offsets.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// What a log-sourced pipeline does to each event.
#[derive(Debug)]
struct LogPlan {
    allowed_types: Option<Vec<String>>,
    fanout_threshold: Option<usize>,
    push: Option<PushRules>,
}

impl LogPlan {
    fn from_stages(stages: &[Stage]) -> LogPlan {
        let mut plan = LogPlan { allowed_types: None, fanout_threshold: None, push: None };
        for stage in stages {
            match stage {
                Stage::Filter { event_types } => plan.allowed_types = Some(event_types.clone()),
                Stage::Fanout { large_conversation_members } => plan.fanout_threshold = Some(*large_conversation_members),
                Stage::Push { large_conversation_members, ttl_secs } => {
                    plan.push = Some(PushRules { large_conversation_members: *large_conversation_members, ttl_secs: *ttl_secs })
                }
                Stage::AggregateReceipts { .. } | Stage::DeltaSink { .. } | Stage::SearchIndex { .. } | Stage::ClickhouseSink { .. } => {}
            }
        }
        plan
    }

    fn allows(&self, event: &ClientEvent) -> bool {
        self.allowed_types.as_ref().is_none_or(|allowed| allowed.iter().any(|name| name == event_type(event)))
    }
}

pub fn event_type(event: &ClientEvent) -> &'static str {
    match event {
        ClientEvent::MessageNew { .. } => "message.new",
        ClientEvent::MessageEdit { .. } => "message.edit",
        ClientEvent::MessageDelete { .. } => "message.delete",
        ClientEvent::ReceiptDelivered { .. } => "receipt.delivered",
        ClientEvent::ReceiptRead { .. } => "receipt.read",
        ClientEvent::ConversationMember { .. } => "conversation.member",
        ClientEvent::MediaUpdate { .. } => "media.update",
    }
}

/// One partition of one log-sourced pipeline.
struct LogTask {
    name: String,
    partition: u32,
    log: Arc<dyn Log>,
    view: Arc<dyn DeliveryView>,
    hub: Arc<Hub>,
    plan: Arc<LogPlan>,
    pusher: Option<Arc<dyn Pusher>>,
}

impl LogTask {
    /// Reads the log through the shared tail reader, as the registered
    /// consumer named after the pipeline, up to what the state has applied.
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        // A new pipeline starts at the head: devices catch up on the past through their cursors.
        let reader = TailReader::open(self.log.clone(), &self.name, self.partition, StartAt::End);
        let mut reader = match reader {
            Ok(reader) => reader.bounded_by(self.view.applied(self.partition)),
            Err(error) => {
                tracing::error!(%error, pipeline = self.name, partition = self.partition, "the pipeline cannot read the log; restart the server to retry");
                return;
            }
        };
        let mut committed = reader.position();
        // Commits also when idle, so a quiet log is not held by this pipeline.
        let mut commit_ticks = tokio::time::interval(COMMIT_INTERVAL);
        commit_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                batch = reader.next_batch(READ_BATCH_RECORDS, READ_BATCH_BYTES) => batch,
                _ = commit_ticks.tick() => {
                    if reader.position() != committed {
                        self.commit(&reader);
                        committed = reader.position();
                    }
                    continue;
                }
                _ = stopped.changed() => break,
            };
            match batch {
                Ok(records) => {
                    let mut to_push = Vec::new();
                    let mut push_spans = Vec::new();
                    for record in records {
                        match LogEvent::decode(&record.payload) {
                            Ok(event) => {
                                let trace = event.trace();
                                if self.plan.fanout_threshold.is_some() {
                                    let mut stage = self.stage_span("fanout", trace, record.offset);
                                    self.deliver(record.offset, &event, &mut stage);
                                }
                                if self.plan.push.is_some() && matches!(event, LogEvent::MessageCreated { .. } | LogEvent::ReadCursorMoved { .. }) {
                                    push_spans.push(self.stage_span("push", trace, record.offset));
                                    to_push.push((record.offset, event));
                                }
                            }
                            Err(error) => {
                                tracing::error!(%error, pipeline = self.name, partition = self.partition, offset = record.offset, "skipping an unreadable record")
                            }
                        }
                    }
                    if let (Some(rules), Some(pusher), false) = (self.plan.push, &self.pusher, to_push.is_empty()) {
                        pusher.records(self.partition, to_push, rules).await;
                    }
                    // Each traced record's push span covers its read batch's hand-over.
                    drop(push_spans);
                }
                Err(confab_log::Error::Closed) => break,
                Err(error) => {
                    tracing::error!(%error, pipeline = self.name, partition = self.partition, "reading the log failed; retrying in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.commit(&reader);
    }

    fn commit(&self, reader: &TailReader) {
        if let Err(error) = reader.commit(reader.position()) {
            tracing::warn!(%error, pipeline = self.name, partition = self.partition, "could not commit the pipeline's offset");
        }
    }

    /// A stage's span for a traced record (`{pipeline}/{stage}`).
    fn stage_span(&self, stage: &str, trace: Option<TraceParent>, offset: Offset) -> Span {
        Span::record(|| format!("{}/{stage}", self.name), trace, self.partition, offset)
    }

    /// Queues the record's events for their recipients; `span` is the
    /// stage's, whose context the frames carry to each socket's write.
    fn deliver(&self, offset: Offset, event: &LogEvent, span: &mut Span) {
        let Some(threshold) = self.plan.fanout_threshold else { return };
        let trace = span.context().map(|parent| Traced { parent, queued_at: SystemTime::now() });
        let origin_device = event.origin_device();
        let ts_ms = event.ts().unwrap_or(0);
        let record_events = match self.view.record_events(self.partition, offset, event) {
            Ok(record_events) => record_events,
            Err(error) => {
                tracing::error!(%error, pipeline = self.name, partition = self.partition, offset, "could not read a record's events; devices catch up by sync");
                span.fail(error);
                return;
            }
        };
        for record_event in record_events {
            if !self.plan.allows(&record_event.event) {
                continue;
            }
            let large = record_event.member_count > threshold;
            // In a large conversation, receipts and membership changes go only
            // to the user they are about: broadcast, they would be members x
            // events frames. Others learn them by sync or the members list.
            let only_for = match &record_event.event {
                ClientEvent::ReceiptDelivered { user_id, .. } | ClientEvent::ReceiptRead { user_id, .. } | ClientEvent::ConversationMember { user_id, .. } => {
                    Some(user_id.clone())
                }
                _ => None,
            };
            let json: Arc<str> = serde_json::to_string(&record_event.event).expect("client events serialize").into();
            span.attr("confab.recipients", record_event.recipients.len() as i64);
            let frame = Outbound::Durable { partition: self.partition, position: Position { offset, skip: record_event.index }, json, ts_ms, trace };
            match (large, only_for) {
                (true, Some(user_id)) => self.hub.deliver(&user_id, None, &frame),
                _ => {
                    for user_id in record_event.recipients.iter() {
                        self.hub.deliver(user_id, origin_device, &frame);
                    }
                }
            }
        }
    }
}

/// Coalesces device receipts: per conversation, the highest seq per device,
/// written as records of at most `per_record` receipts every `flush`.
async fn aggregate_receipts(
    mut receiver: mpsc::Receiver<DeviceReceipt>,
    sink: Arc<dyn ReceiptSink>,
    flush: Duration,
    per_record: usize,
    mut stopped: watch::Receiver<bool>,
) {
    let mut pending: HashMap<String, HashMap<(String, String), u64>> = HashMap::new();
    let mut ticks = tokio::time::interval(flush);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Some(receipt) => {
                    let seq = pending.entry(receipt.conversation_id).or_default().entry((receipt.user_id, receipt.device_id)).or_insert(0);
                    *seq = (*seq).max(receipt.seq);
                }
                None => break,
            },
            _ = ticks.tick() => flush_receipts(&mut pending, &*sink, per_record).await,
            _ = stopped.changed() => break,
        }
    }
    flush_receipts(&mut pending, &*sink, per_record).await;
}

async fn flush_receipts(pending: &mut HashMap<String, HashMap<(String, String), u64>>, sink: &dyn ReceiptSink, per_record: usize) {
    for (conversation_id, devices) in pending.drain() {
        let receipts: Vec<DeviceReceipt> = devices
            .into_iter()
            .map(|((user_id, device_id), seq)| DeviceReceipt { conversation_id: conversation_id.clone(), user_id, device_id, seq })
            .collect();
        for chunk in receipts.chunks(per_record) {
            if let Err(error) = sink.write(conversation_id.clone(), chunk.to_vec()).await {
                tracing::warn!(%error, conversation_id, "could not write delivery receipts; devices will send newer ones");
            }
        }
    }
}
