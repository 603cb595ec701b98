//! The floor of Confab: what every other crate agrees on.
//!
//! - [`ids`]: opaque identifiers and how they are made;
//! - [`events`]: the records written to the streaming log (the source of truth);
//! - [`api`]: the objects of the public API (`shared/API.md`), in camelCase;
//! - [`frames`]: the WebSocket frames that are not events (hello, ack, error, ...);
//! - [`cursor`]: the opaque sync cursor, one position per log partition;
//! - [`trace`]: the W3C trace context a message's record carries to its readers;
//! - [`error`]: the small set of error codes every failure maps to.

pub mod api;
pub mod cursor;
pub mod error;
pub mod events;
pub mod frames;
pub mod ids;
pub mod trace;

pub use error::ErrorCode;
