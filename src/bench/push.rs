//! `confab bench push`: pushes through the push pipeline and the embedded
//! workflow engine to local APNs and FCM servers (the fakes of
//! `confab-push`, which verify every provider token and OAuth token).
//!
//! 1. **Fanout**: one message to a group of `--members` members, every one
//!    offline with a push token (half APNs, half FCM) and `notify = all`:
//!    time from the send to the first and the last push request, pushes per
//!    second, and the engine's steps per second meanwhile.
//! 2. **Steady**: `--rate` messages per second for `--seconds` into groups
//!    of five whose members all have tokens: p50/p99 from a message's
//!    acceptance (its `ts`) to each push request, and the send's own p99.
//! 3. **Baseline**: the same sends into groups whose members have no
//!    tokens: the send path's p99 without pushes, to compare.
//!
//! The users, devices, tokens and groups are written straight into the log
//! before the server starts, as `bench state` does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use confab_log::{FileLog, LogConfig};
use confab_push::fake::{self, ApnsExpect, FakeServer, FcmExpect};
use confab_schemas::events::{ConversationType, LogEvent, PushProvider};
use confab_schemas::ids::now_ms;
use serde_json::json;

use super::state::{Loader, PASSWORD_HASH_ITERATIONS, PASSWORD_HASH_MEMORY_KIB};
use super::{post, summarize};

const PASSWORD: &str = "bench-password";
const SMALL_GROUP: usize = 5;

pub(crate) struct PushOptions {
    pub(crate) members: usize,
    pub(crate) rate: f64,
    pub(crate) seconds: u64,
    pub(crate) groups: usize,
    pub(crate) partitions: u32,
    pub(crate) temporal: Option<String>,
    pub(crate) temporal_namespace: String,
    pub(crate) fakes_nice: bool,
    /// Index every message for search (the shipped default) while pushing.
    pub(crate) search: bool,
}

fn user(name: &str) -> String {
    format!("u_{name}")
}

async fn add_user(loader: &mut Loader<'_>, name: &str, hash: &str, token: Option<(PushProvider, String)>, ts: i64) -> anyhow::Result<()> {
    let user_id = user(name);
    let created = LogEvent::UserCreated {
        user_id: user_id.clone(),
        username: name.to_string(),
        display_name: None,
        password_hash: hash.to_string(),
        roles: Vec::new(),
        ts,
    };
    loader.push(&created).await?;
    let device_id = format!("d_{name}");
    loader
        .push(&LogEvent::SessionCreated { user_id: user_id.clone(), device_id: device_id.clone(), device_name: Some("phone".into()), platform: None, ts })
        .await?;
    if let Some((provider, token)) = token {
        loader.push(&LogEvent::PushTokenSet { user_id, device_id, provider, token, app_id: None, ts }).await?;
    }
    Ok(())
}

async fn group(loader: &mut Loader<'_>, id: &str, creator: &str, members: Vec<String>, ts: i64) -> anyhow::Result<()> {
    let created = LogEvent::ConversationCreated {
        conversation_id: id.to_string(),
        conversation_type: ConversationType::Group,
        title: Some(id.to_string()),
        creator_id: user(creator),
        member_ids: members,
        ts,
        history_visibility: None,
    };
    loader.push(&created).await
}

/// Every push request the fakes answered 200.
fn delivered(fakes: &[&FakeServer]) -> Vec<fake::Recorded> {
    fakes.iter().flat_map(|fake| fake.delivered()).collect()
}

fn message_id_of(request: &fake::Recorded) -> Option<String> {
    request.body["messageId"].as_str().or_else(|| request.body["message"]["data"]["messageId"].as_str()).map(String::from)
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command's closing parenthesis, utime and stime are fields 12 and 13.
    (ticks(11) + ticks(12)) / 100.0
}

