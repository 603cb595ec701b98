//! Errors of the media layer; each maps to one API code.

use confab_schemas::ErrorCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] confab_ingest::Error),
    #[error("nothing was uploaded for `{0}` yet; PUT the bytes to the upload URL, then complete")]
    NotUploaded(String),
    #[error("upload `{0}` is complete; its bytes cannot be replaced (declare a new upload)")]
    AlreadyComplete(String),
    #[error("this URL's signature is not valid; ask the API for a new URL")]
    BadSignature,
    #[error("this URL expired; ask the API for a new URL")]
    Expired,
    #[error("the upload must be exactly {expected} bytes (send `Content-Length: {expected}`); got {got}")]
    WrongLength { expected: u64, got: String },
    #[error("the upload's `Content-Type` must be `{expected}`, as declared")]
    WrongContentType { expected: String },
    #[error("the file is not available")]
    NotServed,
    #[error("range `{0}` is not satisfiable")]
    BadRange(String),
    #[error("the media store at `{location}` failed: {reason}")]
    Store { location: String, reason: String },
    #[error("the virus scanner failed: {0}")]
    Scanner(String),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::State(error) => error.code(),
            Error::NotUploaded(_) | Error::AlreadyComplete(_) => ErrorCode::Conflict,
            Error::BadSignature | Error::Expired => ErrorCode::Forbidden,
            Error::WrongLength { .. } | Error::WrongContentType { .. } => ErrorCode::BadRequest,
            Error::NotServed => ErrorCode::NotFound,
            // 416 has no code of its own: the route sets the status.
            Error::BadRange(_) => ErrorCode::BadRequest,
            Error::Store { .. } | Error::Scanner(_) => ErrorCode::Unavailable,
        }
    }

    pub(crate) fn store(location: &str, reason: impl std::fmt::Display) -> Error {
        Error::Store { location: location.to_string(), reason: reason.to_string() }
    }
}
