//! Compliance SQL: the one gate that HTTP, the PostgreSQL protocol and
//! `confab sql` all go through.
//!
//! The happy path of one statement:
//!
//! 1. The caller has written the attempt to the audit log (each interface
//!    does this first, and refuses with "unavailable" if it cannot).
//! 2. [`SqlEngine::session`] builds a DataFusion session of its own, from
//!    the server's fixed settings: the history tables at their latest
//!    versions, the `messages` view, `as_of`, a memory pool bounded per
//!    session and shared by all compliance SQL, spill files only in the
//!    server's folder with a size bound, and no URL tables. Nothing a
//!    statement does to a session can reach another one.
//! 3. [`SqlSession::plan`] parses the text (one statement), plans it, and
//!    [`check_plan`] walks the logical plan, subqueries included: only
//!    reads of registered tables (and `EXPLAIN`/`DESCRIBE` of them) pass.
//!    `SELECT … INTO`, `WITH … INSERT`, `COPY`, `SET`, DDL and everything
//!    else that writes or changes a setting is refused here, before any of
//!    it runs: DataFusion executes DDL in `execute_logical_plan`, which a
//!    refused plan never reaches.
//! 4. [`SqlSession::run`] executes the plan on the SQL threads (their own
//!    runtime, at nice 19, so a heavy query cannot take the cores that
//!    serve chat) and hands back [`Rows`], a stream of batches. The rows
//!    and bytes are counted as they stream and the statement is stopped at
//!    the caps, at its deadline, when it is cancelled, or when the reader
//!    goes away (dropping [`Rows`] aborts the work).
//!
//! Each failure says what to do next: a refusal names the statement, a
//! timeout names the limit, a cap says to add a `LIMIT`, memory exhaustion
//! names the pool (see [`crate::Error`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use deltalake::datafusion::common::tree_node::TreeNodeRecursion;
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use deltalake::datafusion::execution::memory_pool::{MemoryLimit, MemoryPool, MemoryReservation};
use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
use deltalake::datafusion::logical_expr::{Expr, LogicalPlan};
use deltalake::datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::datafusion::sql::parser::{DFParser, Statement as DfStatement};
use deltalake::datafusion::sql::sqlparser::ast::{SetExpr, Statement};
use deltalake::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
#[cfg(test)]
use tokio::sync::oneshot;

use crate::tables::{HistoryStore, Table};
use crate::{Error, Result};

/// The latest state of each message, built from its events.
const MESSAGES_VIEW: &str = "CREATE VIEW messages AS SELECT \
    message_id, conversation_id, seq, \
    first_value(sender_id ORDER BY log_offset) AS sender_id, \
    first_value(device_id ORDER BY log_offset) AS device_id, \
    min(ts) AS created_at, max(ts) AS updated_at, \
    CASE WHEN bool_or(event_type = 'deleted') THEN '' ELSE last_value(body ORDER BY log_offset) END AS body, \
    bool_or(event_type = 'edited') AS edited, bool_or(event_type = 'deleted') AS deleted \
    FROM message_events GROUP BY message_id, conversation_id, seq";

/// Table functions a statement may read from (they read only the history
/// or make numbers; none reads a file).
const TABLE_FUNCTIONS: [&str; 3] = ["as_of", "generate_series", "range"];

