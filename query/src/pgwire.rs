//! The history over the PostgreSQL wire protocol (psql, DBeaver, Metabase,
//! Python): Confab accounts log in with their password (only `compliance`
//! accounts are let in), only queries run, every query is audited, and each
//! query sees the tables as they are now.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::QueryHook;
use datafusion_postgres::DfSessionService;
use deltalake::datafusion::common::ParamValues;
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::sqlparser::ast::Statement;
use futures_util::{Sink, SinkExt};
use pgwire::api::auth::{finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, DefaultServerParameterProvider, StartupHandler};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::{ClientInfo, ConnectionManager, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::sql::{refresh_tables, SqlEngine};

/// How the wire server checks logins and records queries; the binary
/// implements it over the accounts and the audit log.
#[async_trait]
pub trait PgAccounts: Send + Sync + 'static {
    /// The user ID of a `compliance` account with this password, if any.
    async fn login(&self, username: &str, password: &str) -> Option<String>;
    /// Writes the query to the audit log.
    async fn audit(&self, username: &str, sql: &str);
}

/// Cleartext password login (keep the listener on loopback or behind TLS),
/// checked against Confab's argon2 hashes.
struct ConfabStartup {
    accounts: Arc<dyn PgAccounts>,
    parameters: DefaultServerParameterProvider,
}

#[async_trait]
impl StartupHandler for ConfabStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?;
                let username = client.metadata().get("user").cloned().unwrap_or_default();
                if self.accounts.login(&username, &password.password).await.is_none() {
                    let error =
                        ErrorInfo::new("FATAL".into(), "28P01".into(), format!("login refused for `{username}`: wrong password, or not a compliance account"));
                    client.feed(PgWireBackendMessage::ErrorResponse(ErrorResponse::from(error))).await?;
                    client.close().await?;
                    return Ok(());
                }
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Refuses everything but queries, audits every statement, and refreshes
/// the tables so that each query sees the latest history.
struct ReadOnlyAudited {
    engine: SqlEngine,
    accounts: Arc<dyn PgAccounts>,
}

fn refused(statement: &Statement) -> Option<PgWireError> {
    match statement {
        Statement::Query(_) | Statement::StartTransaction { .. } | Statement::Commit { .. } | Statement::Rollback { .. } => None,
        Statement::Explain { statement, .. } if matches!(statement.as_ref(), Statement::Query(_)) => None,
        Statement::Set(_) | Statement::ShowVariable { .. } => None,
        other => {
            let text = other.to_string();
            let first = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            let message = format!("only queries may run here; `{first}` was refused (statements that write, create or copy are never allowed)");
            Some(PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "25006".into(), message))))
        }
    }
}

impl ReadOnlyAudited {
    async fn check(&self, statement: &Statement, context: &SessionContext, username: &str) -> Option<PgWireError> {
        self.accounts.audit(username, &statement.to_string()).await;
        if let Some(error) = refused(statement) {
            return Some(error);
        }
        if matches!(statement, Statement::Query(_) | Statement::Explain { .. }) {
            if let Err(error) = refresh_tables(&self.engine, context).await {
                return Some(PgWireError::ApiError(Box::new(std::io::Error::other(error.to_string()))));
            }
        }
        None
    }
}

#[async_trait]
impl QueryHook for ReadOnlyAudited {
    async fn handle_simple_query(&self, statement: &Statement, context: &SessionContext, client: &mut dyn HookClient) -> Option<PgWireResult<Response>> {
        let username = client.metadata().get("user").cloned().unwrap_or_default();
        self.check(statement, context, &username).await.map(Err)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        refused(statement).map(Err)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let username = client.metadata().get("user").cloned().unwrap_or_default();
        self.check(statement, context, &username).await.map(Err)
    }
}

struct Handlers {
    session: Arc<DfSessionService>,
    startup: Arc<ConfabStartup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Serves the history on `host:port` until the task is dropped.
pub async fn serve(engine: SqlEngine, accounts: Arc<dyn PgAccounts>, host: &str, port: u16) -> std::io::Result<()> {
    let context = engine.context().await.map_err(std::io::Error::other)?;
    let context = Arc::new(context);
    let hooks: Vec<Arc<dyn QueryHook>> = vec![Arc::new(ReadOnlyAudited { engine, accounts: accounts.clone() })];
    let session = Arc::new(DfSessionService::new_with_hooks(context, hooks));
    let connections = Arc::new(ConnectionManager::new());
    let handlers = Handlers {
        session,
        startup: Arc::new(ConfabStartup { accounts, parameters: DefaultServerParameterProvider::default() }),
        cancel: Arc::new(DefaultCancelHandler::new(connections)),
    };
    let options = datafusion_postgres::ServerOptions::new().with_host(host.to_string()).with_port(port);
    datafusion_postgres::serve_with_handlers(Arc::new(handlers), &options).await
}
