//! Push notifications, wired: the push stage's [`Pusher`] (which members
//! and devices a record pushes, as push workflows) and the workflows'
//! [`Activities`] (send through APNs or FCM, forget a rejected token).
//!
//! ## The life of one push
//! 1. A message is durable and applied; the `push` pipeline's task for its
//!    partition reads the record.
//! 2. [`SharedPush`] (a read batch at a time) reads the message and its audience from the
//!    state (members at that offset with a push token), asks the hub who
//!    is connected, and applies [`wants_push`] to each member. Each device
//!    of theirs without a live socket gets one `push_delivery` workflow,
//!    id `push:{device}:{conversation}:{seq}`, all started in one batch (a
//!    re-read of the record after a restart starts nothing new).
//! 3. The workflow's `push.send` activity works out the badge (unread
//!    messages over the user's unmuted conversations) at that moment,
//!    builds the text from the user's `pushPreview`, and sends with the
//!    conversation as the collapse key, so a burst shows as one
//!    notification per conversation.
//! 4. A read on one device (`ReadCursorMoved`) sends a silent push with the
//!    new badge to the user's other offline devices.
//!
//! ## Failures
//! Retries, backoff, `Retry-After` and dead letters are the workflow's
//! (`confab_workflows::push`). A token the service calls unregistered is
//! forgotten through the log (`PushTokenRemoved` naming that token). A
//! failure to read the state skips the record's pushes with an error in
//! the log: pushes are a courtesy, the messages themselves are safe.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::workflows::Workflows;
use anyhow::Context;
use confab_ingest::Ingest;
use confab_log::Offset;
use confab_pipelines::push::{wants_push, Member};
use confab_pipelines::runtime::BoxFuture;
use confab_pipelines::{Hub, PushRules, Pusher};
use confab_push::apns::{ApnsClient, ApnsConfig};
use confab_push::fcm::{FcmClient, FcmConfig, ServiceAccount};
use confab_push::{Alert, ErrorKind, Notification};
use confab_schemas::events::{ConversationType, LogEvent, PushPreview, PushProvider};
use confab_workflows::push::{next_try, PushDelivery, PushInput, RetryPolicy, FORGET_TOKEN, SEND};
use confab_workflows::{Activities, ActivityCall, Failure, FailureKind};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    pub apns: Option<ApnsSettings>,
    pub fcm: Option<FcmSettings>,
    /// Attempts per push before it is dead-lettered.
    pub max_attempts: Option<u32>,
    /// A push not sent this long after its message is dead-lettered.
    pub max_age_secs: Option<u64>,
    /// The first retry's pause; it doubles up to `backoff_max_ms`.
    pub backoff_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    /// One push's request timeout.
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSettings {
    #[serde(default = "apns_base_url")]
    pub base_url: String,
    pub team_id: String,
    pub key_id: String,
    pub key_file: PathBuf,
    pub topic: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSettings {
    #[serde(default = "fcm_base_url")]
    pub base_url: String,
    pub project_id: String,
    pub credentials_file: PathBuf,
}

fn apns_base_url() -> String {
    confab_push::apns::DEFAULT_BASE_URL.to_string()
}

fn fcm_base_url() -> String {
    confab_push::fcm::DEFAULT_BASE_URL.to_string()
}

impl PushConfig {
    pub fn policy(&self) -> RetryPolicy {
        let default = RetryPolicy::default();
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(default.max_attempts).max(1),
            max_age_ms: self.max_age_secs.map_or(default.max_age_ms, |secs| secs * 1000),
            backoff_ms: self.backoff_ms.unwrap_or(default.backoff_ms),
            backoff_max_ms: self.backoff_max_ms.unwrap_or(default.backoff_max_ms),
        }
    }

    pub fn enabled(&self) -> bool {
        self.apns.is_some() || self.fcm.is_some()
    }
}

/// Counters for `/metrics`, by provider and outcome.
#[derive(Debug, Default)]
pub struct PushMetrics {
    /// (provider, outcome or failure reason) -> count.
    attempts: Mutex<HashMap<(&'static str, String), u64>>,
    /// Time from the message to the push request, in buckets (ms).
    latency_buckets: [AtomicU64; 8],
    latency_sum_ms: AtomicU64,
    latency_count: AtomicU64,
    pub flows_started: AtomicU64,
}

const LATENCY_BOUNDS_MS: [u64; 7] = [10, 25, 50, 100, 250, 1000, 5000];

impl PushMetrics {
    fn attempt(&self, provider: &'static str, outcome: &str) {
        *self.attempts.lock().entry((provider, outcome.to_string())).or_default() += 1;
    }

