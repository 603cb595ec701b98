//! Property-based fuzzing of every JSON body and query string, against a
//! running server: whatever arrives, the answer is a success or a client
//! error in the API's shape, never a 500, and the server goes on serving.
//! Briefly in CI; longer:
//! `PROPTEST_CASES=20000 cargo nextest run --test integration -E 'test(fuzz)'`.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use crate::harness::TestServer;

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e18f64..1e18).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(json!("u_")),
        Just(json!("c_")),
    ];
    leaf.prop_recursive(2, 16, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,10}", inner, 0..5).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// An object with the route's own field names and any values, or anything at all.
fn body_for(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let shaped = prop::collection::btree_map(prop::sample::select(fields), any_json(), 0..fields.len() + 1)
        .prop_map(|map| Value::Object(map.into_iter().map(|(key, value)| (key.to_string(), value)).collect()));
    prop_oneof![3 => shaped, 1 => any_json()]
}

#[derive(Debug, Clone)]
enum Request {
    Json { method: &'static str, path: String, body: Value },
    Raw { path: &'static str, bytes: Vec<u8> },
    Query { path: &'static str, query: String },
}

fn requests(conversation: String, message: String) -> impl Strategy<Value = Request> {
    let routes: Vec<(&'static str, String, &'static [&'static str])> = vec![
        ("POST", "/v1/users".into(), &["username", "password", "displayName"]),
        ("POST", "/v1/sessions".into(), &["username", "password", "deviceName", "platform"]),
        ("POST", "/v1/conversations".into(), &["type", "memberIds", "title"]),
        ("POST", format!("/v1/conversations/{conversation}/members"), &["userIds"]),
        ("POST", format!("/v1/conversations/{conversation}/read"), &["lastReadMessageId"]),
        ("POST", "/v1/messages".into(), &["conversationId", "clientMsgId", "body", "attachments"]),
        ("PATCH", format!("/v1/messages/{message}"), &["body"]),
        ("POST", "/v1/admin/roles".into(), &["userId", "role"]),
        ("POST", "/v1/admin/sql".into(), &["sql"]),
        ("POST", "/v1/admin/holds".into(), &["userId", "conversationId", "reason"]),
        ("POST", "/v1/admin/retention".into(), &["conversationId", "before"]),
    ];
    let json = prop::sample::select(routes)
        .prop_flat_map(|(method, path, fields)| body_for(fields).prop_map(move |body| Request::Json { method, path: path.clone(), body }));
    let raw = (prop::sample::select(vec!["/v1/users", "/v1/messages", "/v1/conversations"]), prop::collection::vec(any::<u8>(), 0..200))
        .prop_map(|(path, bytes)| Request::Raw { path, bytes });
    let query = (prop::sample::select(vec!["/v1/sync", "/v1/conversations/c_x/messages"]), "[a-zA-Z0-9=&%._-]{0,60}")
        .prop_map(|(path, query)| Request::Query { path, query });
    prop_oneof![6 => json, 1 => raw, 1 => query]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_every_body_and_query_is_answered_in_the_api_shape() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let conversation = alice.conversation("group", &[&bob]).await;
    let message = alice.say(&conversation, "first", "hello").await["messageId"].as_str().unwrap().to_string();
    let (base, token) = (alice.base.clone(), alice.token.clone().unwrap());
    let handle = tokio::runtime::Handle::current();
    let strategy = requests(conversation.clone(), message);
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(300);
    tokio::task::spawn_blocking(move || {
        let http = reqwest::Client::new();
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        runner
            .run(&strategy, |request| {
                let (status, text) = handle.block_on(async {
                    let built = match &request {
                        Request::Json { method, path, body } => http.request(method.parse().unwrap(), format!("{base}{path}")).bearer_auth(&token).json(body),
                        Request::Raw { path, bytes } => {
                            http.post(format!("{base}{path}")).bearer_auth(&token).header("content-type", "application/json").body(bytes.clone())
                        }
                        Request::Query { path, query } => http.get(format!("{base}{path}?{query}")).bearer_auth(&token),
                    };
                    let response = built.send().await.unwrap();
                    (response.status().as_u16(), response.text().await.unwrap())
                });
                prop_assert!(status < 500, "{request:?} answered {status}: {text}");
                if status >= 400 {
                    let body: Value =
                        serde_json::from_str(&text).map_err(|error| TestCaseError::fail(format!("{request:?}: {status} `{text}` is not JSON: {error}")))?;
                    prop_assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{request:?}: {text}");
                }
                Ok(())
            })
            .unwrap();
    })
    .await
    .unwrap();
    // Still serving, and the conversation is intact.
    let (status, _) = alice.get(&format!("/v1/conversations/{conversation}/messages")).await;
    assert_eq!(status, 200);
}
