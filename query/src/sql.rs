//! Read-only SQL over the history with DataFusion: the tables, the
//! `messages` view (the latest state of each message), and the check that
//! refuses every statement that is not a query.

use deltalake::arrow::array::RecordBatch;
use deltalake::datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::datafusion::sql::parser::{DFParser, Statement as DfStatement};
use deltalake::datafusion::sql::sqlparser::ast::Statement;
use deltalake::datafusion::sql::sqlparser::dialect::GenericDialect;

use std::sync::Arc;

use deltalake::datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::logical_expr::Expr;

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

/// A query's result.
#[derive(Debug)]
pub struct QueryOutput {
    pub columns: Vec<String>,
    pub batches: Vec<RecordBatch>,
}

#[derive(Debug, Clone)]
pub struct SqlEngine {
    store: HistoryStore,
}

/// Refuses anything but one query (or the EXPLAIN of one): DDL, DML, COPY,
/// SET and the rest never run.
pub fn check_read_only(sql: &str) -> Result<()> {
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(|error| Error::Parse(error.to_string()))?;
    if statements.len() != 1 {
        return Err(Error::StatementCount(statements.len()));
    }
    match &statements[0] {
        DfStatement::Statement(statement) if matches!(statement.as_ref(), Statement::Query(_)) => Ok(()),
        // EXPLAIN (ANALYZE) of a query plans (and runs) only that query.
        DfStatement::Explain(explain) if matches!(explain.statement.as_ref(), DfStatement::Statement(inner) if matches!(inner.as_ref(), Statement::Query(_))) => {
            Ok(())
        }
        other => {
            let text = other.to_string();
            let first_word = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            Err(Error::NotAQuery { statement: first_word })
        }
    }
}

impl SqlEngine {
    pub fn new(store: HistoryStore) -> SqlEngine {
        SqlEngine { store }
    }

    /// A session over the tables as they are now.
    pub async fn context(&self) -> Result<SessionContext> {
        // Parquet filter pushdown stays off: measured at 10M events it sped
        // up full scans but slowed the one-conversation query (BENCHMARKS.md).
        let context = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
        refresh_tables(self, &context).await?;
        context.register_udtf("as_of", Arc::new(AsOf { store: self.store.clone() }));
        Ok(context)
    }

    /// Runs one read-only query.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        check_read_only(sql)?;
        let context = self.context().await?;
        let frame = context.sql(sql).await.map_err(|error| Error::Query(error.to_string()))?;
        let columns = frame.schema().fields().iter().map(|field| field.name().clone()).collect();
        let batches = frame.collect().await.map_err(|error| Error::Query(error.to_string()))?;
        Ok(QueryOutput { columns, batches })
    }
}

/// Points each table of a long-lived session at its latest version.
pub async fn refresh_tables(engine: &SqlEngine, context: &SessionContext) -> Result<()> {
    for table in Table::ALL {
        let delta = engine.store.open_or_create(table).await?;
        let provider = delta.table_provider().await.map_err(|source| Error::Delta { table: table.name(), source: source.into() })?;
        context.deregister_table(table.name()).map_err(|error| Error::Query(error.to_string()))?;
        context.register_table(table.name(), provider).map_err(|error| Error::Query(error.to_string()))?;
    }
    // The view holds the snapshots it was made from: make it again.
    context.deregister_table("messages").map_err(|error| Error::Query(error.to_string()))?;
    context.sql(MESSAGES_VIEW).await.map_err(|error| Error::Query(error.to_string()))?;
    Ok(())
}

/// `as_of('<table>', <version> | '<RFC 3339 timestamp>')`: a history table
/// as it was at a Delta version or a moment.
///
/// DataFusion resolves table functions synchronously while opening a Delta
/// version is async, so this runs it with `block_in_place`: it needs the
/// multi-threaded runtime, which the server and `confab sql` use.
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
    fn only_single_queries_pass() {
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
    }
}
