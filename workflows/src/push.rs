//! The push delivery flow: one push to one device, retried until it is
//! accepted, refused for good, or out of attempts or time.
//!
//! 1. `start` asks for the activity `push.send` (attempt 1).
//! 2. Accepted: the flow completes (`{"outcome": "sent", "attempts": n}`).
//! 3. A retryable failure (a timeout, 429, 5xx): wait
//!    `max(Retry-After, backoff)`, where the backoff doubles from
//!    `backoff_ms` up to `backoff_max_ms` and adds up to half again as
//!    jitter (derived from the flow's id: the same on every replay); then
//!    send again. Past `max_attempts`, or when the next try would come after
//!    `max_age_ms` from the start, the flow dead-letters.
//! 4. The token is gone (APNs 410 `Unregistered`, 400 `BadDeviceToken`; FCM
//!    404 `UNREGISTERED`): the activity `push.forget_token` removes it from
//!    the device, and the flow completes as `unregistered`.
//! 5. Any other refusal dead-letters at once with the service's reason.
//!
//! A signal `superseded` (a newer push of the same collapse key replaced
//! this one) ends a flow that is waiting to retry.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{jitter, Command, Event, FailureKind, Flow, Millis};

pub const SEND: &str = "push.send";
pub const FORGET_TOKEN: &str = "push.forget_token";

/// How hard to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_age_ms: u64,
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 8, max_age_ms: 3_600_000, backoff_ms: 1_000, backoff_max_ms: 300_000 }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (attempt counts from 1).
    pub fn backoff(&self, flow_id: &str, attempt: u32) -> u64 {
        let doubled = self.backoff_ms.saturating_mul(1u64 << (attempt.saturating_sub(1)).min(30));
        let base = doubled.min(self.backoff_max_ms);
        base + jitter(flow_id, attempt, base / 2 + 1)
    }
}

/// When to try again after a retryable failure at `now`: after the
/// backoff, or the service's `Retry-After` when that is longer; None when
/// that would come after `deadline` (the push gives up). The flow decides
/// with it, and the send activity labels its attempt with it.
pub fn next_try(now: Millis, backoff_ms: u64, retry_after_ms: Option<u64>, deadline: Millis) -> Option<Millis> {
    let at = now + backoff_ms.max(retry_after_ms.unwrap_or(0)) as Millis;
    (at <= deadline).then_some(at)
}

/// One push: what the activity sends, opaque to the flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushInput {
    pub push: Value,
    pub policy: RetryPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushDelivery {
    push: Value,
    policy: RetryPolicy,
    started_at: Millis,
    attempt: u32,
    /// The id of the next command (activities and timers share them).
    next_id: u32,
    last_reason: Option<String>,
}

impl PushDelivery {
    fn send(&mut self, id: &str) -> Vec<Command> {
        self.next_id += 1;
        // For the attempt's record: `last`, a retryable failure now ends the
        // push; else it ends it too when the pause before the next try
        // (`max(pause, Retry-After)`) would end after `deadline`.
        let input = json!({
            "push": self.push,
            "attempt": self.attempt,
            "last": self.attempt >= self.policy.max_attempts,
            "pause": self.policy.backoff(id, self.attempt),
            "deadline": self.deadline(),
        });
        vec![Command::Activity { id: self.next_id, name: SEND.to_string(), input }]
    }

    /// No try after this.
    fn deadline(&self) -> Millis {
        self.started_at + self.policy.max_age_ms as Millis
    }

    fn dead(&self, why: &str) -> Vec<Command> {
        let reason = match &self.last_reason {
            Some(last) => format!("{why} (last failure: {last})"),
            None => why.to_string(),
        };
        vec![Command::DeadLetter { reason }]
    }
}

impl Flow for PushDelivery {
    const KIND: &'static str = "push_delivery";
    type Input = PushInput;

    fn start(id: &str, input: PushInput, now: Millis) -> (Self, Vec<Command>) {
        let mut flow = PushDelivery { push: input.push, policy: input.policy, started_at: now, attempt: 1, next_id: 0, last_reason: None };
        let commands = flow.send(id);
        (flow, commands)
    }

