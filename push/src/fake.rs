//! Local servers that speak APNs and FCM v1 exactly enough for tests and
//! benchmarks: they check authentication as the services do, record each
//! request, and fail on demand.
//!
//! Failures are chosen by the device token's prefix, so one server serves
//! a whole test:
//!
//! | token starts with | APNs | FCM |
//! | --- | --- | --- |
//! | `unreg-` | 410 `Unregistered` (+ `timestamp`) | 404 `UNREGISTERED` |
//! | `bad-` | 400 `BadDeviceToken` | 400 `INVALID_ARGUMENT` (not a valid registration token) |
//! | `busy{n}-` | the first n: 429 `TooManyRequests`, `Retry-After: 1` | 429 `QUOTA_EXCEEDED`, `Retry-After: 1` |
//! | `down{n}-` | the first n: 503 `ServiceUnavailable`, `Retry-After: 1` | 503 `UNAVAILABLE`, `Retry-After: 1` |
//! | `err{n}-` | the first n: 500 `InternalServerError` | 500 `INTERNAL` |
//! | `slow{ms}-` | answers 200 after ms | the same |
//!
//! Anything else is accepted. Both listen on loopback and speak HTTP/2
//! without TLS (h2c, which the clients use for `http://` base URLs) and
//! HTTP/1.1 (the FCM token endpoint).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::now_secs;

/// One request a fake server answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub status: u16,
    /// When it arrived (ms since 1970).
    pub at_ms: i64,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    /// Answers so far per device token (for `busy{n}-` and friends).
    seen: Mutex<HashMap<String, u32>>,
    /// Access tokens the FCM fake issued.
    issued: Mutex<Vec<String>>,
    /// Provider tokens already verified (APNs checks a token once, not per push).
    verified: Mutex<std::collections::HashSet<String>>,
}

/// A running fake; stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("FakeServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request answered so far (token requests included).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().clone()
    }

    /// Pushes answered 200.
    pub fn delivered(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|request| request.status == 200 && !request.path.ends_with("/token")).collect()
    }
}

/// Keys and credentials for the fakes, made with `openssl`.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The APNs `.p8` key (PKCS#8 EC P-256 PEM) and its public half.
    pub apns_key: PathBuf,
    pub apns_public_pem: Vec<u8>,
    /// An RSA key for the FCM service account, and its public half.
    pub fcm_private_pem: String,
    pub fcm_public_pem: Vec<u8>,
}

fn openssl(args: &[&str]) -> Result<Vec<u8>, String> {
    let output = std::process::Command::new("openssl").args(args).output().map_err(|error| format!("cannot run openssl: {error}"))?;
    if !output.status.success() {
        return Err(format!("openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(output.stdout)
}

/// Makes a P-256 key for APNs and an RSA key for FCM in `dir`.
pub fn generate_keys(dir: &Path) -> Result<Keys, String> {
    let apns_key = dir.join("apns-key.p8");
    let fcm_key = dir.join("fcm-key.pem");
    let path = |path: &Path| path.display().to_string();
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &path(&apns_key)])?;
    let apns_public_pem = openssl(&["pkey", "-in", &path(&apns_key), "-pubout"])?;
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &path(&fcm_key)])?;
    let fcm_public_pem = openssl(&["pkey", "-in", &path(&fcm_key), "-pubout"])?;
    let fcm_private_pem = std::fs::read_to_string(&fcm_key).map_err(|error| error.to_string())?;
    Ok(Keys { apns_key, apns_public_pem, fcm_private_pem, fcm_public_pem })
}

/// Writes a service-account file whose `token_uri` is the FCM fake's.
pub fn write_service_account(path: &Path, keys: &Keys, fcm: &FakeServer, project_id: &str) -> std::io::Result<()> {
    let account = json!({
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "fake",
        "private_key": keys.fcm_private_pem,
        "client_email": FCM_CLIENT_EMAIL,
        "token_uri": format!("{}/token", fcm.base_url()),
    });
    std::fs::write(path, serde_json::to_vec_pretty(&account).expect("json"))
}

pub const FCM_CLIENT_EMAIL: &str = "confab-test@fake.iam.gserviceaccount.com";

/// What the APNs fake accepts.
#[derive(Debug, Clone)]
pub struct ApnsExpect {
    pub team_id: String,
    pub key_id: String,
    pub topic: String,
    pub public_pem: Vec<u8>,
}

/// What the FCM fake accepts.
#[derive(Debug, Clone)]
pub struct FcmExpect {
    pub project_id: String,
    pub public_pem: Vec<u8>,
}

#[derive(Clone)]
enum Protocol {
    Apns(Arc<ApnsExpect>, Arc<DecodingKey>),
    Fcm(Arc<FcmExpect>, Arc<DecodingKey>),
}

pub async fn start_apns(expect: ApnsExpect) -> std::io::Result<FakeServer> {
    let key = DecodingKey::from_ec_pem(&expect.public_pem).map_err(std::io::Error::other)?;
    start(Protocol::Apns(Arc::new(expect), Arc::new(key))).await
}