/// The limits of compliance SQL (the `[sql]` table of the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// The longest a statement may run, rows sent included; a pgwire
    /// session may set a shorter `statement_timeout`, never a longer one.
    pub statement_timeout_ms: u64,
    /// Memory one session (one running statement) may hold for sorts,
    /// joins and aggregations before it spills or fails.
    pub query_memory_mb: usize,
    /// Memory all compliance SQL together may hold.
    pub total_memory_mb: usize,
    /// Spill files, in `<data_dir>/sql-spill`, at most this much in all.
    pub spill_max_mb: u64,
    /// Rows one result may have (pgwire and `confab sql`; HTTP has its own, smaller).
    pub result_max_rows: u64,
    /// Bytes one result may have, counted as Arrow data while it streams.
    pub result_max_bytes: u64,
    /// Largest SQL text accepted.
    pub sql_max_bytes: usize,
    /// Threads that run compliance SQL, at low priority (nice 19).
    pub threads: usize,
    /// PostgreSQL-protocol connections open at once; more are refused
    /// with SQLSTATE 53300.
    pub max_connections: usize,
    /// TLS for the PostgreSQL protocol (PEM files); see `require_tls`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Refuse password logins that do not come over TLS. Default: on when
    /// a certificate is configured; a listener off loopback without TLS
    /// refuses to start unless `allow_cleartext_off_loopback` is set.
    pub require_tls: Option<bool>,
    pub allow_cleartext_off_loopback: bool,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            statement_timeout_ms: 60_000,
            query_memory_mb: 512,
            total_memory_mb: 1_024,
            spill_max_mb: 10 * 1024,
            result_max_rows: 10_000_000,
            result_max_bytes: 1 << 30,
            sql_max_bytes: 64 * 1024,
            threads: 1,
            max_connections: 32,
            tls_cert_file: None,
            tls_key_file: None,
            require_tls: None,
            allow_cleartext_off_loopback: false,
        }
    }
}

impl SqlConfig {
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }

    /// Every problem of the settings, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.statement_timeout_ms == 0 {
            problems.push("[sql] statement_timeout_ms must be over 0".to_string());
        }
        if self.query_memory_mb == 0 || self.query_memory_mb > self.total_memory_mb {
            problems.push(format!("[sql] query_memory_mb must be from 1 to total_memory_mb ({})", self.total_memory_mb));
        }
        if self.threads == 0 {
            problems.push("[sql] threads must be 1 or more".to_string());
        }
        if self.max_connections == 0 {
            problems.push("[sql] max_connections must be 1 or more".to_string());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            problems.push("[sql] tls_cert_file and tls_key_file go together: give both or neither".to_string());
        }
        if self.require_tls == Some(true) && self.tls_cert_file.is_none() {
            problems.push("[sql] require_tls needs tls_cert_file and tls_key_file".to_string());
        }
        problems
    }

    /// Whether password logins must come over TLS.
    pub fn requires_tls(&self) -> bool {
        self.require_tls.unwrap_or(self.tls_cert_file.is_some())
    }
}

/// A query's whole result (for `confab sql`, benchmarks and tests).
#[derive(Debug)]
pub struct QueryOutput {
    pub columns: Vec<String>,
    pub batches: Vec<RecordBatch>,
}

/// Resolves when the statement should stop (a CancelRequest, say).
pub type Cancel = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How far one statement may go.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub timeout: Duration,
    pub max_rows: u64,
    pub max_bytes: u64,
}

/// Compliance SQL over the history: cheap to clone, one per server.
#[derive(Debug, Clone)]
pub struct SqlEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: HistoryStore,
    config: SqlConfig,
    /// What all sessions hold together.
    all_memory: Arc<Budget>,
    /// Statements running now (dropped or finished ones are not).
    running: Arc<AtomicUsize>,
    /// One spill folder and size bound for all sessions together.
    disk: Arc<deltalake::datafusion::execution::disk_manager::DiskManager>,
    threads: SqlThreads,
}

/// The runtime compliance SQL runs on, shut down without blocking when
/// the engine goes (a runtime may not be dropped inside another).
#[derive(Debug)]
struct SqlThreads(Option<tokio::runtime::Runtime>);

impl Drop for SqlThreads {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl SqlEngine {
    /// The engine over `store`; spill files go under `spill_dir`.
    pub fn new(store: HistoryStore, config: SqlConfig, spill_dir: PathBuf) -> Result<SqlEngine> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        std::fs::create_dir_all(&spill_dir).map_err(|error| Error::Runtime(format!("could not make the spill folder `{}`: {error}", spill_dir.display())))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .thread_name("confab-sql")
            .on_thread_start(|| {
                // Far below the chat's threads: a heavy query waits, sends do not.
                let _ = rustix::process::setpriority_process(None, 19);
            })
            .enable_all()
            .build()
            .map_err(|error| Error::Runtime(error.to_string()))?;
        let all_memory = Arc::new(Budget { limit: config.total_memory_mb << 20, used: AtomicUsize::new(0) });
        let running = Arc::new(AtomicUsize::new(0));
        let disk = DiskManagerBuilder::default()
            .with_mode(DiskManagerMode::Directories(vec![spill_dir.clone()]))
            .with_max_temp_directory_size(config.spill_max_mb << 20)
            .build()
            .map_err(|error| Error::Runtime(error.to_string()))?;
        let disk = Arc::new(disk);
        Ok(SqlEngine { inner: Arc::new(Inner { store, config, all_memory, running, disk, threads: SqlThreads(Some(runtime)) }) })
    }

