//! `confab bench search` (or, without building the whole server,
//! `cargo run --release -p confab-search --example bench -- --messages N`):
//! the search index at scale. Generates messages
//! (deterministically, from a seed) in many conversations of many users,
//! indexes them through the `Engine` trait (the same `apply` the indexing
//! pipeline calls) and reports the rate and the index's size; then times
//! queries of four shapes (a rare word, a common word, a phrase, a prefix)
//! for three scopes (one conversation, a user in 50 conversations, a user
//! in 5,000), newest first, one page of 20. With `--postgres`, the same
//! messages go into PostgreSQL with a `tsvector` column and a GIN index
//! (as Zulip does it) and the same queries are timed there.
//!
//! What it leaves out: the state's re-checks of a page (about 20 point
//! reads from the store per page, measured by `bench state`'s history
//! pages) and HTTP.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::{Change, Engine, Positions, Query, Request, Scope};

pub struct SearchOptions {
    pub dir: Option<PathBuf>,
    pub messages: u64,
    pub conversations: u64,
    pub users: u64,
    pub queries: usize,
    /// A `psql` connection string; the PostgreSQL comparison is skipped without it.
    pub postgres: Option<String>,
    /// A ClickHouse HTTP URL: the ClickHouse engine is loaded and timed too (database `confab_bench`).
    pub clickhouse: Option<String>,
    /// Which of our engines to run without an address: `embedded` (or none).
    pub engines: Vec<String>,
}

/// Frequent words first: drawn with a Zipf-like law, so "the" is in most messages.
const COMMON: [&str; 40] = [
    "the", "to", "and", "a", "of", "is", "in", "it", "for", "you", "on", "we", "this", "that", "with", "be", "can", "at", "will", "have", "meeting", "today",
    "review", "lunch", "deploy", "ticket", "client", "draft", "deadline", "report", "call", "merge", "plan", "ship", "budget", "launch", "invoice", "team",
    "tomorrow", "week",
];
/// The tail of the vocabulary: this many made-up words, each rare.
const TAIL_WORDS: u64 = 200_000;
/// One message in this many holds the rare word.
const RARE_EVERY: u64 = 100_000;
/// One message in this many holds the phrase "release notes".
const PHRASE_EVERY: u64 = 200;
/// One message in this many holds a word starting with "deploym".
const PREFIX_EVERY: u64 = 500;

const SHAPES: [(&str, &str); 4] = [("rare word", "zanzibar"), ("common word", "meeting"), ("phrase", "\"release notes\""), ("prefix", "deploym*")];
const SCOPES: [(&str, usize); 3] = [("one conversation", 1), ("user in 50 conversations", 50), ("user in 5,000 conversations", 5_000)];

