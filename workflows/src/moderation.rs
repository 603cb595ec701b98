//! The moderation of one upload, started by `complete` (its id
//! `media:{mediaId}`, so a second `complete` starts nothing).
//!
//! 1. `media.check` reads the bytes, runs the checks and ClamAV, writes the
//!    cleaned copy and thumbnail, and records the verdict (`ready`, or
//!    `blocked` with a reason). The flow completes with its outcome.
//! 2. A retryable failure (the store or the scanner is down) waits,
//!    doubling from 1 s up to 5 min, with jitter; after the last of
//!    `ATTEMPTS` tries, or at once for a permanent failure, the flow runs
//!    `media.give_up`, which records the upload as blocked (`unchecked`):
//!    nothing unchecked is ever served.
//! 3. If even that cannot be recorded after `ATTEMPTS` tries, the flow is
//!    dead-lettered for an operator.
//!
//! Every activity is safe to repeat: a decided upload is left as it is.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{jitter, Command, Event, FailureKind, Flow, Millis};

pub const CHECK: &str = "media.check";
pub const GIVE_UP: &str = "media.give_up";

pub const ATTEMPTS: u32 = 8;
const BACKOFF_MAX_MS: u64 = 5 * 60 * 1_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModerationInput {
    pub media_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaModeration {
    media_id: String,
    attempt: u32,
    next_id: u32,
    /// Set once the checks are abandoned: the flow records `unchecked`.
    giving_up: Option<String>,
}

impl MediaModeration {
    fn activity(&mut self) -> Vec<Command> {
        self.next_id += 1;
        match &self.giving_up {
            None => vec![Command::Activity { id: self.next_id, name: CHECK.into(), input: json!({"mediaId": self.media_id}) }],
            Some(reason) => vec![Command::Activity { id: self.next_id, name: GIVE_UP.into(), input: json!({"mediaId": self.media_id, "reason": reason}) }],
        }
    }
}

impl Flow for MediaModeration {
    const KIND: &'static str = "media_moderation";
    type Input = ModerationInput;

    fn start(_id: &str, input: ModerationInput, _now: Millis) -> (Self, Vec<Command>) {
        let mut flow = MediaModeration { media_id: input.media_id, attempt: 0, next_id: 0, giving_up: None };
        let commands = flow.activity();
        (flow, commands)
    }

    fn on_event(&mut self, id: &str, event: Event, now: Millis) -> Vec<Command> {
        match event {
            Event::ActivityDone { output, .. } => match &self.giving_up {
                None => vec![Command::Complete { output }],
                Some(reason) => vec![Command::Complete { output: json!({"status": "blocked", "reason": "unchecked", "failure": reason}) }],
            },
            Event::ActivityFailed { failure, .. } => {
                self.attempt += 1;
                if failure.kind == FailureKind::Retryable && self.attempt < ATTEMPTS {
                    let pause = (1_000u64 << (self.attempt - 1).min(20)).min(BACKOFF_MAX_MS);
                    self.next_id += 1;
                    return vec![Command::Timer { id: self.next_id, at: now + (pause + jitter(id, self.attempt, pause / 2 + 1)) as Millis }];
                }
                if self.giving_up.is_some() {
                    return vec![Command::DeadLetter { reason: format!("could not record the upload as unchecked: {}", failure.reason) }];
                }
                self.giving_up = Some(failure.reason);
                self.attempt = 0;
                self.activity()
            }
            Event::TimerFired { .. } => self.activity(),
            Event::Signal { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Failure;

    fn input() -> ModerationInput {
        ModerationInput { media_id: "f_1".into() }
    }

    #[test]
    fn a_check_that_succeeds_completes_with_its_outcome() {
        let (mut flow, commands) = MediaModeration::start("media:f_1", input(), 0);
        assert!(matches!(&commands[..], [Command::Activity { name, input, .. }] if name == CHECK && input["mediaId"] == "f_1"));
        let done = flow.on_event("media:f_1", Event::ActivityDone { id: 1, output: json!({"status": "ready"}) }, 5);
        assert_eq!(done, vec![Command::Complete { output: json!({"status": "ready"}) }]);
    }

    #[test]
    fn a_check_that_keeps_failing_backs_off_then_gives_up_as_unchecked() {
        let (mut flow, _) = MediaModeration::start("media:f_1", input(), 0);
        let mut now = 0;
        let mut pauses = Vec::new();
        for attempt in 1..ATTEMPTS {
            let commands = flow.on_event("media:f_1", Event::ActivityFailed { id: 0, failure: Failure::retryable("clamd down", None) }, now);
            let [Command::Timer { at, .. }] = commands[..] else { panic!("attempt {attempt}: {commands:?}") };
            pauses.push(at - now);
            now = at;
            let again = flow.on_event("media:f_1", Event::TimerFired { id: 0 }, now);
            assert!(matches!(&again[..], [Command::Activity { name, .. }] if name == CHECK));
        }
        assert!(pauses.windows(2).all(|pair| pair[1] >= pair[0]), "the pauses grow: {pauses:?}");
        assert!(pauses.iter().all(|pause| *pause <= (BACKOFF_MAX_MS * 3 / 2) as i64));
        let give_up = flow.on_event("media:f_1", Event::ActivityFailed { id: 0, failure: Failure::retryable("clamd down", None) }, now);
        assert!(matches!(&give_up[..], [Command::Activity { name, input, .. }] if name == GIVE_UP && input["reason"] == "clamd down"));
        let end = flow.on_event("media:f_1", Event::ActivityDone { id: 0, output: json!(null) }, now);
        assert!(matches!(&end[..], [Command::Complete { output }] if output["reason"] == "unchecked"));
    }

    #[test]
    fn a_permanent_failure_gives_up_at_once_and_a_failed_give_up_dead_letters() {
        let (mut flow, _) = MediaModeration::start("media:f_1", input(), 0);
        let give_up = flow.on_event("media:f_1", Event::ActivityFailed { id: 1, failure: Failure::permanent("no such object") }, 0);
        assert!(matches!(&give_up[..], [Command::Activity { name, .. }] if name == GIVE_UP));
        let dead = flow.on_event("media:f_1", Event::ActivityFailed { id: 2, failure: Failure::permanent("state failed") }, 0);
        assert!(matches!(&dead[..], [Command::DeadLetter { reason }] if reason.contains("state failed")));
    }
}