    fn on_event(&mut self, id: &str, event: Event, now: Millis) -> Vec<Command> {
        match event {
            Event::ActivityDone { output, .. } => match output.get("forgotten") {
                Some(_) => vec![Command::Complete { output: json!({"outcome": "unregistered", "attempts": self.attempt}) }],
                None => vec![Command::Complete { output: json!({"outcome": "sent", "attempts": self.attempt}) }],
            },
            Event::ActivityFailed { failure, .. } => {
                self.last_reason = Some(failure.reason.clone());
                match failure.kind {
                    FailureKind::Unregistered => {
                        self.next_id += 1;
                        vec![Command::Activity {
                            id: self.next_id,
                            name: FORGET_TOKEN.to_string(),
                            input: json!({"push": self.push, "reason": failure.reason}),
                        }]
                    }
                    FailureKind::Permanent => self.dead("refused by the push service"),
                    FailureKind::Retryable => {
                        if self.attempt >= self.policy.max_attempts {
                            return self.dead(&format!("gave up after {} attempts", self.attempt));
                        }
                        let Some(at) = next_try(now, self.policy.backoff(id, self.attempt), failure.retry_after_ms, self.deadline()) else {
                            return self.dead(&format!("gave up after {} attempts: the next would come after {} ms", self.attempt, self.policy.max_age_ms));
                        };
                        self.next_id += 1;
                        vec![Command::Timer { id: self.next_id, at }]
                    }
                }
            }
            Event::TimerFired { .. } => {
                self.attempt += 1;
                self.send(id)
            }
            Event::Signal { name, .. } if name == "superseded" => {
                vec![Command::Complete { output: json!({"outcome": "superseded", "attempts": self.attempt}) }]
            }
            Event::Signal { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Failure;

    fn flow() -> (PushDelivery, Vec<Command>) {
        let policy = RetryPolicy { max_attempts: 4, max_age_ms: 60_000, backoff_ms: 1_000, backoff_max_ms: 4_000 };
        PushDelivery::start("f", PushInput { push: json!({"token": "t"}), policy }, 0)
    }

    fn failed(failure: Failure) -> Event {
        Event::ActivityFailed { id: 1, failure }
    }

    #[test]
    fn a_push_that_is_accepted_completes_after_one_send() {
        let (mut flow, commands) = flow();
        assert!(matches!(&commands[..], [Command::Activity { name, .. }] if name == SEND));
        let done = flow.on_event("f", Event::ActivityDone { id: 1, output: json!({}) }, 5);
        assert_eq!(done, vec![Command::Complete { output: json!({"outcome": "sent", "attempts": 1}) }]);
    }

    #[test]
    fn retries_back_off_honour_retry_after_and_give_up_after_the_last_attempt() {
        let (mut flow, _) = flow();
        let mut now = 0;
        let mut pauses = Vec::new();
        for attempt in 1..=3 {
            let retry_after = (attempt == 2).then_some(30_000);
            let commands = flow.on_event("f", failed(Failure::retryable("http 503", retry_after)), now);
            let [Command::Timer { at, id }] = &commands[..] else { panic!("attempt {attempt}: {commands:?}") };
            pauses.push(at - now);
            now = *at;
            let again = flow.on_event("f", Event::TimerFired { id: *id }, now);
            assert!(matches!(&again[..], [Command::Activity { input, .. }] if input["attempt"] == attempt + 1));
        }
        assert!((1_000..=1_500).contains(&pauses[0]), "{pauses:?}");
        assert_eq!(pauses[1], 30_000, "Retry-After is longer than the backoff: it wins");
        assert!((4_000..=6_000).contains(&pauses[2]), "capped at backoff_max_ms plus jitter: {pauses:?}");
        let last = flow.on_event("f", failed(Failure::retryable("http 500", None)), now);
        assert!(matches!(&last[..], [Command::DeadLetter { reason }] if reason.contains("4 attempts") && reason.contains("http 500")), "{last:?}");
    }

    #[test]
    fn a_retry_past_the_age_limit_dead_letters_instead() {
        let (mut flow, _) = flow();
        let commands = flow.on_event("f", failed(Failure::retryable("http 429", Some(120_000))), 0);
        assert!(matches!(&commands[..], [Command::DeadLetter { .. }]), "{commands:?}");
    }

    #[test]
    fn an_unregistered_token_is_forgotten_and_a_refusal_dead_letters() {
        let (mut flow, _) = flow();
        let unregistered = Failure { kind: FailureKind::Unregistered, retry_after_ms: None, reason: "Unregistered".into() };
        let commands = flow.on_event("f", failed(unregistered), 0);
        assert!(matches!(&commands[..], [Command::Activity { name, .. }] if name == FORGET_TOKEN));
        let done = flow.on_event("f", Event::ActivityDone { id: 2, output: json!({"forgotten": true}) }, 1);
        assert!(matches!(&done[..], [Command::Complete { output }] if output["outcome"] == "unregistered"));
        let (mut refused, _) = super::tests::flow();
        let commands = refused.on_event("f", failed(Failure::permanent("BadTopic")), 0);
        assert!(matches!(&commands[..], [Command::DeadLetter { reason }] if reason.contains("BadTopic")));
    }

    #[test]
    fn jitter_is_the_same_on_every_replay() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff("flow-a", 3), policy.backoff("flow-a", 3));
        let spread: std::collections::HashSet<u64> = (0..50).map(|i| policy.backoff(&format!("flow-{i}"), 3)).collect();
        assert!(spread.len() > 10, "ids spread the retries: {spread:?}");
    }
}