pub async fn start_fcm(expect: FcmExpect) -> std::io::Result<FakeServer> {
    let key = DecodingKey::from_rsa_pem(&expect.public_pem).map_err(std::io::Error::other)?;
    start(Protocol::Fcm(Arc::new(expect), Arc::new(key))).await
}

async fn start(protocol: Protocol) -> std::io::Result<FakeServer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::default());
    let state = shared.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (protocol, shared) = (protocol.clone(), state.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let (protocol, shared) = (protocol.clone(), shared.clone());
                    async move { Ok::<_, Infallible>(answer(&protocol, &shared, request).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(FakeServer { addr, shared, task })
}

fn respond(status: u16, headers: &[(&str, String)], body: Value) -> Response<Full<Bytes>> {
    let bytes = if body.is_null() { Bytes::new() } else { Bytes::from(body.to_string()) };
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    if !bytes.is_empty() {
        response = response.header("content-type", "application/json");
    }
    response.body(Full::new(bytes)).expect("a response builds")
}

/// The failure a token asks for on this answer, if any: `(kind, count or ms)`.
fn injected(token: &str, seen: u32) -> Option<(&'static str, u64)> {
    for kind in ["unreg", "bad"] {
        if token.starts_with(&format!("{kind}-")) {
            return Some((kind, 0));
        }
    }
    for kind in ["busy", "down", "err", "slow"] {
        if let Some(rest) = token.strip_prefix(kind) {
            let (number, _) = rest.split_once('-')?;
            let number: u64 = number.parse().ok()?;
            return match kind {
                "slow" => Some(("slow", number)),
                _ if (seen as u64) < number => Some((kind, number)),
                _ => None,
            };
        }
    }
    None
}

async fn answer(protocol: &Protocol, shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let headers: HashMap<String, String> =
        request.headers().iter().map(|(name, value)| (name.as_str().to_string(), value.to_str().unwrap_or("").to_string())).collect();
    let is_post = request.method() == hyper::Method::POST;
    let bytes = request.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
    let (status, response) = match protocol {
        Protocol::Apns(expect, key) => apns(expect, key, shared, is_post, &path, &headers, &bytes).await,
        Protocol::Fcm(expect, key) => fcm(expect, key, shared, is_post, &path, &headers, &bytes).await,
    };
    let recorded_body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as i64).unwrap_or(0);
    shared.requests.lock().push(Recorded { path, headers, body: recorded_body, status, at_ms });
    response
}

type Answer = (u16, Response<Full<Bytes>>);

fn done(status: u16, headers: &[(&str, String)], body: Value) -> Answer {
    (status, respond(status, headers, body))
}

async fn apns(expect: &ApnsExpect, key: &DecodingKey, shared: &Shared, is_post: bool, path: &str, headers: &HashMap<String, String>, body: &[u8]) -> Answer {
    let reason = |status: u16, reason: &str| done(status, &[], json!({"reason": reason}));
    if !is_post {
        return reason(405, "MethodNotAllowed");
    }
    let Some(token) = path.strip_prefix("/3/device/") else { return reason(404, "BadPath") };
    if token.is_empty() {
        return reason(400, "MissingDeviceToken");
    }
    let Some(jwt) = headers.get("authorization").and_then(|value| value.strip_prefix("bearer ")) else { return reason(403, "MissingProviderToken") };
    if !shared.verified.lock().contains(jwt) {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let Ok(decoded) = jsonwebtoken::decode::<Value>(jwt, key, &validation) else { return reason(403, "InvalidProviderToken") };
        if decoded.header.kid.as_deref() != Some(expect.key_id.as_str()) || decoded.claims["iss"] != expect.team_id {
            return reason(403, "InvalidProviderToken");
        }
        let issued = decoded.claims["iat"].as_i64().unwrap_or(0);
        if issued + 3600 < now_secs() as i64 {
            return reason(403, "ExpiredProviderToken");
        }
        shared.verified.lock().insert(jwt.to_string());
    }
    match headers.get("apns-topic") {
        None => return reason(400, "MissingTopic"),
        Some(topic) if *topic != expect.topic => return reason(400, "DeviceTokenNotForTopic"),
        Some(_) => {}
    }
    let push_type = headers.get("apns-push-type").map(String::as_str).unwrap_or("");
    if !matches!(push_type, "alert" | "background" | "voip" | "complication" | "fileprovider" | "mdm" | "liveactivity" | "location" | "pushtotalk") {
        return reason(400, "InvalidPushType");
    }
    match headers.get("apns-priority").map(String::as_str) {
        None | Some("10" | "5" | "1") => {}
        Some(_) => return reason(400, "BadPriority"),
    }
    if push_type == "background" && headers.get("apns-priority").map(String::as_str) == Some("10") {
        return reason(400, "BadPriority");
    }
    if headers.get("apns-collapse-id").is_some_and(|id| id.len() > 64) {
        return reason(400, "BadCollapseId");
    }
    if headers.get("apns-expiration").is_some_and(|value| value.parse::<u64>().is_err()) {
        return reason(400, "BadExpirationDate");
    }
    if body.is_empty() {
        return reason(400, "PayloadEmpty");
    }
    if body.len() > 4096 {
        return reason(413, "PayloadTooLarge");
    }
    if serde_json::from_slice::<Value>(body).map(|payload| payload.get("aps").is_none()).unwrap_or(true) {
        return reason(400, "BadPayload");
    }
    let seen = {
        let mut seen = shared.seen.lock();
        let count = seen.entry(token.to_string()).or_default();
        *count += 1;
        *count - 1
    };
    let apns_id = headers.get("apns-id").cloned().unwrap_or_else(|| format!("{:032x}", seen as u128 + 1));
    let after = [("retry-after", "1".to_string()), ("apns-id", apns_id.clone())];
    match injected(token, seen) {
        Some(("unreg", _)) => done(410, &[("apns-id", apns_id)], json!({"reason": "Unregistered", "timestamp": now_secs() * 1000})),
        Some(("bad", _)) => reason(400, "BadDeviceToken"),
        Some(("busy", _)) => done(429, &after, json!({"reason": "TooManyRequests"})),
        Some(("down", _)) => done(503, &after, json!({"reason": "ServiceUnavailable"})),
        Some(("err", _)) => done(500, &[("apns-id", apns_id)], json!({"reason": "InternalServerError"})),
        Some(("slow", ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            done(200, &[("apns-id", apns_id)], Value::Null)
        }
        _ => done(200, &[("apns-id", apns_id)], Value::Null),
    }
}

fn fcm_error(status: u16, code: &str, error_code: Option<&str>, message: &str, headers: &[(&str, String)]) -> Answer {
    let mut error = json!({"code": status, "message": message, "status": code});
    if let Some(error_code) = error_code {
        error["details"] = json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]);
    }
    done(status, headers, json!({"error": error}))
}

