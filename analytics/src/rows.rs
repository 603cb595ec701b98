//! Log events as analytics rows. No row holds a message body, a title or
//! a name: only who, where, when and how much.

use clickhouse::Row;
use confab_schemas::events::{ConversationType, LogEvent, Mentions};
use serde::Serialize;

/// `event_type` of `message_events` (its `Enum8` values).
const CREATED: i8 = 1;
const EDITED: i8 = 2;
const DELETED: i8 = 3;
/// `kind` of `receipts`.
const DELIVERED: i8 = 1;
const READ: i8 = 2;

#[derive(Debug, Row, Serialize)]
pub struct MessageEventRow {
    pub log_partition: u32,
    pub log_offset: u64,
    pub event_type: i8,
    pub message_id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub sender_id: String,
    pub actor_id: String,
    pub device_id: String,
    pub ts_ms: i64,
    pub day: u16,
    pub body_chars: u32,
    pub attachments: u16,
    pub mentions: u16,
}

#[derive(Debug, Row, Serialize)]
pub struct ReceiptRow {
    pub log_partition: u32,
    pub log_offset: u64,
    pub kind: i8,
    pub conversation_id: String,
    pub user_id: String,
    pub device_id: String,
    pub seq: u64,
    pub ts_ms: i64,
    pub day: u16,
}

#[derive(Debug, Row, Serialize)]
pub struct ConversationRow {
    pub log_partition: u32,
    pub log_offset: u64,
    pub conversation_id: String,
    pub conversation_type: i8,
    pub creator_id: String,
    pub initial_members: u32,
    pub ts_ms: i64,
    pub day: u16,
}

/// Per table, the first log offset of the partition it does not hold yet
/// (rows below it are skipped: they are in already).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Starts {
    pub message_events: u64,
    pub receipts: u64,
    pub conversations: u64,
}

impl Starts {
    /// Where reading must start for every table to get what it lacks.
    pub fn lowest(&self) -> u64 {
        self.message_events.min(self.receipts).min(self.conversations)
    }
}

/// Rows waiting for the next insert.
#[derive(Debug, Default)]
pub struct Batch {
    pub message_events: Vec<MessageEventRow>,
    pub receipts: Vec<ReceiptRow>,
    pub conversations: Vec<ConversationRow>,
}

/// The UTC day of a time, as ClickHouse's `Date` (days since 1970-01-01).
pub fn day_of(ts_ms: i64) -> u16 {
    ts_ms.div_euclid(86_400_000).clamp(0, i64::from(u16::MAX)) as u16
}

fn saturating_u16(count: usize) -> u16 {
    u16::try_from(count).unwrap_or(u16::MAX)
}

/// A message event's row with what every kind has; the caller fills the rest.
fn message_row(log_partition: u32, log_offset: u64, message_id: &str, conversation_id: &str, seq: u64, ts_ms: i64) -> MessageEventRow {
    MessageEventRow {
        log_partition,
        log_offset,
        event_type: 0,
        message_id: message_id.to_string(),
        conversation_id: conversation_id.to_string(),
        seq,
        sender_id: String::new(),
        actor_id: String::new(),
        device_id: String::new(),
        ts_ms,
        day: day_of(ts_ms),
        body_chars: 0,
        attachments: 0,
        mentions: 0,
    }
}

/// Code points of a body (its length, never its text).
fn chars(body: &str) -> u32 {
    u32::try_from(body.chars().count()).unwrap_or(u32::MAX)
}

fn mention_count(mentions: &Mentions) -> u16 {
    saturating_u16(mentions.user_ids.len() + usize::from(mentions.channel) + usize::from(mentions.here))
}

