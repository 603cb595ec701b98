//! `confab bench ws`: many WebSocket clients against a server process.
//!
//! - `pairs`: 1:1 traffic at a target rate; send-to-receive latency.
//! - `fanout`: one message to a group with every member online; time until
//!   the last member has it.
//! - `idle`: idle connections held by helper processes (one process may
//!   open at most 20,000 files here); server memory per connection.
//! - `senders`: a few sockets, each with up to `--window` sends in flight
//!   (not waiting for each ack), as fast as the server acks; durable sends
//!   per second and ack latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use super::{post, start_bench_server_with, summarize, BenchServer};

/// Handshakes in flight at once while connecting many clients.
const CONNECT_CONCURRENCY: usize = 256;
/// Idle connections per helper process (below the 20,000 open-file limit).
const HELD_PER_PROCESS: usize = 9_000;

pub struct WsOptions {
    pub scenarios: Vec<String>,
    pub pairs: usize,
    pub rate: f64,
    pub seconds: u64,
    pub members: usize,
    pub idle_connections: usize,
    pub sockets: usize,
    pub window: usize,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(base: &str, token: &str) -> anyhow::Result<Socket> {
    let url = format!("{}/v1/ws?accessToken={token}", base.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.context("the WebSocket upgrade failed")?;
    // The hello frame.
    socket.next().await.context("no hello")??;
    Ok(socket)
}

/// Creates `count` accounts concurrently; returns (userId, accessToken).
async fn accounts(client: &reqwest::Client, base: &str, prefix: &str, count: usize) -> anyhow::Result<Vec<(String, String)>> {
    let limit = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for index in 0..count {
        let (client, base, limit) = (client.clone(), base.to_string(), limit.clone());
        let username = format!("{prefix}{index}");
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await?;
            super::account(&client, &base, &username).await
        }));
    }
    let mut made = Vec::new();
    for task in tasks {
        made.push(task.await??);
    }
    Ok(made)
}

pub async fn run(options: WsOptions) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(128).build()?;
    for scenario in &options.scenarios {
        // A fresh server per scenario, so that one's memory does not colour the next.
        // Cheap password hashes: the benchmark creates thousands of accounts.
        let server = start_bench_server_with(1, "[gateway.password_hash]\nmemory_kib = 8\niterations = 1\n").await?;
        println!("[{scenario}] server {} (pid {})", server.url, server.pid());
        match scenario.as_str() {
            "pairs" => pairs(&server, &client, options.pairs, options.rate, options.seconds).await?,
            "fanout" => fanout(&server, &client, options.members).await?,
            "idle" => idle(&server, &client, options.idle_connections).await?,
            "senders" => senders(&server, &client, options.sockets, options.window, options.seconds).await?,
            other => bail!("unknown scenario `{other}`: use pairs, fanout, idle, senders"),
        }
    }
    Ok(())
}

