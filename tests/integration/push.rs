//! Push tokens, notification settings, mentions, and pushes through the
//! local APNs and FCM servers (which check authentication as the real
//! services do).

use std::time::Duration;

use confab_push::fake::{self, ApnsExpect, FakeServer, FcmExpect};
use serde_json::{json, Value};

use crate::harness::{assert_error, test_config, Client, TestServer};
use crate::ws::Ws;

#[tokio::test]
async fn push_tokens_and_notification_settings_follow_the_contract() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mallory = server.user("mallory").await;
    let device = format!("/v1/devices/{}/push", alice.device_id);
    assert_eq!(alice.put(&device, json!({"provider": "apns", "token": "a1b2c3"})).await.0, 204);
    assert_eq!(alice.put(&device, json!({"provider": "fcm", "token": "tok", "appId": "chat.confab"})).await.0, 204, "a new token replaces the old");
    assert_error(&bob.put(&device, json!({"provider": "apns", "token": "x"})).await, 404, "not_found");
    assert_error(&bob.delete(&device).await, 404, "not_found");
    let wrong = assert_error(&alice.put(&device, json!({"provider": "webpush", "token": "x"})).await, 400, "bad_request");
    assert!(wrong.contains("`provider`"), "{wrong}");
    assert!(assert_error(&alice.put(&device, json!({"provider": "apns", "token": "has space"})).await, 400, "bad_request").contains("`token`"));
    assert_error(&alice.put(&device, json!({"provider": "apns"})).await, 400, "bad_request");
    assert_eq!(alice.delete(&device).await.0, 204);

    let conversation = alice.conversation("group", &[&bob]).await;
    let settings = format!("/v1/conversations/{conversation}/settings");
    assert_eq!(alice.get(&settings).await, (200, json!({"muted": false, "mutedUntil": null, "notify": "all"})));
    assert_eq!(alice.put(&settings, json!({"notify": "mentions"})).await, (200, json!({"muted": false, "mutedUntil": null, "notify": "mentions"})));
    let until = confab_schemas::ids::now_ms() + 3_600_000;
    assert_eq!(alice.put(&settings, json!({"mutedUntil": until})).await, (200, json!({"muted": true, "mutedUntil": until, "notify": "mentions"})));
    assert_eq!(alice.get(&settings).await.1["muted"], true, "a timed mute reads as muted until it ends");
    let (_, list) = alice.get("/v1/conversations").await;
    let entry = &list["conversations"][0];
    assert_eq!((entry["muted"].clone(), entry["notify"].clone(), entry["unreadMentions"].clone()), (json!(true), json!("mentions"), json!(0)));
    assert_eq!(
        alice.put(&settings, json!({"muted": false})).await.1,
        json!({"muted": false, "mutedUntil": null, "notify": "mentions"}),
        "unmuting ends a timed mute"
    );
    assert_eq!(alice.put(&settings, json!({"muted": true})).await.1["muted"], true);
    let past = confab_schemas::ids::now_ms() - 1;
    assert_eq!(alice.put(&settings, json!({"muted": false, "mutedUntil": past})).await.1["muted"], false, "a time in the past mutes nothing");
    assert_error(&alice.put(&settings, json!({"notify": "sometimes"})).await, 400, "bad_request");
    assert_error(&mallory.get(&settings).await, 403, "forbidden");
    assert_error(&mallory.put(&settings, json!({"muted": true})).await, 403, "forbidden");
    assert_error(&alice.get("/v1/conversations/c_nothere/settings").await, 404, "not_found");
    assert_eq!(bob.get(&settings).await.1["notify"], "all", "settings are each member's own");

    assert_eq!(alice.get("/v1/me/settings").await, (200, json!({"pushPreview": "full"})));
    assert_eq!(alice.put("/v1/me/settings", json!({"pushPreview": "sender"})).await, (200, json!({"pushPreview": "sender"})));
    assert_eq!(alice.get("/v1/me/settings").await.1, json!({"pushPreview": "sender"}));
    assert!(assert_error(&alice.put("/v1/me/settings", json!({"pushPreview": "all"})).await, 400, "bad_request").contains("`pushPreview`"));

    // Settings are durable: they come back after a restart.
    let mut server = server;
    server.restart().await;
    let alice = alice.with_base(&server.base);
    assert_eq!(alice.get(&settings).await.1, json!({"muted": false, "mutedUntil": null, "notify": "mentions"}));
    assert_eq!(alice.get("/v1/me/settings").await.1, json!({"pushPreview": "sender"}));
}

