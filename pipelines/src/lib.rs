//! Confab's streaming pipelines.
//!
//! Pipelines are declared in files ([`definition`]), validated before
//! anything starts, and run by the [`runtime`]: the fanout pipeline tails
//! the log from its committed offsets and delivers each durable event to the
//! connected devices in the [`hub`]; the receipts pipeline coalesces delivery
//! receipts from devices into one log record per conversation per flush.
//! `README.md` beside this crate walks one event through, then each failure.

pub mod definition;
pub mod hub;
pub mod push;
pub mod runtime;

pub use definition::{validate, PipelineSpec, Problem, Source, Stage};
pub use hub::{Connection, Hub, Outbound, Traced};
pub use runtime::{DeliveryView, DeviceReceipt, PushRules, Pusher, ReceiptSink, RecordEvent, Runtime};