/// The `index`th message: its conversation, time and body (the same every run).
fn message(index: u64, options: &SearchOptions, first_ts: i64, step_ms: i64) -> (u64, u64, i64, String) {
    let mut random = fastrand::Rng::with_seed(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let conversation = random.u64(0..options.conversations);
    let sender = random.u64(0..options.users);
    let words = random.usize(4..14);
    let mut body = String::with_capacity(words * 7);
    for position in 0..words {
        if position > 0 {
            body.push(' ');
        }
        // Half the words from the frequent list (Zipf-like), half from the tail.
        if random.bool() {
            let rank = ((COMMON.len() as f64).powf(random.f64()) as usize).saturating_sub(1).min(COMMON.len() - 1);
            body.push_str(COMMON[rank]);
        } else {
            let word = random.u64(0..TAIL_WORDS);
            body.push_str(&format!("w{word:x}"));
        }
    }
    if index % RARE_EVERY == 7 {
        body.push_str(" zanzibar");
    }
    if index % PHRASE_EVERY == 3 {
        body.push_str(" release notes");
    } else if index % PHRASE_EVERY == 5 {
        body.push_str(" notes on the release");
    }
    if index % PREFIX_EVERY == 11 {
        body.push_str([" deployment", " deployments", " deploymentplan"][(index / PREFIX_EVERY % 3) as usize]);
    }
    (conversation, sender, first_ts + index as i64 * step_ms, body)
}

fn conversation_id(conversation: u64) -> String {
    format!("c_{conversation:08x}")
}

pub async fn run(options: SearchOptions) -> anyhow::Result<()> {
    let dir = match &options.dir {
        Some(dir) => dir.clone(),
        None => {
            let dir = std::env::temp_dir().join(format!("confab-bench-search-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            dir
        }
    };
    println!(
        "search benchmark: {} messages in {} conversations of {} users, {} queries per shape and scope, index in {}",
        options.messages,
        options.conversations,
        options.users,
        options.queries,
        dir.display()
    );
    let days = 365i64;
    let first_ts = confab_schemas::ids::now_ms() - days * 86_400_000;
    let step_ms = (days * 86_400_000 / options.messages.max(1) as i64).max(1);
    // The same scopes for every system: a seeded draw of conversations.
    let mut random = fastrand::Rng::with_seed(42);
    let scopes: Vec<(String, Vec<Vec<u64>>)> = SCOPES
        .iter()
        .map(|(name, size)| {
            let draws = (0..options.queries).map(|_| (0..*size).map(|_| random.u64(0..options.conversations)).collect()).collect();
            (name.to_string(), draws)
        })
        .collect();
    if options.engines.iter().any(|engine| engine == "embedded") {
        let engine: Arc<dyn Engine> = Arc::new(crate::embedded::Embedded::open(&dir.join("search"))?);
        load(&*engine, &options, first_ts, step_ms, "one writer thread").await?;
        time_queries(&*engine, &scopes, "embedded (tantivy)").await?;
    }
    if let Some(url) = &options.clickhouse {
        let config = crate::config::ClickhouseConfig { url: url.clone(), database: "confab_bench".into(), ..Default::default() };
        let engine: Arc<dyn Engine> = Arc::new(crate::clickhouse::Clickhouse::open(&config, "confab-bench-search").await?);
        println!();
        load(&*engine, &options, first_ts, step_ms, "inserts of RowBinary over HTTP").await?;
        time_queries(&*engine, &scopes, "ClickHouse").await?;
    }
    if let Some(url) = &options.postgres {
        postgres(url, &options, first_ts, step_ms, &scopes).await?;
    }
    Ok(())
}

/// Indexes the messages the engine does not hold yet, in batches of 20,000; prints the rate and the size.
async fn load(engine: &dyn Engine, options: &SearchOptions, first_ts: i64, step_ms: i64, how: &str) -> anyhow::Result<()> {
    let indexed = engine.positions().await?.get(&0).copied().unwrap_or(0);
    if indexed >= options.messages {
        println!("the index already holds {indexed} messages: skipping the load");
    } else {
        let started = Instant::now();
        let batch = 20_000u64;
        let mut next = indexed;
        while next < options.messages {
            let end = (next + batch).min(options.messages);
            let changes: Vec<Change> = (next..end)
                .map(|index| {
                    let (conversation, sender, ts, body) = message(index, options, first_ts, step_ms);
                    Change::Add(confab_ingest::SearchableMessage {
                        message_id: format!("m_{index:012x}"),
                        conversation_id: conversation_id(conversation),
                        seq: index,
                        sender_id: format!("u_{sender:06x}"),
                        ts,
                        body,
                        has_attachments: index % 50 == 0,
                    })
                })
                .collect();
            engine.apply(changes, Positions::from([(0, end)])).await?;
            next = end;
            if next % 1_000_000 == 0 {
                let elapsed = started.elapsed().as_secs_f64();
                println!("  indexed {next}: {:.0} messages/s so far", (next - indexed) as f64 / elapsed);
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "indexing: {} messages in {elapsed:.1} s = {:.0} messages/s ({how}, a batch of 20,000 per apply)",
            next - indexed,
            (next - indexed) as f64 / elapsed
        );
    }
    println!("index size: {:.1} MiB", engine.size_bytes().await? as f64 / 1_048_576.0);
    Ok(())
}

/// Times every shape for every scope (after a tenth of untimed warm-up).
async fn time_queries(engine: &dyn Engine, scopes: &[(String, Vec<Vec<u64>>)], name: &str) -> anyhow::Result<()> {
    println!("\n{name} p50 / p99 ms, first page of 20, newest first:");
    for (scope_name, draws) in scopes {
        for (shape, q) in SHAPES {
            let query = Query::parse(q)?;
            let mut latencies = Vec::with_capacity(draws.len());
            let mut found = 0;
            let warm = draws.len() / 10;
            for (round, draw) in draws.iter().enumerate() {
                let request = Request {
                    query: query.clone(),
                    scope: draw.iter().map(|&conversation| Scope { conversation_id: conversation_id(conversation), from_seq: 1 }).collect(),
                    sender_id: None,
                    after: None,
                    limit: 21,
                };
                let started = Instant::now();
                let hits = engine.search(&request).await?;
                if round >= warm {
                    latencies.push(started.elapsed().as_micros() as u64);
                    found += hits.len();
                }
            }
            let summary = summarize(latencies);
            println!(
                "  {scope_name:<28} {shape:<12} {:>8.2} / {:>8.2}   ({:.1} hits per query)",
                summary.p50_ms,
                summary.p99_ms,
                found as f64 / summary.count.max(1) as f64
            );
        }
    }
    Ok(())
}

/// Loads the same messages into PostgreSQL (COPY, then the GIN index) and times the same queries through `psql`.
async fn postgres(url: &str, options: &SearchOptions, first_ts: i64, step_ms: i64, scopes: &[(String, Vec<Vec<u64>>)]) -> anyhow::Result<()> {
    let psql = |sql: &str| -> anyhow::Result<String> {
        let output =
            std::process::Command::new("psql").args([url, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().context("running psql")?;
        if !output.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let have: u64 = psql("SELECT count(*) FROM search_bench").ok().and_then(|count| count.parse().ok()).unwrap_or(0);
    if have >= options.messages {
        println!("\nPostgreSQL already holds {have} messages: skipping the load");
    } else {
        psql("DROP TABLE IF EXISTS search_bench; CREATE TABLE search_bench (id bigint, conversation_id text, ts bigint, body text)")?;
        let started = Instant::now();
        let mut child = std::process::Command::new("psql")
            .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "COPY search_bench FROM STDIN"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("running psql")?;
        {
            let mut stdin = std::io::BufWriter::with_capacity(1 << 20, child.stdin.take().context("psql's stdin")?);
            for index in 0..options.messages {
                let (conversation, _, ts, body) = message(index, options, first_ts, step_ms);
                writeln!(stdin, "{index}\t{}\t{ts}\t{body}", conversation_id(conversation))?;
            }
        }
        if !child.wait()?.success() {
            bail!("psql COPY failed");
        }
        let copied = started.elapsed().as_secs_f64();
        let started = Instant::now();
        // The 'simple' configuration folds case like ours; unaccent is an extension, left out.
        psql("ALTER TABLE search_bench ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED")?;
        psql("CREATE INDEX search_bench_tsv ON search_bench USING gin (tsv)")?;
        psql("CREATE INDEX search_bench_conversation ON search_bench (conversation_id, ts)")?;
        psql("VACUUM ANALYZE search_bench")?;
        println!("\nPostgreSQL: COPY {copied:.1} s, tsvector + GIN + (conversation_id, ts) indexes {:.1} s", started.elapsed().as_secs_f64());
    }
    let sizes = psql(
        "SELECT pg_relation_size('search_bench_tsv') || ' ' || pg_relation_size('search_bench_conversation') || ' ' || pg_total_relation_size('search_bench')",
    )?;
    let sizes: Vec<f64> = sizes.split(' ').filter_map(|size| size.parse::<f64>().ok()).map(|bytes| bytes / 1_048_576.0).collect();
    if let [gin, conversation, total] = sizes.as_slice() {
        println!("PostgreSQL sizes: GIN {gin:.1} MiB, (conversation_id, ts) {conversation:.1} MiB, table with indexes and the tsvector {total:.1} MiB");
    }
    println!("PostgreSQL p50 / p99 ms, same queries (psql \\timing, one session):");
    for (scope_name, draws) in scopes {
        for (shape, q) in SHAPES {
            let tsquery = match q {
                "\"release notes\"" => "phraseto_tsquery('simple', 'release notes')".to_string(),
                "deploym*" => "to_tsquery('simple', 'deploym:*')".to_string(),
                word => format!("plainto_tsquery('simple', '{word}')"),
            };
            let mut script = String::from("\\timing on\n");
            for draw in draws {
                let ids: Vec<String> = draw.iter().map(|&conversation| format!("'{}'", conversation_id(conversation))).collect();
                script.push_str(&format!(
                    "SELECT id FROM search_bench WHERE conversation_id IN ({}) AND tsv @@ {tsquery} ORDER BY ts DESC LIMIT 21;\n",
                    ids.join(",")
                ));
            }
            let mut child = std::process::Command::new("psql")
                .args([url, "-X", "-q", "-o", "/dev/null"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("running psql")?;
            child.stdin.take().context("psql's stdin")?.write_all(script.as_bytes())?;
            let output = child.wait_with_output()?;
            let latencies: Vec<u64> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| line.strip_prefix("Time: ")?.split(' ').next()?.parse::<f64>().ok())
                .map(|ms| (ms * 1000.0) as u64)
                .collect();
            let summary = summarize(latencies);
            println!("  {scope_name:<28} {shape:<12} {:>8.2} / {:>8.2}   ({} timed)", summary.p50_ms, summary.p99_ms, summary.count);
        }
    }
    Ok(())
}

struct Summary {
    count: usize,
    p50_ms: f64,
    p99_ms: f64,
}

fn summarize(mut latencies_us: Vec<u64>) -> Summary {
    latencies_us.sort_unstable();
    let at = |fraction: f64| -> f64 {
        if latencies_us.is_empty() {
            return 0.0;
        }
        let index = ((latencies_us.len() as f64 * fraction).ceil() as usize).clamp(1, latencies_us.len()) - 1;
        latencies_us[index] as f64 / 1000.0
    };
    Summary { count: latencies_us.len(), p50_ms: at(0.50), p99_ms: at(0.99) }
}
