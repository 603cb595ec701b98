//! Read-only SQL over the history with DataFusion: the tables, the
//! `messages` view (the latest state of each message), and the check that
//! refuses every statement that is not a query.

use deltalake::arrow::array::RecordBatch;
use deltalake::datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::datafusion::sql::parser::{DFParser, Statement as DfStatement};
use deltalake::datafusion::sql::sqlparser::ast::Statement;
use deltalake::datafusion::sql::sqlparser::dialect::GenericDialect;

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

/// Refuses anything but one query: DDL, DML, COPY, SET and the rest never run.
pub fn check_read_only(sql: &str) -> Result<()> {
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(|error| Error::Parse(error.to_string()))?;
    if statements.len() != 1 {
        return Err(Error::StatementCount(statements.len()));
    }
    match &statements[0] {
        DfStatement::Statement(statement) if matches!(statement.as_ref(), Statement::Query(_)) => Ok(()),
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
        let context = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
        for table in Table::ALL {
            let delta = self.store.open_or_create(table).await?;
            let provider = delta.table_provider().await.map_err(|source| Error::Delta { table: table.name(), source: source.into() })?;
            context.register_table(table.name(), provider).map_err(|error| Error::Query(error.to_string()))?;
        }
        context.sql(MESSAGES_VIEW).await.map_err(|error| Error::Query(error.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_queries_pass() {
        assert!(check_read_only("SELECT 1").is_ok());
        assert!(check_read_only("WITH x AS (SELECT 1) SELECT * FROM x").is_ok());
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
