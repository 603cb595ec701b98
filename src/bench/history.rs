//! `confab bench history`: the history at scale. Writes millions of
//! messages into a log (in time order over some days, as a real history
//! accumulates), lets the history sink catch up and reports its sustained
//! rate, then times the compliance queries over the result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_log::{FileLog, Log, LogConfig};
use confab_query::{HistorySink, HistoryStore, SinkConfig, SqlEngine};
use confab_schemas::events::{ConversationType, LogEvent};

pub struct HistoryOptions {
    pub dir: Option<PathBuf>,
    pub messages: u64,
    pub days: u64,
    pub conversations: u64,
    pub users: u64,
    pub repeat: usize,
}

const WORDS: [&str; 16] =
    ["launch", "budget", "review", "meeting", "lunch", "deploy", "ticket", "invoice", "client", "draft", "deadline", "report", "call", "merge", "plan", "ship"];
/// One message in this many mentions the needle of the LIKE query.
const NEEDLE_EVERY: u64 = 1_000;

pub async fn run(options: HistoryOptions) -> anyhow::Result<()> {
    let dir = match &options.dir {
        Some(dir) => dir.clone(),
        None => super::tempdir_in_target()?,
    };
    let store = HistoryStore::new(&dir.join("history").to_string_lossy(), Default::default())?;
    let engine = SqlEngine::new(store.clone(), confab_query::SqlConfig::default(), dir.join("sql-spill"))?;
    let existing = count(&engine, "SELECT count(*) FROM message_events").await.unwrap_or(0);
    println!(
        "history benchmark: {} messages over {} days, {} conversations, {} users, in {}",
        options.messages,
        options.days,
        options.conversations,
        options.users,
        dir.display()
    );
    if existing >= options.messages as i64 {
        println!("the history already holds {existing} message events: skipping the load");
    } else {
        load(&options, &dir, store.clone()).await?;
    }
    queries(&engine, &options).await
}

