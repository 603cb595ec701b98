//! `confab bench`: programs that print numbers (never timed assertions).
//!
//! - `confab bench log`: the raw append rate of the embedded log with group
//!   commit, at several numbers of concurrent appenders;
//! - `confab bench sends`: durable sends over HTTP against a real server
//!   process (started by the benchmark unless `--url` is given);
//! - `confab bench state`: the state at 1 to 10 million messages: memory,
//!   start-up, history pages and sends (`src/bench/state.rs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use confab_log::{FileLog, Log, LogConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

mod history;
mod media;
mod push;
mod state;
mod ws;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Raw durable appends to the embedded log.
    Log {
        /// Folder for the log (a temporary one by default).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Concurrent appenders, one round each.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        writers: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 300)]
        record_bytes: usize,
    },
    /// Durable sends over HTTP.
    Sends {
        /// A running server; without it the benchmark starts its own.
        #[arg(long)]
        url: Option<String>,
        /// Concurrent senders, one round each.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        senders: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 200)]
        body_bytes: usize,
        /// Total sends per second, spread evenly over the senders (open loop,
        /// latency counted from each send's scheduled time, as wrk2 does).
        /// Without it every sender sends as fast as it can (closed loop).
        #[arg(long)]
        rate: Option<f64>,
        /// Log partitions of the server the benchmark starts.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Whether the server the benchmark starts runs the history sink
        /// (`off` keeps only the fanout and receipts pipelines).
        #[arg(long, default_value = "on")]
        history: String,
        /// A compliance query kept running over HTTP during each round (one
        /// after another), to measure what it costs the sends. The
        /// benchmark's first account, the server's administrator when the
        /// benchmark starts it, grants itself the role.
        #[arg(long)]
        during_sql: Option<String>,
        /// Whether the server the benchmark starts runs the search indexing
        /// pipeline (`off` leaves `search.toml` out).
        #[arg(long, default_value = "on")]
        search: String,
        /// Messages sent, evenly over each round, by a prober of its own, each
        /// with a word of its own, then searched for every 20 ms until found:
        /// the time from send to searchable (with --search on).
        #[arg(long, default_value_t = 0)]
        search_probes: usize,
        /// `on`: the server the benchmark starts traces every send
        /// (`sample_ratio` 1) and exports the spans over OTLP/HTTP to a
        /// receiver in the benchmark, which counts them.
        #[arg(long, default_value = "off")]
        traces: String,
        /// The share of sends traced with --traces on (`[telemetry] sample_ratio`).
        #[arg(long, default_value_t = 1.0)]
        trace_sample_ratio: f64,
    },
    /// The history at scale: the sink's sustained rate, then compliance queries.
    History {
        /// Folder for the log and tables; an existing one is reused (no reload).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 30)]
        days: u64,
        #[arg(long, default_value_t = 100_000)]
        conversations: u64,
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Runs of each query (best and median are printed).
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// The state at scale: loads messages with receipts through the log, then
    /// measures memory, start-up, history pages and sends at each size.
    State {
        /// Folder for the data directory and what was loaded; an existing one
        /// is topped up (a temporary one, removed at the end, by default).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Message counts to measure at, ascending: each step tops the data up to its count.
        #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
        steps: Vec<u64>,
        /// Loaded users (at least 200); they have dms and groups of 20 among them.
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        #[arg(long, default_value_t = 100)]
        body_bytes: usize,
        /// Concurrent senders of the sends phase.
        #[arg(long, default_value_t = 256)]
        senders: usize,
        /// Length of the sends phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Distinct conversations whose newest page is read, cold then warm.
        #[arg(long, default_value_t = 2000)]
        history_pages: usize,
        /// Log partitions of a new data directory.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
    /// Many WebSocket clients: 1:1 traffic, a large fanout, idle connections.
    Ws {
        /// Which scenarios to run, in order.
        #[arg(long, value_delimiter = ',', default_value = "pairs,fanout,idle")]
        scenarios: Vec<String>,
        /// 1:1 conversations of the `pairs` scenario (two connections each).
        #[arg(long, default_value_t = 500)]
        pairs: usize,
        /// Messages per second over all pairs.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Members of the `fanout` scenario's channel, all online.
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Connections of the `idle` scenario.
        #[arg(long, default_value_t = 18_000)]
        idle_connections: usize,
        /// Sender sockets of the `senders` scenario.
        #[arg(long, default_value_t = 10)]
        sockets: usize,
        /// Sends in flight per socket in the `senders` scenario.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    /// Push notifications through the workflow engine to local APNs and FCM
    /// servers: one message to a big group, then steady sends.
    Push {
        /// Members of the big group, all offline with a push token.
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Messages per second into small groups in the steady rounds.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Small groups (of five) per steady round.
        #[arg(long, default_value_t = 200)]
        groups: usize,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Run the workflows on Temporal at this address (e.g. a dev
        /// server from `tests/servers/temporal`) instead of the embedded engine.
        #[arg(long)]
        temporal: Option<String>,
        /// The Temporal namespace (with --temporal).
        #[arg(long, default_value = "default")]
        temporal_namespace: String,
        /// Run the fake APNs and FCM servers (stand-ins for Apple's and
        /// Google's machines) on their own runtime at nice 10, so they take
        /// only the CPU the server leaves; off, they compete with it.
        #[arg(long)]
        fakes_nice: bool,
        /// `on` keeps the shipped search pipeline (every message indexed,
        /// as `confab serve` does by default); `off` leaves it out, as in
        /// the figures before search existed.
        #[arg(long, default_value = "off")]
        search: String,
    },
    /// Uploads through the local signed URLs with moderation running, and
    /// the live sends meanwhile; then complete -> ready for 5 MB JPEGs.
    Media {
        /// Clients uploading at once.
        #[arg(long, default_value_t = 16)]
        uploaders: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Size of the (non-image) files uploaded, in MiB.
        #[arg(long, default_value_t = 8)]
        file_mib: u64,
        /// 5 MB JPEGs timed from complete to ready, one at a time.
        #[arg(long, default_value_t = 50)]
        jpegs: usize,
        /// Live sends per second, during and without the uploads.
        #[arg(long, default_value_t = 200.0)]
        send_rate: f64,
        /// Connections the sends go over.
        #[arg(long, default_value_t = 8)]
        senders: usize,
        /// All uploaders together at most this many MB/s (0: unpaced).
        #[arg(long, default_value_t = 0.0)]
        upload_mbps: f64,
        /// One upload in this many is a 5 MB JPEG (0: none).
        #[arg(long, default_value_t = 4)]
        jpeg_every: usize,
    },
    /// The search index at scale: indexing rate, size, and query latency
    /// by shape and scope; beside PostgreSQL full-text search with `--postgres`.
    Search {
        /// Where the index (and nothing else) goes; a fresh folder by default. An index already there is reused.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 100_000)]
        conversations: u64,
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Queries timed per shape and scope.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// A PostgreSQL connection string for `psql` (e.g. postgresql://127.0.0.1:5432/bench): loads the same messages there and times the same queries.
        #[arg(long)]
        postgres: Option<String>,
        /// A ClickHouse HTTP URL: the ClickHouse engine is loaded (database `confab_bench`) and timed too.
        #[arg(long)]
        clickhouse: Option<String>,
        /// Our engines to run without an address (`embedded`; empty for none).
        #[arg(long, value_delimiter = ',', default_value = "embedded")]
        engines: Vec<String>,
    },
    /// (Used by `bench ws`.) Holds idle WebSockets until stdin closes.
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        url: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        connections: usize,
    },
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Log { dir, writers, seconds, record_bytes } => bench_log(dir, writers, seconds, record_bytes).await,
        BenchCommand::Ws { scenarios, pairs, rate, seconds, members, idle_connections, sockets, window } => {
            ws::run(ws::WsOptions { scenarios, pairs, rate, seconds, members, idle_connections, sockets, window }).await
        }
        BenchCommand::Media { uploaders, seconds, file_mib, jpegs, send_rate, senders, upload_mbps, jpeg_every } => {
            media::run(media::MediaOptions { uploaders, seconds, file_mib, jpegs, send_rate, senders, upload_mbps, jpeg_every }).await
        }
        BenchCommand::Hold { url, token, connections } => ws::hold(url, token, connections).await,
        BenchCommand::Search { dir, messages, conversations, users, queries, postgres, clickhouse, engines } => {
            confab_search::bench::run(confab_search::bench::SearchOptions { dir, messages, conversations, users, queries, postgres, clickhouse, engines }).await
        }
        BenchCommand::Push { members, rate, seconds, groups, partitions, temporal, temporal_namespace, fakes_nice, search } => {
            let search = match search.as_str() {
                "on" => true,
                "off" => false,
                other => bail!("--search `{other}`: use on or off"),
            };
            push::run(push::PushOptions { members, rate, seconds, groups, partitions, temporal, temporal_namespace, fakes_nice, search }).await
        }
        BenchCommand::Sends { url, senders, seconds, body_bytes, rate, partitions, history, during_sql, search, search_probes, traces, trace_sample_ratio } => {
            let on_off = |flag: &str, value: &str| match value {
                "on" => Ok(true),
                "off" => Ok(false),
                other => Err(anyhow::anyhow!("--{flag} `{other}`: use on or off")),
            };
            let (history, search, traces) = (on_off("history", &history)?, on_off("search", &search)?, on_off("traces", &traces)?);
            if search_probes > 0 && !search {
                bail!("--search-probes needs --search on");
            }
            if traces && url.is_some() {
                bail!("--traces on needs a server the benchmark starts (no --url)");
            }
            if !(0.0..=1.0).contains(&trace_sample_ratio) {
                bail!("--trace-sample-ratio {trace_sample_ratio}: use a share from 0 to 1");
            }
            let traces = traces.then_some(trace_sample_ratio);
            bench_sends(SendsOptions { url, senders, seconds, body_bytes, rate, partitions, history, during_sql, search, search_probes, traces }).await
        }
        BenchCommand::History { dir, messages, days, conversations, users, repeat } => {
            history::run(history::HistoryOptions { dir, messages, days, conversations, users, repeat }).await
        }
        BenchCommand::State { dir, steps, users, body_bytes, senders, seconds, history_pages, partitions } => {
            state::run(state::StateOptions { dir, steps, users, body_bytes, senders, seconds, history_pages, partitions }).await
        }
    }
}

/// Latencies in microseconds, summarized.
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

pub(crate) fn summarize(mut latencies_us: Vec<u64>) -> Summary {
    latencies_us.sort_unstable();
    let at = |fraction: f64| -> f64 {
        if latencies_us.is_empty() {
            return 0.0;
        }
        let index = ((latencies_us.len() as f64 * fraction).ceil() as usize).clamp(1, latencies_us.len()) - 1;
        latencies_us[index] as f64 / 1000.0
    };
    Summary { count: latencies_us.len(), p50_ms: at(0.50), p99_ms: at(0.99), max_ms: at(1.0) }
}

async fn bench_log(dir: Option<PathBuf>, writers: Vec<usize>, seconds: u64, record_bytes: usize) -> anyhow::Result<()> {
    let temporary = tempdir_in_target()?;
    let dir = dir.unwrap_or_else(|| temporary.clone());
    println!("log append benchmark: {record_bytes}-byte records, {seconds} s per round, fsync per group commit, dir {}", dir.display());
    println!("{:>8} {:>12} {:>10} {:>10} {:>10}", "writers", "records/s", "p50 ms", "p99 ms", "max ms");
    for (round, &writer_count) in writers.iter().enumerate() {
        let round_dir = dir.join(format!("round-{round}"));
        let log = Arc::new(FileLog::open(&round_dir, LogConfig::default())?);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for writer in 0..writer_count {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let partition = (writer % log.partition_count() as usize) as u32;
                let payload = vec![b'x'; record_bytes];
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    log.append(partition, vec![payload.clone()])?.durable().await?;
                    latencies.push(started.elapsed().as_micros() as u64);
                }
                anyhow::Ok(latencies)
            }));
        }
        let started = Instant::now();
        let latencies = join_latencies(tasks).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let summary = summarize(latencies);
        println!("{writer_count:>8} {:>12.0} {:>10.3} {:>10.3} {:>10.3}", summary.count as f64 / elapsed, summary.p50_ms, summary.p99_ms, summary.max_ms);
        drop(log);
        let _ = std::fs::remove_dir_all(&round_dir);
    }
    let _ = std::fs::remove_dir_all(&temporary);
    Ok(())
}