    fn latency(&self, ms: u64) {
        let bucket = LATENCY_BOUNDS_MS.iter().position(|bound| ms <= *bound).unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text, with the engine's counters.
    pub fn render(&self, stats: &confab_workflows::Stats, out: &mut String) {
        use std::fmt::Write;
        out.push_str("# HELP confab_push_attempts_total Push requests by provider and outcome (`sent`, or the service's reason).\n# TYPE confab_push_attempts_total counter\n");
        let mut attempts: Vec<_> = self.attempts.lock().iter().map(|(key, count)| (key.clone(), *count)).collect();
        attempts.sort();
        for ((provider, outcome), count) in attempts {
            let outcome = outcome.replace(['"', '\\', '\n'], "_");
            let _ = writeln!(out, "confab_push_attempts_total{{provider=\"{provider}\",outcome=\"{outcome}\"}} {count}");
        }
        out.push_str("# HELP confab_push_message_to_request_seconds From a message's acceptance to its push request.\n# TYPE confab_push_message_to_request_seconds histogram\n");
        let mut cumulative = 0;
        for (index, bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
            cumulative += self.latency_buckets[index].load(Ordering::Relaxed);
            let _ = writeln!(out, "confab_push_message_to_request_seconds_bucket{{le=\"{}\"}} {cumulative}", *bound as f64 / 1000.0);
        }
        cumulative += self.latency_buckets[LATENCY_BOUNDS_MS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "confab_push_message_to_request_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "confab_push_message_to_request_seconds_sum {}", self.latency_sum_ms.load(Ordering::Relaxed) as f64 / 1000.0);
        let _ = writeln!(out, "confab_push_message_to_request_seconds_count {}", self.latency_count.load(Ordering::Relaxed));
        for (name, help, value) in [
            ("confab_workflows_started_total", "Workflows started.", &stats.started),
            ("confab_workflow_steps_total", "Workflow steps taken (each one atomic write).", &stats.steps),
            ("confab_workflow_activities_total", "Activities run, retries included.", &stats.activities),
            ("confab_workflow_activity_failures_total", "Activities that failed (each one is retried or ends its workflow).", &stats.activity_failures),
            ("confab_workflow_timers_fired_total", "Durable timers fired (retries wait on them).", &stats.timers_fired),
            ("confab_workflows_completed_total", "Workflows that completed.", &stats.completed),
            ("confab_workflow_dead_letters_total", "Workflows that gave up.", &stats.dead_letters),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
    }
}

/// What one push workflow sends (its input's `push`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushJob {
    pub provider: PushProvider,
    pub token: String,
    pub user_id: String,
    pub device_id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub message_id: Option<String>,
    /// Not set any more: the text is read when the push is sent
    /// (`Ingest::push_text`), so no message text waits in a workflow
    /// store. Kept for flows stored before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Alert>,
    /// When the message was accepted (ms).
    pub message_ts: i64,
    pub ttl_secs: u64,
}

/// The text a member's `pushPreview` allows.
fn alert_for(preview: PushPreview, conversation_type: ConversationType, title: Option<&str>, sender: &str, body: &str) -> Alert {
    let body_text = if body.is_empty() { "sent an attachment".to_string() } else { body.chars().take(400).collect() };
    match preview {
        PushPreview::None => Alert { title: None, body: "New message".into() },
        PushPreview::Sender => Alert { title: Some(sender.to_string()), body: "New message".into() },
        PushPreview::Full => match (conversation_type, title) {
            (ConversationType::Dm, _) | (_, None) => Alert { title: Some(sender.to_string()), body: body_text },
            (_, Some(title)) => Alert { title: Some(title.to_string()), body: format!("{sender}: {body_text}") },
        },
    }
}

/// The push stage's port and the workflows' activities.
pub struct PushWiring {
    pub ingest: Arc<Ingest>,
    pub hub: Arc<Hub>,
    pub workflows: Workflows,
    pub policy: RetryPolicy,
    pub apns: Option<ApnsClient>,
    pub fcm: Option<FcmClient>,
    pub metrics: PushMetrics,
    /// Attempts not yet written to the log (`flush_attempts`).
    attempts: Mutex<Vec<confab_schemas::events::PushAttempt>>,
}

/// Attempts per log record of `push_attempts`.
const ATTEMPTS_PER_RECORD: usize = 1_000;
/// How often buffered attempts are written.
pub const ATTEMPTS_FLUSH: Duration = Duration::from_millis(250);

impl PushWiring {
    pub fn new(config: &PushConfig, ingest: Arc<Ingest>, hub: Arc<Hub>, workflows: Workflows) -> anyhow::Result<PushWiring> {
        let timeout = Duration::from_millis(config.timeout_ms.unwrap_or(10_000));
        let apns = match &config.apns {
            None => None,
            Some(settings) => {
                let key_pem =
                    std::fs::read(&settings.key_file).with_context(|| format!("[push.apns] key_file: cannot read `{}`", settings.key_file.display()))?;
                let apns_config = ApnsConfig {
                    base_url: settings.base_url.clone(),
                    team_id: settings.team_id.clone(),
                    key_id: settings.key_id.clone(),
                    key_pem,
                    topic: settings.topic.clone(),
                    timeout,
                };
                Some(ApnsClient::new(apns_config).map_err(|error| anyhow::anyhow!("[push.apns] key_file: {error}"))?)
            }
        };
        let fcm = match &config.fcm {
            None => None,
            Some(settings) => {
                let text = std::fs::read(&settings.credentials_file)
                    .with_context(|| format!("[push.fcm] credentials_file: cannot read `{}`", settings.credentials_file.display()))?;
                let account: ServiceAccount = serde_json::from_slice(&text)
                    .with_context(|| format!("[push.fcm] credentials_file: `{}` is not a service-account JSON file", settings.credentials_file.display()))?;
                let fcm_config = FcmConfig { base_url: settings.base_url.clone(), project_id: settings.project_id.clone(), account, timeout };
                Some(FcmClient::new(fcm_config).map_err(|error| anyhow::anyhow!("[push.fcm] credentials_file: {error}"))?)
            }
        };
        Ok(PushWiring { ingest, hub, workflows, policy: config.policy(), apns, fcm, metrics: PushMetrics::default(), attempts: Mutex::new(Vec::new()) })
    }

    /// The workflows a new message starts.
    fn message_jobs(&self, conversation_id: &str, seq: u64, offset: Offset, rules: PushRules) -> anyhow::Result<Vec<(String, PushInput)>> {
        let Some(audience) = self.ingest.push_audience(conversation_id, seq, offset)? else { return Ok(Vec::new()) };
        let large = audience.member_count > rules.large_conversation_members;
        let mut jobs = Vec::new();
        for member in &audience.members {
            let online = self.hub.online_devices(&member.user_id);
            let rule = Member {
                user_id: &member.user_id,
                muted: member.muted,
                notify: member.notify,
                blocked_sender: member.blocked_sender,
                online: !online.is_empty(),
            };
            if !wants_push(rule, &audience.message.mentions, large) {
                continue;
            }
            for device in member.devices.iter().filter(|device| !online.contains(&device.device_id)) {
                if !self.provider_configured(device.push.provider) {
                    continue;
                }
                let job = PushJob {
                    provider: device.push.provider,
                    token: device.push.token.clone(),
                    user_id: member.user_id.clone(),
                    device_id: device.device_id.clone(),
                    conversation_id: conversation_id.to_string(),
                    seq,
                    message_id: Some(audience.message.message_id.clone()),
                    alert: None,
                    message_ts: audience.message.ts,
                    ttl_secs: rules.ttl_secs,
                };
                let input = PushInput { push: serde_json::to_value(&job)?, policy: self.policy };
                jobs.push((format!("push:{}:{conversation_id}:{seq}", device.device_id), input));
            }
        }
        Ok(jobs)
    }

    /// Silent badge updates for a user's other offline devices after a read.
    fn read_jobs(
        &self,
        conversation_id: &str,
        user_id: &str,
        reader: Option<&str>,
        offset: Offset,
        rules: PushRules,
    ) -> anyhow::Result<Vec<(String, PushInput)>> {
        let online = self.hub.online_devices(user_id);
        let mut jobs = Vec::new();
        for device in self.ingest.push_devices(user_id)? {
            if Some(device.device_id.as_str()) == reader || online.contains(&device.device_id) || !self.provider_configured(device.push.provider) {
                continue;
            }
            let job = PushJob {
                provider: device.push.provider,
                token: device.push.token.clone(),
                user_id: user_id.to_string(),
                device_id: device.device_id.clone(),
                conversation_id: conversation_id.to_string(),
                seq: 0,
                message_id: None,
                alert: None,
                message_ts: confab_schemas::ids::now_ms(),
                ttl_secs: rules.ttl_secs,
            };
            let input = PushInput { push: serde_json::to_value(&job)?, policy: self.policy };
            jobs.push((format!("badge:{}:{conversation_id}:{offset}", device.device_id), input));
        }
        Ok(jobs)
    }

    fn provider_configured(&self, provider: PushProvider) -> bool {
        match provider {
            PushProvider::Apns => self.apns.is_some(),
            PushProvider::Fcm => self.fcm.is_some(),
        }
    }

    /// Writes the buffered attempts to the log, for the history's
    /// `push_attempts`; a failure keeps them for the next flush.
    pub async fn flush_attempts(&self) {
        let attempts = std::mem::take(&mut *self.attempts.lock());
        for chunk in attempts.chunks(ATTEMPTS_PER_RECORD) {
            if let Err(error) = self.ingest.record_push_attempts(chunk.to_vec()).await {
                tracing::warn!(%error, "could not record push attempts; trying again at the next flush");
                self.attempts.lock().extend_from_slice(chunk);
            }
        }
    }

    fn record_attempt(&self, job: &PushJob, flow_id: &str, attempt: u32, outcome: &str, reason: Option<String>) {
        self.attempts.lock().push(confab_schemas::events::PushAttempt {
            flow_id: flow_id.to_string(),
            user_id: job.user_id.clone(),
            device_id: job.device_id.clone(),
            provider: job.provider,
            conversation_id: job.conversation_id.clone(),
            seq: job.seq,
            attempt,
            outcome: outcome.to_string(),
            reason,
            ts: confab_schemas::ids::now_ms(),
        });
    }

    async fn send(&self, job: &PushJob, call: &ActivityCall, id: u32) -> Result<Value, Failure> {
        let key = call.key(id);
        let key = key.as_str();
        let attempt = call.input["attempt"].as_u64().unwrap_or(1) as u32;
        let last = call.input["last"].as_bool().unwrap_or(false);
        // A message push's text, as the member's preview allows, read now.
        let alert = match (&job.message_id, &job.alert) {
            (None, _) => None,
            (Some(_), Some(stored)) => Some(stored.clone()),
            (Some(_), None) => match self.ingest.push_text(&job.conversation_id, job.seq, &job.user_id) {
                Ok(Some(text)) => Some(alert_for(text.preview, text.conversation_type, text.title.as_deref(), &text.sender_name, &text.body)),
                Ok(None) => {
                    // Deleted (or erased) before its push went out: none goes.
                    self.record_attempt(job, &call.flow_id, attempt, "withdrawn", None);
                    return Ok(json!({"withdrawn": true}));
                }
                Err(error) => return Err(Failure::retryable(format!("could not read the message: {error}"), None)),
            },
        };
        let badge = self.ingest.badge(&job.user_id).ok();
        let mut data = serde_json::Map::new();
        data.insert("conversationId".into(), json!(job.conversation_id));
        if let Some(message_id) = &job.message_id {
            data.insert("messageId".into(), json!(message_id));
            data.insert("seq".into(), json!(job.seq));
        }
        data.insert("type".into(), json!(if alert.is_some() { "message" } else { "badge" }));
        let notification = Notification { token: job.token.clone(), collapse_key: job.conversation_id.clone(), alert, badge, data, ttl_secs: job.ttl_secs };
        if job.message_id.is_some() {
            let waited = confab_schemas::ids::now_ms() - job.message_ts;
            self.metrics.latency(waited.max(0) as u64);
        }
        let outcome = match job.provider {
            PushProvider::Apns => match &self.apns {
                Some(client) => client.send(&notification, Some(&apns_id(key))).await,
                None => return Err(Failure::permanent("apns is not configured")),
            },
            PushProvider::Fcm => match &self.fcm {
                Some(client) => client.send(&notification).await,
                None => return Err(Failure::permanent("fcm is not configured")),
            },
        };
        let provider = job.provider.name();
        match outcome {
            Ok(()) => {
                self.metrics.attempt(provider, "sent");
                self.record_attempt(job, &call.flow_id, attempt, "sent", None);
                Ok(json!({}))
            }
            Err(error) => {
                self.metrics.attempt(provider, &error.reason);
                // The flow's own rule for "no more tries", so that the row says so.
                let retry_after_ms = error.retry_after.map(|after| after.as_millis() as u64);
                let out_of_time = || {
                    let pause = call.input["pause"].as_u64().unwrap_or(0);
                    call.input["deadline"].as_i64().is_some_and(|deadline| next_try(confab_schemas::ids::now_ms(), pause, retry_after_ms, deadline).is_none())
                };
                let outcome = match error.kind {
                    ErrorKind::Retryable if last || out_of_time() => "dead_letter",
                    ErrorKind::Retryable => "retryable",
                    ErrorKind::Permanent => "refused",
                    ErrorKind::Unregistered => "unregistered",
                };
                self.record_attempt(job, &call.flow_id, attempt, outcome, Some(error.reason.clone()));
                let kind = match error.kind {
                    ErrorKind::Retryable => FailureKind::Retryable,
                    ErrorKind::Permanent => FailureKind::Permanent,
                    ErrorKind::Unregistered => FailureKind::Unregistered,
                };
                Err(Failure { kind, retry_after_ms, reason: error.reason })
            }
        }
    }
}

/// A UUID-shaped `apns-id` from the activity's key: a retry of the same
/// step after a crash carries the same id, so it can be told apart.
fn apns_id(key: &str) -> String {
    let high = confab_workflows::jitter(key, 1, u64::MAX);
    let low = confab_workflows::jitter(key, 2, u64::MAX);
    let hex = format!("{high:016x}{low:016x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Push workflows found for a batch: started (embedded), or to start.
enum Started {
    Done(anyhow::Result<usize>),
    Later(Vec<(String, PushInput)>),
}

/// The wiring shared by the pipeline and the engine.
pub struct SharedPush(pub Arc<PushWiring>);

impl Pusher for SharedPush {
    fn records(&self, _partition: u32, records: Vec<(Offset, LogEvent)>, rules: PushRules) -> BoxFuture<()> {
        let wiring = self.0.clone();
        Box::pin(async move {
            // On the engine's threads (lower priority), not the server's; one
            // hop and one batch of workflow starts per read batch.
            let runtime = wiring.workflows.handle().unwrap_or_else(tokio::runtime::Handle::current);
            let work = wiring.clone();
            let found = runtime
                .spawn_blocking(move || {
                    let mut jobs = Vec::new();
                    for (offset, event) in &records {
                        let found = match event {
                            LogEvent::MessageCreated { conversation_id, seq, .. } => work.message_jobs(conversation_id, *seq, *offset, rules),
                            LogEvent::ReadCursorMoved { conversation_id, user_id, device_id, .. } => {
                                work.read_jobs(conversation_id, user_id, device_id.as_deref(), *offset, rules)
                            }
                            _ => Ok(Vec::new()),
                        };
                        match found {
                            Ok(found) => jobs.extend(found),
                            Err(error) => tracing::error!(%error, offset, "could not work out a record's pushes; they are skipped"),
                        }
                    }
                    match &work.workflows {
                        _ if jobs.is_empty() => Started::Done(Ok(0)),
                        // Already on a blocking thread: start them here, one hop.
                        Workflows::Embedded(engine) => Started::Done(engine.start_many::<PushDelivery>(jobs).map_err(anyhow::Error::from)),
                        Workflows::Temporal { .. } => Started::Later(jobs),
                    }
                })
                .await;
            let started = match found {
                Ok(Started::Done(started)) => Ok(started),
                Ok(Started::Later(jobs)) => Ok(wiring.workflows.start_many::<PushDelivery>(jobs).await),
                Err(error) => Err(error),
            };
            match started {
                Ok(Ok(count)) => {
                    wiring.metrics.flows_started.fetch_add(count as u64, Ordering::Relaxed);
                }
                Ok(Err(error)) => tracing::error!(error = %format!("{error:#}"), "could not start push workflows; the batch's pushes are skipped"),
                Err(_) => {}
            }
        })
    }
}

#[async_trait::async_trait]
impl Activities for SharedPush {
    async fn run(&self, call: &ActivityCall, id: u32) -> Result<Value, Failure> {
        let job: PushJob = serde_json::from_value(call.input["push"].clone()).map_err(|error| Failure::permanent(format!("push input: {error}")))?;
        match call.name.as_str() {
            SEND => self.0.send(&job, call, id).await,
            FORGET_TOKEN => {
                let reason = call.input["reason"].as_str().unwrap_or("rejected");
                match self.0.ingest.forget_push_token(&job.device_id, &job.token, reason).await {
                    Ok(()) => Ok(json!({"forgotten": true})),
                    Err(error) => Err(Failure::retryable(format!("could not forget the token: {error}"), None)),
                }
            }
            other => Err(Failure::permanent(format!("no activity `{other}`"))),
        }
    }
}