/// Fills a log, then times the sink from empty tables to caught up.
async fn load(options: &HistoryOptions, dir: &std::path::Path, store: HistoryStore) -> anyhow::Result<()> {
    let log = Arc::new(FileLog::open(dir.join("log"), LogConfig::default())?);
    let started = Instant::now();
    let now = confab_schemas::ids::now_ms();
    let first_ts = now - (options.days as i64) * 86_400_000;
    let step_ms = ((options.days as i64) * 86_400_000) / options.messages.max(1) as i64;
    let mut batch = Vec::with_capacity(10_000);
    let mut pending = Vec::new();
    for user in 0..options.users {
        let event = LogEvent::UserCreated {
            user_id: format!("u_{user}"),
            username: format!("user{user}"),
            display_name: None,
            password_hash: String::new(),
            roles: Vec::new(),
            ts: first_ts,
        };
        batch.push(event.encode());
    }
    for conversation in 0..options.conversations {
        let event = LogEvent::ConversationCreated {
            conversation_id: format!("c_{conversation}"),
            conversation_type: ConversationType::Group,
            title: None,
            creator_id: format!("u_{}", conversation % options.users),
            member_ids: Vec::new(),
            ts: first_ts,
            history_visibility: None,
        };
        batch.push(event.encode());
    }
    let mut seqs = vec![0u64; options.conversations as usize];
    let mut rng = fastrand::Rng::with_seed(7);
    for index in 0..options.messages {
        let conversation = rng.u64(..options.conversations);
        seqs[conversation as usize] += 1;
        let words: Vec<&str> = (0..12).map(|_| WORDS[rng.usize(..WORDS.len())]).collect();
        let mut body = words.join(" ");
        if index % NEEDLE_EVERY == 0 {
            body.push_str(" zebra");
        }
        let sender = rng.u64(..options.users);
        let event = LogEvent::MessageCreated {
            message_id: format!("m_{index}"),
            conversation_id: format!("c_{conversation}"),
            seq: seqs[conversation as usize],
            sender_id: format!("u_{sender}"),
            device_id: format!("d_{sender}"),
            client_msg_id: format!("k{index}"),
            body,
            attachments: Vec::new(),
            ts: first_ts + index as i64 * step_ms,
            mentions: Default::default(),
            trace: None,
        };
        batch.push(event.encode());
        if batch.len() == 10_000 {
            pending.push(log.append(0, std::mem::take(&mut batch))?);
            if pending.len() >= 16 {
                for ticket in pending.drain(..) {
                    ticket.durable().await?;
                }
            }
        }
    }
    pending.push(log.append(0, batch)?);
    for ticket in pending {
        ticket.durable().await?;
    }
    let records = log.durable_end(0)?;
    println!("log written: {records} records in {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let sink = HistorySink::start(store, log.clone(), SinkConfig::default()).await?;
    let handle = sink.handle();
    let mut last_report = Instant::now();
    loop {
        let written = handle.written_up_to(0);
        if written >= records {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            println!("  sink at {written} of {records} records ({:.0}/s)", written as f64 / started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("sink caught up: {records} records in {elapsed:.1} s = {:.0} records/s sustained (flush_rows 20000, compaction on)", records as f64 / elapsed);
    sink.shutdown().await;
    log.close();
    Ok(())
}

async fn count(engine: &SqlEngine, sql: &str) -> anyhow::Result<i64> {
    let output = engine.query(sql).await?;
    let rows = confab_query::output::to_json_rows(&output)?;
    Ok(rows.first().and_then(|row| row.first()).and_then(serde_json::Value::as_i64).unwrap_or(0))
}

/// Times each compliance query (the engine opens fresh snapshots each time, as the server does).
async fn queries(engine: &SqlEngine, options: &HistoryOptions) -> anyhow::Result<()> {
    let now = confab_schemas::ids::now_ms();
    let first_ts = now - (options.days as i64) * 86_400_000;
    let week_start = first_ts + 10 * 86_400_000;
    let week_end = week_start + 7 * 86_400_000;
    let iso = |ms: i64| chrono_like(ms);
    let day = confab_query::rows::day_of;
    let cases = [
        ("count by sender by day", "SELECT sender_id, day, count(*) AS messages FROM message_events WHERE event_type = 'created' GROUP BY sender_id, day".to_string()),
        (
            "one conversation, 7 days (ts only)",
            format!(
                "SELECT seq, sender_id, ts, body FROM message_events WHERE conversation_id = 'c_42' AND ts >= '{}' AND ts < '{}' ORDER BY seq",
                iso(week_start),
                iso(week_end)
            ),
        ),
        (
            "one conversation, 7 days (+ day)",
            format!(
                "SELECT seq, sender_id, ts, body FROM message_events WHERE conversation_id = 'c_42' AND day BETWEEN '{}' AND '{}' AND ts >= '{}' AND ts < '{}' ORDER BY seq",
                day(week_start),
                day(week_end),
                iso(week_start),
                iso(week_end)
            ),
        ),
        ("one conversation, all time (messages view)", "SELECT seq, sender_id, body FROM messages WHERE conversation_id = 'c_42' ORDER BY seq".to_string()),
        ("LIKE '%zebra%'", "SELECT count(*) FROM message_events WHERE body LIKE '%zebra%'".to_string()),
        ("as_of version 1, count", "SELECT count(*) FROM as_of('message_events', 1)".to_string()),
        ("as_of a time, one conversation", format!("SELECT count(*) FROM as_of('message_events', '{}') WHERE conversation_id = 'c_42'", iso(now))),
    ];
    println!("{:<46} {:>8} {:>10} {:>10}", "query", "rows", "best ms", "median ms");
    for (name, sql) in cases {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..options.repeat.max(1) {
            let started = Instant::now();
            let output = engine.query(&sql).await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            rows = output.batches.iter().map(|batch| batch.num_rows()).sum::<usize>();
        }
        times.sort_by(f64::total_cmp);
        println!("{name:<46} {rows:>8} {:>10.1} {:>10.1}", times[0], times[times.len() / 2]);
    }
    Ok(())
}

/// RFC 3339 in UTC, for SQL literals.
fn chrono_like(ms: i64) -> String {
    let day = confab_query::rows::day_of(ms);
    let in_day = ms.rem_euclid(86_400_000);
    format!("{day}T{:02}:{:02}:{:02}Z", in_day / 3_600_000, (in_day / 60_000) % 60, (in_day / 1_000) % 60)
}
