//! Confab's write path and the state built from the log.
//!
//! A command (send, edit, add members, ...) is validated against the state,
//! turned into [`LogEvent`](confab_schemas::events::LogEvent)s, appended to its
//! conversation's partition, and answered only once durable and applied. The
//! state is nothing but the log applied in order, so recovery is a replay.
//! `README.md` beside this crate walks one send, then each failure mode.

mod apply;
mod commands;
mod error;
mod fenwick;
mod limits;
mod partition;
mod queries;
mod realtime;
mod state;

pub use commands::{Caller, ComplianceScope, Ingest, NewConversation, NewMessage, DEFAULT_INBOX_MAX_MEMBERS};
pub use confab_schemas::cursor::SyncCursor;
pub use error::{Error, Result};
pub use limits::Limits;
pub use queries::{SyncPage, PAGE_DEFAULT, PAGE_MAX, SYNC_PAGE_MAX};
pub use realtime::EventAt;
pub use state::{Device, User};