/// `sockets` sender sockets, each in its own group, each keeping `window`
/// sends in flight (closed loop): the rate at which acks, which mean
/// durable, come back.
async fn senders(server: &BenchServer, client: &reqwest::Client, sockets: usize, window: usize, seconds: u64) -> anyhow::Result<()> {
    let base = &server.url;
    let users = accounts(client, base, "sender", sockets).await?;
    let mut connected = Vec::new();
    for (_, token) in &users {
        let group = post(client, &format!("{base}/v1/conversations"), Some(token), json!({"type": "group", "memberIds": [], "title": "senders"})).await?;
        connected.push((group["conversationId"].as_str().unwrap_or_default().to_string(), connect(base, token).await?));
    }
    let body = "x".repeat(200);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (conversation_id, socket) in connected {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            let mut sent_at = std::collections::HashMap::new();
            let mut latencies = Vec::new();
            let mut next_id = 0u64;
            loop {
                if Instant::now() < deadline && sent_at.len() < window {
                    while sent_at.len() < window {
                        next_id += 1;
                        let frame = json!({"type": "message.send", "id": next_id, "conversationId": conversation_id, "clientMsgId": format!("s{next_id}"), "body": body});
                        sink.feed(Message::Text(frame.to_string().into())).await?;
                        sent_at.insert(next_id, Instant::now());
                    }
                    sink.flush().await?;
                }
                if sent_at.is_empty() {
                    break;
                }
                let Some(frame) = stream.next().await else { bail!("the server closed a sender socket") };
                let Message::Text(text) = frame? else { continue };
                let frame: Value = serde_json::from_str(text.as_str())?;
                match frame["type"].as_str() {
                    Some("ack") => {
                        let at = frame["id"].as_u64().and_then(|id| sent_at.remove(&id)).context("an ack for no send")?;
                        latencies.push(at.elapsed().as_micros() as u64);
                    }
                    Some("error") => bail!("a send failed: {frame}"),
                    _ => {}
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = summarize(latencies);
    println!("senders: {sockets} sockets, up to {window} sends in flight each, {seconds} s");
    println!(
        "  {} acked; {:.0} durable msgs/s; ack p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        summary.count,
        summary.count as f64 / elapsed,
        summary.p50_ms,
        summary.p99_ms,
        summary.max_ms
    );
    Ok(())
}

async fn pairs(server: &BenchServer, client: &reqwest::Client, pairs: usize, rate: f64, seconds: u64) -> anyhow::Result<()> {
    let base = &server.url;
    let users = accounts(client, base, "pair", pairs * 2).await?;
    let interval = Duration::from_secs_f64(pairs as f64 / rate);
    let mut connected = Vec::new();
    for pair in 0..pairs {
        let (sender, receiver) = (&users[pair * 2], &users[pair * 2 + 1]);
        let dm = post(client, &format!("{base}/v1/conversations"), Some(&sender.1), json!({"type": "dm", "memberIds": [receiver.0]})).await?;
        let conversation_id = dm["conversationId"].as_str().unwrap_or_default().to_string();
        connected.push((conversation_id, connect(base, &sender.1).await?, connect(base, &receiver.1).await?));
    }
    // Every sender starts on one clock, once everyone is connected.
    let started_at = Instant::now();
    let send_from = started_at + Duration::from_secs(1);
    let send_until = send_from + Duration::from_secs(seconds);
    let deadline = send_until + Duration::from_secs(2);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (conversation_id, sending, mut receiving) in connected {
        receivers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline.into(), receiving.next()).await {
                let Message::Text(text) = frame else { continue };
                let frame: Value = serde_json::from_str(text.as_str())?;
                if frame["type"] == "message.new" {
                    let sent_at: u64 = frame["message"]["body"].as_str().unwrap_or("0").parse().unwrap_or(0);
                    latencies.push((started_at.elapsed().as_micros() as u64).saturating_sub(sent_at));
                }
            }
            anyhow::Ok(latencies)
        }));
        senders.push(tokio::spawn(async move {
            let (mut sink, mut stream) = sending.split();
            // Drain the acks.
            tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
            let mut scheduled = send_from + interval.mul_f64(fastrand::f64());
            let mut counter = 0u64;
            while scheduled < send_until {
                tokio::time::sleep_until(scheduled.into()).await;
                counter += 1;
                // The body is the scheduled send time, so lateness counts as latency.
                let body = (scheduled.duration_since(started_at).as_micros() as u64).to_string();
                let frame =
                    json!({"type": "message.send", "id": counter, "conversationId": conversation_id, "clientMsgId": format!("p{counter}"), "body": body});
                sink.send(Message::Text(frame.to_string().into())).await?;
                scheduled += interval;
            }
            anyhow::Ok(counter)
        }));
    }
    let mut sent = 0;
    for task in senders {
        sent += task.await??;
    }
    let mut latencies = Vec::new();
    for task in receivers {
        latencies.extend(task.await??);
    }
    let received = latencies.len();
    let summary = summarize(latencies);
    println!("pairs: {pairs} dms, {} connections, offered {rate:.0} msgs/s for {seconds} s", pairs * 2);
    println!(
        "  sent {sent}, received {received}; {:.0} msgs/s; send-to-receive p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        received as f64 / seconds as f64,
        summary.p50_ms,
        summary.p99_ms,
        summary.max_ms
    );
    Ok(())
}

