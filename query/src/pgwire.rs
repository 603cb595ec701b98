//! The history over the PostgreSQL wire protocol (psql, DBeaver, Metabase,
//! Python).
//!
//! The life of a connection:
//!
//! 1. [`serve`] accepts it. Over `[sql] max_connections` it is answered
//!    FATAL 53300 at its startup message and closed. TLS is offered when a
//!    certificate is configured (`sslmode=require` works).
//! 2. The startup handler asks for a cleartext password, refused at once
//!    (FATAL 28000) when TLS is required and the connection is plain. The
//!    binary checks it ([`PgAccounts::login`]) against the account's argon2
//!    hash, with the login limits HTTP uses (per IP, and per account and
//!    IP); only `compliance` accounts get in. A failed login is closed at
//!    once. A good one gets a process ID and secret key for CancelRequest.
//! 3. The connection gets a DataFusion session of its own
//!    ([`SqlSession`]): nothing it does reaches another connection.
//! 4. Every statement text that arrives (simple Query, or Parse of the
//!    extended protocol, and each Execute) is audited first
//!    ([`PgAccounts::audit`]); when the audit cannot be written the
//!    statement is refused with SQLSTATE 57P03 and does not run. That
//!    includes text that does not parse, is too long, or is refused.
//! 5. Queries (and `EXPLAIN`) are planned and plan-checked, then run on the
//!    SQL threads within the server's bounds and the session's
//!    `statement_timeout` (never above the server's); rows stream to the
//!    client as they come. CancelRequest stops the running statement.
//! 6. `SET` is refused except for the options clients send on connect,
//!    which only change how this connection's rows are formatted:
//!    `application_name`, `extra_float_digits`, `DateStyle`,
//!    `IntervalStyle`, `bytea_output`, `search_path` (to `public`),
//!    `client_encoding` (UTF8), `TimeZone` (UTC) and `statement_timeout`.
//!    `SHOW` and `BEGIN`/`COMMIT`/`ROLLBACK` are answered (there is nothing
//!    to commit).

use std::fmt::Debug;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::sqlparser::ast::{Expr, Set, Statement};
use futures_util::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::{finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, DefaultServerParameterProvider, StartupHandler};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionGuard, ConnectionHandle, ConnectionManager, PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::startup::{Authentication, ParameterStatus};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::tokio_rustls::rustls;
pub use pgwire::tokio::TlsAcceptor;
use pgwire::types::format::FormatOptions;
use tokio::sync::OnceCell;

use crate::audit::sql_attempt;
use crate::sql::{SqlEngine, SqlSession};
use crate::Error;

/// The outcome of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// A `compliance` account with this password.
    Allowed { user_id: String },
    /// Wrong password, unknown account, or not a compliance account.
    Refused,
    /// Too many attempts from this address (or for this account from it).
    Limited { retry_after_secs: u64 },
}

/// How the wire server checks logins and records attempts; the binary
/// implements it over the accounts, the login limits and the audit log.
#[async_trait]
pub trait PgAccounts: Send + Sync + 'static {
    async fn login(&self, username: &str, password: &str, peer: IpAddr) -> Login;
    /// Writes one audit row for `user_id`; `Err` when it could not be
    /// written, and then the statement does not run.
    async fn audit(&self, user_id: &str, details: String) -> Result<(), String>;
    /// Whether the account still has the `compliance` role (asked before
    /// every statement: a role revoked mid-session ends its use).
    async fn still_allowed(&self, user_id: &str) -> bool;
}

/// The listener's doors.
#[derive(Clone)]
pub struct PgOptions {
    pub max_connections: usize,
    pub tls: Option<TlsAcceptor>,
    pub require_tls: bool,
}

