//! Password checks, shared by `POST /v1/sessions` and the PostgreSQL
//! protocol's login, with the login limits both doors keep.
//!
//! One attempt, in order:
//!
//! 1. **Per address**: every attempt from an IP takes a token
//!    (`login_per_ip`), so one address cannot guess fast at anything.
//! 2. **The username's shape**: a name that could not be an account is a
//!    wrong login, and keys no limit (so junk cannot fill the limiter).
//! 3. **Per account and address**: if this address has used up its wrong
//!    passwords for this account (`login_failures_per_account_and_ip`),
//!    the attempt is refused before the hash is checked. Failures are
//!    counted per address so that a stranger's guesses never lock the
//!    owner out: the right password from the owner's address still works.
//! 4. The argon2 check (on a blocking thread; an unknown user costs the
//!    same as a known one). A wrong password takes a failure token.

use std::net::IpAddr;
use std::sync::Arc;

use confab_ingest::User;

use crate::error::{ApiError, ApiResult};
use crate::rate_limit::Limit;
use crate::AppState;

/// What one login attempt came to.
#[derive(Debug)]
pub enum LoginCheck {
    Valid(Arc<User>),
    Wrong,
    /// Too many attempts; try again in this many seconds.
    Limited(u64),
}

/// Whether a username has the shape of an account's (3 to 32 of a-z 0-9 _ . -).
pub fn is_username(username: &str) -> bool {
    (3..=32).contains(&username.len()) && username.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'.' | b'-'))
}

fn ip_key(ip: Option<IpAddr>) -> String {
    ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
}

/// Checks a password within the login limits (see the module's notes).
pub async fn check_password(state: &AppState, username: &str, password: &str, ip: Option<IpAddr>) -> ApiResult<LoginCheck> {
    let address = ip_key(ip);
    if let Err(retry_after) = state.rate_limiter.check(Limit::LoginPerIp, &address) {
        return Ok(LoginCheck::Limited(retry_after));
    }
    if !is_username(username) {
        return Ok(LoginCheck::Wrong);
    }
    let failures_key = format!("{username} {address}");
    if let Err(retry_after) = state.rate_limiter.peek(Limit::LoginFailuresPerAccountAndIp, &failures_key) {
        return Ok(LoginCheck::Limited(retry_after));
    }
    let user = state.ingest.user_by_username(username)?;
    let stored = user.as_ref().map(|user| user.password_hash.clone());
    let (passwords, password) = (state.passwords.clone(), password.to_string());
    let verified = tokio::task::spawn_blocking(move || passwords.verify(&password, stored.as_deref()))
        .await
        .map_err(|error| ApiError::internal("checking a password", error))?;
    match (verified, user) {
        (true, Some(user)) => Ok(LoginCheck::Valid(user)),
        _ => {
            let _ = state.rate_limiter.check(Limit::LoginFailuresPerAccountAndIp, &failures_key);
            Ok(LoginCheck::Wrong)
        }
    }
}
