//! Starting servers and talking to them as a client does.

use std::path::{Path, PathBuf};

use confab::config::Config;
use confab::server::Server;
use confab_gateway::rate_limit::RateLimitConfig;
use serde_json::{json, Value};

pub struct TestServer {
    pub server: Option<Server>,
    pub base: String,
    pub data_dir: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

/// A config for tests: a fresh data dir, an ephemeral port, no rate limits
/// (tests of the limits switch them back on).
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config { data_dir: data_dir.to_path_buf(), listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    config.gateway.rate_limits = RateLimitConfig { enabled: false, ..RateLimitConfig::default() };
    // Several partitions, so that cursors and merges across partitions are exercised.
    config.log.partitions = 3;
    // Small caches, so that every test also runs through eviction and
    // reloads from the store; small store buffers, so that tests start fast.
    config.state.conversations_cached_max = 4;
    config.state.recent_messages_per_conversation = 8;
    config.state.users_cached_max = 8;
    config.state.devices_cached_max = 8;
    config.state.cache_max_bytes = 8 * 1024 * 1024;
    config.state.memtable_max_bytes = 4 * 1024 * 1024;
    // Presence changes announced soon after the last socket closes.
    config.gateway.presence_debounce_ms = 200;
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        let temporary = tempfile::tempdir().unwrap();
        let config = test_config(temporary.path());
        let mut server = TestServer::start_with(config).await;
        server._temporary = Some(temporary);
        server
    }

    pub async fn start_with(config: Config) -> TestServer {
        let data_dir = config.data_dir.clone();
        let server = confab::server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.address);
        TestServer { server: Some(server), base, data_dir, _temporary: None }
    }

    /// Stops the server (gracefully) and starts a new one on the same data.
    pub async fn restart(&mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        let server = confab::server::start(test_config(&self.data_dir)).await.expect("server restarts");
        self.base = format!("http://{}", server.address);
        self.server = Some(server);
    }

    /// Stops the server gracefully, leaving its data.
    pub async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }

    pub fn client(&self) -> Client {
        Client { http: reqwest::Client::new(), base: self.base.clone(), token: None, user_id: String::new(), device_id: String::new() }
    }

    /// Signs up `username` and logs in one device.
    pub async fn user(&self, username: &str) -> Client {
        let client = self.client();
        let (status, body) = client.post("/v1/users", json!({"username": username, "password": "password123"})).await;
        assert_eq!(status, 201, "{body}");
        client.login(username, "password123").await
    }
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    pub user_id: String,
    pub device_id: String,
}

impl Client {
    pub async fn login(&self, username: &str, password: &str) -> Client {
        let (status, body) = self.post("/v1/sessions", json!({"username": username, "password": password})).await;
        assert_eq!(status, 201, "{body}");
        Client {
            http: self.http.clone(),
            base: self.base.clone(),
            token: Some(body["accessToken"].as_str().unwrap().to_string()),
            user_id: body["userId"].as_str().unwrap().to_string(),
            device_id: body["deviceId"].as_str().unwrap().to_string(),
        }
    }

    pub fn with_base(&self, base: &str) -> Client {
        Client { base: base.to_string(), ..self.clone() }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, body)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body)).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).header("content-type", "application/json").body(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.patch(format!("{}{path}", self.base)).json(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.put(format!("{}{path}", self.base)).json(&body)).await
    }

    /// A PUT without a body.
    pub async fn client_put(&self, path: &str) -> (u16, Value) {
        self.send(self.http.put(format!("{}{path}", self.base))).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base))).await
    }

    /// Creates a conversation and returns its id.
    pub async fn conversation(&self, kind: &str, members: &[&Client]) -> String {
        let member_ids: Vec<&str> = members.iter().map(|member| member.user_id.as_str()).collect();
        let (status, body) = self.post("/v1/conversations", json!({"type": kind, "memberIds": member_ids, "title": "t"})).await;
        assert!(status == 201 || status == 200, "{status} {body}");
        body["conversationId"].as_str().unwrap().to_string()
    }

    /// Sends a message and returns it.
    pub async fn say(&self, conversation_id: &str, client_msg_id: &str, body: &str) -> Value {
        let (status, message) = self.post("/v1/messages", json!({"conversationId": conversation_id, "clientMsgId": client_msg_id, "body": body})).await;
        assert_eq!(status, 201, "{message}");
        message
    }

    /// Every message of a conversation, walking history pages backwards.
    pub async fn all_messages(&self, conversation_id: &str) -> Vec<Value> {
        let mut pages = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let path = match before {
                Some(before) => format!("/v1/conversations/{conversation_id}/messages?limit=200&before={before}"),
                None => format!("/v1/conversations/{conversation_id}/messages?limit=200"),
            };
            let (status, body) = self.get(&path).await;
            assert_eq!(status, 200, "{body}");
            let messages = body["messages"].as_array().unwrap().clone();
            if let Some(first) = messages.first() {
                before = first["seq"].as_u64();
            }
            let has_more = body["hasMore"].as_bool().unwrap();
            pages.push(messages);
            if !has_more {
                break;
            }
        }
        pages.into_iter().rev().flatten().collect()
    }
}

/// Asserts the API's error shape, status and code, and returns the message.
pub fn assert_error(response: &(u16, Value), status: u16, code: &str) -> String {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["error"]["code"], code, "{}", response.1);
    let message = response.1["error"]["message"].as_str().expect("error has a message").to_string();
    assert!(!message.is_empty());
    message
}

/// Runs a compliance query over HTTP; returns its rows (any status but 200 fails).
pub async fn sql_rows(client: &Client, sql: &str) -> Value {
    let (status, body) = client.post("/v1/admin/sql", json!({"sql": sql})).await;
    assert_eq!(status, 200, "{sql}: {body}");
    body["rows"].clone()
}

/// Polls a query until `done` holds for its rows, and returns them. The
/// history is written in batches, visible within the sink's flush interval.
pub async fn poll_sql(client: &Client, sql: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut rows = Value::Null;
    for _ in 0..100 {
        rows = sql_rows(client, sql).await;
        if done(&rows) {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("`{sql}` never got there; its last rows: {rows}");
}

/// Polls until the query returns at least `count` rows; returns them.
pub async fn query_until(client: &Client, sql: &str, count: usize) -> Value {
    poll_sql(client, sql, |rows| rows.as_array().is_some_and(|rows| rows.len() >= count)).await
}

/// Polls until the query returns exactly `expected`.
pub async fn sql_until(client: &Client, sql: &str, expected: Value) {
    poll_sql(client, sql, |rows| *rows == expected).await;
}

/// `[workflows]` for Temporal's dev server (`tests/run` starts it), with
/// a task queue of the test's own; None (skip) when there is none and
/// none is required.
pub fn temporal_workflows() -> Option<confab::workflows::WorkflowsConfig> {
    let Ok(address) = std::env::var("CONFAB_TEST_TEMPORAL_ADDRESS") else {
        assert!(std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_none(), "CONFAB_REQUIRE_EXTERNAL is set but CONFAB_TEST_TEMPORAL_ADDRESS is not");
        eprintln!("skipping: CONFAB_TEST_TEMPORAL_ADDRESS is not set (tests/run starts Temporal)");
        return None;
    };
    Some(confab::workflows::WorkflowsConfig {
        engine: Some("temporal".into()),
        address: Some(address),
        namespace: std::env::var("CONFAB_TEST_TEMPORAL_NAMESPACE").ok(),
        task_queue: Some(format!("confab-test-{}-{}", std::process::id(), confab_schemas::ids::now_ms())),
        ..Default::default()
    })
}
