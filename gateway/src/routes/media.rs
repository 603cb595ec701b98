//! Uploads (`shared/API.md`, Media): declare, complete, read. The bytes
//! travel to the signed URLs, never through these routes; the media layer
//! (`confab-media`) does the work and these only speak HTTP.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use confab_ingest::NewMedia;
use confab_media::Declared;
use confab_schemas::api;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Authenticated, ClientIp};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::rate_limit::Limit;
use crate::routes::accounts::{ip_key, limit};
use crate::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeclareMedia {
    conversation_id: String,
    filename: String,
    content_type: String,
    size: u64,
    sha256: String,
}

fn media(state: &AppState) -> ApiResult<&std::sync::Arc<confab_media::Media>> {
    state.media.get().ok_or_else(|| ApiError::new(confab_schemas::ErrorCode::Unavailable, "uploads are not available yet; retry shortly"))
}

/// `POST /v1/media` -> 201 `{mediaId, upload: {method, url, headers}, expiresAt}`.
pub async fn declare(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ip: ClientIp,
    ApiJson(request): ApiJson<DeclareMedia>,
) -> ApiResult<(StatusCode, Json<Declared>)> {
    limit(&state, Limit::UploadsPerAccount, &caller.user_id)?;
    limit(&state, Limit::WritePerIp, &ip_key(&ip))?;
    let new = NewMedia {
        conversation_id: request.conversation_id,
        filename: request.filename,
        content_type: request.content_type,
        size: request.size,
        sha256: request.sha256,
    };
    let declared = media(&state)?.declare(&caller, new).await?;
    Ok((StatusCode::CREATED, Json(declared)))
}

/// `POST /v1/media/{mediaId}/complete` -> 202 `{mediaId, status}`.
pub async fn complete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(media_id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let status = media(&state)?.complete(&caller, &media_id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"mediaId": media_id, "status": status}))))
}

/// `GET /v1/media/{mediaId}` -> the media object (signed URLs when ready).
pub async fn view(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiPath(media_id): ApiPath<String>) -> ApiResult<Json<api::Media>> {
    Ok(Json(media(&state)?.view(&caller, &media_id).await?))
}
