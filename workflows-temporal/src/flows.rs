//! One Temporal workflow type per flow, each a thin shell around
//! [`interpret`]: Temporal's macros take no generics, so a macro writes
//! the shells. The workflow type's name is the flow's [`Flow::KIND`].

use std::collections::VecDeque;
use std::sync::Arc;

use confab_workflows::Flow;
use serde_json::Value;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{SyncWorkflowContext, Worker, WorkerOptions, WorkflowContext, WorkflowResult};

use crate::{connect, interpret, Config, FlowActivities, FlowSignal, FlowStart, Inbox, Registry};

macro_rules! temporal_flow {
    ($(#[$doc:meta])* $workflow:ident, $flow:ty) => {
        $(#[$doc])*
        #[workflow]
        #[derive(Default)]
        pub struct $workflow {
            inbox: VecDeque<FlowSignal>,
        }

        #[workflow_methods]
        impl $workflow {
            #[run(name = <$flow as Flow>::KIND)]
            pub async fn run(ctx: &mut WorkflowContext<Self>, start: FlowStart) -> WorkflowResult<Value> {
                interpret::<$flow, Self>(ctx, start).await
            }

            #[signal(name = crate::SIGNAL)]
            pub fn signal(&mut self, _ctx: &mut SyncWorkflowContext<Self>, signal: FlowSignal) {
                self.inbox.push_back(signal);
            }
        }

        impl Inbox for $workflow {
            fn inbox(&mut self) -> &mut VecDeque<FlowSignal> {
                &mut self.inbox
            }

            fn has_signal(&self) -> bool {
                !self.inbox.is_empty()
            }
        }
    };
}

temporal_flow!(
    /// `push_delivery`: one push to one device.
    PushDeliveryWorkflow,
    confab_workflows::push::PushDelivery
);
temporal_flow!(
    /// `retention_run`: one pass of the retention policies.
    RetentionRunWorkflow,
    confab_workflows::retention::RetentionRun
);
temporal_flow!(
    /// `media_moderation`: the checks of one uploaded file.
    MediaModerationWorkflow,
    confab_workflows::moderation::MediaModeration
);

/// The worker's body, on its own runtime: connects, says it is ready
/// (or why not), and polls until `stop`.
pub(crate) async fn run_worker(
    config: Config,
    registry: Arc<Registry>,
    stop: tokio::sync::oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let built = async {
        let runtime =
            temporalio_sdk::Runtime::from_current_tokio(Default::default()).map_err(|error| format!("could not start Temporal's runtime: {error}"))?;
        let client = connect(&config).await.map_err(|error| error.to_string())?;
        // The SDK's pollers (five of each). More hung under a burst of a
        // thousand flows on the dev server in our runs: left as it is.
        let options = WorkerOptions::new(config.task_queue.clone())
            .register_workflow::<PushDeliveryWorkflow>()
            .and_then(|options| options.register_workflow::<RetentionRunWorkflow>())
            .and_then(|options| options.register_workflow::<MediaModerationWorkflow>())
            .map_err(|error| format!("could not register the workflows: {error}"))?
            .register_activities(FlowActivities { registry })
            .build();
        let worker = Worker::new(&runtime, client, options).map_err(|error| format!("could not start the worker: {error}"))?;
        Ok::<_, String>((runtime, worker))
    };
    let (_runtime, mut worker) = match built.await {
        Ok(built) => built,
        Err(reason) => {
            let _ = ready.send(Err(reason));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let shutdown = worker.shutdown_handle();
    let run = worker.run();
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => {
            if let Err(error) = result {
                tracing::error!(%error, "the Temporal worker stopped; workflows wait for another worker of the queue");
            }
        }
        _ = stop => {
            shutdown();
            if let Err(error) = run.await {
                tracing::warn!(%error, "the Temporal worker did not stop cleanly");
            }
        }
    }
}

/// Replays a recorded history (Temporal's JSON) against today's code:
/// an error names the first step where the code would now do otherwise
/// (a change that breaks workflows already running).
pub async fn replay(history_json: &[u8]) -> Result<(), String> {
    use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};
    let history = temporalio_client::WorkflowHistory::from_json(history_json).map_err(|error| format!("the history does not decode: {error}"))?;
    let options = WorkflowReplayerOptions::new()
        .register_workflow::<PushDeliveryWorkflow>()
        .and_then(|options| options.register_workflow::<RetentionRunWorkflow>())
        .and_then(|options| options.register_workflow::<MediaModerationWorkflow>())
        .map_err(|error| format!("could not register the workflows: {error}"))?
        .build();
    let replayer = WorkflowReplayer::new(options).map_err(|error| format!("could not start the replayer: {error}"))?;
    replayer.replay_workflow(history).await.map_err(|error| format!("the history does not replay: {error}"))
}
