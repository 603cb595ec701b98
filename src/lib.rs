//! The `confab` binary's library: the config file and the wiring that turns
//! it into a running server. Each layer lives in its own crate; this one
//! only connects them (see `ARCHITECTURE.md`).

pub mod admin;
pub mod bench;
pub mod config;
pub mod media;
pub mod progress;
pub mod push;
pub mod retention;
pub mod server;
pub mod telemetry;
pub mod wiring;
pub mod workflows;
