//! The push clients against the local servers that speak each protocol.

use std::time::Duration;

use confab_push::apns::{ApnsClient, ApnsConfig};
use confab_push::fake::{self, ApnsExpect, FcmExpect};
use confab_push::fcm::{FcmClient, FcmConfig, ServiceAccount};
use confab_push::{Alert, ErrorKind, Notification};
use serde_json::json;

fn notification(token: &str, alert: bool) -> Notification {
    let mut data = serde_json::Map::new();
    data.insert("conversationId".into(), json!("c_1"));
    data.insert("seq".into(), json!(7));
    Notification {
        token: token.into(),
        collapse_key: "c_1".into(),
        alert: alert.then(|| Alert { title: Some("alice".into()), body: "hello".into() }),
        badge: Some(3),
        data,
        ttl_secs: 3600,
    }
}

async fn apns() -> (tempfile::TempDir, fake::FakeServer, ApnsClient) {
    let dir = tempfile::tempdir().unwrap();
    let keys = fake::generate_keys(dir.path()).unwrap();
    let expect =
        ApnsExpect { team_id: "TEAM123456".into(), key_id: "KEY1234567".into(), topic: "chat.confab.app".into(), public_pem: keys.apns_public_pem.clone() };
    let server = fake::start_apns(expect).await.unwrap();
    let config = ApnsConfig {
        base_url: server.base_url(),
        team_id: "TEAM123456".into(),
        key_id: "KEY1234567".into(),
        key_pem: std::fs::read(&keys.apns_key).unwrap(),
        topic: "chat.confab.app".into(),
        timeout: Duration::from_secs(5),
    };
    (dir, server, ApnsClient::new(config).unwrap())
}

#[tokio::test]
async fn apns_pushes_carry_the_headers_apple_requires_over_http2() {
    let (_dir, server, client) = apns().await;
    client.send(&notification("aa11", true), Some("123e4567-e89b-12d3-a456-426614174000")).await.unwrap();
    client.send(&notification("aa11", false), None).await.unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let (alert, silent) = (&requests[0], &requests[1]);
    assert_eq!(alert.status, 200);
    assert_eq!(alert.path, "/3/device/aa11");
    assert_eq!(alert.headers["apns-topic"], "chat.confab.app");
    assert_eq!(alert.headers["apns-push-type"], "alert");
    assert_eq!(alert.headers["apns-priority"], "10");
    assert_eq!(alert.headers["apns-collapse-id"], "c_1");
    assert_eq!(alert.headers["apns-id"], "123e4567-e89b-12d3-a456-426614174000");
    assert!(alert.headers["apns-expiration"].parse::<u64>().unwrap() > 1_700_000_000);
    assert_eq!(alert.body["aps"]["alert"], json!({"title": "alice", "body": "hello"}));
    assert_eq!(alert.body["aps"]["badge"], 3);
    assert_eq!(alert.body["conversationId"], "c_1");
    assert_eq!(silent.headers["apns-push-type"], "background");
    assert_eq!(silent.headers["apns-priority"], "5");
    assert_eq!(silent.body["aps"]["content-available"], 1);
    assert_eq!(alert.headers["authorization"], silent.headers["authorization"], "one provider token for both: it is not made again per push");
}

#[tokio::test]
async fn apns_failures_say_whether_to_retry_or_forget_the_token() {
    let (_dir, _server, client) = apns().await;
    let unregistered = client.send(&notification("unreg-1", true), None).await.unwrap_err();
    assert_eq!((unregistered.kind, unregistered.status, unregistered.reason.as_str()), (ErrorKind::Unregistered, 410, "Unregistered"));
    let bad = client.send(&notification("bad-1", true), None).await.unwrap_err();
    assert_eq!((bad.kind, bad.reason.as_str()), (ErrorKind::Unregistered, "BadDeviceToken"));
    let busy = client.send(&notification("busy1-a", true), None).await.unwrap_err();
    assert_eq!((busy.kind, busy.status, busy.retry_after), (ErrorKind::Retryable, 429, Some(Duration::from_secs(1))));
    client.send(&notification("busy1-a", true), None).await.expect("the second try is accepted");
    let down = client.send(&notification("down1-a", true), None).await.unwrap_err();
    assert_eq!((down.kind, down.status), (ErrorKind::Retryable, 503));
    let error = client.send(&notification("err1-a", true), None).await.unwrap_err();
    assert_eq!((error.kind, error.status), (ErrorKind::Retryable, 500));
}

