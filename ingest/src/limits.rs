//! Size bounds of everything a client may send. Every bound names its unit.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub body_max_bytes: usize,
    pub client_msg_id_max_bytes: usize,
    pub attachments_max_count: usize,
    pub attachment_max_bytes: usize,
    pub title_max_chars: usize,
    pub display_name_max_chars: usize,
    pub device_name_max_chars: usize,
    pub members_per_request_max: usize,
    pub members_per_conversation_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_max_bytes: 16 * 1024,
            client_msg_id_max_bytes: 128,
            attachments_max_count: 10,
            attachment_max_bytes: 4 * 1024,
            title_max_chars: 256,
            display_name_max_chars: 64,
            device_name_max_chars: 64,
            members_per_request_max: 1_000,
            members_per_conversation_max: 100_000,
        }
    }
}
