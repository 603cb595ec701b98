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
    /// Temporal: the frontend's URL (`http://127.0.0.1:7233`, or
    /// `https://…` for TLS).
    pub address: Option<String>,
    /// Temporal over TLS: the PEM CA file that signed the server's
    /// certificate (default: the system's roots).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Temporal over mutual TLS: this client's PEM certificate chain and key.
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Temporal over TLS: the name the server's certificate must carry,
    /// when it is not the address's host.
    pub tls_domain: Option<String>,
    /// Temporal over TLS: a file holding an API key (Temporal Cloud's),
    /// sent as a bearer token.
    pub api_key_file: Option<std::path::PathBuf>,
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
                    ("tls_ca_file", self.tls_ca_file.is_some()),
                    ("tls_cert_file", self.tls_cert_file.is_some()),
                    ("tls_key_file", self.tls_key_file.is_some()),
                    ("tls_domain", self.tls_domain.is_some()),
                    ("api_key_file", self.api_key_file.is_some()),
                ] {
                    if set {
                        problems.push(format!("[workflows] {field}: only used with engine = \"temporal\"; remove it or set the engine"));
                    }
                }
            }
            Some("temporal") => match self.temporal() {
                Some(Ok(config)) => problems.extend(config.check().into_iter().map(|problem| problem.to_string())),
                Some(Err(file_problems)) => problems.extend(file_problems),
                None => problems.push("[workflows] address: engine = \"temporal\" needs the Temporal frontend's URL, e.g. \"http://127.0.0.1:7233\"".into()),
            },
            Some(other) => problems.push(format!("[workflows] engine: `{other}` is not an engine; use \"embedded\" or \"temporal\"")),
        }
        problems
    }

    /// The Temporal settings with their files read; None without an
    /// address, the files' problems (each with its field) when one cannot
    /// be read.
    fn temporal(&self) -> Option<Result<confab_workflows_temporal::Config, Vec<String>>> {
        let address = self.address.clone()?;
        let mut problems = Vec::new();
        let mut read = |field: &str, path: &Option<std::path::PathBuf>| -> Option<Vec<u8>> {
            let path = path.as_ref()?;
            match std::fs::read(path) {
                Ok(bytes) if bytes.is_empty() => {
                    problems.push(format!("[workflows] {field}: `{}` is empty", path.display()));
                    None
                }
                Ok(bytes) => Some(bytes),
                Err(error) => {
                    problems.push(format!("[workflows] {field}: cannot read `{}`: {error}", path.display()));
                    None
                }
            }
        };
        let ca_pem = read("tls_ca_file", &self.tls_ca_file);
        let cert_pem = read("tls_cert_file", &self.tls_cert_file);
        let key_pem = read("tls_key_file", &self.tls_key_file);
        let api_key = read("api_key_file", &self.api_key_file);
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => problems.push("[workflows] tls_key_file: tls_cert_file is set without its key; set both for mutual TLS".into()),
            (None, Some(_)) => problems.push("[workflows] tls_cert_file: tls_key_file is set without its certificate; set both for mutual TLS".into()),
            _ => {}
        }
        let api_key = match api_key.map(String::from_utf8) {
            Some(Err(_)) => {
                problems.push("[workflows] api_key_file: the file is not text".into());
                None
            }
            Some(Ok(key)) => Some(confab_workflows_temporal::ApiKey(key)),
            None => None,
        };
        if !problems.is_empty() {
            return Some(Err(problems));
        }
        let any_tls = self.tls_ca_file.is_some() || self.tls_cert_file.is_some() || self.tls_domain.is_some();
        let client = match (cert_pem, key_pem) {
            (Some(cert_pem), Some(key_pem)) => Some(confab_workflows_temporal::ClientIdentity { cert_pem, key_pem }),
            _ => None,
        };
        let tls = any_tls.then(|| confab_workflows_temporal::Tls { ca_pem, client, domain: self.tls_domain.clone() });
        Some(Ok(confab_workflows_temporal::Config {
            address,
            tls,
            api_key,
            namespace: self.namespace.clone().unwrap_or_else(|| "default".into()),
            task_queue: self.task_queue.clone().unwrap_or_else(|| "confab".into()),
            activity_timeout: Duration::from_secs(self.activity_timeout_secs.unwrap_or(300)),
            activity_concurrency: self.activity_concurrency.unwrap_or(256),
            threads: self.threads.unwrap_or(2).max(1),
            nice: self.nice.unwrap_or(10),
        }))
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
            Some(Err(problems)) => anyhow::bail!("the configuration has {} problem(s):\n  {}", problems.len(), problems.join("\n  ")),
            Some(Ok(temporal)) => {
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
        assert!(problems.iter().any(|problem| problem.contains("namespace")), "{problems:?}");
        assert!(problems.iter().any(|problem| problem.contains("activity_timeout_secs")), "{problems:?}");
        let problems = parse("address = \"http://x:7233\"\ntask_queue = \"q\"").problems();
        assert_eq!(problems.len(), 2, "Temporal settings without the engine: {problems:?}");
        assert!(parse("engine = \"cadence\"").problems()[0].contains("`cadence` is not an engine"));
        assert!(toml::from_str::<WorkflowsConfig>("adress = \"x\"").is_err(), "a misspelt field is refused");
    }

    #[test]
    fn tls_settings_are_read_and_checked_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (ca, cert, key, api_key) = (file("ca.pem", "ca"), file("cert.pem", "cert"), file("key.pem", "key"), file("api-key", "secret-key\n"));
        let config = parse(&format!(
            "engine = \"temporal\"\naddress = \"https://temporal:7233\"\ntls_ca_file = \"{ca}\"\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"\ntls_domain = \"temporal.internal\"\napi_key_file = \"{api_key}\""
        ));
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        let temporal = config.temporal().unwrap().unwrap();
        let tls = temporal.tls.as_ref().expect("TLS settings");
        assert_eq!(tls.ca_pem.as_deref(), Some(&b"ca"[..]));
        let client = tls.client.as_ref().expect("a client identity");
        assert_eq!((client.cert_pem.as_slice(), client.key_pem.as_slice()), (&b"cert"[..], &b"key"[..]));
        assert_eq!(tls.domain.as_deref(), Some("temporal.internal"));
        assert_eq!(temporal.api_key.as_ref().unwrap().0, "secret-key\n");
        assert!(!format!("{temporal:?}").contains("secret-key") && !format!("{temporal:?}").contains("\"key\""), "no secret in debug output");
        // An https address alone is TLS with the system's roots.
        assert!(parse("engine = \"temporal\"\naddress = \"https://temporal:7233\"").problems().is_empty());

        let problems =
            parse(&format!("engine = \"temporal\"\naddress = \"http://temporal:7233\"\ntls_ca_file = \"{ca}\"\napi_key_file = \"{api_key}\"")).problems();
        assert_eq!(problems.len(), 2, "TLS settings and a key over http: {problems:?}");
        assert!(problems.iter().any(|problem| problem.contains("tls") && problem.contains("https://")), "{problems:?}");
        assert!(problems.iter().any(|problem| problem.contains("api_key_file") && problem.contains("in the clear")), "{problems:?}");

        let missing = dir.path().join("missing.pem").display().to_string();
        let problems =
            parse(&format!("engine = \"temporal\"\naddress = \"https://t:7233\"\ntls_ca_file = \"{missing}\"\ntls_cert_file = \"{cert}\"")).problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|problem| problem.contains("[workflows] tls_ca_file") && problem.contains("missing.pem")), "{problems:?}");
        assert!(problems.iter().any(|problem| problem.contains("[workflows] tls_key_file") && problem.contains("without its key")), "{problems:?}");

        let problems = parse(&format!("tls_ca_file = \"{ca}\"")).problems();
        assert!(problems[0].contains("only used with engine = \"temporal\""), "{problems:?}");
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