async fn fcm(expect: &FcmExpect, key: &DecodingKey, shared: &Shared, is_post: bool, path: &str, headers: &HashMap<String, String>, body: &[u8]) -> Answer {
    if path == "/token" {
        let form = String::from_utf8_lossy(body).to_string();
        let field =
            |name: &str| form.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}="))).map(|value| value.replace("%2E", ".").replace("%2D", "-"));
        if field("grant_type").as_deref() != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
            return done(400, &[], json!({"error": "unsupported_grant_type"}));
        }
        let Some(assertion) = field("assertion") else { return done(400, &[], json!({"error": "invalid_request"})) };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.validate_aud = false;
        let Ok(decoded) = jsonwebtoken::decode::<Value>(&assertion, key, &validation) else {
            return done(400, &[], json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}));
        };
        let audience_ok = decoded.claims["aud"].as_str().is_some_and(|aud| aud.ends_with("/token"));
        if decoded.claims["iss"] != FCM_CLIENT_EMAIL || !audience_ok || decoded.claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging" {
            return done(400, &[], json!({"error": "invalid_grant", "error_description": "Invalid JWT: wrong iss, aud or scope"}));
        }
        let token = format!("ya29.fake-{}", shared.issued.lock().len() + 1);
        shared.issued.lock().push(token.clone());
        return done(200, &[], json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}));
    }
    if !is_post || path != format!("/v1/projects/{}/messages:send", expect.project_id) {
        return fcm_error(404, "NOT_FOUND", None, "Requested entity was not found.", &[]);
    }
    let bearer = headers.get("authorization").and_then(|value| value.strip_prefix("Bearer "));
    if !bearer.is_some_and(|token| shared.issued.lock().iter().any(|issued| issued == token)) {
        return fcm_error(401, "UNAUTHENTICATED", None, "Request had invalid authentication credentials.", &[]);
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), "Invalid JSON payload received.", &[]);
    };
    let message = &request["message"];
    let Some(token) = message["token"].as_str() else {
        return fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), "Recipient of the message is not set.", &[]);
    };
    if message["data"].as_object().is_some_and(|data| data.values().any(|value| !value.is_string())) {
        return fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), "Invalid value at 'message.data': data values must be strings", &[]);
    }
    if body.len() > 4096 + 1024 {
        return fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), "Message is too big", &[]);
    }
    let seen = {
        let mut seen = shared.seen.lock();
        let count = seen.entry(token.to_string()).or_default();
        *count += 1;
        *count - 1
    };
    let retry = [("retry-after", "1".to_string())];
    match injected(token, seen) {
        Some(("unreg", _)) => fcm_error(404, "NOT_FOUND", Some("UNREGISTERED"), "Requested entity was not found.", &[]),
        Some(("bad", _)) => fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), "The registration token is not a valid FCM registration token", &[]),
        Some(("busy", _)) => fcm_error(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), "Quota exceeded.", &retry),
        Some(("down", _)) => fcm_error(503, "UNAVAILABLE", Some("UNAVAILABLE"), "The service is currently unavailable.", &retry),
        Some(("err", _)) => fcm_error(500, "INTERNAL", Some("INTERNAL"), "Internal error encountered.", &[]),
        Some(("slow", ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            done(200, &[], json!({"name": format!("projects/{}/messages/0:{seen}", expect.project_id)}))
        }
        _ => done(200, &[], json!({"name": format!("projects/{}/messages/0:{seen}", expect.project_id)})),
    }
}
