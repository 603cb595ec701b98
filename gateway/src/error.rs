//! The one place errors become responses:
//! `{"error": {"code": "...", "message": "..."}}` with the code's status.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use confab_schemas::ErrorCode;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), retry_after_secs: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unauthenticated, message)
    }

    /// Adds a `Retry-After` (seconds) to the answer.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_secs = Some(seconds);
        self
    }

    pub fn rate_limited(retry_after_secs: u64) -> ApiError {
        ApiError {
            code: ErrorCode::RateLimited,
            message: format!("too many requests; retry in {retry_after_secs} seconds"),
            retry_after_secs: Some(retry_after_secs),
        }
    }

    pub fn internal(context: &str, error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, context, "internal error");
        ApiError::new(ErrorCode::Internal, "the server failed to complete the request; retry later")
    }
}

impl From<confab_ingest::Error> for ApiError {
    fn from(error: confab_ingest::Error) -> ApiError {
        let code = error.code();
        if let confab_ingest::Error::OriginalSendFailed(_) = error {
            return ApiError::new(code, error.to_string());
        }
        match code {
            ErrorCode::Unavailable | ErrorCode::Internal => {
                tracing::error!(%error, "write path unavailable");
                ApiError::new(code, "the message store is unavailable; retry shortly")
            }
            _ => ApiError::new(code, error.to_string()),
        }
    }
}

impl From<confab_media::Error> for ApiError {
    fn from(error: confab_media::Error) -> ApiError {
        match error {
            confab_media::Error::State(error) => error.into(),
            error => match error.code() {
                ErrorCode::Unavailable | ErrorCode::Internal => {
                    tracing::error!(%error, "the media store or scanner is unavailable");
                    ApiError::new(error.code(), "the media store is unavailable; retry shortly")
                }
                code => ApiError::new(code, error.to_string()),
            },
        }
    }
}

impl From<confab_search::SearchError> for ApiError {
    fn from(error: confab_search::SearchError) -> ApiError {
        match error {
            confab_search::SearchError::State(error) => error.into(),
            error => match error.code() {
                ErrorCode::Unavailable | ErrorCode::Internal => {
                    tracing::error!(%error, "search failed");
                    ApiError::new(error.code(), "search is unavailable; retry shortly")
                }
                code => ApiError::new(code, error.to_string()),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}});
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response.headers_mut().insert("retry-after", HeaderValue::from(seconds.max(1)));
        }
        response
    }
}
