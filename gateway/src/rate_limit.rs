//! Token-bucket rate limits per account and per IP address.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// One limit: `per_second` sustained, bursts up to `burst`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// Every limit of the gateway; `enabled = false` switches them all off
/// (for benchmarks), a missing one keeps its default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub signup_per_ip: Option<Rate>,
    pub login_per_ip: Option<Rate>,
    /// Wrong passwords for one account from one address. Counted per
    /// address so that a stranger's guesses never lock the owner out (the
    /// right password from another address is never refused for them).
    #[serde(alias = "login_per_account")]
    pub login_failures_per_account_and_ip: Option<Rate>,
    pub send_per_account: Option<Rate>,
    pub send_per_ip: Option<Rate>,
}

impl Default for RateLimitConfig {
    /// Enough for a busy person typing on several devices; a script sending
    /// in a loop is stopped within a second or two.
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            signup_per_ip: Some(Rate { per_second: 0.1, burst: 10 }),
            login_per_ip: Some(Rate { per_second: 1.0, burst: 20 }),
            login_failures_per_account_and_ip: Some(Rate { per_second: 0.2, burst: 10 }),
            send_per_account: Some(Rate { per_second: 10.0, burst: 50 }),
            send_per_ip: Some(Rate { per_second: 200.0, burst: 1_000 }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    SignupPerIp,
    LoginPerIp,
    LoginFailuresPerAccountAndIp,
    SendPerAccount,
    SendPerIp,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets idle this long are full again and are forgotten.
const IDLE_FORGET_AFTER: Duration = Duration::from_secs(600);

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: DashMap<(Limit, String), Bucket>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        RateLimiter { config, buckets: DashMap::new() }
    }

    fn rate(&self, limit: Limit) -> Option<Rate> {
        if !self.config.enabled {
            return None;
        }
        match limit {
            Limit::SignupPerIp => self.config.signup_per_ip,
            Limit::LoginPerIp => self.config.login_per_ip,
            Limit::LoginFailuresPerAccountAndIp => self.config.login_failures_per_account_and_ip,
            Limit::SendPerAccount => self.config.send_per_account,
            Limit::SendPerIp => self.config.send_per_ip,
        }
    }

    /// Takes one token, or says how many seconds until one is free.
    pub fn check(&self, limit: Limit, key: &str) -> Result<(), u64> {
        self.check_at(limit, key, Instant::now())
    }

    pub fn check_at(&self, limit: Limit, key: &str, now: Instant) -> Result<(), u64> {
        self.bucket_at(limit, key, now, true)
    }

    /// Whether a token is free, without taking it (for limits that count
    /// only failures: look before, take after a failure).
    pub fn peek(&self, limit: Limit, key: &str) -> Result<(), u64> {
        self.bucket_at(limit, key, Instant::now(), false)
    }

    fn bucket_at(&self, limit: Limit, key: &str, now: Instant, take: bool) -> Result<(), u64> {
        let Some(rate) = self.rate(limit) else { return Ok(()) };
        let mut bucket = self.buckets.entry((limit, key.to_string())).or_insert(Bucket { tokens: rate.burst as f64, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst as f64);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / rate.per_second.max(f64::MIN_POSITIVE);
        Err(wait.ceil().max(1.0) as u64)
    }

    /// Forgets idle buckets so that memory stays bounded.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        self.buckets.retain(|_, bucket| now.saturating_duration_since(bucket.updated) < IDLE_FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let limiter = RateLimiter::new(RateLimitConfig { send_per_account: Some(Rate { per_second: 2.0, burst: 3 }), ..RateLimitConfig::default() });
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at(Limit::SendPerAccount, "u", start), Ok(()));
        }
        assert_eq!(limiter.check_at(Limit::SendPerAccount, "u", start), Err(1));
        assert_eq!(limiter.check_at(Limit::SendPerAccount, "other", start), Ok(()));
        assert_eq!(limiter.check_at(Limit::SendPerAccount, "u", start + Duration::from_millis(500)), Ok(()));
    }
}