    pub fn config(&self) -> &SqlConfig {
        &self.inner.config
    }

    /// The bounds of the server's settings (a caller may narrow them).
    pub fn bounds(&self) -> Bounds {
        let config = &self.inner.config;
        Bounds { timeout: config.statement_timeout(), max_rows: config.result_max_rows, max_bytes: config.result_max_bytes }
    }

    /// Statements running now.
    pub fn statements_running(&self) -> usize {
        self.inner.running.load(Ordering::Relaxed)
    }

    /// Memory all compliance SQL holds now, in bytes.
    pub fn memory_in_use(&self) -> usize {
        self.inner.all_memory.used.load(Ordering::Relaxed)
    }

    /// A session of its own, over the tables as they are now.
    pub async fn session(&self) -> Result<SqlSession> {
        let config = &self.inner.config;
        let pool: Arc<dyn MemoryPool> =
            Arc::new(SessionPool { limit: config.query_memory_mb << 20, used: AtomicUsize::new(0), all: self.inner.all_memory.clone() });
        // The spill bound is shared: every session spills through one manager.
        let mut runtime = RuntimeEnvBuilder::new().with_memory_pool(pool);
        runtime.disk_manager = Some(self.inner.disk.clone());
        let runtime = runtime.build_arc().map_err(|error| Error::Runtime(error.to_string()))?;
        // Parquet filter pushdown stays off: measured at 10M events it sped
        // up full scans but slowed the one-conversation query (BENCHMARKS.md).
        // URL tables stay off (the default): `FROM '/etc/passwd'` is not a table.
        let settings = SessionConfig::new().with_information_schema(true);
        let context = SessionContext::new_with_config_rt(settings, runtime);
        context.register_udtf("as_of", Arc::new(AsOf { store: self.inner.store.clone() }));
        let session = SqlSession { context, engine: self.clone() };
        session.refresh().await?;
        Ok(session)
    }

    /// Plans, checks and runs one statement within the server's bounds,
    /// and collects its result.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        let session = self.session().await?;
        let plan = session.plan(sql).await?;
        session.run(plan, self.bounds(), None).collect().await
    }
}

/// One session: a pgwire connection, an HTTP request, a `confab sql` run.
pub struct SqlSession {
    context: SessionContext,
    engine: SqlEngine,
}

impl SqlSession {
    /// Points each table at its latest version (a long-lived pgwire
    /// session does this before each statement).
    pub async fn refresh(&self) -> Result<()> {
        let store = &self.engine.inner.store;
        let context = &self.context;
        for table in Table::ALL {
            let delta = store.open_or_create(table).await?;
            let provider = delta.table_provider().await.map_err(|source| Error::Delta { table: table.name(), source: source.into() })?;
            context.deregister_table(table.name()).map_err(|error| Error::Query(error.to_string()))?;
            context.register_table(table.name(), provider).map_err(|error| Error::Query(error.to_string()))?;
        }
        // The view holds the snapshots it was made from: make it again.
        // (Made here by the server, never by a statement: those cannot create.)
        context.deregister_table("messages").map_err(|error| Error::Query(error.to_string()))?;
        context.sql(MESSAGES_VIEW).await.map_err(|error| Error::Query(error.to_string()))?;
        Ok(())
    }

