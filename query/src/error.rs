//! Errors of the history: each says what to do next, and has a stable
//! [`Error::code`] for logs, metrics and the API's error body.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the history table `{table}` failed: {source}")]
    Delta {
        table: &'static str,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error("invalid history location `{0}`: use a folder path or an s3:// URL")]
    Location(String),
    #[error("only queries may run here; `{statement}` was refused (statements that write, create, copy or change settings are never allowed)")]
    NotAQuery { statement: String },
    #[error("only queries that read the history may run here; this statement {0}")]
    Writes(String),
    #[error("send exactly one SQL statement (got {0})")]
    StatementCount(usize),
    #[error("the SQL is {bytes} bytes; the limit is {limit} ([sql] sql_max_bytes)")]
    TooLong { bytes: usize, limit: usize },
    #[error("the SQL could not be parsed: {0}")]
    Parse(String),
    #[error("the query failed: {0}")]
    Query(String),
    #[error("the statement ran out of memory: {0}")]
    MemoryExhausted(String),
    #[error("the statement ran past its {}-second limit and was stopped: narrow it with a WHERE or a LIMIT ([sql] statement_timeout_ms)", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the statement was cancelled")]
    Canceled,
    #[error("the result has {0}; add a LIMIT, or export with `confab sql --format parquet`")]
    ResultTooLarge(String),
    #[error("the statement was not run: its audit record could not be written ({0}); try again shortly")]
    AuditUnavailable(String),
    #[error("invalid SQL settings: {0}")]
    Config(String),
    #[error("{target} is under legal hold `{hold_id}`; release the hold first if the deletion is lawful")]
    UnderHold { hold_id: String, target: String },
    #[error("legal hold `{0}` is not active; list the active ones with GET /v1/admin/holds")]
    HoldNotFound(String),
    #[error("the history is still catching up with the log; try again in a minute")]
    HistoryBehind,
    #[error("the live store refused the deletion: {0}")]
    Live(String),
    #[error("the history sink's runtime could not start: {0}")]
    Runtime(String),
    #[error("the log could not be read: {0}")]
    Log(#[from] confab_log::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("conversation `{0}` not found")]
    ConversationNotFound(String),
}

impl Error {
    /// A stable name for the kind of failure.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Delta { .. } => "history_table",
            Error::Location(_) => "history_location",
            Error::NotAQuery { .. } | Error::Writes(_) => "not_a_query",
            Error::StatementCount(_) => "statement_count",
            Error::TooLong { .. } => "sql_too_long",
            Error::Parse(_) => "sql_parse",
            Error::Query(_) => "query_failed",
            Error::MemoryExhausted(_) => "memory_exhausted",
            Error::Timeout(_) => "statement_timeout",
            Error::Canceled => "canceled",
            Error::ResultTooLarge(_) => "result_too_large",
            Error::AuditUnavailable(_) => "audit_unavailable",
            Error::Config(_) => "config",
            Error::UnderHold { .. } => "under_hold",
            Error::HoldNotFound(_) => "hold_not_found",
            Error::HistoryBehind => "history_behind",
            Error::Live(_) => "live_store",
            Error::Runtime(_) => "runtime",
            Error::Log(_) => "log",
            Error::Invalid(_) => "invalid",
            Error::ConversationNotFound(_) => "conversation_not_found",
        }
    }

    /// The PostgreSQL SQLSTATE a client library understands.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::NotAQuery { .. } | Error::Writes(_) => "25006", // read_only_sql_transaction
            Error::StatementCount(_) | Error::Parse(_) => "42601", // syntax_error
            Error::TooLong { .. } => "54000",                      // program_limit_exceeded
            Error::MemoryExhausted(_) => "53200",                  // out_of_memory
            Error::Timeout(_) | Error::Canceled => "57014",        // query_canceled
            Error::ResultTooLarge(_) => "54000",
            Error::AuditUnavailable(_) => "57P03", // cannot_connect_now: try again
            Error::Query(_) => "XX000",
            _ => "58000", // system_error
        }
    }
}