#[tokio::test]
async fn apns_refuses_a_provider_token_signed_with_another_key() {
    let (dir, server, _client) = apns().await;
    std::fs::create_dir(dir.path().join("other")).unwrap();
    let other = fake::generate_keys(&dir.path().join("other")).unwrap();
    let config = ApnsConfig {
        base_url: server.base_url(),
        team_id: "TEAM123456".into(),
        key_id: "KEY1234567".into(),
        key_pem: std::fs::read(&other.apns_key).unwrap(),
        topic: "chat.confab.app".into(),
        timeout: Duration::from_secs(5),
    };
    let impostor = ApnsClient::new(config).unwrap();
    let refused = impostor.send(&notification("aa11", true), None).await.unwrap_err();
    assert_eq!((refused.status, refused.reason.as_str(), refused.kind), (403, "InvalidProviderToken", ErrorKind::Permanent));
}

async fn fcm() -> (tempfile::TempDir, fake::FakeServer, FcmClient) {
    let dir = tempfile::tempdir().unwrap();
    let keys = fake::generate_keys(dir.path()).unwrap();
    let server = fake::start_fcm(FcmExpect { project_id: "confab-test".into(), public_pem: keys.fcm_public_pem.clone() }).await.unwrap();
    let account_path = dir.path().join("service-account.json");
    fake::write_service_account(&account_path, &keys, &server, "confab-test").unwrap();
    let account: ServiceAccount = serde_json::from_slice(&std::fs::read(&account_path).unwrap()).unwrap();
    let config = FcmConfig { base_url: server.base_url(), project_id: "confab-test".into(), account, timeout: Duration::from_secs(5) };
    (dir, server, FcmClient::new(config).unwrap())
}

#[tokio::test]
async fn fcm_sends_v1_messages_with_one_oauth_token() {
    let (_dir, server, client) = fcm().await;
    client.send(&notification("fcm-token-1", true)).await.unwrap();
    client.send(&notification("fcm-token-1", false)).await.unwrap();
    assert_eq!(client.token_refreshes(), 1, "the access token is kept until it expires");
    let sends: Vec<_> = server.requests().into_iter().filter(|request| request.path.ends_with("messages:send")).collect();
    assert_eq!(sends.len(), 2);
    let message = &sends[0].body["message"];
    assert_eq!(message["token"], "fcm-token-1");
    assert_eq!(message["notification"], json!({"title": "alice", "body": "hello"}));
    assert_eq!(message["data"], json!({"conversationId": "c_1", "seq": "7"}), "FCM data values are strings");
    assert_eq!(message["android"]["collapse_key"], "c_1");
    assert_eq!(message["apns"]["headers"]["apns-collapse-id"], "c_1");
    assert_eq!(message["apns"]["payload"]["aps"]["badge"], 3);
    assert!(sends[0].headers["authorization"].starts_with("Bearer ya29.fake-"));
    assert!(sends[1].body["message"].get("notification").is_none(), "a silent push shows nothing");
}

#[tokio::test]
async fn fcm_failures_say_whether_to_retry_or_forget_the_token() {
    let (_dir, _server, client) = fcm().await;
    let unregistered = client.send(&notification("unreg-x", true)).await.unwrap_err();
    assert_eq!((unregistered.kind, unregistered.status, unregistered.reason.as_str()), (ErrorKind::Unregistered, 404, "UNREGISTERED"));
    let bad = client.send(&notification("bad-x", true)).await.unwrap_err();
    assert_eq!(bad.kind, ErrorKind::Unregistered, "not a valid registration token: {bad}");
    let down = client.send(&notification("down1-x", true)).await.unwrap_err();
    assert_eq!((down.kind, down.status, down.retry_after), (ErrorKind::Retryable, 503, Some(Duration::from_secs(1))));
    let busy = client.send(&notification("busy1-x", true)).await.unwrap_err();
    assert_eq!((busy.kind, busy.reason.as_str()), (ErrorKind::Retryable, "QUOTA_EXCEEDED"));
    assert!(busy.retry_after.unwrap() >= Duration::from_secs(60), "FCM asks for at least a minute after a quota error");
}

#[tokio::test]
async fn a_slow_service_is_a_retryable_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let keys = fake::generate_keys(dir.path()).unwrap();
    let expect = ApnsExpect { team_id: "T".into(), key_id: "K".into(), topic: "chat.confab.app".into(), public_pem: keys.apns_public_pem.clone() };
    let server = fake::start_apns(expect).await.unwrap();
    let config = ApnsConfig {
        base_url: server.base_url(),
        team_id: "T".into(),
        key_id: "K".into(),
        key_pem: std::fs::read(&keys.apns_key).unwrap(),
        topic: "chat.confab.app".into(),
        timeout: Duration::from_millis(200),
    };
    let client = ApnsClient::new(config).unwrap();
    let slow = client.send(&notification("slow2000-a", true), None).await.unwrap_err();
    assert_eq!((slow.kind, slow.status, slow.reason.as_str()), (ErrorKind::Retryable, 0, "timeout"));
    client.send(&notification("slow50-a", true), None).await.expect("an answer within the timeout is a success");
}