    /// Parses, plans and checks one statement: refused unless it only reads.
    pub async fn plan(&self, sql: &str) -> Result<LogicalPlan> {
        if sql.len() > self.engine.inner.config.sql_max_bytes {
            return Err(Error::TooLong { bytes: sql.len(), limit: self.engine.inner.config.sql_max_bytes });
        }
        let mut statements = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {}).map_err(|error| Error::Parse(error.to_string()))?;
        if statements.len() != 1 {
            return Err(Error::StatementCount(statements.len()));
        }
        let statement = statements.pop_front().expect("one statement");
        check_statement(&statement)?;
        self.plan_checked(statement).await
    }

    /// Plans and checks a statement another parser made (pgwire's).
    pub async fn plan_statement(&self, statement: Statement) -> Result<LogicalPlan> {
        let statement = DfStatement::Statement(Box::new(statement));
        check_statement(&statement)?;
        self.plan_checked(statement).await
    }

    async fn plan_checked(&self, statement: DfStatement) -> Result<LogicalPlan> {
        let plan = self.context.state().statement_to_plan(statement).await.map_err(query_error)?;
        check_plan(&plan)?;
        Ok(plan)
    }

    /// Runs a checked plan on the SQL threads. `cancel` stops it when it
    /// resolves; so does dropping the [`Rows`].
    pub fn run(&self, plan: LogicalPlan, bounds: Bounds, cancel: Option<Cancel>) -> Rows {
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let columns = schema.fields().iter().map(|field| field.name().clone()).collect();
        let (sender, receiver) = mpsc::channel(2);
        let context = self.context.clone();
        let threads = self.engine.inner.threads.0.as_ref().expect("the SQL threads run while the engine lives");
        let running = Running::start(self.engine.inner.running.clone());
        let task = threads.spawn(async move {
            let _running = running;
            let stream = stream_within(context, plan, bounds, sender.clone());
            let stopped = async {
                match cancel {
                    Some(cancel) => cancel.await,
                    None => std::future::pending().await,
                }
            };
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(bounds.timeout, stream) => outcome.unwrap_or(Err(Error::Timeout(bounds.timeout))),
                () = stopped => Err(Error::Canceled),
            };
            if let Err(error) = outcome {
                let _ = sender.send(Err(error)).await;
            }
        });
        Rows { columns, schema, receiver, running: task.abort_handle() }
    }
}

/// One running statement, counted until its task ends or is aborted.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(counter: Arc<AtomicUsize>) -> Running {
        counter.fetch_add(1, Ordering::Relaxed);
        Running(counter)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Executes `plan` and forwards its batches, counting rows and bytes.
async fn stream_within(context: SessionContext, plan: LogicalPlan, bounds: Bounds, sender: mpsc::Sender<Result<RecordBatch>>) -> Result<()> {
    let frame = context.execute_logical_plan(plan).await.map_err(query_error)?;
    let mut batches = frame.execute_stream().await.map_err(query_error)?;
    let (mut rows, mut bytes) = (0u64, 0u64);
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(query_error)?;
        rows += batch.num_rows() as u64;
        bytes += batch.columns().iter().map(|column| column.to_data().get_slice_memory_size().unwrap_or(0) as u64).sum::<u64>();
        if rows > bounds.max_rows {
            return Err(Error::ResultTooLarge(format!("more than {} rows", bounds.max_rows)));
        }
        if bytes > bounds.max_bytes {
            return Err(Error::ResultTooLarge(format!("more than {} bytes", bounds.max_bytes)));
        }
        if sender.send(Ok(batch)).await.is_err() {
            // The reader went away: stop the work.
            return Ok(());
        }
    }
    Ok(())
}

/// A running statement's result, batch by batch. Dropping it stops the statement.
#[derive(Debug)]
pub struct Rows {
    pub columns: Vec<String>,
    pub schema: SchemaRef,
    receiver: mpsc::Receiver<Result<RecordBatch>>,
    running: tokio::task::AbortHandle,
}

impl Drop for Rows {
    fn drop(&mut self) {
        self.running.abort();
    }
}

impl Rows {
    /// The next batch; `None` once the statement is done.
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch>> {
        self.receiver.recv().await
    }

    /// Every batch (within the bounds the statement runs under).
    pub async fn collect(mut self) -> Result<QueryOutput> {
        let mut batches = Vec::new();
        while let Some(batch) = self.next_batch().await {
            batches.push(batch?);
        }
        Ok(QueryOutput { columns: std::mem::take(&mut self.columns), batches })
    }

    /// The batches as a stream (for the PostgreSQL protocol's encoder).
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<RecordBatch>> + Send + 'static {
        futures_util::stream::unfold(self, |mut rows| async move { rows.next_batch().await.map(|batch| (batch, rows)) })
    }
}

