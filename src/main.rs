//! The `confab` command: `serve` runs everything in one process; `bench`
//! measures it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use confab::config::Config;

// The request path allocates many small, short-lived buffers; mimalloc
// serves them with far less time in the allocator than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "confab", version, about = "Confab: a chat backend built as a data platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the gateway, the log and the state, in one process.
    Serve {
        /// Where everything is stored (default `./data`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The HTTP address (default `127.0.0.1:8080`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// A TOML config file; flags win over it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also serve the history over the PostgreSQL protocol here
        /// (`psql -h HOST -p PORT -U <compliance account>`).
        #[arg(long)]
        sql_listen: Option<SocketAddr>,
    },
    /// Run one read-only SQL query over the history of a data directory.
    Sql {
        /// The query, e.g. "SELECT count(*) FROM messages".
        sql: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// table, csv, json (one object per line) or parquet (to stdout).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Work with pipeline definitions.
    #[command(subcommand)]
    Pipelines(PipelinesCommand),
    /// Work with the log on disk (the server must be stopped).
    #[command(subcommand)]
    Log(LogCommand),
    /// Measure Confab; prints the figures of `docs/BENCHMARKS.md`.
    #[command(subcommand)]
    Bench(confab::bench::BenchCommand),
    /// Administer a running server: users, roles, devices (needs an
    /// administrator's token; see `confab admin login`).
    Admin {
        #[command(flatten)]
        connection: confab::admin::Connection,
        #[command(subcommand)]
        command: confab::admin::AdminCommand,
    },
    /// How a running server is doing: readiness, connections, each log
    /// consumer's position and lag, the history sink, sizes on disk.
    Status {
        #[command(flatten)]
        connection: confab::admin::Connection,
        /// Print the JSON of GET /v1/admin/status instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Repairs a log the server refused to open ("not a torn tail"): each
    /// unreadable record of a partition's newest segment becomes a
    /// placeholder at the same offset (the records after it stay), and the
    /// damaged bytes are kept under `<data dir>/log/repair/`.
    Repair {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PipelinesCommand {
    /// Check definition files (the shipped ones when none are given);
    /// prints every problem with its file, pipeline and field, and exits
    /// non-zero if there is any.
    Validate { files: Vec<PathBuf> },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The server tells what it does; one-shot commands speak only of problems.
    // Delta's kernel logs every snapshot, and every missing table as an error
    // that it also returns (and we report): noise here.
    let default_filter = match cli.command {
        Command::Serve { .. } => "info,buoyant_kernel=off,delta_kernel=off,deltalake_core=warn",
        _ => "warn,buoyant_kernel=off,delta_kernel=off",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("could not start the async runtime")?;
    match cli.command {
        Command::Serve { data_dir, listen, config, sql_listen } => runtime.block_on(serve(data_dir, listen, config, sql_listen)),
        Command::Bench(command) => runtime.block_on(confab::bench::run(command)),
        Command::Admin { connection, command } => runtime.block_on(confab::admin::run(connection, command)),
        Command::Status { connection, json } => runtime.block_on(confab::admin::status(connection, json)),
        Command::Pipelines(PipelinesCommand::Validate { files }) => validate_pipelines(files),
        Command::Log(LogCommand::Repair { data_dir, config }) => repair_log(data_dir, config),
        Command::Sql { sql, data_dir, config, format } => runtime.block_on(run_sql(sql, data_dir, config, format)),
    }
}

async fn serve(data_dir: Option<PathBuf>, listen: Option<SocketAddr>, config_path: Option<PathBuf>, sql_listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut config = match config_path {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(data_dir) = data_dir {
        config.data_dir = data_dir;
    }
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if sql_listen.is_some() {
        config.sql_listen = sql_listen;
    }
    let server = confab::server::start(config).await?;
    // Tools that start the server read this line to learn the address.
    println!("listening on http://{}", server.address);
    tokio::select! {
        outcome = shutdown_signal() => {
            outcome?;
            tracing::info!("stopping: finishing in-flight requests");
            server.shutdown().await
        }
    }
}

async fn run_sql(sql: String, data_dir: Option<PathBuf>, config_path: Option<PathBuf>, format: String) -> anyhow::Result<()> {
    use std::io::Write;
    let mut config = match config_path {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(data_dir) = data_dir {
        config.data_dir = data_dir;
    }
    let format = confab_query::output::Format::parse(&format).ok_or_else(|| anyhow::anyhow!("unknown --format `{format}`: use table, csv, json or parquet"))?;
    let store = confab_query::HistoryStore::new(&config.history_location(), config.history.storage_options.clone())?;
    // Operators are audited too: who ran what, before it runs (refused or not).
    let operator = format!("os:{}", std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".to_string()));
    let details = confab_query::audit::sql_attempt(&sql, "cli", &[]);
    confab_query::audit::record_direct(&store, &operator, "sql.query", &details, confab_schemas::ids::now_ms())
        .await
        .context("could not write the audit record, so the query did not run")?;
    // The same gate and bounds as the server's; spill files in the data directory.
    let engine = confab_query::SqlEngine::new(store, config.sql.clone(), config.data_dir.join("sql-spill"))?;
    let output = engine.query(&sql).await?;
    std::io::stdout().write_all(&confab_query::output::render(&output, format)?)?;
    Ok(())
}

fn repair_log(data_dir: Option<PathBuf>, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = match config_path {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(data_dir) = data_dir {
        config.data_dir = data_dir;
    }
    // The server's lock: a running server is never repaired under.
    let _lock = confab::server::lock_data_dir(&config.data_dir)?;
    let placeholder = confab_schemas::events::LogEvent::Lost {}.encode();
    let repaired = confab_log::FileLog::repair(config.data_dir.join("log"), &placeholder)?;
    if repaired.is_empty() {
        println!("no damage found in the newest segment of any partition; nothing was changed");
    }
    for repair in repaired {
        let what = match repair.cut {
            true => "cut a torn tail".to_string(),
            false => format!("replaced {} unreadable records with placeholders (their offsets are kept)", repair.lost_records),
        };
        println!(
            "partition {}: {what} in `{}` at byte {}; the {} damaged bytes are kept in `{}`",
            repair.partition,
            repair.segment.display(),
            repair.damaged_at,
            repair.kept_bytes,
            repair.kept_in.display()
        );
    }
    Ok(())
}

fn validate_pipelines(files: Vec<PathBuf>) -> anyhow::Result<()> {
    let files = if files.is_empty() {
        confab_pipelines::definition::shipped()
    } else {
        let mut read = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).with_context(|| format!("could not read `{}`", path.display()))?;
            read.push((path, text));
        }
        read
    };
    match confab_pipelines::validate(&files) {
        Ok(specs) => {
            for spec in &specs {
                println!("ok: pipeline `{}` ({})", spec.name, spec.file.display());
            }
            Ok(())
        }
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!("{} problem(s); fix them before starting the server", problems.len());
            std::process::exit(1);
        }
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate.recv() => Ok(()),
    }
}
