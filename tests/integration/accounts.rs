//! Accounts, sessions, tokens, rate limits and operations routes.

use serde_json::json;

use crate::harness::{assert_error, test_config, TestServer};

#[tokio::test]
async fn signup_and_login_follow_the_contract() {
    let server = TestServer::start().await;
    let client = server.client();
    let (status, body) = client.post("/v1/users", json!({"username": "alice", "password": "password123", "displayName": "Alice"})).await;
    assert_eq!(status, 201);
    assert_eq!(body["username"], "alice");
    assert!(body["userId"].as_str().unwrap().starts_with("u_"));

    let taken = client.post("/v1/users", json!({"username": "alice", "password": "password123"})).await;
    assert!(assert_error(&taken, 409, "conflict").contains("`alice`"));

    let (status, session) =
        client.post("/v1/sessions", json!({"username": "alice", "password": "password123", "deviceName": "phone", "platform": "ios"})).await;
    assert_eq!(status, 201);
    assert_eq!(session["userId"], body["userId"]);
    assert!(session["deviceId"].as_str().unwrap().starts_with("d_"));
    assert_eq!(session["expiresIn"], 86_400);

    let wrong_password = assert_error(&client.post("/v1/sessions", json!({"username": "alice", "password": "wrong-password"})).await, 401, "unauthenticated");
    let unknown_user = assert_error(&client.post("/v1/sessions", json!({"username": "nobody", "password": "wrong-password"})).await, 401, "unauthenticated");
    assert_eq!(wrong_password, unknown_user, "an unknown user must look like a wrong password");
}

#[tokio::test]
async fn bad_account_input_names_the_field() {
    let server = TestServer::start().await;
    let client = server.client();
    for (request, field) in [
        (json!({"username": "AB", "password": "password123"}), "`username`"),
        (json!({"username": "Alice", "password": "password123"}), "`username`"),
        (json!({"username": "a".repeat(33), "password": "password123"}), "`username`"),
        (json!({"username": "alice", "password": "short"}), "`password`"),
        (json!({"username": "alice"}), "`password`"),
        (json!({"username": 7, "password": "password123"}), "`username`"),
        (json!({"username": "alice", "password": "password123", "displayName": ""}), "`displayName`"),
    ] {
        let message = assert_error(&client.post("/v1/users", request.clone()).await, 400, "bad_request");
        assert!(message.contains(field), "{request} -> {message}");
    }
    assert_error(&client.post_raw("/v1/users", b"{not json".to_vec()).await, 400, "bad_request");
    assert_error(&client.post_raw("/v1/users", Vec::new()).await, 400, "bad_request");
    let huge = format!(r#"{{"username": "alice", "password": "{}"}}"#, "p".repeat(300 * 1024));
    assert_error(&client.post_raw("/v1/users", huge.into_bytes()).await, 413, "too_large");
}

#[tokio::test]
async fn every_route_but_signup_login_and_health_needs_a_valid_token() {
    let server = TestServer::start().await;
    let anonymous = server.client();
    let (status, body) = anonymous.get("/healthz").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    for path in ["/v1/conversations", "/v1/sync", "/v1/conversations/c_x/messages", "/v1/conversations/c_x/members", "/metrics"] {
        assert_error(&anonymous.get(path).await, 401, "unauthenticated");
    }
    assert_error(&anonymous.post("/v1/messages", json!({})).await, 401, "unauthenticated");
    let mut forged = anonymous.clone();
    forged.token = Some("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.AAAA".into());
    assert_error(&forged.get("/v1/conversations").await, 401, "unauthenticated");

    let alice = server.user("alice").await;
    let (status, metrics) = alice.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.as_str().unwrap().contains("confab_http_requests_total{route=\"/v1/users\",method=\"POST\",status=\"201\"} 1"));
    assert_error(&alice.get("/v1/no-such-route").await, 404, "not_found");
}

