//! Log events as rows of the history tables.

use std::collections::HashMap;
use std::sync::Arc;

use confab_schemas::events::{ConversationType, LogEvent};
use deltalake::arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use deltalake::arrow::datatypes::DataType as ArrowType;

use crate::tables::Table;

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(Option<String>),
    Int(i64),
    /// An integer that is absent (a nullable integer column).
    NoInt,
    /// Milliseconds since the epoch (stored as microseconds).
    Time(i64),
}

fn text(value: &str) -> Cell {
    Cell::Text(Some(value.to_string()))
}

/// The civil date of a time in milliseconds, `YYYY-MM-DD` (UTC): the
/// partition every table is split by, so that time-bounded queries prune.
pub fn day_of(ts_ms: i64) -> String {
    let days = ts_ms.div_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// An edit or a delete of a message, as a `message_events` row.
struct Change<'a> {
    message_id: &'a str,
    conversation_id: &'a str,
    seq: u64,
    sender_id: &'a str,
    device_id: &'a str,
    ts: i64,
    by: &'a str,
}

impl Change<'_> {
    fn row(&self, event_type: &str, body: Option<&str>) -> (Table, i64, Vec<Cell>) {
        let cells = vec![
            text(self.message_id),
            text(self.conversation_id),
            Cell::Int(self.seq as i64),
            text(self.sender_id),
            text(self.device_id),
            Cell::Time(self.ts),
            text(event_type),
            Cell::Text(body.map(str::to_string)),
            text(self.by),
        ];
        (Table::MessageEvents, self.ts, cells)
    }
}

/// The rows one log record adds, by table (without the trailing log
/// position and day columns, which [`Rows::push`] adds).
pub fn rows_of(event: &LogEvent) -> Vec<(Table, i64, Vec<Cell>)> {
    match event {
        LogEvent::MessageCreated { message_id, conversation_id, seq, sender_id, device_id, body, ts, .. } => vec![(
            Table::MessageEvents,
            *ts,
            vec![
                text(message_id),
                text(conversation_id),
                Cell::Int(*seq as i64),
                text(sender_id),
                text(device_id),
                Cell::Time(*ts),
                text("created"),
                text(body),
                text(sender_id),
            ],
        )],
        LogEvent::MessageEdited { message_id, conversation_id, seq, body, sender_id, by, device_id, ts, .. } => {
            let change = Change { message_id, conversation_id, seq: *seq, sender_id: sender_id.as_deref().unwrap_or(by), device_id, ts: *ts, by };
            vec![change.row("edited", Some(body))]
        }
        LogEvent::MessageDeleted { message_id, conversation_id, seq, sender_id, by, device_id, ts } => {
            let change = Change { message_id, conversation_id, seq: *seq, sender_id: sender_id.as_deref().unwrap_or(by), device_id, ts: *ts, by };
            vec![change.row("deleted", None)]
        }
        LogEvent::ConversationCreated { conversation_id, conversation_type, title, creator_id, member_ids, ts, .. } => {
            let kind = match conversation_type {
                ConversationType::Dm => "dm",
                ConversationType::Group => "group",
                ConversationType::Channel => "channel",
            };
            let mut rows =
                vec![(Table::Conversations, *ts, vec![text(conversation_id), text(kind), Cell::Text(title.clone()), text(creator_id), Cell::Time(*ts)])];
            let mut members = vec![creator_id.clone()];
            members.extend(member_ids.iter().filter(|member| *member != creator_id).cloned());
            for member in members {
                rows.push((Table::MembershipEvents, *ts, vec![text(conversation_id), text(&member), text("joined"), text(creator_id), Cell::Time(*ts)]));
            }
            rows
        }
        LogEvent::MembersAdded { conversation_id, user_ids, by, ts } => user_ids
            .iter()
            .map(|user_id| (Table::MembershipEvents, *ts, vec![text(conversation_id), text(user_id), text("joined"), text(by), Cell::Time(*ts)]))
            .collect(),
        LogEvent::MemberRemoved { conversation_id, user_id, by, ts } => {
            vec![(Table::MembershipEvents, *ts, vec![text(conversation_id), text(user_id), text("left"), text(by), Cell::Time(*ts)])]
        }
        LogEvent::ReadCursorMoved { conversation_id, user_id, seq, device_id, ts } => vec![(
            Table::Receipts,
            *ts,
            vec![text(conversation_id), text(user_id), Cell::Text(device_id.clone()), text("read"), Cell::Int(*seq as i64), Cell::Time(*ts)],
        )],
        LogEvent::DeliveryReceipts { conversation_id, receipts, ts } => receipts
            .iter()
            .map(|receipt| {
                (
                    Table::Receipts,
                    *ts,
                    vec![
                        text(conversation_id),
                        text(&receipt.user_id),
                        text(&receipt.device_id),
                        text("delivered"),
                        Cell::Int(receipt.seq as i64),
                        Cell::Time(*ts),
                    ],
                )
            })
            .collect(),
        LogEvent::PushAttempts { attempts, .. } => attempts
            .iter()
            .map(|attempt| {
                let cells = vec![
                    text(&attempt.flow_id),
                    text(&attempt.user_id),
                    text(&attempt.device_id),
                    text(attempt.provider.name()),
                    text(&attempt.conversation_id),
                    Cell::Int(attempt.seq as i64),
                    Cell::Int(attempt.attempt as i64),
                    text(&attempt.outcome),
                    Cell::Text(attempt.reason.clone()),
                    Cell::Time(attempt.ts),
                ];
                (Table::PushAttempts, attempt.ts, cells)
            })
            .collect(),
        LogEvent::Audited { actor_id, action, details, ts } => vec![(Table::Audit, *ts, vec![Cell::Time(*ts), text(actor_id), text(action), text(details)])],
        LogEvent::UserCreated { user_id, username, display_name, ts, .. } => {
            vec![(Table::Users, *ts, vec![text(user_id), text(username), Cell::Text(display_name.clone()), Cell::Time(*ts)])]
        }
        LogEvent::MediaDeclared { media_id, conversation_id, uploader_id, filename, content_type, size, sha256, ts, .. } => vec![(
            Table::Media,
            *ts,
            vec![
                text(media_id),
                text(conversation_id),
                text(uploader_id),
                text("declared"),
                text(filename),
                text(content_type),
                Cell::Int(*size as i64),
                text(sha256),
                Cell::Text(None),
                Cell::Time(*ts),
            ],
        )],
        LogEvent::MediaUploaded { media_id, conversation_id, ts } => vec![media_change(media_id, conversation_id, "uploaded", None, *ts)],
        LogEvent::MediaChecked { media_id, conversation_id, verdict, reason, ts, .. } => {
            let event_type = match verdict {
                confab_schemas::events::MediaVerdict::Ready => "ready",
                confab_schemas::events::MediaVerdict::Blocked => "blocked",
            };
            vec![media_change(media_id, conversation_id, event_type, reason.clone(), *ts)]
        }
        LogEvent::MediaRemoved { media_id, conversation_id, reason, ts } => {
            vec![media_change(media_id, conversation_id, "removed", Some(reason.clone()), *ts)]
        }
        // Audited separately (`role.revoke`, `session.end` rows in `audit`).
        LogEvent::SessionCreated { .. }
        | LogEvent::SessionEnded { .. }
        | LogEvent::RoleGranted { .. }
        | LogEvent::RoleRevoked { .. }
        | LogEvent::BlockChanged { .. }
        // Settings and push tokens are not history (tokens are secrets of a device).
        | LogEvent::ConversationSettingsChanged { .. }
        | LogEvent::UserSettingsChanged { .. }
        | LogEvent::PushTokenSet { .. }
        | LogEvent::PushTokenRemoved { .. }
        | LogEvent::Lost {} => Vec::new(),
    }
}