/// Waits for every measuring task and pools their latencies.
async fn join_latencies(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<u64>>>>) -> anyhow::Result<Vec<u64>> {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}

fn tempdir_in_target() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("confab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A server process started for the benchmark, killed when dropped.
pub(crate) struct BenchServer {
    child: tokio::process::Child,
    pub(crate) url: String,
    /// When the process was spawned.
    pub(crate) started: Instant,
    /// The data directory, if the benchmark made it for this server alone
    /// (removed when dropped).
    temporary_data_dir: Option<PathBuf>,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(data_dir) = &self.temporary_data_dir {
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
}

impl BenchServer {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Stops the server as an operator does (SIGTERM: it finishes in-flight
    /// requests and takes a last checkpoint) and waits until it has exited;
    /// returns how long that took.
    pub(crate) async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).context("the server has exited already")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).context("could not send SIGTERM to the server")?;
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("the server did not stop within {} s of SIGTERM", timeout.as_secs()))??;
        if !status.success() {
            bail!("the server exited with {status} after SIGTERM");
        }
        Ok(started.elapsed())
    }

    /// Kills the server at once (SIGKILL), as a crash does, and waits for it.
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("could not kill the server")
    }

    /// The server's resident memory.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// One kB field of the server's `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
    pub(crate) fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).context("could not read the server's /proc status")?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in the server's /proc status"))
    }
}