/// A TLS acceptor from PEM files (a certificate chain and its key).
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> std::io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, path: &Path, error: &dyn std::fmt::Display| std::io::Error::other(format!("{what} `{}`: {error}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|error| invalid("could not read the certificate", cert_file, &error))?
        .collect::<Result<_, _>>()
        .map_err(|error| invalid("invalid certificate", cert_file, &error))?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| invalid("could not read the private key", key_file, &error))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid("TLS setup failed for", cert_file, &error))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| invalid("the key does not fit the certificate", cert_file, &error))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What every connection shares.
struct Shared {
    engine: SqlEngine,
    accounts: Arc<dyn PgAccounts>,
    options: PgOptions,
    cancels: Arc<ConnectionManager>,
    cancel_handler: Arc<DefaultCancelHandler>,
    keys: RandomPidSecretKeyGenerator,
    parameters: DefaultServerParameterProvider,
    /// Connections accepted and not yet closed, logged in or not.
    open: AtomicUsize,
    /// Logged-in sessions: what `max_connections` bounds.
    sessions: Arc<AtomicUsize>,
}

/// A logged-in session's slot, given back when the connection closes (it
/// lives in the connection's session extensions).
struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves the history on `listener` until the task is dropped.
pub async fn serve(engine: SqlEngine, accounts: Arc<dyn PgAccounts>, listener: tokio::net::TcpListener, options: PgOptions) -> std::io::Result<()> {
    let cancels = Arc::new(ConnectionManager::new());
    let shared = Arc::new(Shared {
        engine,
        accounts,
        options,
        cancel_handler: Arc::new(DefaultCancelHandler::new(cancels.clone())),
        cancels,
        keys: RandomPidSecretKeyGenerator::default(),
        parameters: DefaultServerParameterProvider::default(),
        open: AtomicUsize::new(0),
        sessions: Arc::new(AtomicUsize::new(0)),
    });
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: wait, then go on serving.
                tracing::warn!(%error, "could not accept a PostgreSQL-protocol connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            // Logged-in sessions are capped at login; connections that have
            // not logged in yet (bounded by pgwire's 60 s startup timeout)
            // at four times that, so that a flood of idle sockets cannot
            // hold the listener. A CancelRequest comes on a connection of
            // its own: it is served even when full.
            let open = shared.open.fetch_add(1, Ordering::AcqRel) + 1;
            let over_cap = open > shared.options.max_connections.saturating_mul(4);
            let tls = shared.options.tls.clone();
            let connection = Arc::new(Connection::new(shared.clone(), over_cap));
            if let Err(error) = pgwire::tokio::process_socket(socket, tls, Handlers(connection)).await {
                tracing::debug!(%error, %peer, "a PostgreSQL-protocol connection ended with an error");
            }
            shared.open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// One connection's state: its session, made after login.
struct Connection {
    shared: Arc<Shared>,
    over_cap: bool,
    session: OnceCell<SqlSession>,
    parser: PostgresCompatibilityParser,
}

/// The cancel registration of a logged-in connection, kept in its session
/// extensions (and so dropped, unregistering it, when it closes).
struct CancelRegistration {
    handle: Arc<ConnectionHandle>,
    _guard: ConnectionGuard,
}

const USER_ID: &str = "confab.user_id";
/// The key `SHOW statement_timeout` reads (datafusion-postgres's).
const STATEMENT_TIMEOUT_MS: &str = "statement_timeout_ms";

fn fatal(code: &str, message: String) -> PgWireBackendMessage {
    PgWireBackendMessage::ErrorResponse(ErrorResponse::from(ErrorInfo::new("FATAL".into(), code.into(), message)))
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message)))
}

fn pg_error(error: &Error) -> PgWireError {
    user_error(error.sqlstate(), error.to_string())
}

impl Connection {
    fn new(shared: Arc<Shared>, over_cap: bool) -> Connection {
        Connection { shared, over_cap, session: OnceCell::new(), parser: PostgresCompatibilityParser::new() }
    }

