//! Authentication: argon2id password hashes, HS256 JWT access tokens, and
//! the extractor that turns a bearer token into a [`Caller`].

use std::net::{IpAddr, SocketAddr};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use confab_ingest::Caller;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ApiError;
use crate::AppState;

/// The cost of argon2id password hashes. The defaults are OWASP's
/// recommendation; lower them only for benchmarks that create many accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordHashConfig {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for PasswordHashConfig {
    fn default() -> Self {
        PasswordHashConfig { memory_kib: 19 * 1024, iterations: 2 }
    }
}

/// Hashes and checks passwords. Slow on purpose: call from `spawn_blocking`.
pub struct Passwords {
    argon2: Argon2<'static>,
    /// A hash checked when the user is unknown, so that unknown usernames
    /// cannot be told apart by timing.
    dummy: String,
}

impl Passwords {
    pub fn new(config: &PasswordHashConfig) -> Passwords {
        let params = argon2::Params::new(config.memory_kib.max(8), config.iterations.max(1), 1, None).unwrap_or_default();
        let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut passwords = Passwords { argon2, dummy: String::new() };
        passwords.dummy = passwords.hash("not a real password").expect("hashing works");
        passwords
    }

    pub fn hash(&self, password: &str) -> Result<String, argon2::password_hash::Error> {
        let mut salt_bytes = [0u8; 16];
        getrandom::getrandom(&mut salt_bytes).map_err(|_| argon2::password_hash::Error::Crypto)?;
        let salt = SaltString::encode_b64(&salt_bytes)?;
        Ok(self.argon2.hash_password(password.as_bytes(), &salt)?.to_string())
    }

    /// Checks a password against a stored hash (its own parameters apply).
    pub fn verify(&self, password: &str, stored_hash: Option<&str>) -> bool {
        let hash_text = stored_hash.unwrap_or(&self.dummy);
        let Ok(hash) = PasswordHash::new(hash_text) else { return false };
        let matches = self.argon2.verify_password(password.as_bytes(), &hash).is_ok();
        matches && stored_hash.is_some()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    did: String,
    iat: u64,
    exp: u64,
}

/// The signing key and lifetime of access tokens.
pub struct TokenKeys {
    secret: Vec<u8>,
    ttl_secs: u64,
    header: String,
}

impl TokenKeys {
    pub fn new(secret: Vec<u8>, ttl_secs: u64) -> TokenKeys {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        TokenKeys { secret, ttl_secs, header }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    pub fn issue(&self, user_id: &str, device_id: &str) -> String {
        let now = unix_now();
        let claims = Claims { sub: user_id.to_string(), did: device_id.to_string(), iat: now, exp: now + self.ttl_secs };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signing_input = format!("{}.{payload}", self.header);
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&signing_input).finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// The (user, device) of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<(String, String), &'static str> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("the access token is malformed");
        };
        if header != self.header {
            return Err("the access token is malformed");
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| "the access token is malformed")?;
        self.mac(&token[..header.len() + 1 + payload.len()]).verify_slice(&signature).map_err(|_| "the access token is invalid; log in again")?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| "the access token is malformed")?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| "the access token is malformed")?;
        if claims.exp <= unix_now() {
            return Err("the access token has expired; log in again");
        }
        Ok((claims.sub, claims.did))
    }

    /// When a token (already verified) expires, in seconds since the epoch.
    pub fn expires_at(&self, token: &str) -> Option<u64> {
        let payload = token.split('.').nth(1)?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        Some(claims.exp)
    }

    fn mac(&self, input: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("hmac takes any key length");
        mac.update(input.as_bytes());
        mac
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// The bearer token of a request, if it has one.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// An authenticated request: the token is valid and its device exists.
pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token =
            bearer_token(parts).ok_or_else(|| ApiError::unauthenticated("send `Authorization: Bearer <accessToken>`; get a token from POST /v1/sessions"))?;
        authenticate(state, token).map(Authenticated)
    }
}

pub fn authenticate(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let (user_id, device_id) = state.tokens.verify(token).map_err(ApiError::unauthenticated)?;
    let device_matches = state.ingest.device(&device_id)?.is_some_and(|device| device.user_id == user_id);
    if !device_matches {
        return Err(ApiError::unauthenticated("the access token's device is unknown or logged out; log in again"));
    }
    // Refreshed at most once a minute per device: a read lock on the hot path.
    let now = confab_schemas::ids::now_ms();
    if state.device_seen.get(&device_id).is_none_or(|seen| now - *seen > 60_000) {
        state.device_seen.insert(device_id.clone(), now);
    }
    Ok(Caller { user_id, device_id })
}

/// The client's address, for per-IP rate limits.
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
        let forwarded = crate::client_ip::forwarded_for(&parts.headers);
        Ok(ClientIp(crate::client_ip::client_address(peer, forwarded.as_deref(), &state.trusted_proxies)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_tampering_is_refused() {
        let keys = TokenKeys::new(b"secret".to_vec(), 60);
        let token = keys.issue("u_1", "d_1");
        assert_eq!(keys.verify(&token), Ok(("u_1".to_string(), "d_1".to_string())));
        let other = TokenKeys::new(b"other".to_vec(), 60);
        assert_eq!(other.verify(&token), Err("the access token is invalid; log in again"));
        assert_eq!(keys.verify("a.b"), Err("the access token is malformed"));
        let expired = TokenKeys::new(b"secret".to_vec(), 0).issue("u_1", "d_1");
        assert_eq!(keys.verify(&expired), Err("the access token has expired; log in again"));
    }
}
