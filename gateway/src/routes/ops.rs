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

/// Liveness: the process answers. Whether it can do its work is `/readyz`.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Every part and what is wrong with it: the state store, the log, the
/// history sink. No token (a load balancer asks), and nothing secret: the
/// error texts name parts and files, not data.
pub fn readiness(state: &AppState) -> Vec<(&'static str, Option<String>)> {
    let mut parts = vec![("store", state.ingest.store_failed().then(|| "the state store failed; restart the server after fixing the disk".to_string()))];
    if let Some(readiness) = state.readiness.get() {
        parts.extend(readiness.parts());
    }
    parts
}

/// Readiness: 200 when every part works, else 503 naming the ones that do not.
pub async fn ready(State(state): State<AppState>) -> axum::response::Response {
    let parts = readiness(&state);
    let failing: Vec<serde_json::Value> =
        parts.iter().filter_map(|(part, problem)| problem.as_ref().map(|problem| serde_json::json!({"part": part, "problem": problem}))).collect();
    if failing.is_empty() {
        return Json(serde_json::json!({"status": "ready"})).into_response();
    }
    let names: Vec<&str> = parts.iter().filter(|(_, problem)| problem.is_some()).map(|(part, _)| *part).collect();
    let mut response = ApiError::new(ErrorCode::Unavailable, format!("not ready: {}", names.join(", "))).into_response();
    // The error shape, with every failing part.
    let body = serde_json::json!({"error": {"code": "unavailable", "message": format!("not ready: {}", names.join(", ")), "parts": failing}});
    *response.body_mut() = axum::body::Body::from(body.to_string());
    response
}

/// Prometheus text; needs an access token, or the configured scraper token.
pub async fn metrics(State(state): State<AppState>, parts: Parts) -> ApiResult<impl IntoResponse> {
    let token = bearer_token(&parts).ok_or_else(|| ApiError::unauthenticated("send `Authorization: Bearer <token>` to read metrics"))?;
    let scraper = state.config.metrics_token.as_deref().is_some_and(|expected| same_secret(expected, token));
    if !scraper {
        authenticate(&state, token)?;
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(&state)))
}

/// Compares two secrets in time that does not depend on where they differ
/// (nor on their lengths: their SHA-256 digests are what is compared), so
/// that the scraper token cannot be guessed a byte at a time by timing.
fn same_secret(expected: &str, given: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(expected.as_bytes()).ct_eq(&Sha256::digest(given.as_bytes())).into()
}

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no route for {method} `{}`; see the API reference", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("`{}` does not accept {method}; see the API reference", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn the_scraper_token_must_match_exactly() {
        assert!(same_secret("s3cret-token", "s3cret-token"));
        for wrong in ["", "s3cret-toke", "s3cret-token ", "S3cret-token", "x"] {
            assert!(!same_secret("s3cret-token", wrong), "{wrong:?}");
        }
    }
}
