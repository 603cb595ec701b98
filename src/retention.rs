//! Scheduled retention, wired: the retention workflow's activities over
//! the history layer's [`Compliance`] service, and the schedule that
//! starts one run per interval.
//!
//! Every `[history] retention_interval_secs` (an hour by default) the
//! scheduler starts the workflow `retention:{interval start}`; a second
//! start of the same id (after a restart within the interval) does
//! nothing. The run plans (each policy, and the server's default for
//! every other conversation; held conversations are listed, not touched),
//! applies the retention primitive to each conversation in turn (the
//! primitive audits before it deletes, and refuses under a hold on a
//! sender, which the run records as skipped), and audits its summary as
//! `retention.run`.

use std::sync::Arc;
use std::time::Duration;

use crate::workflows::Workflows;
use confab_query::Compliance;
use confab_workflows::retention::{RetentionInput, RetentionRun, APPLY, AUDIT, PLAN};
use confab_workflows::{Activities, ActivityCall, Failure};
use serde_json::{json, Value};

pub struct RetentionActivities(pub Arc<Compliance>);

fn failure(error: confab_query::Error) -> Failure {
    use confab_query::Error;
    match error {
        Error::HistoryBehind | Error::Live(_) | Error::AuditUnavailable(_) | Error::Delta { .. } | Error::Log(_) => Failure::retryable(error.to_string(), None),
        other => Failure::permanent(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Activities for RetentionActivities {
    async fn run(&self, call: &ActivityCall, _id: u32) -> Result<Value, Failure> {
        let actor = confab_query::scheduler();
        match call.name.as_str() {
            PLAN => {
                let now = call.input["now"].as_i64().unwrap_or_else(confab_schemas::ids::now_ms);
                let (items, held) = self.0.plan_retention(now).await.map_err(failure)?;
                Ok(json!({"items": items, "held": held}))
            }
            APPLY => {
                let planned: confab_query::PlannedDeletion =
                    serde_json::from_value(call.input.clone()).map_err(|error| Failure::permanent(format!("retention item: {error}")))?;
                match self.0.apply_retention(&actor, &planned.conversation_id, planned.before).await {
                    Ok(outcome) => Ok(json!({"deletedMessages": outcome.live_messages, "deletedRows": outcome.rows, "filesRemoved": outcome.files_removed})),
                    Err(error @ confab_query::Error::UnderHold { .. }) => Ok(json!({"skipped": "under_hold", "reason": error.to_string()})),
                    Err(error) => Err(failure(error)),
                }
            }
            AUDIT => {
                self.0.audit_run(&actor, call.input.clone()).await.map_err(failure)?;
                Ok(json!({"audited": true}))
            }
            other => Err(Failure::permanent(format!("no activity `{other}`"))),
        }
    }
}

/// Starts one retention run per interval, at the interval's start (none
/// while there is no policy and no default: nothing could be deleted).
pub fn schedule(workflows: Workflows, compliance: Arc<Compliance>, interval: Duration) -> tokio::task::JoinHandle<()> {
    let interval_ms = (interval.as_millis() as i64).max(1_000);
    tokio::spawn(async move {
        loop {
            let now = confab_schemas::ids::now_ms();
            let slot = now - now % interval_ms;
            let idle = compliance.default_retention_days().is_none() && compliance.policies().await.is_empty();
            let started = match idle {
                true => Ok(false),
                false => workflows.start::<RetentionRun>(&format!("retention:{slot}"), RetentionInput { now: slot }).await,
            };
            match started {
                Ok(true) => tracing::info!(slot, "retention run started"),
                Ok(false) => {}
                Err(error) => tracing::error!(error = %format!("{error:#}"), "could not start the retention run; the next interval tries again"),
            }
            let next = slot + interval_ms;
            tokio::time::sleep(Duration::from_millis((next - confab_schemas::ids::now_ms()).max(1) as u64)).await;
        }
    })
}