    async fn session(&self) -> PgWireResult<&SqlSession> {
        self.session.get_or_try_init(|| self.shared.engine.session()).await.map_err(|error| pg_error(&error))
    }

    /// Writes the attempt to the audit log, or refuses the statement.
    async fn audit<C: ClientInfo + ?Sized>(&self, client: &C, sql: &str, phase: &str) -> PgWireResult<()> {
        let user_id = client.metadata().get(USER_ID).cloned().unwrap_or_default();
        let details = sql_attempt(sql, "pgwire", &[("phase", phase)]);
        self.shared.accounts.audit(&user_id, details).await.map_err(|reason| pg_error(&Error::AuditUnavailable(reason)))?;
        if !self.shared.accounts.still_allowed(&user_id).await {
            return Err(user_error("42501", "this account no longer has the compliance role; nothing runs until it is granted again".to_string()));
        }
        Ok(())
    }

    /// Parses one text into statements, refusing what is too long or unparsable.
    fn parse(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        let limit = self.shared.engine.config().sql_max_bytes;
        if sql.len() > limit {
            return Err(pg_error(&Error::TooLong { bytes: sql.len(), limit }));
        }
        self.parser.parse(sql).map_err(|error| pg_error(&Error::Parse(error.to_string())))
    }

    /// The statement's bounds: the server's, with the session's shorter timeout.
    fn bounds<C: ClientInfo + ?Sized>(&self, client: &C) -> crate::sql::Bounds {
        let mut bounds = self.shared.engine.bounds();
        if let Some(session) = client.metadata().get(STATEMENT_TIMEOUT_MS).and_then(|ms| ms.parse::<u64>().ok()).filter(|ms| *ms > 0) {
            bounds.timeout = bounds.timeout.min(Duration::from_millis(session));
        }
        bounds
    }

    /// Plans a query afresh over the latest tables, and checks it.
    async fn plan(&self, statement: &Statement) -> PgWireResult<LogicalPlan> {
        let session = self.session().await?;
        session.refresh().await.map_err(|error| pg_error(&error))?;
        session.plan_statement(statement.clone()).await.map_err(|error| pg_error(&error))
    }

