//! The local store's own URLs, on the API's listener:
//! `PUT /v1/media/objects/{mediaId}/original?size&expires&signature` takes
//! an upload's bytes, `GET` (and `HEAD`) `/v1/media/objects/{mediaId}/{variant}?expires&signature`
//! serves a ready upload's files. The signature is the authentication: no
//! bearer token, as with S3's pre-signed URLs, so a client can hand the URL
//! to its platform's download manager.
//!
//! Uploads take exactly the signed length (`Content-Length` must say it,
//! and the body must be it) and the signed `Content-Type`, only while the
//! upload is not complete. Downloads serve only ready uploads, with the
//! stored type, `Content-Disposition`, `X-Content-Type-Options: nosniff`,
//! a sandboxing `Content-Security-Policy` (the files come from the API's
//! own origin: an uploaded page must not run there), single byte ranges,
//! and cache headers a CDN can keep until the URL expires (the URL names
//! one immutable object).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::Router;
use confab_ingest::MediaState;
use confab_schemas::ids::now_ms;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::local::OBJECTS_PATH;
use crate::service::Media;
use crate::signing::Grant;
use crate::store::{content_disposition, object, Served, Variant};
use crate::Error;

/// The local store's routes (merge them into the API's router).
pub fn objects(media: Arc<Media>) -> Router {
    Router::new().route(&format!("{OBJECTS_PATH}/{{media_id}}/{{variant}}"), put(upload).get(download)).with_state(media)
}

/// An error in the API's format (`{"error": {"code", "message"}}`).
fn refuse(error: Error) -> Response {
    let status = match &error {
        Error::BadRange(_) => StatusCode::RANGE_NOT_SATISFIABLE,
        other => StatusCode::from_u16(other.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    if matches!(error, Error::Store { .. } | Error::State(_)) {
        tracing::error!(%error, "a media file request failed");
    }
    let body = serde_json::json!({"error": {"code": error.code().as_str(), "message": error.to_string()}});
    (status, axum::Json(body)).into_response()
}

fn signed(params: &HashMap<String, String>) -> Result<(i64, &str), Error> {
    let expires = params.get("expires").and_then(|text| text.parse::<i64>().ok()).ok_or(Error::BadSignature)?;
    let signature = params.get("signature").ok_or(Error::BadSignature)?;
    Ok((expires, signature))
}

async fn upload(
    State(media): State<Arc<Media>>,
    Path((media_id, variant)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match receive(&media, &media_id, &variant, &params, &headers, body).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => refuse(error),
    }
}

async fn receive(media: &Media, media_id: &str, variant: &str, params: &HashMap<String, String>, headers: &HeaderMap, body: Body) -> Result<(), Error> {
    let local = media.local().ok_or(Error::NotServed)?;
    if variant != Variant::Original.name() {
        return Err(Error::BadSignature);
    }
    let object = object(media_id, Variant::Original);
    let (expires, signature) = signed(params)?;
    let size = params.get("size").and_then(|text| text.parse::<u64>().ok()).ok_or(Error::BadSignature)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    if !local.signer().verify(&Grant::Put { object: &object, size, content_type }, expires, signature) {
        return Err(Error::BadSignature);
    }
    if expires < now_ms() {
        return Err(Error::Expired);
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok());
    if declared.and_then(|text| text.parse::<u64>().ok()) != Some(size) {
        return Err(Error::WrongLength { expected: size, got: declared.map_or("no Content-Length".into(), |text| format!("Content-Length {text}")) });
    }
    match media.ingest().media_row(media_id)?.map(|row| row.state) {
        Some(MediaState::Declared) => {}
        Some(_) => return Err(Error::AlreadyComplete(media_id.to_string())),
        None => return Err(Error::NotServed),
    }
    local.receive(&object, size, body.into_data_stream()).await
}

async fn download(
    State(media): State<Arc<Media>>,
    Path((media_id, variant)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match serve(&media, &media_id, &variant, &params, &headers).await {
        Ok(response) => response,
        Err(error) => refuse(error),
    }
}

async fn serve(media: &Media, media_id: &str, variant: &str, params: &HashMap<String, String>, headers: &HeaderMap) -> Result<Response, Error> {
    let local = media.local().ok_or(Error::NotServed)?;
    let variant = Variant::parse(variant).ok_or(Error::BadSignature)?;
    let object = object(media_id, variant);
    let (expires, signature) = signed(params)?;
    if !local.signer().verify(&Grant::Get { object: &object }, expires, signature) {
        return Err(Error::BadSignature);
    }
    let now = now_ms();
    if expires < now {
        return Err(Error::Expired);
    }
    // Checked at every request: a file blocked since the URL was signed is not served.
    let (row, content_type) = media.servable(media_id, variant)?;
    let path = local.path(&object)?;
    let mut file = tokio::fs::File::open(&path).await.map_err(|_| Error::NotServed)?;
    let length = file.metadata().await.map_err(|error| Error::store(&local_location(&path), error))?.len();
    let range = match headers.get(header::RANGE).and_then(|value| value.to_str().ok()) {
        None => None,
        Some(text) => Some(parse_range(text, length).ok_or_else(|| Error::BadRange(text.to_string()))?),
    };
    let (start, end) = range.unwrap_or((0, length.saturating_sub(1)));
    let count = if length == 0 { 0 } else { end - start + 1 };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(|error| Error::store(&local_location(&path), error))?;
    }
    let stream = tokio_util::io::ReaderStream::new(file.take(count));
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let served = Served { content_type: &content_type, filename: &row.filename, inline: content_type.starts_with("image/") };
    let max_age = ((expires - now) / 1000).max(0);
    let set = response.headers_mut();
    let value = |text: &str| HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    set.insert(header::CONTENT_TYPE, value(&content_type));
    set.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    set.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    set.insert(header::CONTENT_DISPOSITION, value(&content_disposition(&served)));
    set.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    set.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    set.insert(header::CACHE_CONTROL, value(&format!("public, max-age={max_age}, immutable")));
    set.insert(header::ETAG, value(&format!("\"{media_id}-{}\"", variant.name())));
    if range.is_some() {
        set.insert(header::CONTENT_RANGE, value(&format!("bytes {start}-{end}/{length}")));
    }
    Ok(response)
}

fn local_location(path: &std::path::Path) -> String {
    path.display().to_string()
}

/// One range of `bytes=a-b`, `bytes=a-` or `bytes=-n` within `length`,
/// inclusive; several ranges or one outside the file are refused.
fn parse_range(text: &str, length: u64) -> Option<(u64, u64)> {
    let spec = text.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || length == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let suffix: u64 = suffix.parse().ok()?;
            if suffix == 0 {
                return None;
            }
            (length.saturating_sub(suffix), length - 1)
        }
        (start, "") => (start.parse().ok()?, length - 1),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(length - 1)),
    };
    (start <= end && start < length).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-500", 100), Some((0, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None, "starts past the end");
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None, "one range only");
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
