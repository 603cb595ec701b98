//! Connecting to ClickHouse as Confab does, for the search engine
//! (`[search.clickhouse]`) and the analytics (`[analytics.clickhouse]`):
//! one config shape with its checks, the client settings that work with
//! Debian's 18.16 as with current servers, and waiting for mutations,
//! which 18.16 runs in the background (`mutations_sync` came in 20.1).

use std::time::Duration;

use clickhouse::{Client, Compression};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickhouseConfig {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Created if missing, with the tables.
    pub database: String,
    pub user: String,
    pub password: String,
}

impl Default for ClickhouseConfig {
    fn default() -> Self {
        ClickhouseConfig { url: String::new(), database: "confab".into(), user: "default".into(), password: String::new() }
    }
}

impl ClickhouseConfig {
    /// Every problem, each naming its key in `section` (`[search.clickhouse]`).
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            problems.push(format!("{section} url: set the server's HTTP address, e.g. http://127.0.0.1:8123"));
        }
        if self.database.is_empty() || !self.database.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
            problems.push(format!("{section} database: use letters, digits and _"));
        }
        problems
    }

    /// A client of this server (with no database: statements name theirs).
    /// No compression: 18.16 answers small lz4-compressed results with an
    /// empty body. No row validation: 18.16 has no
    /// `RowBinaryWithNamesAndTypes`, which the crate's validation reads.
    pub fn client(&self) -> Client {
        Client::default().with_url(&self.url).with_user(&self.user).with_password(&self.password).with_compression(Compression::None).with_validation(false)
    }
}

/// Mutations (`ALTER TABLE … DELETE`) still running after the wait.
#[derive(Debug)]
pub enum WaitError {
    /// The server could not be asked.
    Clickhouse(clickhouse::error::Error),
    /// Some were not done within the time given.
    Pending { pending: u64, waited: Duration },
}

/// Waits until every mutation of `tables` in `database` is done, polling
/// `system.mutations` every 50 ms, for at most `within`.
pub async fn wait_for_mutations(client: &Client, database: &str, tables: &[&str], within: Duration) -> Result<(), WaitError> {
    let started = std::time::Instant::now();
    let mut sql = String::from("SELECT count() FROM system.mutations WHERE database = ? AND is_done = 0 AND table IN (");
    for (index, _) in tables.iter().enumerate() {
        sql.push_str(if index == 0 { "?" } else { ", ?" });
    }
    sql.push(')');
    loop {
        let mut query = client.query(&sql).bind(database);
        for table in tables {
            query = query.bind(*table);
        }
        let pending: u64 = query.fetch_one().await.map_err(WaitError::Clickhouse)?;
        if pending == 0 {
            return Ok(());
        }
        if started.elapsed() > within {
            return Err(WaitError::Pending { pending, waited: within });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why a database could not be claimed.
#[derive(Debug)]
pub enum ClaimError {
    Clickhouse(clickhouse::error::Error),
    /// Another data directory (this instance id) claimed it first.
    OwnedBy(String),
}

/// Claims `database` for `source` (a data directory's instance id) in
/// `table`, created if missing: the first source to claim a database owns
/// it, and any other is refused. Positions kept in ClickHouse are offsets
/// of one data directory's log; read by another, they would skip or mix
/// its records silently.
pub async fn claim(client: &Client, database: &str, table: &str, source: &str) -> Result<(), ClaimError> {
    let create = format!("CREATE TABLE IF NOT EXISTS {database}.{table} (source String, claimed_ms Int64) ENGINE = MergeTree ORDER BY (claimed_ms, source)");
    client.query(&create).execute().await.map_err(ClaimError::Clickhouse)?;
    let owner_sql = format!("SELECT source FROM {database}.{table} ORDER BY claimed_ms, source LIMIT 1");
    let mut owner: Option<String> = client.query(&owner_sql).fetch_optional().await.map_err(ClaimError::Clickhouse)?;
    if owner.is_none() {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64);
        let insert = format!("INSERT INTO {database}.{table} (source, claimed_ms) VALUES (?, ?)");
        client.query(&insert).bind(source).bind(now_ms).execute().await.map_err(ClaimError::Clickhouse)?;
        // Two servers claiming at once: the earliest claim wins.
        owner = client.query(&owner_sql).fetch_optional().await.map_err(ClaimError::Clickhouse)?;
    }
    match owner {
        Some(owner) if owner != source => Err(ClaimError::OwnedBy(owner)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_names_its_section_and_key() {
        let config = ClickhouseConfig { url: "127.0.0.1:8123".into(), database: "a-b".into(), ..Default::default() };
        assert_eq!(
            config.problems("[analytics.clickhouse]"),
            vec![
                "[analytics.clickhouse] url: set the server's HTTP address, e.g. http://127.0.0.1:8123".to_string(),
                "[analytics.clickhouse] database: use letters, digits and _".to_string(),
            ]
        );
        let good = ClickhouseConfig { url: "http://127.0.0.1:8123".into(), ..Default::default() };
        assert!(good.problems("[search.clickhouse]").is_empty());
    }
}
