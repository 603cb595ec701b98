//! The workflow engine `[workflows] engine` chose, behind the few calls the
//! server makes: the embedded engine (the default, its store under
//! `<data_dir>/workflows`) or Temporal (`engine = "temporal"`, with
//! `address`, `namespace`, `task_queue`). Both run the same flows with the
//! same activities; see `workflows/README.md` and
//! `workflows-temporal/README.md`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use confab_workflows::{embedded, Activities, Flow, Stats};
use serde::{Deserialize, Serialize};

/// `[workflows]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkflowsConfig {
    /// `embedded` (the default, inside `confab serve`) or `temporal`.
    pub engine: Option<String>,
    /// Activities running at once (per worker on Temporal).
    pub activity_concurrency: Option<usize>,
    /// The engine's own threads (2 by default; 0 shares the server's on
    /// the embedded engine) and their nice level (10).
    pub threads: Option<usize>,
    pub nice: Option<i32>,
    /// Temporal: the frontend's URL (`http://127.0.0.1:7233`; no TLS yet).
    pub address: Option<String>,
    /// Temporal: the namespace (`default`).
    pub namespace: Option<String>,
    /// Temporal: the task queue the flows and activities run on (`confab`).
    pub task_queue: Option<String>,
    /// Temporal: whether `confab serve` runs a worker itself (true); false
    /// leaves the work to `confab worker` processes.
    pub worker: Option<bool>,
    /// Temporal: how long one activity may run before Temporal retries it (300).
    pub activity_timeout_secs: Option<u64>,
}

impl WorkflowsConfig {
    /// Every problem with the section, by field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.engine.as_deref() {
            None | Some("embedded") => {
                for (field, set) in [
                    ("address", self.address.is_some()),
                    ("namespace", self.namespace.is_some()),
                    ("task_queue", self.task_queue.is_some()),
                    ("worker", self.worker.is_some()),
                ] {
                    if set {
                        problems.push(format!("[workflows] {field}: only used with engine = \"temporal\"; remove it or set the engine"));
                    }
                }
            }
            Some("temporal") => match self.temporal() {
                Some(config) => problems.extend(config.check().into_iter().map(|problem| problem.to_string())),
                None => problems.push("[workflows] address: engine = \"temporal\" needs the Temporal frontend's URL, e.g. \"http://127.0.0.1:7233\"".into()),
            },
            Some(other) => problems.push(format!("[workflows] engine: `{other}` is not an engine; use \"embedded\" or \"temporal\"")),
        }
        problems
    }

    fn temporal(&self) -> Option<confab_workflows_temporal::Config> {
        Some(confab_workflows_temporal::Config {
            address: self.address.clone()?,
            namespace: self.namespace.clone().unwrap_or_else(|| "default".into()),
            task_queue: self.task_queue.clone().unwrap_or_else(|| "confab".into()),
            activity_timeout: Duration::from_secs(self.activity_timeout_secs.unwrap_or(300)),
            activity_concurrency: self.activity_concurrency.unwrap_or(256),
            threads: self.threads.unwrap_or(2).max(1),
            nice: self.nice.unwrap_or(10),
        })
    }

    pub fn is_temporal(&self) -> bool {
        self.engine.as_deref() == Some("temporal")
    }
}

/// The chosen engine (cheap to clone).
#[derive(Clone, Debug)]
pub enum Workflows {
    Embedded(embedded::Engine),
    Temporal { engine: confab_workflows_temporal::Engine, worker: bool },
}

