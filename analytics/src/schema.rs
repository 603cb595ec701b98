//! The analytics tables, their one materialized view, and the example
//! queries `README.md` documents (a test checks that it shows each one as
//! written here). `{db}` is the configured database.
//!
//! Written for ClickHouse 18.16 and later: no `DateTime64` (times are
//! `ts_ms Int64`, with `ts DateTime` computed from it), no
//! `LowCardinality`, joins with an explicit `ANY`.

/// The tables, each `(name, columns and engine)`, created if missing.
pub const TABLES: &[(&str, &str)] = &[
    (
        "message_events",
        "(log_partition UInt32, log_offset UInt64, event_type Enum8('created' = 1, 'edited' = 2, 'deleted' = 3), \
         message_id String, conversation_id String, seq UInt64, sender_id String, actor_id String, device_id String, \
         ts_ms Int64, day Date, ts DateTime DEFAULT toDateTime(intDiv(ts_ms, 1000)), \
         body_chars UInt32, attachments UInt16, mentions UInt16) \
         ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (conversation_id, seq, log_partition, log_offset)",
    ),
    (
        "receipts",
        "(log_partition UInt32, log_offset UInt64, kind Enum8('delivered' = 1, 'read' = 2), \
         conversation_id String, user_id String, device_id String, seq UInt64, \
         ts_ms Int64, day Date, ts DateTime DEFAULT toDateTime(intDiv(ts_ms, 1000))) \
         ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (conversation_id, seq, user_id, log_partition, log_offset)",
    ),
    (
        "conversations",
        "(log_partition UInt32, log_offset UInt64, conversation_id String, conversation_type Enum8('dm' = 1, 'group' = 2, 'channel' = 3), \
         creator_id String, initial_members UInt32, ts_ms Int64, day Date) \
         ENGINE = ReplacingMergeTree ORDER BY conversation_id",
    ),
    (
        "conversation_daily",
        "(day Date, conversation_id String, messages UInt64, edits UInt64, deletes UInt64) \
         ENGINE = SummingMergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, conversation_id)",
    ),
    ("analytics_positions", "(log_partition UInt32, next_offset UInt64) ENGINE = ReplacingMergeTree(next_offset) ORDER BY log_partition"),
];

/// The tables the sink appends log rows to (each row carries its log position).
pub const SUNK: [&str; 3] = ["message_events", "receipts", "conversations"];

/// What `conversation_daily` sums, from rows of `message_events`: the
/// materialized view's query, and retention's recount of a conversation.
const DAILY_COUNTS: &str = "SELECT day, conversation_id, toUInt64(countIf(event_type = 'created')) AS messages, \
     toUInt64(countIf(event_type = 'edited')) AS edits, toUInt64(countIf(event_type = 'deleted')) AS deletes \
     FROM {db}.message_events";

/// `CREATE MATERIALIZED VIEW` statements, run after the tables.
pub fn views(database: &str) -> Vec<String> {
    vec![format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.conversation_daily_mv TO {database}.conversation_daily AS {} GROUP BY day, conversation_id",
        DAILY_COUNTS.replace("{db}", database)
    )]
}

/// Retention's recount of one conversation's days up to a day (binds: the
/// conversation, the day as `YYYY-MM-DD`).
pub fn recount(database: &str) -> String {
    format!(
        "INSERT INTO {database}.conversation_daily {} WHERE conversation_id = ? AND day <= toDate(?) GROUP BY day, conversation_id",
        DAILY_COUNTS.replace("{db}", database)
    )
}

/// Messages sent per day per conversation (from the rollup).
pub const MESSAGES_PER_DAY: &str = "SELECT day, conversation_id, sum(messages) AS messages \
     FROM {db}.conversation_daily GROUP BY day, conversation_id ORDER BY day, conversation_id";

/// Active users per day: those who sent a message or read one.
pub const ACTIVE_USERS_PER_DAY: &str = "SELECT day, uniqExact(user_id) AS active_users FROM (\
     SELECT day, sender_id AS user_id FROM {db}.message_events WHERE event_type = 'created' \
     UNION ALL SELECT day, user_id FROM {db}.receipts WHERE kind = 'read') \
     GROUP BY day ORDER BY day";

/// Delivery and read delays: for each receipt of someone other than the
/// sender, the time from the send of the newest message it covers.
pub const RECEIPT_DELAYS: &str = "SELECT kind, count() AS receipts, \
     quantileExact(0.5)(delay_ms) AS p50_ms, quantileExact(0.99)(delay_ms) AS p99_ms FROM (\
     SELECT r.kind AS kind, r.ts_ms - m.sent_ms AS delay_ms FROM {db}.receipts AS r \
     ANY INNER JOIN (SELECT conversation_id, seq, ts_ms AS sent_ms, sender_id FROM {db}.message_events WHERE event_type = 'created') AS m \
     USING (conversation_id, seq) WHERE r.user_id != m.sender_id) \
     GROUP BY kind ORDER BY kind";

/// Every documented query, named as in `README.md`.
pub const QUERIES: &[(&str, &str)] =
    &[("messages per day per conversation", MESSAGES_PER_DAY), ("active users per day", ACTIVE_USERS_PER_DAY), ("delivery and read delays", RECEIPT_DELAYS)];

/// `query` for `database`.
pub fn query_for(query: &str, database: &str) -> String {
    query.replace("{db}", database)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Single spaces, so that the README's wrapped SQL compares with ours.
    fn words(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn the_readme_shows_every_table_and_query_as_created() {
        let readme = words(include_str!("../README.md"));
        for (name, definition) in TABLES {
            let shown = words(&format!("CREATE TABLE {name} {definition}"));
            assert!(readme.contains(&shown), "README.md does not show the table as created:\n{shown}");
        }
        for (name, query) in QUERIES {
            let shown = words(&query.replace("{db}.", ""));
            assert!(readme.contains(&shown), "README.md does not show the query `{name}` as run:\n{shown}");
        }
        let view = words(&views("db")[0].replace("db.", "").replace(" IF NOT EXISTS", ""));
        assert!(readme.contains(&view), "README.md does not show the view as created:\n{view}");
    }
}
