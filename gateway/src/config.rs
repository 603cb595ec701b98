//! The gateway's settings (the `[gateway]` table of the config file).

use serde::{Deserialize, Serialize};

use crate::auth::PasswordHashConfig;
use crate::rate_limit::RateLimitConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Lifetime of an access token; clients log in again after it.
    pub access_token_ttl_secs: u64,
    /// Largest request body; message bodies have their own, smaller limit.
    pub request_body_max_bytes: usize,
    /// Believe `X-Forwarded-For` from a proxy on loopback (a shorthand
    /// for adding 127.0.0.0/8 and ::1 to `trusted_proxies`).
    pub trust_forwarded_for: bool,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is
    /// believed; the client is the rightmost hop that is not one of them.
    pub trusted_proxies: Vec<String>,
    /// A static bearer token a Prometheus scraper may use for `/metrics`.
    pub metrics_token: Option<String>,
    pub rate_limits: RateLimitConfig,
    pub password_hash: PasswordHashConfig,
    /// How often WebSocket clients must send a frame (a `ping` will do);
    /// a connection silent for twice this is closed and its user offline.
    pub heartbeat_ms: u64,
    /// Largest WebSocket frame a client may send.
    pub ws_frame_max_bytes: usize,
    /// Frames queued for one connection; a reader that falls further behind
    /// is told to resume from its cursor and disconnected.
    pub connection_queue_max_frames: usize,
    /// `message.send` commands one socket may have in flight (sent, not yet
    /// answered); beyond that the server reads the socket's next frame only
    /// once one is answered.
    pub ws_sends_in_flight_max: usize,
    /// A client must send a whole request head within this; an idle
    /// keep-alive connection is closed after it too.
    pub header_read_timeout_ms: u64,
    /// Connections open at once, in all and from one address; more are
    /// answered 503 without being read.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// WebSockets open at once in all (503 beyond), per account and per
    /// address (429 beyond).
    pub ws_max: usize,
    pub ws_per_user_max: usize,
    pub ws_per_ip_max: usize,
    /// A socket that cannot take a frame within this is closed.
    pub ws_write_timeout_ms: u64,
    /// A user's last socket closing is announced as offline only after
    /// this, so that a quick reconnect announces nothing.
    pub presence_debounce_ms: u64,
    /// TLS on the listener (PEM files); `wss://` works through it.
    pub tls: Option<TlsFiles>,
}

/// A certificate chain and its private key, in PEM files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            access_token_ttl_secs: 24 * 3600,
            request_body_max_bytes: 256 * 1024,
            trust_forwarded_for: false,
            trusted_proxies: Vec::new(),
            metrics_token: None,
            rate_limits: RateLimitConfig::default(),
            password_hash: PasswordHashConfig::default(),
            heartbeat_ms: 30_000,
            ws_frame_max_bytes: 64 * 1024,
            connection_queue_max_frames: 1_024,
            ws_sends_in_flight_max: 256,
            header_read_timeout_ms: 15_000,
            max_connections: 19_000,
            max_connections_per_ip: 2_000,
            ws_max: 19_000,
            ws_per_user_max: 32,
            ws_per_ip_max: 2_000,
            ws_write_timeout_ms: 10_000,
            presence_debounce_ms: 5_000,
            tls: None,
        }
    }
}

impl GatewayConfig {
    /// Every problem of the settings, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = crate::client_ip::trusted_proxies(&self.trusted_proxies, self.trust_forwarded_for).err().unwrap_or_default();
        for (value, name) in [(self.header_read_timeout_ms, "header_read_timeout_ms"), (self.ws_write_timeout_ms, "ws_write_timeout_ms")] {
            if value == 0 {
                problems.push(format!("[gateway] {name} must be over 0"));
            }
        }
        for (value, name) in [
            (self.max_connections, "max_connections"),
            (self.max_connections_per_ip, "max_connections_per_ip"),
            (self.ws_max, "ws_max"),
            (self.ws_per_user_max, "ws_per_user_max"),
            (self.ws_per_ip_max, "ws_per_ip_max"),
        ] {
            if value == 0 {
                problems.push(format!("[gateway] {name} must be 1 or more"));
            }
        }
        problems
    }
}
