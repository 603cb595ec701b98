//! Errors of the history: each says what to do next.

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
    #[error("only queries may run here; `{statement}` was refused (statements that write, create or copy are never allowed)")]
    NotAQuery { statement: String },
    #[error("send exactly one SQL statement (got {0})")]
    StatementCount(usize),
    #[error("the SQL could not be parsed: {0}")]
    Parse(String),
    #[error("the query failed: {0}")]
    Query(String),
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
}
