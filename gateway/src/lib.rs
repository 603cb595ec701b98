//! Confab's gateway: the HTTP half of `shared/API.md`.
//!
//! [`app`] builds the router from an [`AppState`], so tests can drive it
//! in-process. Only this crate turns errors into responses (see [`error`]).

pub mod auth;
pub mod client_ip;
pub mod config;
#[cfg(test)]
mod documents;
pub mod error;
mod extract;
pub mod login;
pub mod metrics;
pub mod rate_limit;
mod routes;
pub mod serve;
mod trace;
pub mod ws;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use confab_ingest::Ingest;
use confab_pipelines::{Hub, Runtime};

pub use config::GatewayConfig;

/// What `/readyz` asks of the parts the gateway does not own (the log, the
/// history sink); implemented in the binary's wiring.
pub trait Readiness: Send + Sync {
    /// Each part by name, with what is wrong with it (`None`: ready).
    fn parts(&self) -> Vec<(&'static str, Option<String>)>;
    /// Restarts of the history sink's tasks since the server started.
    fn sink_restarts(&self) -> u64;
    /// More Prometheus text for `/metrics` (push and workflow counters).
    fn extra_metrics(&self, _out: &mut String) {}
    /// What `GET /v1/admin/status` (and `confab status`) reports of them.
    fn status(&self) -> PartsStatus {
        PartsStatus::default()
    }
}

/// The parts the binary owns, as `GET /v1/admin/status` reports them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartsStatus {
    pub log: LogStatus,
    /// Every registered consumer of the log, by name.
    pub consumers: Vec<ConsumerStatus>,
    /// The Delta history's sink (absent when the history is off).
    pub history_sink: Option<SinkStatus>,
    /// Bytes on disk under each top folder of the data directory.
    pub disk: Vec<DiskUse>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogStatus {
    pub partitions: u32,
    /// Records held (from the earliest kept to the durable end), all partitions.
    pub records: u64,
    pub segments: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    pub name: String,
    /// Records durable in the log that it has not committed, all partitions.
    pub lag: u64,
    pub partitions: Vec<ConsumerPosition>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerPosition {
    pub partition: u32,
    /// Everything before this offset is processed.
    pub committed: u64,
    /// The log's durable end.
    pub end: u64,
    pub lag: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    /// Records durable in the log and not yet in the Delta tables.
    pub lag: u64,
    pub restarts: u64,
    /// Partitions whose task is failing, with the error.
    pub failing: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskUse {
    /// The folder under the data directory (`state`, `log`, `history`, ...).
    pub part: String,
    pub bytes: u64,
}

/// Everything a request handler needs; cloned per request, so one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub ingest: Arc<Ingest>,
    pub hub: Arc<Hub>,
    pub pipelines: Arc<Runtime>,
    /// Read-only SQL over the history.
    pub history: Arc<confab_query::SqlEngine>,
    /// Legal holds (`compliance.maintenance()`), retention and erasure.
    pub compliance: Arc<confab_query::Compliance>,
    /// When each user was last seen online (presence).
    pub last_seen: dashmap::DashMap<String, i64>,
    /// When each device last made a request or held a socket (ms; since
    /// this server started: not kept across restarts).
    pub device_seen: dashmap::DashMap<String, i64>,
    /// When each user last announced typing in each conversation (shed
    /// repeats; forgotten by the janitor).
    pub typing_sent: dashmap::DashMap<(String, String), Instant>,
    /// WebSockets open (or being upgraded) per account and per address.
    pub socket_counts: dashmap::DashMap<String, usize>,
    /// WebSockets open (or being upgraded) in all.
    pub sockets_total: std::sync::atomic::AtomicUsize,
    /// Users announced online and not yet offline (presence debounce).
    pub presence_announced: dashmap::DashSet<String>,
    /// Set when the server stops: WebSocket sessions close ("going away")
    /// so that graceful shutdown does not wait on them.
    pub closing: tokio::sync::watch::Sender<bool>,
    pub tokens: auth::TokenKeys,
    pub passwords: Arc<auth::Passwords>,
    pub rate_limiter: rate_limit::RateLimiter,
    pub metrics: metrics::Metrics,
    pub config: GatewayConfig,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<client_ip::Block>,
    pub started_at: Instant,
    /// Uploads; set once by the binary when the media layer is up.
    pub media: std::sync::OnceLock<Arc<confab_media::Media>>,
    /// Search; set once by the binary when the index is up.
    pub search: std::sync::OnceLock<Arc<confab_search::Search>>,
    /// Set once by the binary when the parts are up.
    pub readiness: std::sync::OnceLock<Arc<dyn Readiness>>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ingest: Arc<Ingest>,
        hub: Arc<Hub>,
        pipelines: Arc<Runtime>,
        history: Arc<confab_query::SqlEngine>,
        compliance: Arc<confab_query::Compliance>,
        config: GatewayConfig,
        token_secret: Vec<u8>,
    ) -> AppState {
        AppState(Arc::new(Shared {
            ingest,
            hub,
            pipelines,
            history,
            compliance,
            last_seen: dashmap::DashMap::new(),
            device_seen: dashmap::DashMap::new(),
            typing_sent: dashmap::DashMap::new(),
            socket_counts: dashmap::DashMap::new(),
            sockets_total: std::sync::atomic::AtomicUsize::new(0),
            presence_announced: dashmap::DashSet::new(),
            closing: tokio::sync::watch::channel(false).0,
            tokens: auth::TokenKeys::new(token_secret, config.access_token_ttl_secs),
            passwords: Arc::new(auth::Passwords::new(&config.password_hash)),
            rate_limiter: rate_limit::RateLimiter::new(config.rate_limits.clone()),
            metrics: metrics::Metrics::default(),
            // Checked when the config is loaded (`GatewayConfig::problems`).
            trusted_proxies: client_ip::trusted_proxies(&config.trusted_proxies, config.trust_forwarded_for).unwrap_or_default(),
            config,
            started_at: Instant::now(),
            media: std::sync::OnceLock::new(),
            search: std::sync::OnceLock::new(),
            readiness: std::sync::OnceLock::new(),
        }))
    }
}

/// The gateway's router: every route of the API.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.request_body_max_bytes;
    // The local store's upload and download URLs: their bodies are files,
    // bounded by the signed length, not by the API's body limit.
    let objects = state.media.get().map(|media| confab_media::routes::objects(media.clone()));
    let api = Router::new()
        .route("/healthz", get(routes::ops::health))
        .route("/readyz", get(routes::ops::ready))
        .route("/metrics", get(routes::ops::metrics))
        .route("/v1/users", post(routes::accounts::create_user).get(routes::accounts::lookup_users))
        .route("/v1/sessions", post(routes::accounts::create_session))
        .route("/v1/sessions/current", delete(routes::accounts::end_current_session))
        .route("/v1/devices", get(routes::accounts::list_devices))
        .route("/v1/me/blocks", get(routes::accounts::list_blocks))
        .route("/v1/me/blocks/{user_id}", axum::routing::put(routes::accounts::block).delete(routes::accounts::unblock))
        .route("/v1/devices/{id}", delete(routes::accounts::remove_device))
        .route("/v1/devices/{id}/push", axum::routing::put(routes::notifications::set_push_token).delete(routes::notifications::remove_push_token))
        .route("/v1/me/settings", get(routes::notifications::my_settings).put(routes::notifications::set_my_settings))
        .route("/v1/conversations/{id}/settings", get(routes::notifications::settings).put(routes::notifications::set_settings))
        .route("/v1/conversations", post(routes::conversations::create).get(routes::conversations::list))
        .route("/v1/conversations/{id}/members", post(routes::conversations::add_members).get(routes::conversations::members))
        .route("/v1/conversations/{id}/members/{user_id}", delete(routes::conversations::remove_member))
        .route("/v1/conversations/{id}/messages", get(routes::messages::history))
        .route("/v1/conversations/{id}/read", post(routes::messages::mark_read))
        .route("/v1/messages", post(routes::messages::send))
        .route("/v1/messages/{id}", axum::routing::patch(routes::messages::edit).delete(routes::messages::delete))
        .route("/v1/sync", get(routes::messages::sync))
        .route("/v1/search", get(routes::search::search))
        .route("/v1/media", post(routes::media::declare))
        .route("/v1/media/{id}", get(routes::media::view))
        .route("/v1/media/{id}/complete", post(routes::media::complete))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/admin/roles", post(routes::admin::grant_role))
        .route("/v1/admin/roles/{user_id}/{role}", delete(routes::admin::revoke_role))
        .route("/v1/admin/status", get(routes::admin::status))
        .route("/v1/admin/users/{user_id}/devices", get(routes::admin::user_devices))
        .route("/v1/admin/users/{user_id}/devices/{device_id}", delete(routes::admin::log_out_device))
        .route("/v1/admin/sql", post(routes::admin::sql))
        .route("/v1/admin/holds", post(routes::admin::place_hold).get(routes::admin::list_holds))
        .route("/v1/admin/holds/{id}", delete(routes::admin::release_hold))
        .route("/v1/admin/retention", post(routes::admin::delete_history))
        .route("/v1/admin/retention-policies", get(routes::admin::list_retention_policies))
        .route("/v1/admin/retention-policies/{id}", axum::routing::put(routes::admin::set_retention_policy))
        .route("/v1/admin/erasure", post(routes::admin::erase_user))
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), extract::refuse_declared_oversize))
        .with_state(state.clone());
    let app = match objects {
        Some(objects) => objects.merge(api),
        None => api,
    };
    // The web client's page and assets (public, like /healthz: the page
    // signs in through the API).
    let app = confab_web::routes().merge(app);
    app.layer(axum::middleware::from_fn_with_state(state, metrics::track_requests))
}
