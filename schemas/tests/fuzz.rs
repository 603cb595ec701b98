//! Property-based fuzzing of what clients send: WebSocket commands and
//! sync cursors. Briefly in CI (proptest's 256 cases); a longer run:
//! `PROPTEST_CASES=200000 cargo nextest run -p confab-schemas --test fuzz`.

use confab_schemas::cursor::{Position, SyncCursor};
use confab_schemas::frames::ClientCommand;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON has no NaN", |number| number.is_finite()).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A command-shaped object: a real `type`, real field names, any values.
fn command_like() -> impl Strategy<Value = Value> {
    let kinds = prop_oneof![Just("message.send"), Just("receipt.delivered"), Just("receipt.read"), Just("typing"), Just("ping"), Just("nope")];
    let fields = prop::collection::btree_map(
        prop_oneof![Just("conversationId"), Just("clientMsgId"), Just("body"), Just("attachments"), Just("seq"), Just("id")],
        any_json(),
        0..6,
    );
    (kinds, fields).prop_map(|(kind, fields)| {
        let mut object = serde_json::Map::new();
        object.insert("type".into(), json!(kind));
        for (name, value) in fields {
            object.insert(name.into(), value);
        }
        Value::Object(object)
    })
}

proptest! {
    /// Any bytes as a command frame: parsed or refused, never a panic.
    #[test]
    fn command_frames_of_any_bytes_are_parsed_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = serde_json::from_str::<ClientCommand>(&text);
    }

    /// Command-shaped objects: a parsed command has what its type requires,
    /// and says the same when written back.
    #[test]
    fn command_like_objects_parse_into_what_they_say(value in command_like()) {
        if let Ok(command) = serde_json::from_value::<ClientCommand>(value.clone()) {
            let kind = value["type"].as_str().unwrap();
            let written = serde_json::to_value(&command).unwrap();
            prop_assert_eq!(written["type"].as_str(), Some(kind));
            if let ClientCommand::Read { seq, .. } | ClientCommand::Delivered { seq, .. } = command {
                prop_assert_eq!(value["seq"].as_u64(), Some(seq));
            }
        }
    }

    /// Cursors: every cursor the server writes reads back the same, for its
    /// partition count only; any other text is refused, never a panic.
    #[test]
    fn cursors_round_trip_and_garbage_is_refused(
        positions in prop::collection::vec((any::<u64>(), any::<u32>()), 1..12),
        garbage in ".{0,64}",
    ) {
        let cursor = SyncCursor { positions: positions.iter().map(|&(offset, skip)| Position { offset, skip }).collect() };
        let count = cursor.positions.len() as u32;
        prop_assert_eq!(SyncCursor::decode(&cursor.encode(), count), Some(cursor.clone()));
        prop_assert_eq!(SyncCursor::decode(&cursor.encode(), count + 1), None);
        if let Some(decoded) = SyncCursor::decode(&garbage, count) {
            prop_assert_eq!(decoded.positions.len(), count as usize);
        }
        // A cursor cut or extended by a character is another cursor or none.
        let encoded = cursor.encode();
        let _ = SyncCursor::decode(&encoded[..encoded.len() - 1], count);
        let _ = SyncCursor::decode(&format!("{encoded}A"), count);
    }
}