    /// Runs a checked plan and streams its rows in `format`.
    async fn run<C: ClientInfo + ?Sized>(&self, client: &C, plan: LogicalPlan, format: &Format) -> PgWireResult<Response> {
        let session = self.session().await?;
        let cancel = match client.session_extensions().get::<CancelRegistration>() {
            Some(registration) => {
                let cancelled = registration.handle.start_query().await;
                // A dropped sender is a new statement's start, not a cancel.
                let cancel: crate::sql::Cancel = Box::pin(async move {
                    if cancelled.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                });
                Some(cancel)
            }
            None => None,
        };
        let rows = session.run(plan, self.bounds(client), cancel);
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_schema_to_pg_fields(&rows.schema, format, Some(options))?);
        let encoder_fields = fields.clone();
        let data_rows = rows
            .into_stream()
            .map(move |batch| {
                let rows: Box<dyn Iterator<Item = PgWireResult<_>> + Send> = match batch {
                    Ok(batch) => encode_recordbatch(encoder_fields.clone(), batch),
                    Err(error) => Box::new(std::iter::once(Err(pg_error(&error)))),
                };
                futures_util::stream::iter(rows)
            })
            .flatten();
        Ok(Response::Query(QueryResponse::new(fields, data_rows)))
    }

    /// Answers one statement: a query runs; SET, SHOW and transactions are
    /// answered here; anything else is refused.
    async fn respond<C>(&self, client: &mut C, statement: &Statement, format: &Format) -> PgWireResult<Response>
    where
        C: HookClient,
    {
        match statement {
            Statement::Query(_) | Statement::Explain { .. } => {
                let plan = self.plan(statement).await?;
                self.run(client, plan, format).await
            }
            Statement::Set(set) => self.set(client, set).await,
            Statement::ShowVariable { .. } => {
                // The borrowed hooks get an empty session, never this one's.
                let context = SessionContext::new();
                SetShowHook.handle_simple_query(statement, &context, client).await.unwrap_or_else(|| Ok(show("unsupported_show_statement", "")))
            }
            Statement::StartTransaction { .. } | Statement::Commit { .. } | Statement::Rollback { .. } => {
                let context = SessionContext::new();
                TransactionStatementHook.handle_simple_query(statement, &context, client).await.unwrap_or_else(|| Ok(Response::Execution(Tag::new("OK"))))
            }
            other => {
                let text = other.to_string();
                let statement = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                Err(pg_error(&Error::NotAQuery { statement }))
            }
        }
    }

    /// The allow-listed `SET`s; each changes only this connection.
    async fn set<C>(&self, client: &mut C, set: &Set) -> PgWireResult<Response>
    where
        C: HookClient,
    {
        let allowed = "application_name, extra_float_digits, DateStyle, IntervalStyle, bytea_output, search_path, client_encoding, TimeZone, statement_timeout";
        let refuse = |what: String| Err(user_error("42501", format!("SET {what} is not allowed: sessions run on the server's settings; allowed: {allowed}")));
        let (variable, value) = match set {
            Set::SingleAssignment { scope: None, hivevar: false, variable, values } if values.len() == 1 => {
                (variable.to_string().to_lowercase(), literal(&values[0]))
            }
            Set::SetTimeZone { local: false, value } => ("timezone".to_string(), literal(value)),
            other => return refuse(other.to_string()),
        };
        let Some(value) = value else { return refuse(format!("{variable} to an expression")) };
        let (name, stored) = match variable.as_str() {
            "application_name" | "extra_float_digits" | "bytea_output" => (variable.clone(), value.clone()),
            "datestyle" => ("DateStyle".to_string(), value.clone()),
            "intervalstyle" => ("IntervalStyle".to_string(), value.clone()),
            "search_path" if matches!(value.trim(), "public" | "\"$user\", public" | "$user, public") => ("search_path".to_string(), value.clone()),
            "client_encoding" if value.eq_ignore_ascii_case("utf8") || value.eq_ignore_ascii_case("utf-8") => {
                ("client_encoding".to_string(), "UTF8".to_string())
            }
            "timezone" if matches!(value.to_ascii_uppercase().as_str(), "UTC" | "ETC/UTC" | "GMT" | "Z") => ("TimeZone".to_string(), "UTC".to_string()),
            "statement_timeout" => {
                let Some(ms) = timeout_ms(&value) else {
                    return Err(user_error("22023", format!("invalid statement_timeout `{value}`: use milliseconds, or a number with ms, s or min")));
                };
                client.metadata_mut().insert(STATEMENT_TIMEOUT_MS.to_string(), ms.to_string());
                return Ok(Response::Execution(Tag::new("SET")));
            }
            _ => return refuse(format!("{variable} = {value}")),
        };
        client.metadata_mut().insert(variable, stored.clone());
        client.send_message(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(name, stored))).await?;
        Ok(Response::Execution(Tag::new("SET")))
    }
}

/// The text of a literal `SET` value, if it is one.
fn literal(value: &Expr) -> Option<String> {
    match value {
        Expr::Value(value) => Some(value.clone().into_string().unwrap_or_else(|| value.to_string())),
        Expr::Identifier(ident) => Some(ident.value.clone()),
        Expr::UnaryOp { .. } => Some(value.to_string()),
        _ => None,
    }
}

/// `statement_timeout` in milliseconds (0: the server's limit).
fn timeout_ms(value: &str) -> Option<u64> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "ms"),
    };
    let number: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

