//! Confab's write path and the state built from the log.
//!
//! A command (send, edit, add members, ...) is validated against the state,
//! turned into [`LogEvent`](confab_schemas::events::LogEvent)s, appended to its
//! conversation's partition, and answered only once durable and applied. The
//! state lives in a [`Store`](store::Store) on disk (fjall by default) with a
//! bounded cache in memory; each apply round commits its rows with the log
//! offset it reached, and checkpoints let the log drop what came before.
//! `README.md` beside this crate walks one send, the store, the checkpoint,
//! then each failure mode.

mod apply;
mod cache;
mod codec;
mod commands;
mod config;
mod error;
mod limits;
mod mentions;
mod partition;
mod queries;
mod realtime;
mod rows;
mod search;
mod state;
pub mod store;

pub use commands::{
    is_content_type, Caller, ComplianceDeletion, ComplianceScope, Ingest, MediaAllowance, MediaCheck, NewConversation, NewMedia, NewMessage, OpenReport,
    PendingSend, PushAudience, PushDevice, PushMember, PushText, SettingsChange, STATE_CONSUMER,
};
pub use confab_schemas::cursor::SyncCursor;
pub use config::StateConfig;
pub use error::{Error, Result};
pub use limits::Limits;
pub use queries::{SyncPage, PAGE_DEFAULT, PAGE_MAX, SYNC_PAGE_MAX};
pub use realtime::EventAt;
pub use rows::{MediaRow, MediaState, PushToken};
pub use search::{ReadableConversation, SearchableMessage};
pub use state::{Device, User};
