//! Durable sends per second through [`Ingest`] alone (no HTTP, no fanout):
//! the cost of the state's write path, with the fjall store or the
//! in-memory one, over a real log that fsyncs every group commit.
//!
//! ```sh
//! cargo run --release -p confab-ingest --example send_rate -- fjall 256 10s
//! cargo run --release -p confab-ingest --example send_rate -- memory 256 10s
//! ```
//!
//! Arguments: the store (`fjall` or `memory`), senders, and how long: `10s`
//! (seconds) or `20000` (that many sends in all, then stop: for counting
//! instructions with `valgrind --tool=callgrind`, which is repeatable). Each
//! sender has its own group of two and sends 200-byte messages with fresh
//! `clientMsgId`s, one at a time (closed loop), like `confab bench sends`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_ingest::store::fjall_store::{FjallOptions, FjallStore};
use confab_ingest::store::memory::MemoryStore;
use confab_ingest::store::Store;
use confab_ingest::{Caller, Ingest, Limits, NewConversation, NewMessage, StateConfig};
use confab_log::{FileLog, Log, LogConfig};
use confab_schemas::events::ConversationType;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let store_kind = arguments.first().map(String::as_str).unwrap_or("fjall").to_string();
    let senders: usize = arguments.get(1).map(|text| text.parse()).transpose()?.unwrap_or(256);
    let until = match arguments.get(2).map(String::as_str).unwrap_or("10s") {
        seconds if seconds.ends_with('s') => Until::Seconds(seconds.trim_end_matches('s').parse()?),
        sends => Until::Sends(sends.parse()?),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(store_kind, senders, until))
}

#[derive(Clone, Copy)]
enum Until {
    Seconds(u64),
    Sends(u64),
}

async fn run(store_kind: String, senders: usize, until: Until) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(std::env::var("SEND_RATE_DIR").unwrap_or_else(|_| "/var/tmp".into()))?;
    let log: Arc<dyn Log> = Arc::new(FileLog::open(dir.path().join("log"), LogConfig::default())?);
    let store: Arc<dyn Store> = match store_kind.as_str() {
        "memory" => Arc::new(MemoryStore::new()),
        "fjall" => Arc::new(FjallStore::open(&dir.path().join("state"), FjallOptions::default())?),
        other => anyhow::bail!("unknown store `{other}`: use `fjall` or `memory`"),
    };
    let ingest = Arc::new(Ingest::open(log, store, Limits::default(), StateConfig::default())?);
    let (stop_checkpoints, stopped) = tokio::sync::watch::channel(false);
    let checkpoints = tokio::spawn(ingest.clone().run_checkpoints(stopped));

    let mut callers = Vec::new();
    for index in 0..senders {
        let user = ingest.create_user(&format!("sender{index}"), None, "x".into()).await?;
        let friend = ingest.create_user(&format!("friend{index}"), None, "x".into()).await?;
        let device_id = ingest.create_device(&user.user_id, None, None).await?;
        let caller = Caller { user_id: user.user_id.clone(), device_id };
        let request = NewConversation {
            conversation_type: ConversationType::Group,
            member_ids: vec![friend.user_id.clone()],
            title: Some(format!("g{index}")),
            history_visibility: None,
        };
        let (conversation, _) = ingest.create_conversation(&caller, request).await?;
        callers.push((caller, conversation.conversation_id));
    }

    let body = "x".repeat(200);
    let running = Arc::new(AtomicBool::new(true));
    let per_sender = match until {
        Until::Sends(sends) => sends.div_ceil(senders as u64),
        Until::Seconds(_) => u64::MAX,
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, (caller, conversation_id)) in callers.into_iter().enumerate() {
        let ingest = ingest.clone();
        let running = running.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sent = 0u64;
            while running.load(Ordering::Relaxed) && sent < per_sender {
                let request = NewMessage {
                    conversation_id: conversation_id.clone(),
                    client_msg_id: format!("{index}-{sent}"),
                    body: body.clone(),
                    attachments: Vec::new(),
                    trace: None,
                };
                let begun = Instant::now();
                ingest.send_message(&caller, request).await.expect("send");
                latencies.push(begun.elapsed());
                sent += 1;
            }
            latencies
        }));
    }
    if let Until::Seconds(seconds) = until {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        running.store(false, Ordering::Relaxed);
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |fraction: f64| latencies[((latencies.len() as f64 * fraction) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "store {store_kind}, {senders} senders: {:.0} sends/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len() as f64 / elapsed,
        percentile(0.5),
        percentile(0.99),
        percentile(1.0)
    );
    stop_checkpoints.send_replace(true);
    checkpoints.await?;
    Ok(())
}
