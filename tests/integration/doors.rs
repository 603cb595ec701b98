//! The doors of the listeners, tried as an attacker would: slow and idle
//! connections, too many connections, TLS, socket caps, expired tokens,
//! and writes in a loop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{assert_error, test_config, TestServer};
use crate::ws::Ws;

fn address(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or `limit` passes);
/// returns what it sent and whether it closed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buffer) {
            Ok(0) => return (String::from_utf8_lossy(&received).into_owned(), true),
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), false)
}

/// Slowloris: a request head that never ends is dropped at the header-read
/// timeout, and so is a keep-alive connection left idle; everyone else is
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_dropped() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.gateway.header_read_timeout_ms = 500;
    let server = TestServer::start_with(config).await;
    let address = address(&server);
    let slow = tokio::task::spawn_blocking({
        let address = address.clone();
        move || {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: confab\r\nX-Slow: ").unwrap();
            read_until_closed(&mut stream, Duration::from_secs(10))
        }
    });
    let (status, _) = server.client().get("/healthz").await;
    assert_eq!(status, 200, "others are served while the slow client hangs");
    let (_, closed) = slow.await.unwrap();
    assert!(closed, "a head that never ends is dropped");

    let idle = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: confab\r\n\r\n").unwrap();
        read_until_closed(&mut stream, Duration::from_secs(10))
    });
    let (answer, closed) = idle.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle keep-alive connection is closed");
}

/// Over the per-address cap a connection is answered 503 in the API's
/// shape without being read; a slot frees when one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.gateway.max_connections_per_ip = 3;
    let server = TestServer::start_with(config).await;
    let address = address(&server);
    let (held, answer) = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&address).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(&address).unwrap();
        (held, read_until_closed(&mut extra, Duration::from_secs(5)))
    })
    .await
    .unwrap();
    let (text, closed) = answer;
    assert!(closed && text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains(r#""code":"unavailable""#), "{text}");
    drop(held);
    let mut status = 0;
    for _ in 0..50 {
        status = server.client().get("/healthz").await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "closed connections free their slots");
}

/// A certificate for `localhost` and 127.0.0.1, made with openssl.
pub fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    (cert, key)
}

/// TLS on the HTTP listener: HTTPS and WSS work, plain HTTP does not get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_speaks_tls_for_https_and_wss() {
    let temporary = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(temporary.path());
    let mut config = test_config(&temporary.path().join("data"));
    config.gateway.tls = Some(confab_gateway::config::TlsFiles { cert_file: cert.clone(), key_file: key });
    let server = TestServer::start_with(config).await;
    let port = address(&server).rsplit(':').next().unwrap().to_string();
    let https = format!("https://localhost:{port}");
    let curl = |args: Vec<String>| Command::new("curl").args(["-s", "--max-time", "10", "--cacert"]).arg(&cert).args(args).output().unwrap();
    let signup = curl(vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        json!({"username": "alice", "password": "password123"}).to_string(),
        format!("{https}/v1/users"),
    ]);
    assert!(String::from_utf8_lossy(&signup.stdout).contains("\"userId\""), "{}", String::from_utf8_lossy(&signup.stdout));
    let login = curl(vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        json!({"username": "alice", "password": "password123"}).to_string(),
        format!("{https}/v1/sessions"),
    ]);
    let session: serde_json::Value = serde_json::from_slice(&login.stdout).unwrap();
    let token = session["accessToken"].as_str().unwrap().to_string();
    // Plain HTTP to the TLS port is not served.
    let plain = Command::new("curl")
        .args(["-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://localhost:{port}/healthz")])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
    // WSS: the upgrade and the hello frame, with Python's ssl (no TLS in the Rust test clients).
    let script = format!(
        r#"
import socket, ssl, base64, os
context = ssl.create_default_context(cafile={cert:?})
with socket.create_connection(("127.0.0.1", {port})) as raw:
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        key = base64.b64encode(os.urandom(16)).decode()
        tls.sendall(("GET /v1/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + "\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += tls.recv(4096)
        head, rest = data.split(b"\r\n\r\n", 1)
        print(head.split(b"\r\n")[0].decode())
        while len(rest) < 2:
            rest += tls.recv(4096)
        length = rest[1] & 0x7f
        offset = 2
        if length == 126:
            while len(rest) < 4:
                rest += tls.recv(4096)
            length = int.from_bytes(rest[2:4], "big")
            offset = 4
        while len(rest) < offset + length:
            rest += tls.recv(4096)
        print(rest[offset:offset + length].decode())
"#,
        cert = cert.to_string_lossy()
    );
    let output = tokio::task::spawn_blocking(move || Command::new("python3").args(["-c", &script]).output().unwrap()).await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains(r#""type":"hello""#), "{text}");
}

/// Sockets are capped per account; a socket closes (4401) when its token expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_capped_per_account_and_close_when_the_token_expires() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    config.gateway.ws_per_user_max = 2;
    config.gateway.access_token_ttl_secs = 3;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let first = Ws::connect(&alice, None).await;
    let _second = Ws::connect(&alice, None).await;
    let mut request = format!("{}/v1/ws", alice.base.replace("http://", "ws://")).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", alice.token.as_ref().unwrap()).parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(refused.to_string().contains("429"), "{refused}");

    let (_writer, mut reader) = first.into_stream().split();
    let close = crate::ws::close_frame(&mut reader).await;
    assert_eq!(u16::from(close.code), 4401, "{close:?}");
    assert!(close.reason.contains("expired"), "{close:?}");
}

/// Edits, new conversations and member changes are limited like sends,
/// answered 429 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_write_is_rate_limited() {
    use confab_gateway::rate_limit::{Rate, RateLimitConfig};
    let temporary = tempfile::tempdir().unwrap();
    let mut config = test_config(temporary.path());
    let slow = |burst| Some(Rate { per_second: 0.001, burst });
    config.gateway.rate_limits = RateLimitConfig {
        signup_per_ip: None,
        write_per_conversation: slow(3),
        conversations_per_account: slow(2),
        members_added_per_account: slow(5),
        ..RateLimitConfig::default()
    };
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.conversation("group", &[&bob]).await;
    let sent = alice.say(&group, "m1", "hello").await;
    let message_id = sent["messageId"].as_str().unwrap().to_string();
    for index in 0..3 {
        let (status, body) = alice.patch(&format!("/v1/messages/{message_id}"), json!({"body": format!("edit {index}")})).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_error(&alice.patch(&format!("/v1/messages/{message_id}"), json!({"body": "one too many"})).await, 429, "rate_limited");
    // Another conversation is not limited by this one.
    let other = bob.conversation("group", &[]).await;
    let (status, _) = bob.post(&format!("/v1/conversations/{other}/members"), json!({"userIds": [alice.user_id]})).await;
    assert_eq!(status, 204);
    // Alice made one conversation; the second fills her burst, the third waits.
    let (status, _) = alice.post("/v1/conversations", json!({"type": "group", "memberIds": [], "title": "two"})).await;
    assert_eq!(status, 201);
    assert_error(&alice.post("/v1/conversations", json!({"type": "group", "memberIds": [], "title": "three"})).await, 429, "rate_limited");
    // Adding many users at once takes one token each.
    let carol = server.user("carol").await;
    let many: Vec<String> = (0..5).map(|index| format!("u_nobody{index}")).chain([carol.user_id.clone()]).collect();
    assert_error(&bob.post(&format!("/v1/conversations/{other}/members"), json!({"userIds": many})).await, 429, "rate_limited");
}