impl Batch {
    pub fn len(&self) -> usize {
        self.message_events.len() + self.receipts.len() + self.conversations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the rows of the record at `offset`, for each table that lacks it.
    pub fn add(&mut self, event: &LogEvent, log_partition: u32, log_offset: u64, starts: &Starts) {
        let events = log_offset >= starts.message_events;
        let receipts = log_offset >= starts.receipts;
        match event {
            LogEvent::MessageCreated { message_id, conversation_id, seq, sender_id, device_id, body, attachments, ts, mentions, .. } if events => {
                self.message_events.push(MessageEventRow {
                    event_type: CREATED,
                    sender_id: sender_id.clone(),
                    actor_id: sender_id.clone(),
                    device_id: device_id.clone(),
                    body_chars: chars(body),
                    attachments: saturating_u16(attachments.len()),
                    mentions: mention_count(mentions),
                    ..message_row(log_partition, log_offset, message_id, conversation_id, *seq, *ts)
                });
            }
            LogEvent::MessageEdited { message_id, conversation_id, seq, body, sender_id, by, device_id, ts, mentions } if events => {
                self.message_events.push(MessageEventRow {
                    event_type: EDITED,
                    sender_id: sender_id.clone().unwrap_or_default(),
                    actor_id: by.clone(),
                    device_id: device_id.clone(),
                    body_chars: chars(body),
                    mentions: mention_count(mentions),
                    ..message_row(log_partition, log_offset, message_id, conversation_id, *seq, *ts)
                });
            }
            LogEvent::MessageDeleted { message_id, conversation_id, seq, sender_id, by, device_id, ts } if events => {
                self.message_events.push(MessageEventRow {
                    event_type: DELETED,
                    sender_id: sender_id.clone().unwrap_or_default(),
                    actor_id: by.clone(),
                    device_id: device_id.clone(),
                    ..message_row(log_partition, log_offset, message_id, conversation_id, *seq, *ts)
                });
            }
            LogEvent::ReadCursorMoved { conversation_id, user_id, seq, device_id, ts } if receipts => self.receipts.push(ReceiptRow {
                log_partition,
                log_offset,
                kind: READ,
                conversation_id: conversation_id.clone(),
                user_id: user_id.clone(),
                device_id: device_id.clone().unwrap_or_default(),
                seq: *seq,
                ts_ms: *ts,
                day: day_of(*ts),
            }),
            LogEvent::DeliveryReceipts { conversation_id, receipts: delivered, ts } if receipts => {
                self.receipts.extend(delivered.iter().map(|receipt| ReceiptRow {
                    log_partition,
                    log_offset,
                    kind: DELIVERED,
                    conversation_id: conversation_id.clone(),
                    user_id: receipt.user_id.clone(),
                    device_id: receipt.device_id.clone(),
                    seq: receipt.seq,
                    ts_ms: *ts,
                    day: day_of(*ts),
                }));
            }
            LogEvent::ConversationCreated { conversation_id, conversation_type, creator_id, member_ids, ts, .. } if log_offset >= starts.conversations => {
                self.conversations.push(ConversationRow {
                    log_partition,
                    log_offset,
                    conversation_id: conversation_id.clone(),
                    conversation_type: match conversation_type {
                        ConversationType::Dm => 1,
                        ConversationType::Group => 2,
                        ConversationType::Channel => 3,
                    },
                    creator_id: creator_id.clone(),
                    initial_members: u32::try_from(member_ids.len()).unwrap_or(u32::MAX),
                    ts_ms: *ts,
                    day: day_of(*ts),
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_schemas::events::DeliveryReceipt;

    fn created(seq: u64, body: &str) -> LogEvent {
        LogEvent::MessageCreated {
            message_id: format!("m{seq}"),
            conversation_id: "c1".into(),
            seq,
            sender_id: "u1".into(),
            device_id: "d1".into(),
            client_msg_id: "x".into(),
            body: body.into(),
            attachments: Vec::new(),
            ts: 86_400_000 * 3 + 5,
            mentions: Mentions { user_ids: vec!["u2".into()], channel: true, here: false },
            trace: None,
        }
    }

    #[test]
    fn rows_carry_no_text_and_skip_what_a_table_holds() {
        let mut batch = Batch::default();
        let starts = Starts { message_events: 10, receipts: 0, conversations: 0 };
        batch.add(&created(1, "héllo"), 2, 9, &starts);
        batch.add(&created(2, "héllo wörld"), 2, 10, &starts);
        let receipts = LogEvent::DeliveryReceipts {
            conversation_id: "c1".into(),
            receipts: vec![
                DeliveryReceipt { user_id: "u2".into(), device_id: "d2".into(), seq: 2 },
                DeliveryReceipt { user_id: "u3".into(), device_id: "d3".into(), seq: 1 },
            ],
            ts: 7,
        };
        batch.add(&receipts, 2, 11, &starts);
        assert_eq!(batch.message_events.len(), 1, "offset 9 is in the table already");
        let row = &batch.message_events[0];
        assert_eq!((row.seq, row.body_chars, row.mentions, row.day, row.event_type), (2, 11, 2, 3, CREATED));
        assert_eq!(
            batch.receipts.iter().map(|receipt| (receipt.user_id.as_str(), receipt.seq, receipt.kind)).collect::<Vec<_>>(),
            vec![("u2", 2, DELIVERED), ("u3", 1, DELIVERED)]
        );
        assert_eq!(batch.len(), 3);
        assert_eq!(starts.lowest(), 0);
        assert_eq!(day_of(-1), 0);
    }
}
