//! Confab's history: the log sunk into Delta Lake tables ([`sink`]), and
//! read-only SQL over them with DataFusion ([`sql`]).
//!
//! `README.md` beside this crate walks one event from the log into a table
//! and one query through the checks, then each failure mode.

pub mod audit;
pub mod compliance;
pub mod error;
pub mod holds;
pub mod maintenance;
pub mod output;
pub mod pgwire;
pub mod policies;
pub mod rows;
pub mod sink;
pub mod sql;
pub mod tables;

pub use compliance::{scheduler, Actor, Compliance, LiveMessages, PlannedDeletion, Scope};
pub use error::{Error, Result};
pub use holds::{Hold, HoldTarget};
pub use maintenance::{HistoryMaintenance, Outcome};
pub use policies::{Policy, PolicyRegistry, RETENTION_DAYS_MAX};
pub use sink::{HistorySink, SinkConfig, SinkHandle};
pub use sql::{check_plan, check_read_only, Bounds, QueryOutput, Rows, SqlConfig, SqlEngine, SqlSession};
pub use tables::HistoryStore;
