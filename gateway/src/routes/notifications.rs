//! Push tokens, notification settings per conversation, and `pushPreview`
//! (`shared/API.md`, second part).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use confab_ingest::SettingsChange;
use confab_schemas::api::ConversationSettings;
use confab_schemas::events::{Notify, PushPreview, PushProvider};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::auth::Authenticated;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetPushToken {
    provider: String,
    token: String,
    app_id: Option<String>,
}

/// `PUT /v1/devices/{deviceId}/push` `{provider, token, appId?}` -> 204.
pub async fn set_push_token(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(device_id): ApiPath<String>,
    ApiJson(request): ApiJson<SetPushToken>,
) -> ApiResult<StatusCode> {
    let provider = PushProvider::parse(&request.provider)
        .ok_or_else(|| ApiError::bad_request(format!("invalid `provider`: `{}`; use `apns` or `fcm`", request.provider)))?;
    state.ingest.set_push_token(&caller, &device_id, provider, request.token, request.app_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/devices/{deviceId}/push` -> 204.
pub async fn remove_push_token(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(device_id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    state.ingest.remove_push_token(&caller, &device_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetSettings {
    muted: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    muted_until: Option<Option<i64>>,
    notify: Option<String>,
}

/// `GET /v1/conversations/{id}/settings` -> `{muted, mutedUntil, notify}` (members only).
pub async fn settings(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(conversation_id): ApiPath<String>,
) -> ApiResult<Json<ConversationSettings>> {
    Ok(Json(state.ingest.conversation_settings(&caller, &conversation_id)?))
}

/// `PUT /v1/conversations/{id}/settings` `{muted?, mutedUntil?, notify?}` -> 200 the settings.
pub async fn set_settings(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(conversation_id): ApiPath<String>,
    ApiJson(request): ApiJson<SetSettings>,
) -> ApiResult<Json<ConversationSettings>> {
    let notify = match request.notify {
        None => None,
        Some(text) => Some(Notify::parse(&text).ok_or_else(|| ApiError::bad_request(format!("invalid `notify`: `{text}`; use `all`, `mentions` or `none`")))?),
    };
    if let Some(Some(until)) = request.muted_until {
        if until < 0 {
            return Err(ApiError::bad_request("invalid `mutedUntil`: a time in ms since 1970, or null"));
        }
    }
    let change = SettingsChange { muted: request.muted, muted_until: request.muted_until, notify };
    Ok(Json(state.ingest.set_conversation_settings(&caller, &conversation_id, change).await?))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetMySettings {
    push_preview: Option<String>,
}

/// `GET /v1/me/settings` -> `{pushPreview}`.
pub async fn my_settings(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"pushPreview": state.ingest.push_preview(&caller)?})))
}

/// `PUT /v1/me/settings` `{pushPreview?}` -> 200 `{pushPreview}`.
pub async fn set_my_settings(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(request): ApiJson<SetMySettings>,
) -> ApiResult<Json<Value>> {
    let preview = match request.push_preview {
        None => state.ingest.push_preview(&caller)?,
        Some(text) => {
            let preview =
                PushPreview::parse(&text).ok_or_else(|| ApiError::bad_request(format!("invalid `pushPreview`: `{text}`; use `full`, `sender` or `none`")))?;
            state.ingest.set_push_preview(&caller, preview).await?
        }
    };
    Ok(Json(json!({"pushPreview": preview})))
}
