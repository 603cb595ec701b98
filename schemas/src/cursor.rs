//! The sync cursor: one offset per log partition, encoded as an opaque
//! string. A conversation lives in one partition, so "everything after the
//! cursor" is, per partition, everything at or after that offset.

use base64::Engine;

const VERSION_PREFIX: &str = "c1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCursor {
    pub positions: Vec<Position>,
}

/// Within one partition: every event at an offset above `offset`, and the
/// events at `offset` from index `skip` on, are still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub offset: u64,
    pub skip: u32,
}

impl Position {
    pub fn at(offset: u64) -> Position {
        Position { offset, skip: 0 }
    }

    /// Whether the event `index` of record `offset` comes at or after this position.
    pub fn admits(&self, offset: u64, index: u32) -> bool {
        offset > self.offset || (offset == self.offset && index >= self.skip)
    }
}

impl SyncCursor {
    pub fn start(partitions: u32) -> SyncCursor {
        SyncCursor { positions: vec![Position::at(0); partitions as usize] }
    }

    pub fn encode(&self) -> String {
        let text = self
            .positions
            .iter()
            .map(|position| match position.skip {
                0 => position.offset.to_string(),
                skip => format!("{}-{skip}", position.offset),
            })
            .collect::<Vec<_>>()
            .join(".");
        format!("{VERSION_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text))
    }

    /// Decodes a cursor made by [`encode`](Self::encode) for a log with `partitions`.
    pub fn decode(cursor: &str, partitions: u32) -> Option<SyncCursor> {
        let encoded = cursor.strip_prefix(VERSION_PREFIX)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let positions: Vec<Position> = text.split('.').map(parse_position).collect::<Option<_>>()?;
        (positions.len() == partitions as usize).then_some(SyncCursor { positions })
    }
}

fn parse_position(text: &str) -> Option<Position> {
    match text.split_once('-') {
        None => Some(Position::at(text.parse().ok()?)),
        Some((offset, skip)) => Some(Position { offset: offset.parse().ok()?, skip: skip.parse().ok()? }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let positions = vec![Position::at(0), Position { offset: 17, skip: 2 }, Position::at(4_000_000_000_000)];
        let cursor = SyncCursor { positions };
        assert_eq!(SyncCursor::decode(&cursor.encode(), 3), Some(cursor.clone()));
        assert_eq!(SyncCursor::decode(&cursor.encode(), 4), None);
        assert_eq!(SyncCursor::decode("c1!!", 3), None);
        assert_eq!(SyncCursor::decode("nope", 3), None);
    }
}
