//! `POST /v1/users` (sign up), `POST /v1/sessions` (log in as a device),
//! logging out, and a user's devices.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use confab_schemas::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Authenticated, ClientIp};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::login::LoginCheck;
use crate::rate_limit::Limit;
use crate::AppState;

const PASSWORD_MIN_CHARS: usize = 8;
const PASSWORD_MAX_BYTES: usize = 1_024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateUser {
    username: String,
    password: String,
    display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSession {
    username: String,
    password: String,
    device_name: Option<String>,
    platform: Option<String>,
}

fn check_username(username: &str) -> ApiResult<()> {
    if !crate::login::is_username(username) {
        return Err(ApiError::bad_request("invalid `username`: use 3 to 32 of a-z 0-9 _ . -"));
    }
    Ok(())
}

fn check_password(password: &str) -> ApiResult<()> {
    if password.chars().count() < PASSWORD_MIN_CHARS {
        return Err(ApiError::bad_request(format!("invalid `password`: use {PASSWORD_MIN_CHARS} characters or more")));
    }
    if password.len() > PASSWORD_MAX_BYTES {
        return Err(ApiError::new(ErrorCode::TooLarge, format!("`password` is over {PASSWORD_MAX_BYTES} bytes")));
    }
    Ok(())
}

pub fn limit(state: &AppState, limit: Limit, key: &str) -> ApiResult<()> {
    state.rate_limiter.check(limit, key).map_err(ApiError::rate_limited)
}

/// Takes a write's tokens (see [`crate::rate_limit::RateLimiter::check_write`]), or 429.
pub fn limit_write(state: &AppState, write: crate::rate_limit::Write, user_id: &str, ip: &str, conversation_id: Option<&str>) -> ApiResult<()> {
    state.rate_limiter.check_write(write, user_id, ip, conversation_id).map_err(ApiError::rate_limited)
}

pub fn ip_key(ip: &ClientIp) -> String {
    ip.0.map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
}

pub async fn create_user(State(state): State<AppState>, ip: ClientIp, ApiJson(request): ApiJson<CreateUser>) -> ApiResult<(StatusCode, Json<Value>)> {
    limit(&state, Limit::SignupPerIp, &ip_key(&ip))?;
    check_username(&request.username)?;
    check_password(&request.password)?;
    if state.ingest.user_by_username(&request.username)?.is_some() {
        return Err(ApiError::new(ErrorCode::Conflict, format!("username `{}` is taken; choose another", request.username)));
    }
    let password = request.password;
    let passwords = state.passwords.clone();
    let hash = tokio::task::spawn_blocking(move || passwords.hash(&password))
        .await
        .map_err(|error| ApiError::internal("hashing a password", error))?
        .map_err(|error| ApiError::internal("hashing a password", error))?;
    let user = state.ingest.create_user(&request.username, request.display_name, hash).await?;
    Ok((StatusCode::CREATED, Json(json!({"userId": user.user_id, "username": user.username}))))
}

pub async fn create_session(State(state): State<AppState>, ip: ClientIp, ApiJson(request): ApiJson<CreateSession>) -> ApiResult<(StatusCode, Json<Value>)> {
    if request.password.len() > PASSWORD_MAX_BYTES {
        return Err(ApiError::new(ErrorCode::TooLarge, format!("`password` is over {PASSWORD_MAX_BYTES} bytes")));
    }
    let user = match crate::login::check_password(&state, &request.username, &request.password, ip.0).await? {
        LoginCheck::Valid(user) => user,
        LoginCheck::Wrong => return Err(ApiError::unauthenticated("wrong username or password")),
        LoginCheck::Limited(retry_after) => return Err(ApiError::rate_limited(retry_after)),
    };
    let device_id = state.ingest.create_device(&user.user_id, request.device_name, request.platform).await?;
    let token = state.tokens.issue(&user.user_id, &device_id);
    let body = json!({"accessToken": token, "userId": user.user_id, "deviceId": device_id, "expiresIn": state.tokens.ttl_secs()});
    Ok((StatusCode::CREATED, Json(body)))
}

/// `DELETE /v1/sessions/current`: logs the calling device out.
pub async fn end_current_session(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<StatusCode> {
    let device_id = caller.device_id.clone();
    log_out(&state, &caller, &device_id).await
}

/// `DELETE /v1/devices/{deviceId}`: logs one of the caller's devices out.
pub async fn remove_device(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiPath(device_id): ApiPath<String>) -> ApiResult<StatusCode> {
    log_out(&state, &caller, &device_id).await
}

/// Ends the device's session in the state (its tokens answer 401 from the
/// moment this returns), then closes its open sockets (close code 4401).
async fn log_out(state: &AppState, caller: &confab_ingest::Caller, device_id: &str) -> ApiResult<StatusCode> {
    state.ingest.end_session(&caller.user_id, device_id, &caller.device_id).await?;
    state.hub.end_device(&caller.user_id, device_id);
    state.device_seen.remove(device_id);
    Ok(StatusCode::NO_CONTENT)
}

/// A device as the device lists show it, with `extra` fields merged in.
pub(crate) fn device_json(state: &AppState, device: &confab_ingest::Device, extra: Value) -> Value {
    let mut value = json!({
        "deviceId": device.device_id,
        "deviceName": device.name,
        "platform": device.platform,
        "createdAt": device.created_at,
        "lastSeen": state.device_seen.get(&device.device_id).map(|seen| *seen),
    });
    if let (Value::Object(value), Value::Object(extra)) = (&mut value, extra) {
        value.extend(extra);
    }
    value
}

/// `GET /v1/devices`: the caller's devices, oldest first.
pub async fn list_devices(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<Value>> {
    let devices: Vec<Value> = state
        .ingest
        .devices(&caller.user_id)?
        .iter()
        .map(|device| device_json(&state, device, json!({"current": device.device_id == caller.device_id})))
        .collect();
    Ok(Json(json!({"devices": devices})))
}

/// `PUT /v1/me/blocks/{userId}`: the user can no longer open a dm with the
/// caller, add them anywhere, or write in their dm.
pub async fn block(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiPath(user_id): ApiPath<String>) -> ApiResult<StatusCode> {
    state.ingest.set_block(&caller, &user_id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/me/blocks/{userId}`.
pub async fn unblock(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiPath(user_id): ApiPath<String>) -> ApiResult<StatusCode> {
    state.ingest.set_block(&caller, &user_id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/me/blocks` -> `{userIds}`.
pub async fn list_blocks(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"userIds": state.ingest.blocks(&caller)?})))
}

/// At most this many ids in one `GET /v1/users?ids=` lookup.
pub const USER_LOOKUP_MAX: usize = 100;

/// `GET /v1/users?username=<name>` or `?ids=<id>,<id>`: the public part of
/// accounts (`userId`, `username`, `displayName`), so clients can show
/// names and open a dm by username. Any signed-in user may look anyone
/// up, as in a workspace's directory; unknown names and ids are left
/// out, never an error, and nothing else of an account is shown.
pub async fn lookup_users(
    State(state): State<AppState>,
    Authenticated(_caller): Authenticated,
    crate::extract::ApiQuery(params): crate::extract::ApiQuery<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let found = match (params.get("username"), params.get("ids")) {
        (Some(username), None) => state.ingest.user_by_username(username.trim())?.into_iter().collect::<Vec<_>>(),
        (None, Some(ids)) => {
            let ids: Vec<&str> = ids.split(',').map(str::trim).filter(|id| !id.is_empty()).collect();
            if ids.len() > USER_LOOKUP_MAX {
                return Err(ApiError::bad_request(format!("ids: at most {USER_LOOKUP_MAX} ids at once")));
            }
            let mut users = Vec::with_capacity(ids.len());
            for id in ids {
                users.extend(state.ingest.user(id)?);
            }
            users
        }
        _ => return Err(ApiError::bad_request("give exactly one of `username` or `ids` (comma-separated user ids)")),
    };
    let users: Vec<Value> = found.iter().map(|user| json!({"userId": user.user_id, "username": user.username, "displayName": user.display_name})).collect();
    Ok(Json(json!({"users": users})))
}
