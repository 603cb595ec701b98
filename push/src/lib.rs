//! Push clients for the two services phones listen to, written thin on an
//! HTTP/2 client because no published crate lets the base URL be set (and
//! tests must reach a local server):
//!
//! - [`apns::ApnsClient`]: Apple Push Notification service, HTTP/2, token
//!   authentication with an ES256 provider token that is made again before
//!   it is 50 minutes old (Apple refuses one older than an hour, and one
//!   made more often than every 20 minutes).
//! - [`fcm::FcmClient`]: Firebase Cloud Messaging HTTP v1, with an OAuth2
//!   access token from a service-account file (a JWT grant to its
//!   `token_uri`), made again before it expires.
//!
//! Both take a [`Notification`] and answer `Ok` or a [`PushError`] that
//! says whether to retry, when, or whether the token is gone. [`fake`] has
//! local servers that speak each protocol, check authentication, record
//! requests and inject failures, for tests and benchmarks.

pub mod apns;
pub mod fake;
pub mod fcm;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One push to one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub token: String,
    /// One per conversation: a burst ends up as one visible notification.
    pub collapse_key: String,
    /// Shown on the device; `None` for a silent (background) push.
    pub alert: Option<Alert>,
    /// The app's badge; `None` leaves it.
    pub badge: Option<u64>,
    /// Handed to the app (conversation id, message id, seq...).
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Seconds from now after which the service may drop it.
    pub ttl_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub title: Option<String>,
    pub body: String,
}

/// Why a push was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider} answered {status}: {reason}")]
pub struct PushError {
    pub provider: &'static str,
    pub kind: ErrorKind,
    /// The HTTP status, or 0 when no answer came.
    pub status: u16,
    /// The service's reason (`Unregistered`, `UNAVAILABLE`), or what failed.
    pub reason: String,
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Try again later (timeouts, 429, 5xx, an expired provider token).
    Retryable,
    /// The request is wrong and will stay wrong.
    Permanent,
    /// The device token is no longer valid: forget it.
    Unregistered,
}

impl PushError {
    fn transport(provider: &'static str, error: &reqwest::Error) -> PushError {
        let reason = if error.is_timeout() { "timeout".to_string() } else { format!("no answer: {error}") };
        PushError { provider, kind: ErrorKind::Retryable, status: 0, reason, retry_after: None }
    }

    pub fn code(&self) -> &'static str {
        match self.kind {
            ErrorKind::Retryable => "push_retryable",
            ErrorKind::Permanent => "push_refused",
            ErrorKind::Unregistered => "push_unregistered",
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by either service).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An HTTP/2 client: over TLS (ALPN h2) for `https://`, with prior
/// knowledge (h2c) for a local `http://` server.
fn http2_client(base_url: &str, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder().timeout(timeout).connect_timeout(Duration::from_secs(10)).pool_idle_timeout(Duration::from_secs(600));
    match base_url.starts_with("http://") {
        true => builder.http2_prior_knowledge().build(),
        false => builder.build(),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}