impl Workflows {
    /// Opens the embedded store or connects to Temporal.
    pub async fn open(config: &WorkflowsConfig, data_dir: &std::path::Path) -> anyhow::Result<Workflows> {
        let problems = config.problems();
        if !problems.is_empty() {
            anyhow::bail!("the configuration has {} problem(s):\n  {}", problems.len(), problems.join("\n  "));
        }
        match config.temporal().filter(|_| config.is_temporal()) {
            Some(temporal) => {
                let address = temporal.address.clone();
                let engine =
                    confab_workflows_temporal::Engine::connect(temporal).await.with_context(|| format!("could not connect to Temporal at `{address}`"))?;
                Ok(Workflows::Temporal { engine, worker: config.worker.unwrap_or(true) })
            }
            None => {
                let options = embedded::Options {
                    activity_concurrency: config.activity_concurrency.unwrap_or(256),
                    threads: config.threads.unwrap_or(2),
                    nice: config.nice.unwrap_or(10),
                    ..Default::default()
                };
                let path = data_dir.join("workflows");
                let engine = embedded::Engine::open(&path, Arc::new(confab_workflows::clock::SystemClock), options)
                    .with_context(|| format!("could not open the workflows in `{}`", path.display()))?;
                Ok(Workflows::Embedded(engine))
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Workflows::Embedded(_) => "embedded",
            Workflows::Temporal { .. } => "temporal",
        }
    }

    /// Registers flow `F` with the activities it calls (on Temporal: the
    /// activities this process's worker runs).
    pub fn register<F: Flow>(&self, activities: Arc<dyn Activities>) {
        match self {
            Workflows::Embedded(engine) => engine.register::<F>(activities),
            Workflows::Temporal { engine, .. } => engine.register::<F>(activities),
        }
    }

    /// Starts the work once every kind is registered: the embedded
    /// engine's timers and resumed flows, or the Temporal worker (unless
    /// `worker = false`).
    pub fn run(&self) -> anyhow::Result<()> {
        match self {
            Workflows::Embedded(engine) => engine.run(),
            Workflows::Temporal { engine, worker: true } => engine.run_worker().context("could not start the Temporal worker")?,
            Workflows::Temporal { worker: false, .. } => {
                tracing::info!("no Temporal worker in this process ([workflows] worker = false): `confab worker` runs the flows")
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> &Stats {
        match self {
            Workflows::Embedded(engine) => engine.stats(),
            Workflows::Temporal { engine, .. } => engine.stats(),
        }
    }

    /// Where blocking work for the engine belongs (the embedded engine's
    /// lower-priority threads).
    pub fn handle(&self) -> Option<tokio::runtime::Handle> {
        match self {
            Workflows::Embedded(engine) => engine.handle(),
            Workflows::Temporal { .. } => None,
        }
    }

    /// Starts flow `F` as `flow_id` unless it exists; whether it is new.
    pub async fn start<F: Flow>(&self, flow_id: &str, input: F::Input) -> anyhow::Result<bool> {
        match self {
            Workflows::Embedded(engine) => {
                let engine = engine.clone();
                let flow_id = flow_id.to_string();
                Ok(tokio::task::spawn_blocking(move || engine.start::<F>(&flow_id, input)).await.context("the workflow start was cancelled")??)
            }
            Workflows::Temporal { engine, .. } => Ok(engine.start::<F>(flow_id, input).await?),
        }
    }

    /// Starts many flows of kind `F`; how many were new.
    pub async fn start_many<F: Flow>(&self, flows: Vec<(String, F::Input)>) -> anyhow::Result<usize> {
        match self {
            Workflows::Embedded(engine) => {
                let engine = engine.clone();
                Ok(tokio::task::spawn_blocking(move || engine.start_many::<F>(flows)).await.context("the workflow start was cancelled")??)
            }
            Workflows::Temporal { engine, .. } => Ok(engine.start_many::<F>(flows).await?),
        }
    }

    pub async fn shutdown(&self) {
        match self {
            Workflows::Embedded(engine) => engine.shutdown().await,
            Workflows::Temporal { engine, .. } => engine.shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> WorkflowsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn every_problem_of_the_section_is_named_by_field() {
        assert!(parse("").problems().is_empty(), "the embedded default needs nothing");
        assert!(parse("engine = \"temporal\"\naddress = \"http://127.0.0.1:7233\"").problems().is_empty());
        let problems = parse("engine = \"temporal\"").problems();
        assert!(problems[0].contains("[workflows] address"), "{problems:?}");
        let problems = parse("engine = \"temporal\"\naddress = \"127.0.0.1:7233\"\nnamespace = \"\"\nactivity_timeout_secs = 0").problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|problem| problem.contains("address") && problem.contains("http://")), "{problems:?}");
        assert!(parse("engine = \"temporal\"\naddress = \"https://temporal:7233\"").problems()[0].contains("TLS"), "TLS is refused, not ignored");
        assert!(problems.iter().any(|problem| problem.contains("namespace")), "{problems:?}");
        assert!(problems.iter().any(|problem| problem.contains("activity_timeout_secs")), "{problems:?}");
        let problems = parse("address = \"http://x:7233\"\ntask_queue = \"q\"").problems();
        assert_eq!(problems.len(), 2, "Temporal settings without the engine: {problems:?}");
        assert!(parse("engine = \"cadence\"").problems()[0].contains("`cadence` is not an engine"));
        assert!(toml::from_str::<WorkflowsConfig>("adress = \"x\"").is_err(), "a misspelt field is refused");
    }

    #[tokio::test]
    async fn an_unreachable_temporal_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let config = parse(&format!("engine = \"temporal\"\naddress = \"{address}\""));
        let error = Workflows::open(&config, std::path::Path::new("/nonexistent")).await.unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("could not connect to Temporal") && text.contains(&address), "{text}");
    }
}