async fn fanout(server: &BenchServer, client: &reqwest::Client, members: usize) -> anyhow::Result<()> {
    let base = &server.url;
    let users = accounts(client, base, "member", members).await?;
    let owner = &users[0];
    let group = post(client, &format!("{base}/v1/conversations"), Some(&owner.1), json!({"type": "channel", "memberIds": [], "title": "all hands"})).await?;
    let conversation_id = group["conversationId"].as_str().unwrap_or_default().to_string();
    for chunk in users[1..].chunks(1_000) {
        let ids: Vec<&str> = chunk.iter().map(|user| user.0.as_str()).collect();
        let response =
            client.post(format!("{base}/v1/conversations/{conversation_id}/members")).bearer_auth(&owner.1).json(&json!({"userIds": ids})).send().await?;
        if !response.status().is_success() {
            bail!("adding members answered {}", response.status());
        }
    }
    // Every member online (the owner sends over HTTP and listens too).
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut sockets = Vec::new();
    for user in &users {
        let (base, token, limit) = (base.clone(), user.1.clone(), limit.clone());
        sockets.push(tokio::spawn(async move {
            let _permit = limit.acquire().await?;
            connect(&base, &token).await
        }));
    }
    let mut connected = Vec::new();
    for socket in sockets {
        connected.push(socket.await??);
    }
    println!("fanout: one channel of {members} members, all online");
    let rounds = 5;
    let (arrivals_sender, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for socket in connected {
        let arrivals = arrivals_sender.clone();
        let (mut sink, mut stream) = socket.split();
        // Keep within the server's heartbeat.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if sink.send(Message::Text(r#"{"type":"ping"}"#.into())).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let Message::Text(text) = frame else { continue };
                // Stamp the arrival first; read the round without a full parse.
                let at = Instant::now();
                let text = text.as_str();
                if text.contains(r#""type":"message.new""#) {
                    let round = text.split(r#""body":""#).nth(1).and_then(|rest| rest.split('"').next()).and_then(|body| body.parse().ok()).unwrap_or(0);
                    let _ = arrivals.send((round, at));
                }
            }
        });
    }
    drop(arrivals_sender);
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        post(
            client,
            &format!("{base}/v1/messages"),
            Some(&owner.1),
            json!({"conversationId": conversation_id, "clientMsgId": format!("round-{round}"), "body": round.to_string()}),
        )
        .await?;
        let acked = started.elapsed();
        // Everyone but the sending device gets it.
        let expected = members - 1;
        let mut latencies = Vec::with_capacity(expected);
        let wait_until = started + Duration::from_secs(30);
        while latencies.len() < expected {
            match tokio::time::timeout_at(wait_until.into(), arrivals.recv()).await {
                Ok(Some((arrived_round, at))) if arrived_round == round => latencies.push(at.duration_since(started).as_micros() as u64),
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
        let got = latencies.len();
        let summary = summarize(latencies);
        println!(
            "  round {round}: acked in {:.1} ms; {got}/{expected} members had it; last after {:.1} ms (median {:.1} ms); {:.0} deliveries/s",
            acked.as_secs_f64() * 1000.0,
            summary.max_ms,
            summary.p50_ms,
            got as f64 / (summary.max_ms.max(0.001) / 1000.0)
        );
    }
    Ok(())
}

async fn idle(server: &BenchServer, client: &reqwest::Client, connections: usize) -> anyhow::Result<()> {
    let base = &server.url;
    let holders = connections.div_ceil(HELD_PER_PROCESS);
    let users = accounts(client, base, "idle", holders).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib()?;
    let mut helpers = Vec::new();
    let mut remaining = connections;
    for user in &users {
        let count = remaining.min(HELD_PER_PROCESS);
        remaining -= count;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["bench", "hold", "--url", base, "--token", &user.1, "--connections", &count.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        helpers.push((child, tokio::spawn(async move { lines.next_line().await })));
    }
    let mut held = 0usize;
    let mut children = Vec::new();
    for (child, ready) in helpers {
        let line = ready.await??.unwrap_or_default();
        held += line.strip_prefix("ready ").and_then(|count| count.parse::<usize>().ok()).unwrap_or(0);
        children.push(child);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib()?;
    let per_connection = (after.saturating_sub(before) as f64 * 1024.0) / held.max(1) as f64;
    println!("idle: {held} of {connections} connections held by {} helper processes", children.len());
    println!("  server RSS {before} KiB before, {after} KiB after: {:.1} KiB per connection", per_connection / 1024.0);
    for mut child in children {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.shutdown().await;
        }
        let _ = child.kill().await;
    }
    Ok(())
}

/// `confab bench hold`: opens `connections` idle WebSockets with one token,
/// prints `ready N`, and holds them until its standard input closes.
pub async fn hold(url: String, token: String, connections: usize) -> anyhow::Result<()> {
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (url, token, limit, opened) = (url.clone(), token.clone(), limit.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            let permit = limit.acquire().await.ok()?;
            let socket = connect(&url, &token).await.ok()?;
            drop(permit);
            opened.fetch_add(1, Ordering::Relaxed);
            Some(socket)
        }));
    }
    let mut sockets = Vec::new();
    for task in tasks {
        if let Some(socket) = task.await? {
            sockets.push(socket);
        }
    }
    println!("ready {}", sockets.len());
    // Hold until told to stop, pinging within the server's heartbeat.
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut ticks = tokio::time::interval(Duration::from_secs(20));
    ticks.tick().await;
    loop {
        tokio::select! {
            line = stdin.next_line() => if line?.is_none() { break },
            _ = ticks.tick() => {
                for socket in sockets.iter_mut() {
                    let _ = socket.send(Message::Text(r#"{"type":"ping"}"#.into())).await;
                }
            }
        }
    }
    drop(opened);
    Ok(())
}