fn unread_mentions(list: &Value, conversation: &str) -> u64 {
    list["conversations"].as_array().unwrap().iter().find(|entry| entry["conversationId"] == conversation).unwrap()["unreadMentions"].as_u64().unwrap()
}

#[tokio::test]
async fn mentions_are_worked_out_from_the_body_and_counted_until_read() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let _dave = server.user("dave").await;
    let conversation = alice.conversation("group", &[&bob, &carol]).await;
    let message = alice.say(&conversation, "k1", "hi @bob, and @Carol. ask @dave (not here) or mail bob@carol.com").await;
    assert_eq!(message["mentions"], json!({"userIds": [bob.user_id, carol.user_id], "channel": false, "here": false}));
    let everyone = alice.say(&conversation, "k2", "@channel lunch? @here").await;
    assert_eq!(everyone["mentions"], json!({"userIds": [], "channel": true, "here": true}));
    let plain = alice.say(&conversation, "k3", "no one").await;
    assert_eq!(plain["mentions"], json!({"userIds": [], "channel": false, "here": false}));
    // The same mentions in history and sync.
    let history = bob.all_messages(&conversation).await;
    assert_eq!(history[0]["mentions"], message["mentions"]);
    let (_, sync) = bob.get("/v1/sync").await;
    let synced: Vec<&Value> = sync["events"].as_array().unwrap().iter().filter(|event| event["type"] == "message.new").collect();
    assert_eq!(synced[1]["message"]["mentions"]["channel"], true);

    assert_eq!(unread_mentions(&bob.get("/v1/conversations").await.1, &conversation), 2);
    assert_eq!(unread_mentions(&alice.get("/v1/conversations").await.1, &conversation), 0, "your own messages are read");
    // An edit works them out again; a deletion takes them away.
    let id = message["messageId"].as_str().unwrap();
    let (_, edited) = alice.patch(&format!("/v1/messages/{id}"), json!({"body": "hi @carol only"})).await;
    assert_eq!(edited["mentions"]["userIds"], json!([carol.user_id]));
    assert_eq!(unread_mentions(&bob.get("/v1/conversations").await.1, &conversation), 1);
    assert_eq!(unread_mentions(&carol.get("/v1/conversations").await.1, &conversation), 2);
    assert_eq!(alice.delete(&format!("/v1/messages/{}", everyone["messageId"].as_str().unwrap())).await.0, 204);
    assert_eq!(unread_mentions(&carol.get("/v1/conversations").await.1, &conversation), 1);
    assert_eq!(bob.post(&format!("/v1/conversations/{conversation}/read"), json!({"lastReadMessageId": plain["messageId"]})).await.0, 204);
    assert_eq!(unread_mentions(&bob.get("/v1/conversations").await.1, &conversation), 0, "reading clears them");
}

pub(crate) struct Fakes {
    _keys_dir: tempfile::TempDir,
    apns: FakeServer,
    fcm: FakeServer,
}

/// Which engine runs the push workflows: each push test runs on both.
#[derive(Debug, Clone, Copy)]
pub(crate) enum On {
    Embedded,
    Temporal,
}

/// A server whose push services are the local fakes, retrying fast; None
/// when the engine is not there (Temporal, outside `tests/run`).
async fn push_server(max_attempts: u32, on: On) -> Option<(TestServer, Fakes, tempfile::TempDir)> {
    push_server_aged(max_attempts, None, on).await
}

/// The same, with `[push] max_age_secs`.
async fn push_server_aged(max_attempts: u32, max_age_secs: Option<u64>, on: On) -> Option<(TestServer, Fakes, tempfile::TempDir)> {
    let (config, fakes, data) = push_config(max_attempts, max_age_secs, on).await?;
    let server = TestServer::start_with(config).await;
    Some((server, fakes, data))
}