/// Maps DataFusion's errors to ours, naming memory exhaustion.
fn query_error(error: DataFusionError) -> Error {
    match error.find_root() {
        DataFusionError::ResourcesExhausted(reason) => Error::MemoryExhausted(reason.clone()),
        _ => Error::Query(error.to_string()),
    }
}

/// The parser's gate: one query (or the `EXPLAIN` of one). It gives the
/// clearest message; [`check_plan`] is the gate that decides.
pub fn check_statement(statement: &DfStatement) -> Result<()> {
    let query = match statement {
        DfStatement::Statement(inner) => match inner.as_ref() {
            Statement::Query(query) => Some(query),
            // The PostgreSQL parser's EXPLAIN (DataFusion's is below).
            Statement::Explain { statement, .. } => match statement.as_ref() {
                Statement::Query(query) => Some(query),
                _ => None,
            },
            _ => None,
        },
        DfStatement::Explain(explain) => match explain.statement.as_ref() {
            DfStatement::Statement(inner) => match inner.as_ref() {
                Statement::Query(query) => Some(query),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    if let Some(query) = query {
        // `WITH … INSERT` parses as a query whose body writes.
        return match query.body.as_ref() {
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                Err(Error::NotAQuery { statement: format!("WITH … {}", query.body.to_string().split_whitespace().next().unwrap_or("a write")) })
            }
            _ => Ok(()),
        };
    }
    let text = statement.to_string();
    let first_word = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    Err(Error::NotAQuery { statement: first_word })
}

/// Refuses anything but one query (or the EXPLAIN of one), by the parser alone.
pub fn check_read_only(sql: &str) -> Result<()> {
    let statements = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {}).map_err(|error| Error::Parse(error.to_string()))?;
    if statements.len() != 1 {
        return Err(Error::StatementCount(statements.len()));
    }
    check_statement(&statements[0])
}

/// The plan's gate: every node, subqueries included, reads; every scan is
/// of a registered history table, `information_schema`, or one of
/// [`TABLE_FUNCTIONS`].
pub fn check_plan(plan: &LogicalPlan) -> Result<()> {
    let mut refusal = None;
    let walked = plan.apply_with_subqueries(|node| {
        let refused = match node {
            LogicalPlan::TableScan(scan) => (!scan_allowed(&scan.table_name)).then(|| format!("reads `{}`, which is not a history table", scan.table_name)),
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Join(_)
            | LogicalPlan::Repartition(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::EmptyRelation(_)
            | LogicalPlan::Subquery(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Values(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Distinct(_)
            | LogicalPlan::Unnest(_)
            | LogicalPlan::RecursiveQuery(_)
            | LogicalPlan::DescribeTable(_) => None,
            LogicalPlan::Ddl(ddl) => Some(format!("would {} (`SELECT … INTO` and `CREATE` are refused)", ddl.name())),
            LogicalPlan::Dml(dml) => Some(format!("would {} rows", dml.op)),
            LogicalPlan::Copy(_) => Some("would COPY".to_string()),
            LogicalPlan::Statement(statement) => Some(format!("is a {} statement", statement.name())),
            other => Some(format!("has a `{}` step, which is not a read", other.display())),
        };
        match refused {
            Some(reason) => {
                refusal = Some(reason);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    });
    walked.map_err(query_error)?;
    match refusal {
        Some(reason) => Err(Error::Writes(reason)),
        None => Ok(()),
    }
}

fn scan_allowed(name: &deltalake::datafusion::common::TableReference) -> bool {
    let table = name.table();
    match name.schema() {
        Some("information_schema") => true,
        None | Some("public") => {
            Table::ALL.iter().any(|known| known.name() == table)
                || table == "messages"
                || table.strip_suffix("()").is_some_and(|function| TABLE_FUNCTIONS.contains(&function))
        }
        Some(_) => false,
    }
}

/// What all compliance SQL holds together.
#[derive(Debug)]
struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    fn try_take(&self, bytes: usize) -> bool {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(bytes).filter(|total| *total <= self.limit)).is_ok()
    }
}

/// One session's pool: bounded by its own limit and by the shared budget.
#[derive(Debug)]
struct SessionPool {
    limit: usize,
    used: AtomicUsize,
    all: Arc<Budget>,
}

impl std::fmt::Display for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "compliance SQL pool ({} of {} bytes)", self.used.load(Ordering::Relaxed), self.limit)
    }
}

impl MemoryPool for SessionPool {
    fn name(&self) -> &str {
        "confab-sql"
    }

    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::AcqRel);
        self.all.used.fetch_add(additional, Ordering::AcqRel);
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::AcqRel);
        self.all.used.fetch_sub(shrink, Ordering::AcqRel);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> deltalake::datafusion::error::Result<()> {
        let own = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(additional).filter(|total| *total <= self.limit));
        if own.is_err() {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the statement needs more than its {} MiB ([sql] query_memory_mb; `{}` asked for {additional} more bytes): narrow it with a WHERE or a LIMIT",
                self.limit >> 20,
                reservation.consumer().name()
            )));
        }
        if !self.all.try_take(additional) {
            self.used.fetch_sub(additional, Ordering::AcqRel);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "compliance SQL as a whole is at its {} MiB ([sql] total_memory_mb): try again when other queries finish",
                self.all.limit >> 20
            )));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

