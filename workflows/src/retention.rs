//! The retention run: one pass of the retention policies over the history,
//! started on a schedule (one run per interval, its id the interval's
//! start, so a restart within an interval does not run it twice).
//!
//! 1. `retention.plan` lists what to delete: `{items: [{conversationId,
//!    before, retentionDays}], held: [...]}` (held conversations are not
//!    in `items`).
//! 2. One `retention.apply` per item, in order; the flow records each
//!    outcome (`deleted`, or `skipped` with the reason, e.g. a hold on a
//!    sender) before it moves to the next, so a crash resumes at the item
//!    it was on. A retryable failure waits (doubling from 1 s, at most 5
//!    tries), then the item counts as failed and the run goes on.
//! 3. `retention.audit` writes the run's summary to the audit log, and
//!    the flow completes with it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{jitter, Command, Event, FailureKind, Flow, Millis};

pub const PLAN: &str = "retention.plan";
pub const APPLY: &str = "retention.apply";
pub const AUDIT: &str = "retention.audit";

const ITEM_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionInput {
    /// The run's time: messages older than each policy before this go.
    pub now: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionRun {
    now: Millis,
    items: Vec<Value>,
    held: Vec<Value>,
    index: usize,
    attempt: u32,
    next_id: u32,
    deleted_messages: u64,
    deleted_rows: u64,
    outcomes: Vec<Value>,
    failed: u32,
    /// Set once the plan is in.
    planned: bool,
    /// Set once the audit activity is asked for.
    auditing: bool,
}

impl RetentionRun {
    fn command(&mut self, name: &str, input: Value) -> Vec<Command> {
        self.next_id += 1;
        vec![Command::Activity { id: self.next_id, name: name.to_string(), input }]
    }

    fn summary(&self) -> Value {
        json!({
            "now": self.now,
            "conversations": self.items.len(),
            "held": self.held,
            "deletedMessages": self.deleted_messages,
            "deletedRows": self.deleted_rows,
            "failed": self.failed,
            "outcomes": self.outcomes,
        })
    }

    fn next(&mut self) -> Vec<Command> {
        match self.items.get(self.index).cloned() {
            Some(item) => self.command(APPLY, item),
            None => {
                self.auditing = true;
                let summary = self.summary();
                self.command(AUDIT, summary)
            }
        }
    }

    fn advance(&mut self, outcome: Value) -> Vec<Command> {
        self.outcomes.push(outcome);
        self.index += 1;
        self.attempt = 0;
        self.next()
    }
}

impl Flow for RetentionRun {
    const KIND: &'static str = "retention_run";
    type Input = RetentionInput;

    fn start(_id: &str, input: RetentionInput, _now: Millis) -> (Self, Vec<Command>) {
        let mut flow = RetentionRun {
            now: input.now,
            items: Vec::new(),
            held: Vec::new(),
            index: 0,
            attempt: 0,
            next_id: 0,
            deleted_messages: 0,
            deleted_rows: 0,
            outcomes: Vec::new(),
            failed: 0,
            planned: false,
            auditing: false,
        };
        let commands = flow.command(PLAN, json!({"now": input.now}));
        (flow, commands)
    }

    fn on_event(&mut self, id: &str, event: Event, now: Millis) -> Vec<Command> {
        match event {
            Event::ActivityDone { output, .. } if !self.planned => {
                self.planned = true;
                self.items = output["items"].as_array().cloned().unwrap_or_default();
                self.held = output["held"].as_array().cloned().unwrap_or_default();
                self.next()
            }
            Event::ActivityDone { output, .. } if self.auditing => vec![Command::Complete { output: json!({"summary": self.summary(), "audited": output}) }],
            Event::ActivityDone { output, .. } => {
                self.deleted_messages += output["deletedMessages"].as_u64().unwrap_or(0);
                self.deleted_rows += output["deletedRows"].as_u64().unwrap_or(0);
                let conversation = self.items[self.index]["conversationId"].clone();
                self.advance(json!({"conversationId": conversation, "outcome": output}))
            }
            Event::ActivityFailed { failure, .. } => {
                self.attempt += 1;
                if failure.kind == FailureKind::Retryable && self.attempt < ITEM_ATTEMPTS {
                    let pause = 1_000u64 << (self.attempt - 1).min(10);
                    self.next_id += 1;
                    return vec![Command::Timer { id: self.next_id, at: now + (pause + jitter(id, self.attempt, pause / 2 + 1)) as Millis }];
                }
                if self.auditing || !self.planned {
                    // The plan or the audit itself failed for good.
                    return vec![Command::DeadLetter { reason: format!("retention run failed: {}", failure.reason) }];
                }
                self.failed += 1;
                let conversation = self.items[self.index]["conversationId"].clone();
                self.advance(json!({"conversationId": conversation, "failed": failure.reason}))
            }
            Event::TimerFired { .. } => {
                if !self.planned {
                    return self.command(PLAN, json!({"now": self.now}));
                }
                if self.auditing {
                    let summary = self.summary();
                    return self.command(AUDIT, summary);
                }
                self.next()
            }
            Event::Signal { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Failure;

    fn done(id: u32, output: Value) -> Event {
        Event::ActivityDone { id, output }
    }

    #[test]
    fn a_run_applies_each_item_in_order_then_audits() {
        let (mut flow, commands) = RetentionRun::start("r", RetentionInput { now: 1_000 }, 0);
        assert!(matches!(&commands[..], [Command::Activity { name, input, .. }] if name == PLAN && input["now"] == 1_000));
        let plan = json!({"items": [{"conversationId": "c_1", "before": 5}, {"conversationId": "c_2", "before": 6}], "held": ["c_3"]});
        let first = flow.on_event("r", done(1, plan), 10);
        assert!(matches!(&first[..], [Command::Activity { name, input, .. }] if name == APPLY && input["conversationId"] == "c_1"));
        let second = flow.on_event("r", done(2, json!({"deletedMessages": 3, "deletedRows": 4})), 11);
        assert!(matches!(&second[..], [Command::Activity { input, .. }] if input["conversationId"] == "c_2"));
        // A retryable failure waits on a timer, then the same item again.
        let wait = flow.on_event("r", Event::ActivityFailed { id: 3, failure: Failure::retryable("busy", None) }, 12);
        let [Command::Timer { id, at }] = &wait[..] else { panic!("{wait:?}") };
        assert!(*at >= 12 + 1_000);
        let again = flow.on_event("r", Event::TimerFired { id: *id }, *at);
        assert!(matches!(&again[..], [Command::Activity { input, .. }] if input["conversationId"] == "c_2"));
        let audit = flow.on_event("r", done(5, json!({"skipped": "under_hold"})), 2_000);
        let [Command::Activity { name, input, .. }] = &audit[..] else { panic!("{audit:?}") };
        assert_eq!(name, AUDIT);
        assert_eq!((input["deletedMessages"].clone(), input["held"].clone(), input["conversations"].clone()), (json!(3), json!(["c_3"]), json!(2)));
        let end = flow.on_event("r", done(6, json!({})), 2_001);
        assert!(matches!(&end[..], [Command::Complete { output }] if output["summary"]["deletedRows"] == 4));
    }

    #[test]
    fn an_item_that_keeps_failing_is_counted_and_the_run_goes_on() {
        let (mut flow, _) = RetentionRun::start("r", RetentionInput { now: 0 }, 0);
        flow.on_event("r", done(1, json!({"items": [{"conversationId": "c_1"}], "held": []})), 0);
        let commands = flow.on_event("r", Event::ActivityFailed { id: 2, failure: Failure::permanent("no such table") }, 0);
        assert!(matches!(&commands[..], [Command::Activity { name, input, .. }] if name == AUDIT && input["failed"] == 1));
    }
}
