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
    /// Edits, deletes, read cursors, member changes and new conversations, per account.
    pub write_per_account: Option<Rate>,
    /// The same, per address.
    pub write_per_ip: Option<Rate>,
    /// Edits, deletes and member changes in one conversation, by everyone.
    pub write_per_conversation: Option<Rate>,
    /// New conversations, per account.
    pub conversations_per_account: Option<Rate>,
    /// Users added to conversations, per account (one token per user added).
    pub members_added_per_account: Option<Rate>,
    /// Delivery receipts, per account.
    pub receipts_per_account: Option<Rate>,
    /// Uploads declared, per account (`POST /v1/media`): 200 an hour by
    /// default, all at once if need be.
    pub uploads_per_account: Option<Rate>,
    /// Searches, per account (`GET /v1/search`): each may read thousands
    /// of index entries, so a script cannot keep the index busy for everyone.
    pub searches_per_account: Option<Rate>,
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
            write_per_account: Some(Rate { per_second: 20.0, burst: 200 }),
            write_per_ip: Some(Rate { per_second: 200.0, burst: 2_000 }),
            write_per_conversation: Some(Rate { per_second: 50.0, burst: 500 }),
            conversations_per_account: Some(Rate { per_second: 0.1, burst: 20 }),
            members_added_per_account: Some(Rate { per_second: 1.0, burst: 1_000 }),
            receipts_per_account: Some(Rate { per_second: 100.0, burst: 1_000 }),
            uploads_per_account: Some(Rate { per_second: 200.0 / 3_600.0, burst: 200 }),
            searches_per_account: Some(Rate { per_second: 5.0, burst: 100 }),
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
    WritePerAccount,
    WritePerIp,
    WritePerConversation,
    ConversationsPerAccount,
    MembersAddedPerAccount,
    ReceiptsPerAccount,
    UploadsPerAccount,
    SearchesPerAccount,
}

/// A write other than a send, for [`RateLimiter::check_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Edit,
    Delete,
    Read,
    CreateConversation { members: usize },
    AddMembers { members: usize },
    RemoveMember,
    Receipt,
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
            Limit::WritePerAccount => self.config.write_per_account,
            Limit::WritePerIp => self.config.write_per_ip,
            Limit::WritePerConversation => self.config.write_per_conversation,
            Limit::ConversationsPerAccount => self.config.conversations_per_account,
            Limit::MembersAddedPerAccount => self.config.members_added_per_account,
            Limit::ReceiptsPerAccount => self.config.receipts_per_account,
            Limit::UploadsPerAccount => self.config.uploads_per_account,
            Limit::SearchesPerAccount => self.config.searches_per_account,
        }
    }

    /// Takes one token, or says how many seconds until one is free.
    pub fn check(&self, limit: Limit, key: &str) -> Result<(), u64> {
        self.check_at(limit, key, Instant::now())
    }

    pub fn check_at(&self, limit: Limit, key: &str, now: Instant) -> Result<(), u64> {
        self.bucket_at(limit, key, now, 1.0, true)
    }

    /// Takes `tokens` at once (all or none), or says how many seconds until they are free.
    pub fn check_n(&self, limit: Limit, key: &str, tokens: u32) -> Result<(), u64> {
        let Some(rate) = self.rate(limit) else { return Ok(()) };
        // More than a whole burst can never be had: ask for what a full bucket holds.
        let wanted = f64::from(tokens).min(rate.burst as f64);
        self.bucket_at(limit, key, Instant::now(), wanted, true)
    }

    /// The limits one write takes from: its kind's, the account's, the
    /// address's and (for changes to its content) the conversation's. Each
    /// is checked in turn; the first that is empty answers.
    pub fn check_write(&self, write: Write, user_id: &str, ip: &str, conversation_id: Option<&str>) -> Result<(), u64> {
        match write {
            Write::Receipt => return self.check(Limit::ReceiptsPerAccount, user_id),
            Write::CreateConversation { members } => {
                self.check(Limit::ConversationsPerAccount, user_id)?;
                self.check_n(Limit::MembersAddedPerAccount, user_id, members.min(u32::MAX as usize) as u32)?;
            }
            Write::AddMembers { members } => self.check_n(Limit::MembersAddedPerAccount, user_id, members.min(u32::MAX as usize) as u32)?,
            Write::Edit | Write::Delete | Write::Read | Write::RemoveMember => {}
        }
        self.check(Limit::WritePerAccount, user_id)?;
        self.check(Limit::WritePerIp, ip)?;
        let per_conversation = matches!(write, Write::Edit | Write::Delete | Write::AddMembers { .. } | Write::RemoveMember);
        match conversation_id {
            Some(conversation_id) if per_conversation => self.check(Limit::WritePerConversation, conversation_id),
            _ => Ok(()),
        }
    }

    /// Whether a token is free, without taking it (for limits that count
    /// only failures: look before, take after a failure).
    pub fn peek(&self, limit: Limit, key: &str) -> Result<(), u64> {
        self.bucket_at(limit, key, Instant::now(), 1.0, false)
    }

    /// Refills the bucket, then takes `wanted` tokens (or only looks).
    fn bucket_at(&self, limit: Limit, key: &str, now: Instant, wanted: f64, take: bool) -> Result<(), u64> {
        let Some(rate) = self.rate(limit) else { return Ok(()) };
        let mut bucket = self.buckets.entry((limit, key.to_string())).or_insert(Bucket { tokens: rate.burst as f64, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst as f64);
        bucket.updated = now;
        if bucket.tokens >= wanted {
            if take {
                bucket.tokens -= wanted;
            }
            return Ok(());
        }
        let wait = (wanted - bucket.tokens) / rate.per_second.max(f64::MIN_POSITIVE);
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

    #[test]
    fn every_write_takes_from_its_limits() {
        let config = RateLimitConfig {
            write_per_conversation: Some(Rate { per_second: 0.001, burst: 3 }),
            members_added_per_account: Some(Rate { per_second: 0.001, burst: 10 }),
            ..RateLimitConfig::default()
        };
        let limiter = RateLimiter::new(config);
        // Three edits in one conversation by three people, then the conversation waits.
        for user in ["a", "b", "c"] {
            assert_eq!(limiter.check_write(Write::Edit, user, "ip", Some("c_1")), Ok(()));
        }
        assert!(limiter.check_write(Write::Delete, "d", "ip", Some("c_1")).is_err());
        assert_eq!(limiter.check_write(Write::Edit, "d", "ip", Some("c_2")), Ok(()));
        // Reads do not count against the conversation.
        assert_eq!(limiter.check_write(Write::Read, "d", "ip", Some("c_1")), Ok(()));
        // Adding users takes one token each: eight, then three more is too many.
        assert_eq!(limiter.check_write(Write::AddMembers { members: 8 }, "e", "ip", None), Ok(()));
        assert!(limiter.check_write(Write::AddMembers { members: 3 }, "e", "ip", None).is_err());
        assert_eq!(limiter.check_write(Write::AddMembers { members: 2 }, "e", "ip", None), Ok(()));
    }
}
