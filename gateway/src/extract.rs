//! Request extractors whose failures come out in the API's error format,
//! naming the offending field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// A JSON body; a bad one is refused with 400 naming the field, an
/// oversized one with 413.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| match rejection {
            BytesRejection::FailedToBufferBody(_) => {
                ApiError::new(confab_schemas::ErrorCode::TooLarge, format!("the request body is over {} bytes", state.config.request_body_max_bytes))
            }
            other => ApiError::bad_request(format!("could not read the request body: {other}")),
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Path parameters; a bad one is refused with 400 in the API's format.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> axum::extract::FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::bad_request(format!("invalid path: {}", rejection.body_text())))
    }
}

/// Query parameters; a query string that does not decode is refused with
/// 400 in the API's format.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned> axum::extract::FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::bad_request(format!("invalid query string: {}", rejection.body_text())))
    }
}

/// Refuses a request whose `Content-Length` is over the body limit with 413
/// at once, before a byte of the body is read, and closes the connection
/// (so the server never reads the rest either). Without it the answer came
/// only once the body had been read up to the limit: a client that
/// declared 64 MiB and sent nothing more waited until it gave up, holding
/// the connection. Bodies without a declared length are cut at the limit
/// while being read (`DefaultBodyLimit`), with the same 413.
pub async fn refuse_declared_oversize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.config.request_body_max_bytes as u64;
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()).and_then(|value| value.trim().parse::<u64>().ok());
    if let Some(declared) = declared.filter(|declared| *declared > limit) {
        let error = ApiError::new(confab_schemas::ErrorCode::TooLarge, format!("the request body declares {declared} bytes; the limit is {limit} bytes"));
        let mut response = error.into_response();
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; send a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let detail = inner.to_string();
        // serde_json appends " at line L column C": useless to a client.
        let detail = detail.split(" at line ").next().unwrap_or(&detail).to_string();
        if matches!(path.as_str(), "." | "?" | "") {
            ApiError::bad_request(format!("invalid request body: {detail}"))
        } else {
            ApiError::bad_request(format!("invalid `{path}`: {detail}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Probe {
        conversation_id: String,
        body: String,
    }

    #[test]
    fn errors_name_the_field() {
        let error = parse_json::<Probe>(br#"{"conversationId": "c", "body": 5}"#).unwrap_err();
        assert_eq!(error.message, "invalid `body`: invalid type: integer `5`, expected a string");
        let error = parse_json::<Probe>(br#"{"conversationId": "c"}"#).unwrap_err();
        assert_eq!(error.message, "invalid request body: missing field `body`");
        let error = parse_json::<Probe>(b"{nope").unwrap_err();
        assert!(error.message.starts_with("invalid request body: key must be a string"), "{}", error.message);
    }
}
