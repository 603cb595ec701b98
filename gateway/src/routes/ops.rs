//! Health, metrics, and the answers for unknown routes.

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, Method, Uri};
use axum::response::IntoResponse;
use axum::Json;
use confab_schemas::ErrorCode;

use crate::auth::{authenticate, bearer_token};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Prometheus text; needs an access token, or the configured scraper token.
pub async fn metrics(State(state): State<AppState>, parts: Parts) -> ApiResult<impl IntoResponse> {
    let token = bearer_token(&parts).ok_or_else(|| ApiError::unauthenticated("send `Authorization: Bearer <token>` to read metrics"))?;
    let scraper = state.config.metrics_token.as_deref().is_some_and(|expected| expected == token);
    if !scraper {
        authenticate(&state, token)?;
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(&state)))
}

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no route for {method} `{}`; see the API reference", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("`{}` does not accept {method}; see the API reference", uri.path()))
}