/// The config of [`push_server_aged`], its fakes and its data directory.
pub(crate) async fn push_config(max_attempts: u32, max_age_secs: Option<u64>, on: On) -> Option<(confab::config::Config, Fakes, tempfile::TempDir)> {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = fake::generate_keys(keys_dir.path()).unwrap();
    let apns =
        fake::start_apns(ApnsExpect { team_id: "TEAM".into(), key_id: "KEY".into(), topic: "chat.confab".into(), public_pem: keys.apns_public_pem.clone() })
            .await
            .unwrap();
    let fcm = fake::start_fcm(FcmExpect { project_id: "confab-test".into(), public_pem: keys.fcm_public_pem.clone() }).await.unwrap();
    let account = keys_dir.path().join("account.json");
    fake::write_service_account(&account, &keys, &fcm, "confab-test").unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.push = toml::from_str(&format!(
        r#"
        max_attempts = {max_attempts}
        {max_age}
        backoff_ms = 50
        backoff_max_ms = 200
        [apns]
        base_url = "{}"
        team_id = "TEAM"
        key_id = "KEY"
        key_file = "{}"
        topic = "chat.confab"
        [fcm]
        base_url = "{}"
        project_id = "confab-test"
        credentials_file = "{}"
        "#,
        apns.base_url(),
        keys.apns_key.display(),
        fcm.base_url(),
        account.display(),
        max_age = max_age_secs.map(|secs| format!("max_age_secs = {secs}")).unwrap_or_default(),
    ))
    .unwrap();
    config.gateway.metrics_token = Some("scrape".into());
    if let On::Temporal = on {
        config.workflows = crate::harness::temporal_workflows()?;
    }
    Some((config, Fakes { _keys_dir: keys_dir, apns, fcm }, data))
}

async fn register(client: &Client, provider: &str, token: &str) {
    let path = format!("/v1/devices/{}/push", client.device_id);
    assert_eq!(client.put(&path, json!({"provider": provider, "token": token})).await.0, 204);
}

