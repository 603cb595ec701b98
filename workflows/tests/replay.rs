//! Replay of recorded histories: each file in `tests/histories/` is a flow's
//! input and the events it saw, with the commands it answered when the
//! history was recorded. Replaying must give the same commands: a change
//! to a flow that would steer a flow already running elsewhere (stored
//! mid-way in an engine) fails here. To record a new history after a
//! deliberate change, run with `CONFAB_RECORD_HISTORIES=1` and review the
//! diff; a change that alters old histories needs a new flow kind.

use std::path::{Path, PathBuf};

use confab_workflows::moderation::{MediaModeration, ModerationInput};
use confab_workflows::push::{PushDelivery, PushInput, RetryPolicy};
use confab_workflows::retention::{RetentionInput, RetentionRun};
use confab_workflows::{Command, Event, Failure, FailureKind, Flow};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Step {
    event: Event,
    now: i64,
    commands: Vec<Command>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct History {
    kind: String,
    id: String,
    input: Value,
    started_at: i64,
    start: Vec<Command>,
    steps: Vec<Step>,
}

fn replay<F: Flow>(id: &str, input: Value, started_at: i64, events: &[(Event, i64)]) -> History {
    let (mut flow, start) = F::start(id, serde_json::from_value(input.clone()).unwrap(), started_at);
    let steps = events.iter().map(|(event, now)| Step { event: event.clone(), now: *now, commands: flow.on_event(id, event.clone(), *now) }).collect();
    History { kind: F::KIND.to_string(), id: id.to_string(), input, started_at, start, steps }
}

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories").join(format!("{name}.json"))
}

fn check(name: &str, replayed: History) {
    let file = path(name);
    if std::env::var("CONFAB_RECORD_HISTORIES").is_ok() {
        std::fs::write(&file, serde_json::to_string_pretty(&replayed).unwrap() + "\n").unwrap();
        return;
    }
    let recorded: History = serde_json::from_str(&std::fs::read_to_string(&file).expect("a recorded history")).unwrap();
    assert_eq!(replayed.start, recorded.start, "{name}: the first commands changed");
    for (index, (now, then)) in replayed.steps.iter().zip(&recorded.steps).enumerate() {
        assert_eq!(now, then, "{name}: step {index} answers differently than when it was recorded");
    }
    assert_eq!(replayed.steps.len(), recorded.steps.len());
}

/// The recorded events, read back from the file (so the replay uses what
/// was recorded, not what this test would make today).
fn events(name: &str, fallback: Vec<(Event, i64)>) -> Vec<(Event, i64)> {
    if std::env::var("CONFAB_RECORD_HISTORIES").is_ok() {
        return fallback;
    }
    let recorded: History = serde_json::from_str(&std::fs::read_to_string(path(name)).expect("a recorded history")).unwrap();
    recorded.steps.into_iter().map(|step| (step.event, step.now)).collect()
}

#[test]
fn a_push_that_retries_then_is_sent_replays_the_same() {
    let input = serde_json::to_value(PushInput { push: json!({"token": "t", "conversationId": "c_1"}), policy: RetryPolicy::default() }).unwrap();
    let retry_after = Failure { kind: FailureKind::Retryable, retry_after_ms: Some(30_000), reason: "TooManyRequests".into() };
    let fallback = vec![
        (Event::ActivityFailed { id: 1, failure: Failure::retryable("ServiceUnavailable", None) }, 1_000_100),
        (Event::TimerFired { id: 2 }, 1_001_700),
        (Event::ActivityFailed { id: 3, failure: retry_after }, 1_001_800),
        (Event::TimerFired { id: 4 }, 1_031_800),
        (Event::ActivityDone { id: 5, output: json!({}) }, 1_031_900),
    ];
    let name = "push_delivery_retried_then_sent";
    check(name, replay::<PushDelivery>("push:d_1:c_1:7", input, 1_000_000, &events(name, fallback)));
}

#[test]
fn a_push_to_a_rejected_token_replays_the_same() {
    let input = serde_json::to_value(PushInput { push: json!({"token": "t"}), policy: RetryPolicy::default() }).unwrap();
    let fallback = vec![
        (Event::ActivityFailed { id: 1, failure: Failure { kind: FailureKind::Unregistered, retry_after_ms: None, reason: "Unregistered".into() } }, 10),
        (Event::ActivityDone { id: 2, output: json!({"forgotten": true}) }, 20),
    ];
    let name = "push_delivery_unregistered";
    check(name, replay::<PushDelivery>("push:d_2:c_1:8", input, 0, &events(name, fallback)));
}

#[test]
fn a_retention_run_replays_the_same() {
    let input = serde_json::to_value(RetentionInput { now: 86_400_000 }).unwrap();
    let fallback = vec![
        (Event::ActivityDone { id: 1, output: json!({"items": [{"conversationId": "c_1", "before": 5, "retentionDays": 1}], "held": ["c_2"]}) }, 1),
        (Event::ActivityFailed { id: 2, failure: Failure::retryable("the history is still catching up", None) }, 2),
        (Event::TimerFired { id: 3 }, 1_600),
        (Event::ActivityDone { id: 4, output: json!({"deletedMessages": 2, "deletedRows": 6, "filesRemoved": 1}) }, 1_700),
        (Event::ActivityDone { id: 5, output: json!({"audited": true}) }, 1_800),
    ];
    let name = "retention_run";
    check(name, replay::<RetentionRun>("retention:86400000", input, 0, &events(name, fallback)));
}

#[test]
fn a_moderation_that_retries_then_gives_up_replays_the_same() {
    let input = serde_json::to_value(ModerationInput { media_id: "f_01j9z3abcdefghjkmnpq".into() }).unwrap();
    let fallback = vec![
        (Event::ActivityFailed { id: 1, failure: Failure::retryable("the virus scanner failed: connection refused", None) }, 1_000),
        (Event::TimerFired { id: 2 }, 2_400),
        (Event::ActivityFailed { id: 3, failure: Failure::permanent("the media store failed: no such object") }, 2_500),
        (Event::ActivityDone { id: 4, output: json!({"status": "blocked", "reason": "unchecked"}) }, 2_600),
    ];
    let name = "media_moderation_unchecked";
    check(name, replay::<MediaModeration>("media:f_01j9z3abcdefghjkmnpq", input, 0, &events(name, fallback)));
}
