//! `confab serve`: opens the data directory (the log, then the state's
//! store, replaying only the log after its checkpoint), and serves the API
//! until asked to stop.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use confab_gateway::AppState;
use confab_ingest::store::fjall_store::FjallStore;
use confab_ingest::Ingest;
use confab_log::FileLog;
use confab_pipelines::{Hub, Runtime};

use crate::wiring::IngestView;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;

/// A running server; dropping it does not stop it, [`Server::shutdown`] does.
pub struct Server {
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Stops accepting, lets in-flight requests finish, closes the log.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.context("the server task panicked")?
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the server task panicked")?
    }
}

/// Replays shorter than this show no progress bar (they take a moment).
const REPLAY_BAR_MIN_RECORDS: u64 = 50_000;

/// Opens everything under `config.data_dir` and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    // Everything under the data directory is for this server only: the log
    // and the store hold every message body and password hash.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("could not create the data directory `{}`", config.data_dir.display()))?;
    restrict_permissions(&config.data_dir)?;
    let lock = lock_data_dir(&config.data_dir)?;
    let token_secret = load_or_create_secret(&config.data_dir.join("secrets").join("token.key"))?;
    // Names this data directory to the external stores that keep log
    // positions (ClickHouse), which refuse another one's.
    let instance_id: String = load_or_create_secret(&config.data_dir.join("instance.id"))?[..16].iter().map(|byte| format!("{byte:02x}")).collect();
    let log_dir = config.data_dir.join("log");
    // Before anything writes: the replay's and the pipelines' first records may be traced.
    let telemetry = config.telemetry.start()?;
    // Definitions first: a bad one stops the start before anything is opened.
    let specs = crate::wiring::load_pipelines(config.pipelines_dir.as_ref())?;
    let sink_config = crate::wiring::history_sink(&specs);
    let search_config = crate::wiring::search_indexer(&specs);
    let analytics_config = crate::wiring::analytics_sink(&specs);
    let analytics_on = config.analytics.clickhouse.is_some() && analytics_config.is_some();
    let state_dir = config.data_dir.join("state");
    let (log, ingest) = tokio::task::spawn_blocking({
        let log_config = config.log.clone();
        let limits = config.limits.clone();
        let state_config = config.state.clone();
        let consumers = crate::wiring::log_consumers(&specs, analytics_on);
        move || -> anyhow::Result<(Arc<FileLog>, Ingest)> {
            let log = Arc::new(FileLog::open(&log_dir, log_config).with_context(|| format!("could not open the log in `{}`", log_dir.display()))?);
            crate::wiring::drop_stale_consumers(&*log, &consumers)?;
            let store = FjallStore::open(&state_dir, state_config.fjall_options())
                .with_context(|| format!("could not open the state store in `{}`", state_dir.display()))?;
            // A bar on a terminal when the replay is long; the log line either way.
            let bar = crate::progress::bar(0, "replay");
            let progress = |done: u64, total: u64| {
                if total >= REPLAY_BAR_MIN_RECORDS {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            };
            let (ingest, report) =
                Ingest::open_with_progress(log.clone(), Arc::new(store), limits, state_config, &progress).context("could not open the state")?;
            bar.finish_and_clear();
            tracing::info!(replayed = report.replayed, "state opened");
            Ok((log, ingest))
        }
    })
    .await??;
    let ingest = Arc::new(ingest);
    // The media store first: a bucket that refuses the keys stops the start
    // before anything else runs.
    let media = crate::media::open(&config.media, &config.data_dir, ingest.clone()).await?;
    let (stop_checkpoints, checkpoints_stopped) = tokio::sync::watch::channel(false);
    let checkpoints = tokio::spawn(ingest.clone().run_checkpoints(checkpoints_stopped));
    let hub = Arc::new(Hub::new(config.gateway.connection_queue_max_frames));
    let view = Arc::new(IngestView(ingest.clone()));
    let (workflows, push) = start_workflows(&config, ingest.clone(), hub.clone()).await?;
    let pusher = push.clone().map(|push| Arc::new(crate::push::SharedPush(push)) as Arc<dyn confab_pipelines::Pusher>);
    let attempts_flusher = push.clone().map(|push| {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(crate::push::ATTEMPTS_FLUSH);
            loop {
                ticks.tick().await;
                push.flush_attempts().await;
            }
        })
    });
    let push_for_shutdown = push.clone();
    let pipelines = Arc::new(Runtime::start(specs, log.clone(), view.clone(), hub.clone(), view, pusher));
    // The search indexer and the analytics sink run on threads of lower
    // priority, as the history sink does on its own.
    let background = confab_log::background::Background::start("confab-background", 1).context("could not start the background threads")?;
    let search = match search_config {
        Some(indexer) => Some(Arc::new(crate::wiring::start_search(&config, ingest.clone(), log.clone(), indexer, background.handle(), &instance_id).await?)),
        None => {
            tracing::warn!("no pipeline has a `search_index` stage: search is off (GET /v1/search answers 503)");
            None
        }
    };
    let analytics = match (&config.analytics.clickhouse, analytics_config) {
        (Some(clickhouse), Some(sink)) => {
            Some(Arc::new(crate::wiring::start_analytics(clickhouse, log.clone(), sink, background.handle(), &instance_id).await?))
        }
        (Some(_), None) => {
            tracing::warn!("[analytics.clickhouse] is set but no pipeline has a `clickhouse_sink` stage: nothing is written to ClickHouse");
            None
        }
        (None, _) => None,
    };
    let store = confab_query::HistoryStore::new(&config.history_location(), config.history.storage_options.clone())
        .with_context(|| format!("could not open the history at `{}`", config.history_location()))?;
    let history_sink = match sink_config {
        Some(sink_config) => Some(confab_query::HistorySink::start(store.clone(), log.clone(), sink_config).await.context("could not start the history sink")?),
        None => None,
    };
    let maintenance = confab_query::HistoryMaintenance::open(store.clone(), log.clone(), history_sink.as_ref().map(|sink| sink.handle()))
        .await
        .context("could not open the legal-hold registry")?;
    let store_for_policies = store.clone();
    let history = Arc::new(
        confab_query::SqlEngine::new(store, config.sql.clone(), config.data_dir.join("sql-spill")).context("could not start the compliance SQL threads")?,
    );
    let ingest_for_shutdown = ingest.clone();
    let live = Arc::new(crate::wiring::LiveMessagesView {
        ingest: ingest.clone(),
        media: Arc::downgrade(&media),
        search: search.clone(),
        analytics: analytics.clone(),
    });
    let policies = confab_query::PolicyRegistry::open(store_for_policies).await.context("could not open the retention policies")?;
    let compliance = Arc::new(confab_query::Compliance::new(Arc::new(maintenance), live, policies, config.history.default_retention_days));
    workflows.register::<confab_workflows::retention::RetentionRun>(Arc::new(crate::retention::RetentionActivities(compliance.clone())));
    workflows.register::<confab_workflows::moderation::MediaModeration>(Arc::new(crate::media::ModerationActivities(Arc::downgrade(&media))));
    media.set_moderation(Arc::new(crate::media::EngineModeration(workflows.clone())));
    workflows.run()?;
    let retention_schedule =
        crate::retention::schedule(workflows.clone(), compliance.clone(), Duration::from_secs(config.history.retention_interval_secs.unwrap_or(3_600).max(1)));
    let state = AppState::new(ingest.clone(), hub, pipelines.clone(), history.clone(), compliance, config.gateway.clone(), token_secret);
    let readiness = crate::wiring::ReadinessView {
        log_metrics: crate::wiring::LogMetrics::new(&log),
        data_dir: config.data_dir.clone(),
        log: log.clone(),
        sink: history_sink.as_ref().map(|sink| sink.handle()),
        push,
        workflows: workflows.clone(),
        analytics: analytics.clone(),
    };
    let _ = state.readiness.set(Arc::new(readiness));
    let _ = state.media.set(media.clone());
    if let Some(search) = &search {
        let _ = state.search.set(search.clone());
    }
    let media_sweep = media.clone().sweep();
    let sql_server = match config.sql_listen {
        Some(address) => Some(start_pgwire(&config, address, (*history).clone(), state.clone()).await?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("could not listen on `{}`", config.listen))?;
    let address = listener.local_addr()?;
    crate::media::set_base_url(&media, address, config.gateway.tls.is_some());
    let (stop, stopped) = oneshot::channel::<()>();
    let janitor_state = state.clone();
    let checkpoint_ingest = ingest_for_shutdown;
    let janitor = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(60));
        loop {
            ticks.tick().await;
            janitor_state.rate_limiter.forget_idle();
            janitor_state.typing_sent.retain(|_, at| at.elapsed() < Duration::from_secs(60));
        }
    });
    let closing = state.closing.clone();
    let gateway = &config.gateway;
    let tls = match &gateway.tls {
        Some(files) => Some(
            confab_query::pgwire::tls_acceptor(&files.cert_file, &files.key_file)
                .context("could not set up TLS for the HTTP listener ([gateway.tls] cert_file, key_file)")?,
        ),
        None => None,
    };
    let doors = confab_gateway::serve::Doors {
        max_connections: gateway.max_connections,
        max_connections_per_ip: gateway.max_connections_per_ip,
        header_read_timeout: Duration::from_millis(gateway.header_read_timeout_ms),
        tls,
    };
    let app = confab_gateway::app(state);
    let task = tokio::spawn(async move {
        let served = confab_gateway::serve::serve(listener, app, doors, async move {
            let _ = stopped.await;
            closing.send_replace(true);
        })
        .await;
        janitor.abort();
        if let Some(sql_server) = sql_server {
            sql_server.abort();
        }
        pipelines.shutdown().await;
        if let Some(search) = &search {
            search.shutdown().await;
        }
        retention_schedule.abort();
        media_sweep.abort();
        let _ = media_sweep.await;
        workflows.shutdown().await;
        if let Some(flusher) = attempts_flusher {
            flusher.abort();
        }
        if let Some(push) = push_for_shutdown {
            push.flush_attempts().await;
        }
        if let Some(sink) = history_sink {
            sink.shutdown().await;
        }
        if let Some(analytics) = &analytics {
            analytics.shutdown().await;
        }
        drop(background);
        let _ = stop_checkpoints.send(true);
        let _ = checkpoints.await;
        let last_checkpoint = tokio::task::spawn_blocking({
            let ingest = checkpoint_ingest.clone();
            move || ingest.checkpoint()
        })
        .await;
        if let Ok(Err(error)) = last_checkpoint {
            tracing::error!(%error, "the last checkpoint failed; the next start replays more of the log");
        }
        log.close();
        if let Some(telemetry) = telemetry {
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        drop(lock);
        served.context("the HTTP server failed")
    });
    tracing::info!(%address, data_dir = %config.data_dir.display(), "confab is serving");
    Ok(Server { address, stop: Some(stop), task })
}

