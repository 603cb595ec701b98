//! FCM HTTP v1 with a service account.
//!
//! The access token: a JWT (RS256, `iss` = the account's `client_email`,
//! `scope` = firebase.messaging, `aud` = its `token_uri`, an hour long)
//! posted to `token_uri` as `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`;
//! the answer's `access_token` is kept until a minute before `expires_in`.
//! The push: `POST {base_url}/v1/projects/{project}/messages:send` with
//! `{"message": {token, data, notification, android: {collapse_key,
//! priority, ttl}, apns: {headers, payload}}}`. Errors are google.rpc
//! `{"error": {code, status, details: [{errorCode}]}}`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{http2_client, now_secs, retry_after, ErrorKind, Notification, PushError};

pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The fields of a service-account file that are used.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
    #[serde(default)]
    pub project_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FcmConfig {
    pub base_url: String,
    pub project_id: String,
    pub account: ServiceAccount,
    pub timeout: Duration,
}

pub struct FcmClient {
    config: FcmConfig,
    key: EncodingKey,
    client: reqwest::Client,
    /// Token requests go to `token_uri`, which may be HTTP/1 only.
    token_client: reqwest::Client,
    access: tokio::sync::Mutex<Option<(String, u64)>>,
    refreshes: Mutex<u64>,
}

impl std::fmt::Debug for FcmClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("FcmClient").field("base_url", &self.config.base_url).field("project_id", &self.config.project_id).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

fn error(kind: ErrorKind, status: u16, reason: impl Into<String>) -> PushError {
    PushError { provider: "fcm", kind, status, reason: reason.into(), retry_after: None }
}

impl FcmClient {
    pub fn new(config: FcmConfig) -> Result<FcmClient, String> {
        let key = EncodingKey::from_rsa_pem(config.account.private_key.as_bytes())
            .map_err(|error| format!("the service account's private_key is not an RSA key in PEM: {error}"))?;
        let client = http2_client(&config.base_url, config.timeout).map_err(|error| error.to_string())?;
        let token_client = reqwest::Client::builder().timeout(config.timeout).build().map_err(|error| error.to_string())?;
        Ok(FcmClient { config, key, client, token_client, access: tokio::sync::Mutex::new(None), refreshes: Mutex::new(0) })
    }

    /// How many access tokens were fetched (for tests and metrics).
    pub fn token_refreshes(&self) -> u64 {
        *self.refreshes.lock()
    }

    async fn access_token(&self) -> Result<String, PushError> {
        let mut access = self.access.lock().await;
        let now = now_secs();
        if let Some((token, expires)) = access.as_ref() {
            if now + 60 < *expires {
                return Ok(token.clone());
            }
        }
        let account = &self.config.account;
        let claims = json!({"iss": account.client_email, "scope": SCOPE, "aud": account.token_uri, "iat": now, "exp": now + 3600});
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|failure| error(ErrorKind::Permanent, 0, format!("cannot sign the token request: {failure}")))?;
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())];
        let body = form.iter().map(|(key, value)| format!("{key}={}", form_escape(value))).collect::<Vec<_>>().join("&");
        let response = self
            .token_client
            .post(&account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|failure| PushError::transport("fcm", &failure))?;
        let status = response.status().as_u16();
        if status != 200 {
            let kind = if status >= 500 || status == 429 { ErrorKind::Retryable } else { ErrorKind::Permanent };
            return Err(error(kind, status, format!("token_uri answered {status}")));
        }
        let answer: TokenAnswer = response.json().await.map_err(|failure| error(ErrorKind::Retryable, status, format!("token answer: {failure}")))?;
        *self.refreshes.lock() += 1;
        *access = Some((answer.access_token.clone(), now + answer.expires_in));
        Ok(answer.access_token)
    }

    /// The `message` of a send.
    pub fn message(notification: &Notification) -> Value {
        let data: serde_json::Map<String, Value> =
            notification.data.iter().map(|(key, value)| (key.clone(), Value::String(value.as_str().map_or_else(|| value.to_string(), String::from)))).collect();
        let mut message = json!({
            "token": notification.token,
            "data": data,
            "android": {"collapse_key": notification.collapse_key, "priority": if notification.alert.is_some() { "high" } else { "normal" }, "ttl": format!("{}s", notification.ttl_secs)},
        });
        let mut aps = json!({});
        if let Some(alert) = &notification.alert {
            let mut shown = json!({"body": alert.body});
            if let Some(title) = &alert.title {
                shown["title"] = json!(title);
            }
            message["notification"] = shown.clone();
            aps["alert"] = shown;
        } else {
            aps["content-available"] = json!(1);
        }
        if let Some(badge) = notification.badge {
            aps["badge"] = json!(badge);
        }
        let push_type = if notification.alert.is_some() { "alert" } else { "background" };
        let priority = if notification.alert.is_some() { "10" } else { "5" };
        message["apns"] = json!({
            "headers": {"apns-collapse-id": notification.collapse_key, "apns-push-type": push_type, "apns-priority": priority},
            "payload": {"aps": aps},
        });
        message
    }

    pub async fn send(&self, notification: &Notification) -> Result<(), PushError> {
        let token = self.access_token().await?;
        let url = format!("{}/v1/projects/{}/messages:send", self.config.base_url.trim_end_matches('/'), self.config.project_id);
        let body = json!({"message": FcmClient::message(notification)});
        let response = self.client.post(url).bearer_auth(token).json(&body).send().await.map_err(|failure| PushError::transport("fcm", &failure))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let retry_after = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let error_code = body["error"]["details"]
            .as_array()
            .and_then(|details| details.iter().find_map(|detail| detail["errorCode"].as_str()))
            .or_else(|| body["error"]["status"].as_str())
            .map(String::from)
            .unwrap_or_else(|| format!("http {status}"));
        if status == 401 {
            *self.access.lock().await = None;
        }
        let kind = match (status, error_code.as_str()) {
            (404, _) | (_, "UNREGISTERED") => ErrorKind::Unregistered,
            (400, "INVALID_ARGUMENT") if text.contains("registration token") => ErrorKind::Unregistered,
            (401 | 429 | 500 | 503, _) => ErrorKind::Retryable,
            _ => ErrorKind::Permanent,
        };
        // FCM asks for at least a minute after a quota error.
        let retry_after = match (kind, error_code.as_str()) {
            (ErrorKind::Retryable, "QUOTA_EXCEEDED") => Some(retry_after.unwrap_or_default().max(Duration::from_secs(60))),
            _ => retry_after,
        };
        Err(PushError { provider: "fcm", kind, status, reason: error_code, retry_after })
    }
}

/// `application/x-www-form-urlencoded` escaping.
fn form_escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => escaped.push(byte as char),
            _ => escaped.push_str(&format!("%{byte:02X}")),
        }
    }
    escaped
}