/// A `media` row after the declaration: what happened and why.
fn media_change(media_id: &str, conversation_id: &str, event_type: &str, reason: Option<String>, ts: i64) -> (Table, i64, Vec<Cell>) {
    let none = || Cell::Text(None);
    let cells = vec![text(media_id), text(conversation_id), none(), text(event_type), none(), none(), Cell::NoInt, none(), Cell::Text(reason), Cell::Time(ts)];
    (Table::Media, ts, cells)
}

/// Rows waiting to be written, by table.
#[derive(Debug, Default)]
pub struct Rows {
    pub by_table: HashMap<Table, Vec<Vec<Cell>>>,
    pub count: usize,
}

impl Rows {
    /// Adds a row with its log position and day.
    pub fn push(&mut self, table: Table, partition: u32, offset: u64, ts_ms: i64, mut cells: Vec<Cell>) {
        cells.extend([Cell::Int(i64::from(partition)), Cell::Int(offset as i64), Cell::Text(Some(day_of(ts_ms)))]);
        self.by_table.entry(table).or_default().push(cells);
        self.count += 1;
    }

    /// The rows of one table as an Arrow batch in its schema.
    pub fn batch(table: Table, rows: &[Vec<Cell>]) -> RecordBatch {
        let schema = table.arrow_schema();
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(index, field)| -> ArrayRef {
                match field.data_type() {
                    ArrowType::Utf8 => {
                        let mut builder = StringBuilder::new();
                        for row in rows {
                            match &row[index] {
                                Cell::Text(value) => builder.append_option(value.as_deref()),
                                other => panic!("column `{}` holds text, not {other:?}", field.name()),
                            }
                        }
                        Arc::new(builder.finish())
                    }
                    ArrowType::Int64 => {
                        let mut builder = Int64Builder::new();
                        for row in rows {
                            match &row[index] {
                                Cell::Int(value) => builder.append_value(*value),
                                Cell::NoInt => builder.append_null(),
                                other => panic!("column `{}` holds integers, not {other:?}", field.name()),
                            }
                        }
                        Arc::new(builder.finish())
                    }
                    _ => {
                        let mut builder = TimestampMicrosecondBuilder::new().with_timezone("UTC");
                        for row in rows {
                            match &row[index] {
                                Cell::Time(ms) => builder.append_value(ms * 1_000),
                                other => panic!("column `{}` holds times, not {other:?}", field.name()),
                            }
                        }
                        Arc::new(builder.finish())
                    }
                }
            })
            .collect();
        RecordBatch::try_new(schema, columns).expect("rows match their table's schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_civil_dates_in_utc() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(day_of(1_796_016_352_289), "2026-11-30");
        assert_eq!(day_of(-1), "1969-12-31");
    }
}