/// A server with the shipped pipelines but those with a stage of one of
/// `kinds` (all of them when it is empty), and `extra_config` tables.
async fn start_bench_server_without(partitions: u32, kinds: &[&str], extra_config: &str) -> anyhow::Result<BenchServer> {
    if kinds.is_empty() {
        return start_bench_server_with(partitions, extra_config).await;
    }
    let pipelines = tempdir_in_target()?.join("pipelines");
    write_pipelines_without(&pipelines, kinds)?;
    start_bench_server_full(partitions, &format!("pipelines_dir = {:?}\n", pipelines.to_string_lossy()), extra_config).await
}

/// Writes the shipped pipeline definitions but the history sink's into `folder`.
pub(crate) fn write_pipelines_without_history(folder: &Path) -> anyhow::Result<()> {
    write_pipelines_without(folder, &["delta_sink"])
}

/// Writes the shipped pipeline definitions into `folder`, but the files with
/// a stage of one of `kinds` (`delta_sink`, `search_index`).
pub(crate) fn write_pipelines_without(folder: &Path, kinds: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(folder)?;
    for (path, text) in confab_pipelines::definition::shipped() {
        if !kinds.iter().any(|kind| text.contains(&format!("kind = \"{kind}\""))) {
            std::fs::write(folder.join(path.file_name().context("a shipped definition has a file name")?), text)?;
        }
    }
    Ok(())
}

