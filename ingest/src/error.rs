//! Errors of the write path and the state's queries; each maps to one API code.

use confab_schemas::ErrorCode;

use crate::store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("`{field}` is {size} bytes; the limit is {max} bytes")]
    TooLarge { field: &'static str, size: usize, max: usize },
    #[error("`{field}` has {count} items; the limit is {max}")]
    TooMany { field: &'static str, count: usize, max: usize },
    #[error("you are not a member of conversation `{0}`")]
    NotMember(String),
    #[error("{action} in conversation `{conversation_id}` is allowed only to {allowed}")]
    NotAllowed { action: &'static str, conversation_id: String, allowed: &'static str },
    #[error("conversation `{0}` not found")]
    ConversationNotFound(String),
    #[error("message `{0}` not found")]
    MessageNotFound(String),
    #[error("user `{user_id}` is not a member of conversation `{conversation_id}`")]
    MemberNotFound { conversation_id: String, user_id: String },
    #[error("only administrators may do this; ask one to grant you the role")]
    NotAdmin,
    #[error("device `{0}` is not one of yours; list yours with GET /v1/devices")]
    DeviceNotFound(String),
    #[error("user `{0}` not found")]
    UserNotFound(String),
    #[error("{0}")]
    Blocked(String),
    #[error("upload `{0}` not found")]
    MediaNotFound(String),
    #[error("your uploads keep {kept} bytes; {size} more would pass your quota of {quota} bytes: send a smaller file, or ask an operator to raise `[media] quota_bytes`")]
    QuotaExceeded { kept: u64, size: u64, quota: u64 },
    #[error("username `{0}` is taken; choose another")]
    UsernameTaken(String),
    #[error("message `{0}` was deleted and can no longer be edited")]
    MessageDeleted(String),
    #[error("conversation `{conversation_id}` would have {count} members; the limit is {max}")]
    TooManyMembers { conversation_id: String, count: usize, max: usize },
    #[error("`clientMsgId` `{client_msg_id}` was already used for a message in conversation `{conversation_id}`; use a new clientMsgId for each message")]
    ClientMsgIdReused { client_msg_id: String, conversation_id: String },
    #[error("the first send with `clientMsgId` `{0}` did not complete; send it again")]
    OriginalSendFailed(String),
    #[error("the message log is unavailable: {0}")]
    Log(#[from] confab_log::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the state store failed earlier; the server must be restarted")]
    StateFailed,
    #[error(
        "the state store has applied partition {partition} only up to offset {applied}, but the log now starts at {earliest}: records in between are gone. Restore the state directory from a backup, or start from an empty data directory"
    )]
    StateBehindLog { partition: u32, applied: u64, earliest: u64 },
    #[error("record {offset} of partition {partition} cannot be read by this version of confab: {source}")]
    UnreadableEvent {
        partition: u32,
        offset: u64,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid { .. } => ErrorCode::BadRequest,
            Error::TooLarge { .. } | Error::TooMany { .. } | Error::TooManyMembers { .. } | Error::QuotaExceeded { .. } => ErrorCode::TooLarge,
            Error::NotMember(_) | Error::NotAllowed { .. } | Error::NotAdmin | Error::Blocked(_) => ErrorCode::Forbidden,
            Error::ConversationNotFound(_)
            | Error::MessageNotFound(_)
            | Error::MemberNotFound { .. }
            | Error::DeviceNotFound(_)
            | Error::UserNotFound(_)
            | Error::MediaNotFound(_) => ErrorCode::NotFound,
            Error::UsernameTaken(_) | Error::MessageDeleted(_) | Error::ClientMsgIdReused { .. } => ErrorCode::Conflict,
            Error::OriginalSendFailed(_) | Error::Log(_) | Error::Store(_) | Error::StateFailed | Error::UnreadableEvent { .. } => ErrorCode::Unavailable,
            Error::StateBehindLog { .. } => ErrorCode::Internal,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid { field, reason: reason.into() }
    }
}
