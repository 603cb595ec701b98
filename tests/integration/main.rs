//! Integration tests: the whole server in-process on an ephemeral port (or
//! the real binary, for crash tests), used as a client would.

mod accounts;
mod admin;
mod analytics;
mod browser;
mod conversations;
mod crash;
mod doors;
mod fuzz;
mod harness;
mod media;
mod messages;
mod metrics;
mod notebook;
mod operators;
mod psql;
mod push;
mod ready;
mod restart;
mod retention;
mod s3;
mod schemathesis;
mod search;
mod sync;
mod traces;
mod ws;