/// A bench server's config: `top_level` keys, the partitions, rate limits
/// off (the benchmarks measure the write path), then `extra_config` tables.
pub(crate) fn bench_config(partitions: u32, top_level: &str, extra_config: &str) -> String {
    format!("{top_level}[log]\npartitions = {partitions}\n[gateway.rate_limits]\nenabled = false\n{extra_config}")
}

/// Starts `confab serve` on a fresh data directory with rate limits off and
/// `extra_config` (TOML tables) added.
pub(crate) async fn start_bench_server_with(partitions: u32, extra_config: &str) -> anyhow::Result<BenchServer> {
    start_bench_server_full(partitions, "", extra_config).await
}

/// As [`start_bench_server_with`], with top-level keys (before any table) too.
async fn start_bench_server_full(partitions: u32, top_level: &str, extra_config: &str) -> anyhow::Result<BenchServer> {
    let data_dir = tempdir_in_target()?.join("server");
    std::fs::create_dir_all(&data_dir)?;
    let config_path = data_dir.with_extension("toml");
    std::fs::write(&config_path, bench_config(partitions, top_level, extra_config))?;
    let mut server = start_bench_server_on(&data_dir, &config_path).await?;
    server.temporary_data_dir = Some(data_dir);
    Ok(server)
}

/// Starts `confab serve` on an existing data directory with the config file
/// at `config_path`; both are kept when the server is dropped. Returns once
/// the server listens (after it has opened the state).
pub(crate) async fn start_bench_server_on(data_dir: &Path, config_path: &Path) -> anyhow::Result<BenchServer> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config_path)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("could not start the server")?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let Some(line) = lines.next_line().await? else { bail!("the server exited before listening") };
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_string();
        }
    };
    Ok(BenchServer { child, url, started, temporary_data_dir: None })
}

pub(crate) async fn post(client: &reqwest::Client, url: &str, token: Option<&str>, body: Value) -> anyhow::Result<Value> {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    // 204 and the like have no body.
    let value: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes)? };
    if !status.is_success() {
        bail!("{url} answered {status}: {value}");
    }
    Ok(value)
}