#[tokio::test]
async fn sends_and_logins_are_rate_limited_with_retry_after() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.gateway.rate_limits = Default::default();
    // The defaults, but signups unlimited so the test can make its users.
    config.gateway.rate_limits.signup_per_ip = None;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let group = alice.conversation("group", &[]).await;
    let mut limited = None;
    for index in 0..200 {
        let response = alice
            .http
            .post(format!("{}/v1/messages", alice.base))
            .bearer_auth(alice.token.as_ref().unwrap())
            .json(&json!({"conversationId": group, "clientMsgId": format!("m{index}"), "body": "spam"}))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
            limited = Some((index, retry_after));
            break;
        }
        assert_eq!(response.status(), 201);
    }
    let (index, retry_after) = limited.expect("a script sending in a loop is stopped");
    assert!((50..=60).contains(&index), "the burst allows about 50 sends, stopped at {index}");
    assert!(retry_after >= 1);

    // Another account is not affected by alice's limit.
    let bob = server.user("bob").await;
    let bobs = bob.conversation("group", &[]).await;
    bob.say(&bobs, "b1", "hello").await;

    let client = server.client();
    let mut login_limited = false;
    for _ in 0..15 {
        let response = client.post("/v1/sessions", json!({"username": "bob", "password": "wrong-password"})).await;
        if response.0 == 429 {
            login_limited = true;
            break;
        }
        assert_error(&response, 401, "unauthenticated");
    }
    assert!(login_limited, "password guessing against one account is stopped");
}

/// A stranger's wrong guesses never lock the owner out: failures count per
/// account and address, so the owner's address still gets in with the
/// right password, while the guesser's address is refused even the right one.
#[tokio::test]
async fn a_stranger_cannot_lock_the_owner_out() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.gateway.rate_limits = Default::default();
    config.gateway.rate_limits.signup_per_ip = None;
    config.gateway.trust_forwarded_for = true;
    let server = TestServer::start_with(config).await;
    server.user("owner").await;
    let http = reqwest::Client::new();
    let login = |from: &'static str, password: &'static str| {
        let request =
            http.post(format!("{}/v1/sessions", server.base)).header("x-forwarded-for", from).json(&json!({"username": "owner", "password": password}));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_string());
            (status, retry_after)
        }
    };
    let mut limited = None;
    for attempt in 0..15 {
        let (status, retry_after) = login("203.0.113.66", "wrong-password").await;
        if status == 429 {
            limited = Some((attempt, retry_after));
            break;
        }
        assert_eq!(status, 401);
    }
    let (attempt, retry_after) = limited.expect("guessing from one address is stopped");
    assert_eq!(attempt, 10, "ten wrong passwords, then the address waits");
    assert!(retry_after.is_some());
    assert_eq!(login("203.0.113.66", "password123").await.0, 429, "the guesser's address is refused even the right password");
    assert_eq!(login("198.51.100.7", "password123").await.0, 201, "the owner's address gets in");
    // A name that cannot be an account is a wrong login (and keys no limit).
    assert_eq!(login("198.51.100.7", "password123").await.0, 201);
    let (status, body) = server.client().post("/v1/sessions", json!({"username": "Ω".repeat(500), "password": "password123"})).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn the_first_account_is_the_administrator_and_survives_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.user("alice").await;
    server.user("bob").await;
    server.restart().await;
    let alice = alice.with_base(&server.base);
    // Tokens stay valid across a restart (the signing key is kept with the data).
    let (status, _) = alice.get("/v1/conversations").await;
    assert_eq!(status, 200);
    let again = server.client().login("alice", "password123").await;
    assert_eq!(again.user_id, alice.user_id);
}

#[tokio::test]
async fn a_body_declared_over_the_limit_is_refused_at_once_without_sending_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let address = server.base.trim_start_matches("http://").to_string();
    // The headers of a 64 MiB signup, then nothing: the answer must not wait for the body.
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!("POST /v1/users HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 64 * 1024 * 1024);
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), socket.read_to_end(&mut answer))
        .await
        .expect("answered, and the connection closed, without the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("67108864"), "{body}");
    // The server serves everyone else.
    let (status, _) = server.client().post("/v1/users", json!({"username": "alice", "password": "password123"})).await;
    assert_eq!(status, 201);
}