fn show(name: &str, value: &str) -> Response {
    let fields = Arc::new(vec![FieldInfo::new(name.to_string(), None, None, Type::VARCHAR, FieldFormat::Text)]);
    let mut encoder = DataRowEncoder::new(fields.clone());
    let row = encoder.encode_field(&Some(value)).map(|()| encoder.take_row());
    Response::Query(QueryResponse::new(fields, futures_util::stream::once(async move { row })))
}

#[async_trait]
impl StartupHandler for Connection {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                if self.over_cap {
                    client.send(fatal("53300", "sorry, too many connections waiting to log in; try again later".to_string())).await?;
                    client.close().await?;
                    return Ok(());
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.shared.options.require_tls && !client.is_secure() {
                    client.send(fatal("28000", "this server takes passwords only over TLS: connect with sslmode=require".to_string())).await?;
                    client.close().await?;
                    return Ok(());
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?;
                let username = client.metadata().get("user").cloned().unwrap_or_default();
                let peer = client.socket_addr().ip();
                match self.shared.accounts.login(&username, &password.password, peer).await {
                    Login::Allowed { user_id } => {
                        let limit = self.shared.options.max_connections;
                        let taken =
                            self.shared.sessions.fetch_update(Ordering::AcqRel, Ordering::Acquire, |sessions| (sessions < limit).then_some(sessions + 1));
                        if taken.is_err() {
                            client
                                .send(fatal("53300", format!("sorry, too many sessions: the limit is {limit} ([sql] max_connections); try again later")))
                                .await?;
                            client.close().await?;
                            return Ok(());
                        }
                        client.session_extensions().insert(SessionSlot(self.shared.sessions.clone()));
                        client.metadata_mut().insert(USER_ID.to_string(), user_id);
                        let (pid, secret) = self.shared.keys.generate(client);
                        client.set_pid_and_secret_key(pid, secret.clone());
                        let (handle, guard) = self.shared.cancels.register(pid, secret);
                        client.session_extensions().insert(CancelRegistration { handle, _guard: guard });
                        finish_authentication(client, &self.shared.parameters).await?;
                    }
                    Login::Refused => {
                        let message = format!("login refused for `{username}`: wrong password, or not a compliance account");
                        client.send(fatal("28P01", message)).await?;
                        client.close().await?;
                    }
                    Login::Limited { retry_after_secs } => {
                        let message = format!("too many login attempts; try again in {retry_after_secs} s");
                        client.send(fatal("28000", message)).await?;
                        client.close().await?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.audit(client, query, "simple").await?;
        let statements = self.parse(query)?;
        // Each query's rows stream after this returns, so two queries in one
        // text would run at once (sharing the timeout and the cancel): refuse.
        let queries = statements.iter().filter(|statement| matches!(statement, Statement::Query(_) | Statement::Explain { .. })).count();
        if queries > 1 {
            return Err(user_error("0A000", format!("send one query per message ({queries} were sent together); SET and SHOW may go with it")));
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in &statements {
            match self.respond(client, statement, &Format::UnifiedText).await {
                Ok(response) => responses.push(response),
                // PostgreSQL stops a multi-statement text at its first error.
                Err(PgWireError::UserError(error)) => {
                    responses.push(Response::Error(error));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
        if responses.is_empty() {
            responses.push(Response::EmptyQuery);
        }
        Ok(responses)
    }
}

/// A parsed extended-protocol statement: its text, and for a query its
/// checked plan (for Describe; Execute plans again over fresh tables).
#[derive(Debug, Clone)]
pub struct Prepared {
    sql: String,
    statement: Option<Statement>,
    plan: Option<LogicalPlan>,
}

/// The extended protocol's parser, on the connection.
struct Parser(Arc<Connection>);

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let connection = &self.0;
        connection.audit(client, sql, "parse").await?;
        let mut statements = connection.parse(sql)?;
        if statements.len() > 1 {
            return Err(pg_error(&Error::StatementCount(statements.len())));
        }
        let Some(statement) = statements.pop() else { return Ok(None) };
        let plan = match &statement {
            Statement::Query(_) | Statement::Explain { .. } => Some(connection.plan(&statement).await?),
            Statement::Set(_) | Statement::ShowVariable { .. } | Statement::StartTransaction { .. } | Statement::Commit { .. } | Statement::Rollback { .. } => {
                None
            }
            other => {
                let text = other.to_string();
                let statement = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                return Err(pg_error(&Error::NotAQuery { statement }));
            }
        };
        Ok(Some(Prepared { sql: sql.to_string(), statement: Some(statement), plan }))
    }

    fn get_parameter_types(&self, prepared: &Prepared) -> PgWireResult<Vec<Type>> {
        let Some(plan) = &prepared.plan else { return Ok(Vec::new()) };
        parameter_types(plan)?.iter().map(|datatype| datatype.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type)).collect()
    }

    fn get_result_schema(&self, prepared: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        match (&prepared.plan, &prepared.statement) {
            (Some(plan), _) => arrow_schema_to_pg_fields(plan.schema().as_arrow(), format.unwrap_or(&Format::UnifiedText), None),
            (None, Some(Statement::ShowVariable { variable })) => {
                let name = variable.iter().map(|part| part.value.clone()).collect::<Vec<_>>().join(" ");
                Ok(vec![FieldInfo::new(name, None, None, Type::VARCHAR, FieldFormat::Text)])
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// A plan's parameters `$1, $2, …` in order, with the types DataFusion inferred.
fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<Option<deltalake::arrow::datatypes::DataType>>> {
    let types = plan.get_parameter_types().map_err(|error| user_error("42P18", error.to_string()))?;
    let mut numbered: Vec<(usize, Option<deltalake::arrow::datatypes::DataType>)> =
        types.into_iter().filter_map(|(name, datatype)| name.trim_start_matches('$').parse().ok().map(|index| (index, datatype))).collect();
    numbered.sort_by_key(|(index, _)| *index);
    Ok(numbered.into_iter().map(|(_, datatype)| datatype).collect())
}

/// The handlers of one connection: the connection itself, and the
/// server's cancel handler (a CancelRequest names another connection).
struct Handlers(Arc<Connection>);

/// The extended-protocol side, which hands out the parser bound to the connection.
struct Extended {
    connection: Arc<Connection>,
    parser: Arc<Parser>,
}

#[async_trait]
impl ExtendedQueryHandler for Extended {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let connection = &self.connection;
        let prepared = &portal.statement.statement;
        connection.audit(client, &prepared.sql, "execute").await?;
        let Some(statement) = &prepared.statement else { return Ok(Response::EmptyQuery) };
        if prepared.plan.is_none() {
            return connection.respond(client, statement, &portal.result_column_format).await;
        }
        let plan = connection.plan(statement).await?;
        let types = parameter_types(&plan)?;
        let type_refs: Vec<Option<&deltalake::arrow::datatypes::DataType>> = types.iter().map(Option::as_ref).collect();
        let params = deserialize_parameters(portal, &type_refs)?;
        let plan = plan.replace_params_with_values(&params).map_err(|error| user_error("22023", error.to_string()))?;
        connection.run(client, plan, &portal.result_column_format).await
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(Extended { connection: self.0.clone(), parser: Arc::new(Parser(self.0.clone())) })
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.0.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.0.shared.cancel_handler.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::timeout_ms;

    #[test]
    fn statement_timeouts_read_like_postgres() {
        assert_eq!(timeout_ms("5000"), Some(5_000));
        assert_eq!(timeout_ms("250ms"), Some(250));
        assert_eq!(timeout_ms("2s"), Some(2_000));
        assert_eq!(timeout_ms("1min"), Some(60_000));
        assert_eq!(timeout_ms("0"), Some(0));
        assert_eq!(timeout_ms("soon"), None);
        assert_eq!(timeout_ms("5 fortnights"), None);
    }
}