/// Signs up and logs in a user; returns (userId, accessToken).
pub(crate) async fn account(client: &reqwest::Client, base: &str, username: &str) -> anyhow::Result<(String, String)> {
    let password = "bench-password";
    let created = post(client, &format!("{base}/v1/users"), None, json!({"username": username, "password": password})).await?;
    let session = post(client, &format!("{base}/v1/sessions"), None, json!({"username": username, "password": password})).await?;
    Ok((created["userId"].as_str().unwrap_or_default().to_string(), session["accessToken"].as_str().unwrap_or_default().to_string()))
}

pub(crate) struct SendsOptions {
    pub(crate) url: Option<String>,
    pub(crate) senders: Vec<usize>,
    pub(crate) seconds: u64,
    pub(crate) body_bytes: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) partitions: u32,
    pub(crate) history: bool,
    pub(crate) during_sql: Option<String>,
    /// Whether the server it starts runs the search indexing pipeline.
    pub(crate) search: bool,
    /// Probe messages per round timed from send to searchable (0: none).
    pub(crate) search_probes: usize,
    /// With the share of sends traced: the server it starts exports their traces.
    pub(crate) traces: Option<f64>,
}

/// One round of `bench sends`.
pub(crate) struct SendsRound {
    pub(crate) senders: usize,
    pub(crate) sends_per_second: f64,
    pub(crate) summary: Summary,
}

async fn bench_sends(options: SendsOptions) -> anyhow::Result<()> {
    run_sends(options).await?;
    Ok(())
}