/// Makes the data directory 0700 and everything in it 0600 (0700 for
/// folders). New files get that from the umask; this fixes a directory
/// written by an older version, once.
fn restrict_permissions(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data_dir)?.permissions().mode() & 0o777;
    if mode == 0o700 {
        return Ok(());
    }
    let mut folders = vec![data_dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("could not restrict `{}`", folder.display()))?;
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                folders.push(entry.path());
            } else if file_type.is_file() {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("could not restrict `{}`", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Holds an exclusive lock on the data directory for the life of the server,
/// so that two servers never write one log.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join("confab.lock");
    let file = File::create(&path).with_context(|| format!("could not create `{}`", path.display()))?;
    file.try_lock()
        .map_err(|_| anyhow::anyhow!("the data directory `{}` is in use by another confab server; stop it or choose another --data-dir", data_dir.display()))?;
    Ok(file)
}

/// The key that signs access tokens: made once, kept with the data.
pub(crate) fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(secret) = std::fs::read(path) {
        if secret.len() >= 32 {
            return Ok(secret);
        }
    }
    let mut secret = vec![0u8; 32];
    getrandom::getrandom(&mut secret).context("no system randomness for the token key")?;
    std::fs::create_dir_all(path.parent().expect("has a folder"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("could not write `{}`", path.display()))?;
    file.write_all(&secret)?;
    file.sync_all()?;
    Ok(secret)
}

/// Binds the PostgreSQL-protocol listener (a busy port fails the start)
/// and serves it. Passwords travel in the clear without TLS, so a
/// listener off loopback needs TLS unless the operator says otherwise.
async fn start_pgwire(config: &Config, address: SocketAddr, engine: confab_query::SqlEngine, state: AppState) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let sql = &config.sql;
    let tls = match (&sql.tls_cert_file, &sql.tls_key_file) {
        (Some(cert), Some(key)) => Some(
            confab_query::pgwire::tls_acceptor(cert, key).context("could not set up TLS for the PostgreSQL protocol ([sql] tls_cert_file, tls_key_file)")?,
        ),
        _ => None,
    };
    if tls.is_none() && !address.ip().is_loopback() && !sql.allow_cleartext_off_loopback {
        anyhow::bail!(
            "refusing to serve SQL on `{address}` without TLS: passwords would cross the network in the clear; set [sql] tls_cert_file and tls_key_file, listen on loopback, or set [sql] allow_cleartext_off_loopback = true"
        );
    }
    let listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("could not listen for SQL on `{address}`"))?;
    let options = confab_query::pgwire::PgOptions { max_connections: sql.max_connections, require_tls: sql.requires_tls(), tls };
    tracing::info!(%address, tls = options.tls.is_some(), "serving the history over the PostgreSQL protocol");
    let accounts = Arc::new(crate::wiring::PgAccountsView { state });
    Ok(tokio::spawn(async move {
        if let Err(error) = confab_query::pgwire::serve(engine, accounts, listener, options).await {
            tracing::error!(%error, "the PostgreSQL protocol server stopped");
        }
    }))
}

/// Opens the workflow engine `[workflows]` chose and, when a push service
/// is configured, the push wiring on it.
async fn start_workflows(
    config: &Config,
    ingest: Arc<confab_ingest::Ingest>,
    hub: Arc<Hub>,
) -> anyhow::Result<(crate::workflows::Workflows, Option<Arc<crate::push::PushWiring>>)> {
    let workflows = crate::workflows::Workflows::open(&config.workflows, &config.data_dir).await?;
    let push = match config.push.enabled() {
        true => {
            let wiring = Arc::new(crate::push::PushWiring::new(&config.push, ingest, hub, workflows.clone())?);
            workflows.register::<confab_workflows::push::PushDelivery>(Arc::new(crate::push::SharedPush(wiring.clone())));
            Some(wiring)
        }
        false => None,
    };
    // `run` comes once every kind is registered (retention is, later).
    Ok((workflows, push))
}
