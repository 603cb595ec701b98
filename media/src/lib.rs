//! Confab's media: uploads declared through the API, their bytes sent
//! straight to a store through signed URLs (the chat servers carry none of
//! them but the local store's), checked by the moderation workflow, and
//! served through short-lived signed URLs to those who may read them.
//! `README.md` beside this crate walks an upload and each failure.

pub mod checks;
pub mod clamav;
pub mod config;
mod error;
pub mod local;
pub mod routes;
pub mod s3;
mod service;
pub mod signing;
pub mod store;

pub use config::{ClamavConfig, MediaConfig};
pub use error::{Error, Result};
pub use service::{Declared, Media, StartModeration};
pub use store::{MediaStore, Upload, Variant};