/// Runs and prints the rounds of `bench sends`, and returns them.
pub(crate) async fn run_sends(options: SendsOptions) -> anyhow::Result<Vec<SendsRound>> {
    let SendsOptions { url, senders, seconds, body_bytes, rate, partitions, history, during_sql, search, search_probes, traces } = options;
    let left_out: Vec<&str> = [(!history).then_some("delta_sink"), (!search).then_some("search_index")].into_iter().flatten().collect();
    let receiver = match traces {
        Some(_) => Some(confab_telemetry::receiver::Receiver::start(false).await?),
        None => None,
    };
    let telemetry = receiver
        .as_ref()
        .map_or(String::new(), |receiver| format!("[telemetry]\notlp_endpoint = {:?}\nsample_ratio = {:?}\n", receiver.endpoint(), traces.unwrap_or(1.0)));
    let server = match url {
        Some(_) => None,
        None => Some(start_bench_server_without(partitions, &left_out, &telemetry).await?),
    };
    let base = url.unwrap_or_else(|| server.as_ref().expect("started").url.clone());
    let max_senders = senders.iter().copied().max().unwrap_or(1);
    let client = reqwest::Client::builder().pool_max_idle_per_host(max_senders * 2).build()?;
    // Setup uses reqwest; the measured loop uses RawHttp, a minimal
    // keep-alive HTTP/1.1 client (as wrk does), so that the load generator
    // leaves the server as much of this small machine as it can.
    let run_id = fastrand::u32(..);
    let pacing = match rate {
        Some(rate) => format!("open loop at {rate:.0} sends/s in total"),
        None => "closed loop, each sender as fast as it can".to_string(),
    };
    println!(
        "durable sends over HTTP: {body_bytes}-byte bodies of words, {seconds} s per round, {pacing}, history {}, search {}, traces {}, server {base}",
        if history { "on" } else { "off" },
        if search { "on" } else { "off" },
        traces.map_or("off".to_string(), |ratio| format!("on (sample ratio {ratio})"))
    );
    // The querying account first: on a fresh server it is the administrator.
    let analyst = match &during_sql {
        Some(sql) => {
            let (user_id, token) = account(&client, &base, &format!("bench{run_id}-analyst")).await?;
            post(&client, &format!("{base}/v1/admin/roles"), Some(&token), json!({"userId": user_id, "role": "compliance"}))
                .await
                .context("--during-sql: the benchmark's first account could not grant itself the compliance role (is the server fresh?)")?;
            println!("with a compliance query running throughout each round: {sql}");
            Some((token, sql.clone()))
        }
        None => None,
    };
    // One account and one group conversation per sender, so sends spread over partitions.
    let mut accounts = Vec::new();
    for index in 0..max_senders {
        let (_, token) = account(&client, &base, &format!("bench{run_id}-{index}")).await?;
        let conversation =
            post(&client, &format!("{base}/v1/conversations"), Some(&token), json!({"type": "group", "memberIds": [], "title": "bench"})).await?;
        accounts.push((token, conversation["conversationId"].as_str().unwrap_or_default().to_string()));
    }
    let prober = match search_probes {
        0 => None,
        _ => {
            let (_, token) = account(&client, &base, &format!("bench{run_id}-prober")).await?;
            let conversation =
                post(&client, &format!("{base}/v1/conversations"), Some(&token), json!({"type": "group", "memberIds": [], "title": "probes"})).await?;
            Some((token, conversation["conversationId"].as_str().unwrap_or_default().to_string()))
        }
    };
    println!("{:>8} {:>12} {:>10} {:>10} {:>10}", "senders", "sends/s", "p50 ms", "p99 ms", "max ms");
    // Bodies of words, as chat is, so that indexing does real work: drawn
    // from a vocabulary of 5,000 made-up words, a few bodies to rotate.
    let vocabulary: Vec<String> = (0..5_000).map(|index| format!("w{}{index}", ["ka", "lo", "mi", "ne", "ru", "sa"][index % 6])).collect();
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|_| {
                let mut body = String::new();
                while body.len() < body_bytes {
                    body.push_str(&vocabulary[fastrand::usize(..vocabulary.len())]);
                    body.push(' ');
                }
                body.truncate(body_bytes.max(1));
                body
            })
            .collect(),
    );
    let mut rounds = Vec::new();
    for &sender_count in &senders {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for (token, conversation_id) in &accounts[..sender_count.min(accounts.len())] {
            let (token, conversation_id) = (token.clone(), conversation_id.clone());
            let address = base.trim_start_matches("http://").to_string();
            let bodies = bodies.clone();
            let interval = rate.map(|rate| Duration::from_secs_f64(sender_count as f64 / rate));
            tasks.push(tokio::spawn(async move {
                let mut connection = RawHttp::connect(&address).await?;
                let mut latencies = Vec::new();
                let mut counter = 0u64;
                // Spread the senders' schedules over one interval.
                let mut scheduled = Instant::now() + interval.map_or(Duration::ZERO, |interval| interval.mul_f64(fastrand::f64()));
                while Instant::now() < deadline {
                    counter += 1;
                    let body = &bodies[counter as usize % bodies.len()];
                    let request = json!({"conversationId": conversation_id, "clientMsgId": format!("{}-{counter}", fastrand::u64(..)), "body": body});
                    let started = match interval {
                        Some(interval) => {
                            tokio::time::sleep_until(scheduled.into()).await;
                            let at = scheduled;
                            scheduled += interval;
                            at
                        }
                        None => Instant::now(),
                    };
                    let status = connection.post("/v1/messages", &token, &serde_json::to_vec(&request)?).await?;
                    if status != 201 {
                        bail!("send answered {status}");
                    }
                    latencies.push(started.elapsed().as_micros() as u64);
                }
                anyhow::Ok(latencies)
            }));
        }
        let querying = analyst.clone().map(|(token, sql)| {
            let (client, url) = (client.clone(), format!("{base}/v1/admin/sql"));
            tokio::spawn(async move {
                let mut statements = 0u64;
                while Instant::now() < deadline {
                    // Each ends, done or stopped at the statement timeout; then the next starts.
                    let _ = client.post(&url).bearer_auth(&token).json(&json!({"sql": sql})).send().await;
                    statements += 1;
                }
                statements
            })
        });
        let probing = prober.clone().map(|(token, conversation_id)| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(probe_search(client, base, token, conversation_id, search_probes, deadline, run_id))
        });
        let started = Instant::now();
        let latencies = join_latencies(tasks).await?;
        let summary = summarize(latencies);
        let rate = summary.count as f64 / started.elapsed().as_secs_f64();
        if let Some(querying) = querying {
            querying.abort();
        }
        println!("{sender_count:>8} {rate:>12.0} {:>10.3} {:>10.3} {:>10.3}", summary.p50_ms, summary.p99_ms, summary.max_ms);
        if let Some(probing) = probing {
            let (visible, missing) = probing.await??;
            let visible = summarize(visible);
            println!(
                "         send to searchable: {} probes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {missing} not found within 10 s",
                visible.count, visible.p50_ms, visible.p99_ms, visible.max_ms
            );
        }
        rounds.push(SendsRound { senders: sender_count, sends_per_second: rate, summary });
    }
    drop(server);
    if let Some(receiver) = receiver {
        // The server was killed, not stopped: what it had queued is not counted.
        println!("spans received over OTLP: {} in {} export requests", receiver.span_count(), receiver.requests());
    }
    Ok(rounds)
}