/// `as_of('<table>', <version> | '<RFC 3339 timestamp>')`: a history table
/// as it was at a Delta version or a moment.
///
/// DataFusion resolves table functions synchronously while opening a Delta
/// version is async, so this runs it with `block_in_place`: it needs the
/// multi-threaded runtime, which the SQL threads are.
#[derive(Debug)]
struct AsOf {
    store: HistoryStore,
}

fn plan_error(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

impl TableFunctionImpl for AsOf {
    fn call_with_args(&self, args: TableFunctionArgs) -> deltalake::datafusion::error::Result<Arc<dyn TableProvider>> {
        let usage = "use as_of('<table>', <version> | '<RFC 3339 timestamp>')";
        let [Expr::Literal(name, _), Expr::Literal(when, _)] = args.exprs() else {
            return Err(plan_error(format!("as_of takes two literal arguments; {usage}")));
        };
        let ScalarValue::Utf8(Some(name)) = name else {
            return Err(plan_error(format!("as_of's first argument is a table name in quotes; {usage}")));
        };
        let table = Table::ALL.into_iter().find(|table| table.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Table::ALL.iter().map(|table| table.name()).collect();
            plan_error(format!("as_of: `{name}` is not one of {}", names.join(", ")))
        })?;
        let store = self.store.clone();
        let opened = match when {
            ScalarValue::Int64(Some(version)) if *version >= 0 => {
                let version = *version as u64;
                block_on(async move { store.open_version(table, version).await })
            }
            ScalarValue::Utf8(Some(text)) => {
                let moment =
                    chrono::DateTime::parse_from_rfc3339(text).map_err(|error| plan_error(format!("as_of: `{text}` is not an RFC 3339 time ({error})")))?;
                let moment = moment.with_timezone(&chrono::Utc);
                block_on(async move { store.open_at(table, moment).await })
            }
            other => return Err(plan_error(format!("as_of: `{other}` is neither a version nor a time; {usage}"))),
        };
        let delta = opened.map_err(|error| plan_error(format!("as_of: {error}")))?;
        let provider = block_on(async move { delta.table_provider().await }).map_err(|error| plan_error(format!("as_of: {error}")))?;
        Ok(provider)
    }
}

