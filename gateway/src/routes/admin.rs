//! Administration and compliance: roles, read-only SQL over the history,
//! legal holds, and the retention and erasure of history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use confab_schemas::events::AccountRole;
use confab_schemas::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Authenticated;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::AppState;
use confab_query::HoldTarget;

/// Largest result returned over HTTP; bigger ones need a LIMIT (or `confab sql`).
const RESULT_MAX_ROWS: u64 = 100_000;
/// Largest result returned over HTTP, as Arrow data while it streams.
const RESULT_MAX_BYTES: u64 = 32 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantRole {
    user_id: String,
    role: String,
}

#[derive(Deserialize)]
pub struct SqlRequest {
    sql: String,
}

pub async fn grant_role(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiJson(request): ApiJson<GrantRole>) -> ApiResult<StatusCode> {
    let role = match request.role.as_str() {
        "admin" => AccountRole::Admin,
        "compliance" => AccountRole::Compliance,
        other => return Err(ApiError::bad_request(format!("invalid `role`: `{other}` is not one of admin, compliance"))),
    };
    state.ingest.grant_role(&caller, &request.user_id, role).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/admin/roles/{userId}/{role}`: takes a role back
/// (administrators only; audited before it is done).
pub async fn revoke_role(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((user_id, role)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let role = match role.as_str() {
        "admin" => AccountRole::Admin,
        "compliance" => AccountRole::Compliance,
        other => return Err(ApiError::bad_request(format!("invalid role `{other}` in the path: use admin or compliance"))),
    };
    state.ingest.revoke_role(&caller, &user_id, role).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/admin/status`: how the server is doing, for `confab status`:
/// each part's readiness, connections, the log, each consumer's position
/// and lag, the history sink, and the bytes on disk under the data folder.
pub async fn status(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<ServerStatus>> {
    state.ingest.require_admin(&caller)?;
    let ready = crate::routes::ops::readiness(&state).into_iter().map(|(part, problem)| PartReady { part, ready: problem.is_none(), problem }).collect();
    Ok(Json(ServerStatus {
        uptime_secs: state.started_at.elapsed().as_secs(),
        ready,
        connected: Connected { users: state.hub.online_users(), devices: state.hub.online_device_count() },
        parts: state.readiness.get().map(|readiness| readiness.status()).unwrap_or_default(),
    }))
}

/// `GET /v1/admin/status`'s answer: the gateway's own figures, then the
/// parts the binary reports.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    uptime_secs: u64,
    ready: Vec<PartReady>,
    connected: Connected,
    #[serde(flatten)]
    parts: crate::PartsStatus,
}

#[derive(serde::Serialize)]
pub struct PartReady {
    part: &'static str,
    ready: bool,
    problem: Option<String>,
}

#[derive(serde::Serialize)]
pub struct Connected {
    users: usize,
    devices: usize,
}

/// `GET /v1/admin/users/{userId}/devices`: a user's devices, for an
/// administrator (oldest first; `online` when one holds a socket now).
pub async fn user_devices(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiPath(user_id): ApiPath<String>) -> ApiResult<Json<Value>> {
    let devices = state.ingest.devices_for_admin(&caller, &user_id)?;
    let online = state.hub.online_devices(&user_id);
    let devices: Vec<Value> = devices
        .iter()
        .map(|device| {
            let extra = json!({"online": online.contains(&device.device_id), "push": device.push.is_some()});
            crate::routes::accounts::device_json(&state, device, extra)
        })
        .collect();
    Ok(Json(json!({"userId": user_id, "devices": devices})))
}

/// `DELETE /v1/admin/users/{userId}/devices/{deviceId}`: logs that device
/// out (audited first): its tokens answer 401 at once and its sockets close
/// with 4401.
pub async fn log_out_device(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((user_id, device_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    state.ingest.end_session_for_admin(&caller, &user_id, &device_id).await?;
    state.hub.end_device(&user_id, &device_id);
    state.device_seen.remove(&device_id);
    Ok(StatusCode::NO_CONTENT)
}

fn query_error(error: confab_query::Error) -> ApiError {
    use confab_query::Error;
    match error {
        Error::NotAQuery { .. } | Error::Writes(_) | Error::StatementCount(_) | Error::Parse(_) | Error::Query(_) | Error::Timeout(_) => {
            ApiError::bad_request(error.to_string())
        }
        Error::MemoryExhausted(ref reason) if reason.contains("total_memory_mb") => ApiError::new(ErrorCode::Unavailable, error.to_string()),
        Error::MemoryExhausted(_) => ApiError::bad_request(error.to_string()),
        Error::TooLong { .. } | Error::ResultTooLarge(_) => ApiError::new(ErrorCode::TooLarge, error.to_string()),
        Error::AuditUnavailable(_) => ApiError::new(ErrorCode::Unavailable, error.to_string()),
        Error::UnderHold { .. } => ApiError::new(ErrorCode::Conflict, error.to_string()),
        Error::HoldNotFound(_) | Error::ConversationNotFound(_) => ApiError::new(ErrorCode::NotFound, error.to_string()),
        Error::Invalid(_) => ApiError::bad_request(error.to_string()),
        Error::HistoryBehind => ApiError::new(ErrorCode::Unavailable, error.to_string()),
        Error::Live(reason) => {
            tracing::error!(%reason, "a compliance deletion failed in the live store");
            ApiError::new(ErrorCode::Unavailable, "the message store is unavailable; retry shortly (the deletion is idempotent)")
        }
        other => ApiError::internal("querying the history", other),
    }
}

fn require_compliance(state: &AppState, user_id: &str, what: &str) -> ApiResult<()> {
    if state.ingest.has_role(user_id, AccountRole::Compliance)? {
        return Ok(());
    }
    Err(ApiError::new(ErrorCode::Forbidden, format!("only compliance accounts may {what}; an administrator grants the role with POST /v1/admin/roles")))
}

/// Runs one read-only query for a compliance account.
///
/// Every attempt is written to the audit log first, refused ones included
/// (not a compliance account, SQL too long): if that write fails, nothing
/// runs and the answer is 503. Then the statement gets a session of its
/// own, is plan-checked, and runs on the SQL threads; its rows are counted
/// as they stream, and a client that goes away stops it (dropping the
/// rows aborts the work).
pub async fn sql(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiJson(request): ApiJson<SqlRequest>) -> ApiResult<Json<Value>> {
    let compliance = state.ingest.has_role(&caller.user_id, AccountRole::Compliance)?;
    let limit = state.history.config().sql_max_bytes;
    let refused = if !compliance {
        Some("forbidden")
    } else if request.sql.len() > limit {
        Some("too_long")
    } else {
        None
    };
    let extra: Vec<(&str, &str)> = refused.map(|reason| vec![("refused", reason)]).unwrap_or_default();
    let details = confab_query::audit::sql_attempt(&request.sql, "http", &extra);
    if let Err(error) = state.ingest.record_audit(&caller.user_id, "sql.query", details).await {
        tracing::error!(%error, "could not audit a query, so it did not run");
        return Err(query_error(confab_query::Error::AuditUnavailable(error.to_string())));
    }
    require_compliance(&state, &caller.user_id, "query the history")?;
    if request.sql.len() > limit {
        return Err(query_error(confab_query::Error::TooLong { bytes: request.sql.len(), limit }));
    }
    let session = state.history.session().await.map_err(query_error)?;
    let plan = session.plan(&request.sql).await.map_err(query_error)?;
    let server = state.history.bounds();
    let bounds = confab_query::Bounds { max_rows: server.max_rows.min(RESULT_MAX_ROWS), max_bytes: server.max_bytes.min(RESULT_MAX_BYTES), ..server };
    let mut result = session.run(plan, bounds, None);
    let mut rows = Vec::new();
    while let Some(batch) = result.next_batch().await {
        let batch = batch.map_err(query_error)?;
        rows.extend(confab_query::output::batch_to_json_rows(&batch).map_err(query_error)?);
    }
    Ok(Json(json!({"columns": result.columns, "rows": rows})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceHold {
    user_id: Option<String>,
    conversation_id: Option<String>,
    reason: String,
}

/// Places a legal hold on a user's messages or a conversation's.
pub async fn place_hold(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(request): ApiJson<PlaceHold>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_compliance(&state, &caller.user_id, "place legal holds")?;
    let reason = request.reason.trim();
    if reason.is_empty() || reason.len() > confab_query::holds::REASON_MAX_BYTES {
        return Err(ApiError::bad_request(format!("invalid `reason`: say why, in 1 to {} bytes", confab_query::holds::REASON_MAX_BYTES)));
    }
    let target = match (request.user_id, request.conversation_id) {
        (Some(user_id), None) if state.ingest.user(&user_id)?.is_some() => HoldTarget::User(user_id),
        (Some(user_id), None) => return Err(ApiError::new(ErrorCode::NotFound, format!("user `{user_id}` not found"))),
        (None, Some(conversation_id)) if state.ingest.conversation_exists(&conversation_id)? => HoldTarget::Conversation(conversation_id),
        (None, Some(conversation_id)) => return Err(ApiError::new(ErrorCode::NotFound, format!("conversation `{conversation_id}` not found"))),
        _ => return Err(ApiError::bad_request("give exactly one of `userId` and `conversationId`")),
    };
    let details = match &target {
        HoldTarget::User(user_id) => json!({"userId": user_id, "reason": reason}),
        HoldTarget::Conversation(conversation_id) => json!({"conversationId": conversation_id, "reason": reason}),
    };
    state.ingest.record_audit(&caller.user_id, "hold.place", details.to_string()).await?;
    let hold = state.compliance.maintenance().place_hold(target, reason, &caller.user_id).await.map_err(query_error)?;
    Ok((StatusCode::CREATED, Json(json!(hold))))
}

pub async fn list_holds(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<Value>> {
    require_compliance(&state, &caller.user_id, "see legal holds")?;
    Ok(Json(json!({"holds": state.compliance.maintenance().active_holds().await})))
}

pub async fn release_hold(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiPath(hold_id): ApiPath<String>) -> ApiResult<StatusCode> {
    require_compliance(&state, &caller.user_id, "release legal holds")?;
    state.ingest.record_audit(&caller.user_id, "hold.release", json!({"holdId": hold_id}).to_string()).await?;
    state.compliance.maintenance().release_hold(&hold_id, &caller.user_id).await.map_err(query_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteHistory {
    conversation_id: String,
    /// Milliseconds since the epoch: messages created before it go.
    before: i64,
}

/// Retention: deletes a conversation's messages created before a time, from
/// the live store (they read as deleted) and from the history (gone),
/// unless a legal hold covers them.
pub async fn delete_history(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(request): ApiJson<DeleteHistory>,
) -> ApiResult<Json<Value>> {
    require_compliance(&state, &caller.user_id, "delete history")?;
    if !state.ingest.conversation_exists(&request.conversation_id)? {
        return Err(ApiError::new(ErrorCode::NotFound, format!("conversation `{}` not found", request.conversation_id)));
    }
    if request.before <= 0 || request.before > confab_schemas::ids::now_ms() {
        return Err(ApiError::bad_request("invalid `before`: a time in milliseconds since the epoch, not in the future"));
    }
    let actor = confab_query::Actor { user_id: caller.user_id.clone(), device_id: caller.device_id.clone() };
    let outcome = state.compliance.apply_retention(&actor, &request.conversation_id, request.before).await.map_err(query_error)?;
    Ok(Json(json!({"deletedRows": outcome.rows, "filesRemoved": outcome.files_removed, "deletedMessages": outcome.live_messages})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EraseUser {
    user_id: String,
}

/// Erasure (GDPR): deletes every message a user sent from the live store
/// and clears their bodies in the history, unless a legal hold covers them.
pub async fn erase_user(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiJson(request): ApiJson<EraseUser>) -> ApiResult<Json<Value>> {
    require_compliance(&state, &caller.user_id, "erase history")?;
    if state.ingest.user(&request.user_id)?.is_none() {
        return Err(ApiError::new(ErrorCode::NotFound, format!("user `{}` not found", request.user_id)));
    }
    let actor = confab_query::Actor { user_id: caller.user_id.clone(), device_id: caller.device_id.clone() };
    let outcome = state.compliance.erase_user(&actor, &request.user_id).await.map_err(query_error)?;
    Ok(Json(json!({"erasedRows": outcome.rows, "filesRemoved": outcome.files_removed, "deletedMessages": outcome.live_messages})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetPolicy {
    /// `null` removes the policy (the server's default applies again).
    retention_days: Option<u32>,
}

/// `PUT /v1/admin/retention-policies/{conversationId}` `{retentionDays}`:
/// the conversation keeps messages this many days; the scheduled retention
/// workflow deletes older ones (compliance accounts only).
pub async fn set_retention_policy(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(conversation_id): ApiPath<String>,
    ApiJson(request): ApiJson<SetPolicy>,
) -> ApiResult<Json<Value>> {
    require_compliance(&state, &caller.user_id, "set retention policies")?;
    let actor = confab_query::Actor { user_id: caller.user_id.clone(), device_id: caller.device_id.clone() };
    let policy = state.compliance.set_policy(&actor, &conversation_id, request.retention_days).await.map_err(query_error)?;
    Ok(Json(json!({"conversationId": conversation_id, "retentionDays": policy.map(|policy| policy.retention_days)})))
}

/// `GET /v1/admin/retention-policies` -> `{policies, defaultRetentionDays}`.
pub async fn list_retention_policies(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<Value>> {
    require_compliance(&state, &caller.user_id, "read retention policies")?;
    Ok(Json(json!({"policies": state.compliance.policies().await, "defaultRetentionDays": state.compliance.default_retention_days()})))
}