/// Sends `probes` messages evenly until `deadline`, each with a word of its
/// own, and searches for each every 20 ms until found: the time from the
/// send's start to the first search that finds it (microseconds), and how
/// many were not found within 10 s. Probes overlap: each runs on its own
/// from its scheduled time.
async fn probe_search(
    client: reqwest::Client,
    base: String,
    token: String,
    conversation_id: String,
    probes: usize,
    deadline: Instant,
    run_id: u32,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let spacing = deadline.saturating_duration_since(Instant::now()).div_f64(probes.max(1) as f64);
    let first = Instant::now();
    let mut tasks = Vec::new();
    for probe in 0..probes {
        tokio::time::sleep_until((first + spacing.mul_f64(probe as f64)).into()).await;
        let (client, base, token, conversation_id) = (client.clone(), base.clone(), token.clone(), conversation_id.clone());
        tasks.push(tokio::spawn(async move {
            let word = format!("probe{run_id}x{probe}");
            let started = Instant::now();
            let body = json!({"conversationId": conversation_id, "clientMsgId": word, "body": format!("a probe {word} for search")});
            post(&client, &format!("{base}/v1/messages"), Some(&token), body).await?;
            let url = format!("{base}/v1/search?q={word}&conversationId={conversation_id}&limit=1");
            loop {
                let page: Value = client.get(&url).bearer_auth(&token).send().await?.json().await?;
                if page["results"].as_array().is_some_and(|results| !results.is_empty()) {
                    return anyhow::Ok(Some(started.elapsed().as_micros() as u64));
                }
                if started.elapsed() > Duration::from_secs(10) {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let (mut visible, mut missing) = (Vec::new(), 0);
    for task in tasks {
        match task.await?? {
            Some(latency) => visible.push(latency),
            None => missing += 1,
        }
    }
    Ok((visible, missing))
}

/// A minimal HTTP/1.1 keep-alive client for the measured loop: one
/// connection, one request at a time, responses parsed just enough to read
/// the status and skip the body.
pub(crate) struct RawHttp {
    stream: tokio::net::TcpStream,
    host: String,
    buffer: Vec<u8>,
    /// Where the last response's body is in `buffer`.
    body: std::ops::Range<usize>,
}

impl RawHttp {
    pub(crate) async fn connect(address: &str) -> anyhow::Result<RawHttp> {
        let stream = tokio::net::TcpStream::connect(address).await.with_context(|| format!("could not connect to {address}"))?;
        stream.set_nodelay(true)?;
        Ok(RawHttp { stream, host: address.to_string(), buffer: Vec::with_capacity(4096), body: 0..0 })
    }

    async fn post(&mut self, path: &str, token: &str, body: &[u8]) -> anyhow::Result<u16> {
        self.request("POST", path, Some(token), Some(body)).await
    }

    /// A GET; the response's body is [`RawHttp::body`] until the next request.
    pub(crate) async fn get(&mut self, path: &str, token: Option<&str>) -> anyhow::Result<u16> {
        self.request("GET", path, token, None).await
    }

    /// The body of the last response.
    pub(crate) fn body(&self) -> &[u8] {
        &self.buffer[self.body.clone()]
    }

    async fn request(&mut self, method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> anyhow::Result<u16> {
        use std::fmt::Write;
        use tokio::io::AsyncWriteExt;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(token) = token {
            let _ = write!(head, "Authorization: Bearer {token}\r\n");
        }
        if let Some(body) = body {
            let _ = write!(head, "Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body.unwrap_or_default());
        self.stream.write_all(&request).await?;
        self.buffer.clear();
        self.body = 0..0;
        loop {
            if let Some(header_end) = self.buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..header_end])?;
                let status: u16 = head.get(9..12).and_then(|code| code.parse().ok()).context("a malformed status line")?;
                let length: usize = head
                    .lines()
                    .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|value| value.trim().to_string()))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0);
                let total = header_end + 4 + length;
                while self.buffer.len() < total {
                    self.read_more().await?;
                }
                self.body = header_end + 4..total;
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk).await?;
        if read == 0 {
            bail!("the server closed the connection");
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }
}