/// Waits until `fake` has answered pushes for `token` `count` times (all answers).
async fn pushes_to(fake: &FakeServer, token: &str, count: usize) -> Vec<fake::Recorded> {
    let path = |recorded: &fake::Recorded| recorded.path.ends_with(&format!("/device/{token}")) || recorded.body["message"]["token"] == token;
    for _ in 0..300 {
        let found: Vec<_> = fake.requests().into_iter().filter(|recorded| path(recorded)).collect();
        if found.len() >= count {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{token}: expected {count} push requests, saw {:?}", fake.requests().iter().map(|r| (&r.path, r.status)).collect::<Vec<_>>());
}

async fn metrics(client: &Client) -> String {
    let response = client.http.get(format!("{}/metrics", client.base)).bearer_auth("scrape").send().await.unwrap();
    response.text().await.unwrap()
}

/// The metrics once they contain every one of `needles` (or after 6 s).
async fn metrics_until(client: &Client, needles: &[&str]) -> String {
    let mut text = String::new();
    for _ in 0..300 {
        text = metrics(client).await;
        if needles.iter().all(|needle| text.contains(needle)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    text
}

#[tokio::test]
async fn offline_members_are_pushed_once_per_device_unless_settings_say_no() {
    offline_members_are_pushed(On::Embedded).await;
}

#[tokio::test]
async fn offline_members_are_pushed_once_per_device_unless_settings_say_no_on_temporal() {
    offline_members_are_pushed(On::Temporal).await;
}

async fn offline_members_are_pushed(on: On) {
    let Some((server, fakes, _data)) = push_server(5, on).await else { return };
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let dave = server.user("dave").await;
    let erin = server.user("erin").await;
    let frank = server.user("frank").await;
    register(&alice, "apns", "tok-alice").await;
    register(&bob, "apns", "tok-bob").await;
    register(&carol, "fcm", "tok-carol").await;
    register(&dave, "apns", "tok-dave").await;
    register(&erin, "fcm", "tok-erin").await;
    register(&frank, "apns", "tok-frank").await;
    let conversation = alice.conversation("group", &[&bob, &carol, &dave, &erin, &frank]).await;
    let settings = format!("/v1/conversations/{conversation}/settings");
    assert_eq!(dave.put(&settings, json!({"muted": true})).await.0, 200);
    assert_eq!(erin.put(&settings, json!({"notify": "mentions"})).await.0, 200);
    assert_eq!(carol.put("/v1/me/settings", json!({"pushPreview": "none"})).await.0, 200);
    // Frank is online: his live socket gets the message, not his phone.
    let _frank_online = Ws::connect(&frank, None).await;

    alice.say(&conversation, "k1", "hello everyone").await;
    let bob_pushes = pushes_to(&fakes.apns, "tok-bob", 1).await;
    let push = &bob_pushes[0];
    assert_eq!(push.status, 200);
    assert_eq!(push.headers["apns-collapse-id"], conversation, "one collapse key per conversation");
    assert_eq!(push.headers["apns-push-type"], "alert");
    assert_eq!(push.body["aps"]["alert"], json!({"title": "t", "body": "alice: hello everyone"}));
    assert_eq!(push.body["aps"]["badge"], 1, "the badge is bob's unread count");
    assert_eq!(push.body["conversationId"], conversation);
    let carol_pushes = pushes_to(&fakes.fcm, "tok-carol", 1).await;
    assert_eq!(carol_pushes[0].body["message"]["notification"], json!({"body": "New message"}), "pushPreview none hides sender and text");
    assert_eq!(carol_pushes[0].body["message"]["android"]["collapse_key"], conversation);

    let second = alice.say(&conversation, "k2", "@erin and @dave: look").await;
    pushes_to(&fakes.fcm, "tok-erin", 1).await;
    let bob_pushes = pushes_to(&fakes.apns, "tok-bob", 2).await;
    assert_eq!(bob_pushes[1].body["aps"]["badge"], 2);
    // Give any wrong push time to arrive, then check who got none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = fakes.apns.requests();
    for token in ["tok-alice", "tok-dave", "tok-frank"] {
        assert!(!requests.iter().any(|request| request.path.ends_with(token)), "{token} must get no push");
    }
    assert_eq!(fakes.fcm.requests().iter().filter(|request| request.body["message"]["token"] == "tok-erin").count(), 1, "erin: only the mention");

    // Bob reads on another device: his phone gets a silent push clearing the badge.
    let bob_laptop = bob.login("bob", "password123").await;
    assert_eq!(bob_laptop.post(&format!("/v1/conversations/{conversation}/read"), json!({"lastReadMessageId": second["messageId"]})).await.0, 204);
    let bob_pushes = pushes_to(&fakes.apns, "tok-bob", 3).await;
    assert_eq!(bob_pushes[2].headers["apns-push-type"], "background");
    assert_eq!(bob_pushes[2].body["aps"], json!({"content-available": 1, "badge": 0}));

    // The service saw the requests; the counters follow once each answer is in.
    let text = metrics_until(
        &alice,
        &["confab_push_attempts_total{provider=\"apns\",outcome=\"sent\"} 3", "confab_push_attempts_total{provider=\"fcm\",outcome=\"sent\"} 3"],
    )
    .await;
    assert!(text.contains("confab_push_attempts_total{provider=\"apns\",outcome=\"sent\"} 3"), "{text}");
    assert!(text.contains("confab_push_attempts_total{provider=\"fcm\",outcome=\"sent\"} 3"), "carol twice, erin once: {text}");
    assert!(text.contains("confab_push_message_to_request_seconds_count 5"), "message pushes, not the silent one: {text}");
}

#[tokio::test]
async fn failed_pushes_are_retried_rejected_tokens_forgotten_and_hopeless_ones_dead_lettered() {
    failed_pushes(On::Embedded).await;
}

#[tokio::test]
async fn failed_pushes_are_retried_rejected_tokens_forgotten_and_hopeless_ones_dead_lettered_on_temporal() {
    failed_pushes(On::Temporal).await;
}

async fn failed_pushes(on: On) {
    let Some((server, fakes, _data)) = push_server(3, on).await else { return };
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let dave = server.user("dave").await;
    let erin = server.user("erin").await;
    register(&bob, "apns", "unreg-bob").await;
    register(&carol, "fcm", "down2-carol").await;
    register(&dave, "apns", "err9-dave").await;
    register(&erin, "apns", "busy1-erin").await;
    let conversation = alice.conversation("group", &[&bob, &carol, &dave, &erin]).await;
    alice.say(&conversation, "k1", "one").await;
    // Carol's service is down twice (503, Retry-After: 1): the third try lands.
    let carol_pushes = pushes_to(&fakes.fcm, "down2-carol", 3).await;
    assert_eq!(carol_pushes.iter().map(|push| push.status).collect::<Vec<_>>(), vec![503, 503, 200]);
    assert!(carol_pushes[1].at_ms - carol_pushes[0].at_ms >= 900, "Retry-After is honoured");
    // Erin's: 429 once, then accepted.
    let erin_pushes = pushes_to(&fakes.apns, "busy1-erin", 2).await;
    assert_eq!(erin_pushes.iter().map(|push| push.status).collect::<Vec<_>>(), vec![429, 200]);
    // Dave's keeps failing: three attempts, then a dead letter.
    let dave_pushes = pushes_to(&fakes.apns, "err9-dave", 3).await;
    assert!(dave_pushes.iter().all(|push| push.status == 500));
    pushes_to(&fakes.apns, "unreg-bob", 1).await;
    let dead = metrics_until(
        &alice,
        &[
            "confab_workflow_dead_letters_total 1",
            "confab_push_attempts_total{provider=\"apns\",outcome=\"InternalServerError\"} 3",
            "confab_push_attempts_total{provider=\"apns\",outcome=\"Unregistered\"} 1",
        ],
    )
    .await;
    assert!(dead.contains("confab_workflow_dead_letters_total 1"), "{dead}");
    assert!(dead.contains("confab_push_attempts_total{provider=\"apns\",outcome=\"InternalServerError\"} 3"), "{dead}");
    assert!(dead.contains("confab_push_attempts_total{provider=\"apns\",outcome=\"Unregistered\"} 1"), "{dead}");

    // Bob's token was rejected as unregistered: the next message pushes him no more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice.say(&conversation, "k2", "two").await;
    pushes_to(&fakes.fcm, "down2-carol", 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bob_requests = fakes.apns.requests().into_iter().filter(|request| request.path.ends_with("unreg-bob")).count();
    assert_eq!(bob_requests, 1, "a token the service rejected is forgotten");
    // A new token registered by the device works again.
    register(&bob, "apns", "fresh-bob").await;
    alice.say(&conversation, "k3", "three").await;
    pushes_to(&fakes.apns, "fresh-bob", 1).await;

    // Every attempt is in the history, dead letters included, for compliance SQL.
    assert_eq!(alice.post("/v1/admin/roles", json!({"userId": alice.user_id, "role": "compliance"})).await.0, 204);
    let query =
        format!("SELECT attempt, outcome, reason, provider, seq FROM push_attempts WHERE device_id = '{}' AND seq = 1 ORDER BY attempt", dave.device_id);
    crate::harness::sql_until(
        &alice,
        &query,
        json!([
            [1, "retryable", "InternalServerError", "apns", 1],
            [2, "retryable", "InternalServerError", "apns", 1],
            [3, "dead_letter", "InternalServerError", "apns", 1]
        ]),
    )
    .await;
    let query = format!("SELECT outcome FROM push_attempts WHERE device_id = '{}' ORDER BY ts", bob.device_id);
    crate::harness::poll_sql(&alice, &query, |rows| rows.as_array().is_some_and(|rows| rows.len() >= 2)).await;
    let rows = crate::harness::sql_rows(&alice, &query).await;
    assert_eq!(rows, json!([["unregistered"], ["sent"]]), "the rejected token, then the fresh one");

    // A message deleted while its push waits to retry is not pushed again:
    // the push reads its text when it goes out.
    let gina = server.user("gina").await;
    register(&gina, "apns", "down1-gina").await;
    let dm = alice.conversation("dm", &[&gina]).await;
    let doomed = alice.say(&dm, "k4", "oops, wrong chat").await;
    assert_eq!(pushes_to(&fakes.apns, "down1-gina", 1).await[0].status, 503);
    assert_eq!(alice.delete(&format!("/v1/messages/{}", doomed["messageId"].as_str().unwrap())).await.0, 204);
    let query = format!("SELECT attempt, outcome FROM push_attempts WHERE device_id = '{}' ORDER BY attempt", gina.device_id);
    crate::harness::sql_until(&alice, &query, json!([[1, "retryable"], [2, "withdrawn"]])).await;
    assert_eq!(fakes.apns.requests().iter().filter(|request| request.path.ends_with("down1-gina")).count(), 1, "no second request");
}

#[tokio::test]
async fn a_push_that_runs_out_of_time_is_a_dead_letter_in_its_last_row() {
    // One second to live, and the service asks for a second's pause: no retry.
    let Some((server, fakes, _data)) = push_server_aged(8, Some(1), On::Embedded).await else { return };
    let alice = server.user("alice").await;
    let hank = server.user("hank").await;
    register(&hank, "apns", "down9-hank").await;
    let dm = alice.conversation("dm", &[&hank]).await;
    alice.say(&dm, "k1", "are you there?").await;
    assert_eq!(pushes_to(&fakes.apns, "down9-hank", 1).await[0].status, 503);
    metrics_until(&alice, &["confab_workflow_dead_letters_total 1"]).await;
    assert_eq!(alice.post("/v1/admin/roles", json!({"userId": alice.user_id, "role": "compliance"})).await.0, 204);
    let query = format!("SELECT attempt, outcome FROM push_attempts WHERE device_id = '{}'", hank.device_id);
    crate::harness::sql_until(&alice, &query, json!([[1, "dead_letter"]])).await;
    assert_eq!(fakes.apns.requests().iter().filter(|request| request.path.ends_with("down9-hank")).count(), 1);
}
