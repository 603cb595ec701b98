//! The routes of the public API, one module per resource.

pub mod accounts;
pub mod admin;
pub mod conversations;
pub mod media;
pub mod messages;
pub mod notifications;
pub mod ops;
pub mod search;