fn block_on<F: std::future::Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_queries_pass_the_parser() {
        assert!(check_read_only("SELECT 1").is_ok());
        assert!(check_read_only("WITH x AS (SELECT 1) SELECT * FROM x").is_ok());
        assert!(check_read_only("EXPLAIN SELECT 1").is_ok());
        assert!(check_read_only("EXPLAIN ANALYZE SELECT 1").is_ok());
        assert!(matches!(check_read_only("EXPLAIN INSERT INTO audit VALUES (1)"), Err(Error::NotAQuery { .. })));
        for refused in [
            "INSERT INTO audit VALUES (1)",
            "CREATE TABLE t AS SELECT 1",
            "COPY message_events TO '/tmp/x.csv'",
            "DELETE FROM audit",
            "DROP TABLE audit",
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "SET datafusion.execution.batch_size = 1",
        ] {
            let error = check_read_only(refused).unwrap_err();
            assert!(matches!(error, Error::NotAQuery { .. }), "{refused}: {error}");
        }
        assert!(matches!(check_read_only("SELECT 1; SELECT 2"), Err(Error::StatementCount(2))));
        let error = check_read_only("WITH x AS (SELECT 1) INSERT INTO audit SELECT * FROM x").unwrap_err();
        assert!(error.to_string().contains("WITH … INSERT"), "{error}");
    }

    async fn engine() -> (SqlEngine, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::new(dir.path().join("history").to_str().unwrap(), Default::default()).unwrap();
        let config = SqlConfig { query_memory_mb: 8, total_memory_mb: 16, statement_timeout_ms: 2_000, ..SqlConfig::default() };
        (SqlEngine::new(store, config, dir.path().join("spill")).unwrap(), dir)
    }

    /// Statements that pass as queries to the parser but write: the plan refuses them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_plan_refuses_what_the_parser_lets_through() {
        let (engine, _dir) = engine().await;
        let session = engine.session().await.unwrap();
        for sql in ["SELECT 1 AS one INTO copied", "SELECT * INTO leaked FROM audit"] {
            let error = session.plan(sql).await.unwrap_err();
            assert!(matches!(error, Error::Writes(_)), "{sql}: {error}");
            assert!(error.to_string().contains("only queries"), "{sql}: {error}");
        }
        // Nothing was created: the table is not there afterwards.
        let error = session.plan("SELECT * FROM copied").await.unwrap_err();
        assert!(error.to_string().contains("copied"), "{error}");
        // A file is not a table, and no function reads one.
        for sql in ["SELECT * FROM '/etc/passwd'", "SELECT * FROM read_csv('/etc/passwd')"] {
            assert!(session.plan(sql).await.is_err(), "{sql}");
        }
        // Reads pass, subqueries and table functions included.
        for sql in [
            "SELECT count(*) FROM messages WHERE conversation_id IN (SELECT conversation_id FROM conversations)",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT table_name FROM information_schema.tables",
            "EXPLAIN SELECT * FROM audit",
        ] {
            session.plan(sql).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_stops_at_its_caps_its_deadline_and_its_memory() {
        let (engine, _dir) = engine().await;
        let session = engine.session().await.unwrap();
        let bounds = Bounds { timeout: Duration::from_secs(30), max_rows: 1_000, max_bytes: u64::MAX };
        let plan = session.plan("SELECT * FROM generate_series(1, 100000)").await.unwrap();
        let error = session.run(plan, bounds, None).collect().await.unwrap_err();
        assert!(matches!(error, Error::ResultTooLarge(_)), "{error}");

        let bounds = Bounds { timeout: Duration::from_millis(300), max_rows: u64::MAX, max_bytes: u64::MAX };
        let plan = session.plan("SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b").await.unwrap();
        let error = session.run(plan, bounds, None).collect().await.unwrap_err();
        assert!(matches!(error, Error::Timeout(_)), "{error}");

        let (cancel, cancelled) = oneshot::channel();
        let bounds = Bounds { timeout: Duration::from_secs(30), ..bounds };
        let plan = session.plan("SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b").await.unwrap();
        let rows = session.run(
            plan,
            bounds,
            Some(Box::pin(async move {
                let _ = cancelled.await;
            })),
        );
        cancel.send(()).unwrap();
        assert!(matches!(rows.collect().await.unwrap_err(), Error::Canceled));

        // 8 MiB per session: gathering 3M numbers (24 MB) into one array does not fit.
        let plan = session.plan("SELECT array_agg(value) FROM generate_series(1, 3000000)").await.unwrap();
        let error = session.run(plan, bounds, None).collect().await.unwrap_err();
        assert!(matches!(error, Error::MemoryExhausted(_)), "{error}");
        assert!(error.to_string().contains("query_memory_mb"), "{error}");
        // Every reservation is given back (aborted parts drop a moment later).
        for _ in 0..100 {
            if engine.memory_in_use() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(engine.memory_in_use(), 0, "every reservation is given back");
    }
}
