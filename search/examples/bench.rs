//! The search benchmark without building the whole server:
//! `cargo run --release -p confab-search --example bench -- --messages 10000000 --postgres postgresql://...`
//! (the same program as `confab bench search`; see `src/bench.rs`).

fn main() -> anyhow::Result<()> {
    let mut options = confab_search::bench::SearchOptions {
        dir: None,
        messages: 10_000_000,
        conversations: 100_000,
        users: 10_000,
        queries: 200,
        postgres: None,
        clickhouse: None,
        engines: vec!["embedded".into()],
    };
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    for pair in arguments.chunks(2) {
        let [name, value] = pair else {
            anyhow::bail!("usage: bench [--dir D] [--messages N] [--conversations N] [--users N] [--queries N] [--postgres URL] [--clickhouse URL] [--engines embedded|none]")
        };
        match name.as_str() {
            "--dir" => options.dir = Some(value.into()),
            "--messages" => options.messages = value.parse()?,
            "--conversations" => options.conversations = value.parse()?,
            "--users" => options.users = value.parse()?,
            "--queries" => options.queries = value.parse()?,
            "--postgres" => options.postgres = Some(value.clone()),
            "--clickhouse" => options.clickhouse = Some(value.clone()),
            "--engines" => options.engines = value.split(',').filter(|name| !name.is_empty() && *name != "none").map(str::to_string).collect(),
            other => anyhow::bail!("unknown option `{other}`"),
        }
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(confab_search::bench::run(options))
}