async fn metric(client: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<f64> {
    let text = client.get(format!("{base}/metrics")).bearer_auth("bench-scrape").send().await?.text().await?;
    Ok(text.lines().find_map(|line| line.strip_prefix(&format!("{name} ")).and_then(|value| value.parse().ok())).unwrap_or(0.0))
}

pub(crate) async fn run(options: PushOptions) -> anyhow::Result<()> {
    let dir = super::tempdir_in_target()?.join("push");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let keys = fake::generate_keys(&dir).map_err(|error| anyhow::anyhow!(error))?;
    let apns_expect =
        ApnsExpect { team_id: "BENCHTEAM".into(), key_id: "BENCHKEY".into(), topic: "chat.confab.bench".into(), public_pem: keys.apns_public_pem.clone() };
    let fcm_expect = FcmExpect { project_id: "confab-bench".into(), public_pem: keys.fcm_public_pem.clone() };
    // With --fakes-nice the fakes' tasks (spawned by the start calls) run
    // on a low-priority runtime of their own, kept until the end.
    let fakes_runtime = match options.fakes_nice {
        true => Some(confab_log::background::Background::start("push-fakes", 1)?),
        false => None,
    };
    let (apns, fcm) = match &fakes_runtime {
        Some(runtime) => {
            let started = runtime.handle().spawn(async move { anyhow::Ok((fake::start_apns(apns_expect).await?, fake::start_fcm(fcm_expect).await?)) });
            started.await??
        }
        None => (fake::start_apns(apns_expect).await?, fake::start_fcm(fcm_expect).await?),
    };
    println!("fake push servers: {}", if options.fakes_nice { "own thread at nice 10" } else { "on the benchmark's runtime" });
    let account = dir.join("fcm-account.json");
    fake::write_service_account(&account, &keys, &fcm, "confab-bench")?;

    // The accounts, tokens and groups, straight into the log.
    let loading = Instant::now();
    {
        let log = FileLog::open(data_dir.join("log"), LogConfig { partitions: options.partitions, ..LogConfig::default() })?;
        let mut loader = Loader::new(&log);
        let config = confab_gateway::auth::PasswordHashConfig { memory_kib: PASSWORD_HASH_MEMORY_KIB, iterations: PASSWORD_HASH_ITERATIONS };
        let hash = confab_gateway::auth::Passwords::new(&config).hash(PASSWORD).map_err(|error| anyhow::anyhow!("{error}"))?;
        let ts = now_ms();
        add_user(&mut loader, "sender", &hash, None, ts).await?;
        let token = |n: usize, prefix: &str| match n % 2 {
            0 => Some((PushProvider::Apns, format!("{prefix}a{n:06}"))),
            _ => Some((PushProvider::Fcm, format!("{prefix}f{n:06}"))),
        };
        let mut members = Vec::new();
        for n in 0..options.members {
            let name = format!("member{n:06}");
            add_user(&mut loader, &name, &hash, token(n, "big"), ts).await?;
            members.push(user(&name));
        }
        group(&mut loader, "c_big", "sender", members, ts).await?;
        for (kind, with_tokens) in [("pushed", true), ("quiet", false)] {
            for g in 0..options.groups {
                let mut members = Vec::new();
                for m in 0..SMALL_GROUP - 1 {
                    let name = format!("{kind}{g:04}x{m}");
                    let token = if with_tokens { token(g * SMALL_GROUP + m, &format!("{kind}{g}-")) } else { None };
                    add_user(&mut loader, &name, &hash, token, ts).await?;
                    members.push(user(&name));
                }
                group(&mut loader, &format!("c_{kind}{g:04}"), "sender", members, ts).await?;
            }
        }
        let records = loader.finish().await?;
        println!(
            "loaded {records} log records ({} members, {} small groups of {SMALL_GROUP} twice) in {:.1} s",
            options.members,
            options.groups,
            loading.elapsed().as_secs_f64()
        );
    }
    let pipelines = dir.join("pipelines");
    match options.search {
        true => super::write_pipelines_without_history(&pipelines)?,
        false => super::write_pipelines_without(&pipelines, &["delta_sink", "search_index"])?,
    }
    println!("search indexing: {}", if options.search { "on" } else { "off" });
    let push_toml = std::fs::read_to_string(pipelines.join("push.toml"))?.replace("large_conversation_members = 1000", "large_conversation_members = 10000000");
    std::fs::write(pipelines.join("push.toml"), push_toml)?;
    let top_level = format!("pipelines_dir = {:?}\n", pipelines.to_string_lossy());
    let extra = format!(
        "[gateway]\nmetrics_token = \"bench-scrape\"\n[gateway.password_hash]\nmemory_kib = {PASSWORD_HASH_MEMORY_KIB}\niterations = {PASSWORD_HASH_ITERATIONS}\n\
         [push.apns]\nbase_url = \"{}\"\nteam_id = \"BENCHTEAM\"\nkey_id = \"BENCHKEY\"\nkey_file = {:?}\ntopic = \"chat.confab.bench\"\n\
         [push.fcm]\nbase_url = \"{}\"\nproject_id = \"confab-bench\"\ncredentials_file = {:?}\n",
        apns.base_url(),
        keys.apns_key.to_string_lossy(),
        fcm.base_url(),
        account.to_string_lossy()
    );
    let mut extra = extra;
    if let Some(address) = &options.temporal {
        extra.push_str(&format!(
            "[workflows]\nengine = \"temporal\"\naddress = {address:?}\nnamespace = {:?}\ntask_queue = \"confab-bench-{}\"\n",
            options.temporal_namespace,
            now_ms()
        ));
    }
    println!("workflow engine: {}", if options.temporal.is_some() { "temporal" } else { "embedded" });
    let config_path = dir.join("confab.toml");
    std::fs::write(&config_path, super::bench_config(options.partitions, &top_level, &extra))?;
    let server = super::start_bench_server_on(&data_dir, &config_path).await?;
    println!("server pid {} ready in {:.1} s", server.pid(), server.started.elapsed().as_secs_f64());
    let base = server.url.clone();
    let client = reqwest::Client::new();
    let session = post(&client, &format!("{base}/v1/sessions"), None, json!({"username": "sender", "password": PASSWORD})).await?;
    let token = session["accessToken"].as_str().context("no access token")?.to_string();

    // 1. One message to the big group.
    let steps_before = metric(&client, &base, "confab_workflow_steps_total").await?;
    let started = Instant::now();
    let message =
        post(&client, &format!("{base}/v1/messages"), Some(&token), json!({"conversationId": "c_big", "clientMsgId": "big-1", "body": "hello everyone"}))
            .await?;
    let sent_ts = message["ts"].as_i64().unwrap_or_else(now_ms);
    loop {
        let count = apns.delivered().len() + fcm.delivered().len();
        if count >= options.members {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("only {count} of {} pushes arrived within 300 s", options.members);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let steps_after = metric(&client, &base, "confab_workflow_steps_total").await?;
    let pushes = delivered(&[&apns, &fcm]);
    let first = pushes.iter().map(|push| push.at_ms).min().unwrap_or(sent_ts);
    let last = pushes.iter().map(|push| push.at_ms).max().unwrap_or(sent_ts);
    println!(
        "fanout: {} pushes; send -> first push {} ms, send -> last push {} ms; {:.0} pushes/s; {:.0} workflow steps/s ({} steps)",
        pushes.len(),
        first - sent_ts,
        last - sent_ts,
        pushes.len() as f64 / ((last - sent_ts).max(1) as f64 / 1000.0),
        (steps_after - steps_before) / elapsed.as_secs_f64(),
        steps_after - steps_before
    );

    // 2 and 3. Steady sends into small groups, with and without pushes.
    let server_pid = server.pid().to_string();
    for kind in ["pushed", "quiet"] {
        let (server_cpu, bench_cpu) = (cpu_seconds(&server_pid), cpu_seconds("self"));
        let round_started = Instant::now();
        let already = delivered(&[&apns, &fcm]).len();
        let total = (options.rate * options.seconds as f64) as usize;
        let interval = Duration::from_secs_f64(1.0 / options.rate);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(total);
        let token = Arc::new(token.clone());
        for n in 0..total {
            ticks.tick().await;
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            let conversation = format!("c_{kind}{:04}", n % options.groups);
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let body = json!({"conversationId": conversation, "clientMsgId": format!("{kind}-{n}"), "body": format!("steady message {n}")});
                let message = post(&client, &format!("{base}/v1/messages"), Some(&token), body).await?;
                anyhow::Ok((started.elapsed().as_micros() as u64, message))
            }));
        }
        let mut send_latencies = Vec::new();
        let mut accepted: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        for task in tasks {
            let (latency, message) = task.await??;
            send_latencies.push(latency);
            accepted.insert(message["messageId"].as_str().unwrap_or_default().to_string(), message["ts"].as_i64().unwrap_or(0));
        }
        let sends = summarize(send_latencies);
        let cpu = |server_cpu: f64, bench_cpu: f64| {
            let seconds = round_started.elapsed().as_secs_f64();
            format!(
                "cpu: server {:.0}%, benchmark and fake push servers {:.0}% (of one core)",
                (cpu_seconds(&server_pid) - server_cpu) / seconds * 100.0,
                (cpu_seconds("self") - bench_cpu) / seconds * 100.0
            )
        };
        if kind == "quiet" {
            println!(
                "steady, no push tokens: {total} sends at {} /s: send p50 {:.2} ms, p99 {:.2} ms; {}",
                options.rate,
                sends.p50_ms,
                sends.p99_ms,
                cpu(server_cpu, bench_cpu)
            );
            continue;
        }
        let expected = already + total * (SMALL_GROUP - 1);
        let waiting = Instant::now();
        while delivered(&[&apns, &fcm]).len() < expected && waiting.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let latencies: Vec<u64> = delivered(&[&apns, &fcm])
            .iter()
            .filter_map(|push| {
                let ts = accepted.get(&message_id_of(push)?)?;
                Some(((push.at_ms - ts).max(0) as u64) * 1000)
            })
            .collect();
        let to_push = summarize(latencies);
        println!(
            "steady, pushed: {total} sends at {} /s -> {} pushes: send -> push request p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; send p50 {:.2} ms, p99 {:.2} ms; {}",
            options.rate,
            to_push.count,
            to_push.p50_ms,
            to_push.p99_ms,
            to_push.max_ms,
            sends.p50_ms,
            sends.p99_ms,
            cpu(server_cpu, bench_cpu)
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
