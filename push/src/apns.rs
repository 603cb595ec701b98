//! APNs over HTTP/2 with token authentication.
//!
//! `POST {base_url}/3/device/{token}` with `authorization: bearer <JWT>`
//! (ES256, header `kid`, claims `iss` = team id and `iat`), `apns-topic`,
//! `apns-push-type` (`alert`, or `background` for a silent push, which must
//! have priority 5), `apns-priority`, `apns-expiration` (epoch seconds),
//! `apns-collapse-id` (at most 64 bytes) and the JSON payload (`aps` and
//! our data). 200 with an empty body is success; otherwise the body is
//! `{"reason": ...}`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::{http2_client, now_secs, retry_after, ErrorKind, Notification, PushError};

pub const DEFAULT_BASE_URL: &str = "https://api.push.apple.com";
/// Apple refuses tokens older than an hour and new ones more often than every 20 minutes.
const TOKEN_REFRESH_SECS: u64 = 50 * 60;
const COLLAPSE_ID_MAX_BYTES: usize = 64;
pub const PAYLOAD_MAX_BYTES: usize = 4096;

#[derive(Debug, Clone)]
pub struct ApnsConfig {
    pub base_url: String,
    pub team_id: String,
    pub key_id: String,
    /// The `.p8` key (PKCS#8 PEM) from Apple.
    pub key_pem: Vec<u8>,
    /// The app's bundle id.
    pub topic: String,
    pub timeout: Duration,
}

pub struct ApnsClient {
    config: ApnsConfig,
    key: EncodingKey,
    client: reqwest::Client,
    /// The provider token and when it was made (seconds).
    token: Mutex<Option<(String, u64)>>,
}

impl std::fmt::Debug for ApnsClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ApnsClient").field("base_url", &self.config.base_url).field("topic", &self.config.topic).finish_non_exhaustive()
    }
}

impl ApnsClient {
    pub fn new(config: ApnsConfig) -> Result<ApnsClient, String> {
        let key = EncodingKey::from_ec_pem(&config.key_pem).map_err(|error| format!("the APNs key is not a PKCS#8 P-256 key in PEM: {error}"))?;
        let client = http2_client(&config.base_url, config.timeout).map_err(|error| error.to_string())?;
        Ok(ApnsClient { config, key, client, token: Mutex::new(None) })
    }

    /// The provider token, made again when it is 50 minutes old.
    fn provider_token(&self) -> Result<String, PushError> {
        let now = now_secs();
        let mut token = self.token.lock();
        if let Some((jwt, issued)) = token.as_ref() {
            if now < issued + TOKEN_REFRESH_SECS {
                return Ok(jwt.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.config.key_id.clone());
        let claims = json!({"iss": self.config.team_id, "iat": now});
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|error| PushError {
            provider: "apns",
            kind: ErrorKind::Permanent,
            status: 0,
            reason: format!("cannot sign the provider token: {error}"),
            retry_after: None,
        })?;
        *token = Some((jwt.clone(), now));
        Ok(jwt)
    }

    /// The JSON body of a notification.
    pub fn payload(notification: &Notification) -> Value {
        let mut aps = serde_json::Map::new();
        match &notification.alert {
            Some(alert) => {
                let mut body = json!({"body": alert.body});
                if let Some(title) = &alert.title {
                    body["title"] = json!(title);
                }
                aps.insert("alert".into(), body);
                aps.insert("sound".into(), json!("default"));
                aps.insert("thread-id".into(), json!(notification.collapse_key));
            }
            None => {
                aps.insert("content-available".into(), json!(1));
            }
        }
        if let Some(badge) = notification.badge {
            aps.insert("badge".into(), json!(badge));
        }
        let mut payload = serde_json::Map::new();
        payload.insert("aps".into(), Value::Object(aps));
        for (key, value) in &notification.data {
            payload.insert(key.clone(), value.clone());
        }
        Value::Object(payload)
    }

    pub async fn send(&self, notification: &Notification, apns_id: Option<&str>) -> Result<(), PushError> {
        let jwt = self.provider_token()?;
        let url = format!("{}/3/device/{}", self.config.base_url.trim_end_matches('/'), notification.token);
        let silent = notification.alert.is_none();
        let mut collapse_id = notification.collapse_key.clone();
        while collapse_id.len() > COLLAPSE_ID_MAX_BYTES {
            collapse_id.pop();
        }
        let body = serde_json::to_vec(&ApnsClient::payload(notification)).expect("a payload serializes");
        if body.len() > PAYLOAD_MAX_BYTES {
            return Err(PushError { provider: "apns", kind: ErrorKind::Permanent, status: 0, reason: "PayloadTooLarge".into(), retry_after: None });
        }
        let mut request = self
            .client
            .post(url)
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.config.topic)
            .header("apns-push-type", if silent { "background" } else { "alert" })
            .header("apns-priority", if silent { "5" } else { "10" })
            .header("apns-expiration", (now_secs() + notification.ttl_secs).to_string())
            .header("apns-collapse-id", collapse_id)
            .header("content-type", "application/json")
            .body(body);
        if let Some(apns_id) = apns_id {
            request = request.header("apns-id", apns_id);
        }
        let response = request.send().await.map_err(|error| PushError::transport("apns", &error))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let retry_after = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let reason =
            serde_json::from_str::<Value>(&text).ok().and_then(|body| body["reason"].as_str().map(String::from)).unwrap_or_else(|| format!("http {status}"));
        if reason == "ExpiredProviderToken" {
            *self.token.lock() = None;
        }
        let kind = match (status, reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => ErrorKind::Unregistered,
            (429 | 500 | 503, _) | (403, "ExpiredProviderToken") => ErrorKind::Retryable,
            _ => ErrorKind::Permanent,
        };
        Err(PushError { provider: "apns", kind, status, reason, retry_after })
    }
}
