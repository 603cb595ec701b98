//! The trace context a message carries through the log: a W3C
//! `traceparent` (<https://www.w3.org/TR/trace-context/>), so that the
//! readers of a record (the state, the fanout, push, search, the history)
//! add their spans to the trace of the send that wrote it.
//!
//! Only sampled traces are written: a record of an unsampled send carries
//! no context, and its readers make no spans. The type knows nothing of
//! OpenTelemetry (`confab-telemetry` turns it into a span context), so the
//! floor stays free of it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The span a record's readers make their spans children of: its trace
/// and span ids (both non-zero), sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
}

impl TraceParent {
    /// `None` when either id is zero (invalid in W3C trace context).
    pub fn new(trace_id: u128, span_id: u64) -> Option<TraceParent> {
        (trace_id != 0 && span_id != 0).then_some(TraceParent { trace_id, span_id })
    }
}

/// `00-<trace id, 32 hex>-<span id, 16 hex>-01`.
impl fmt::Display for TraceParent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "00-{:032x}-{:016x}-01", self.trace_id, self.span_id)
    }
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTraceParent(pub &'static str);

impl fmt::Display for BadTraceParent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "invalid traceparent: {}", self.0)
    }
}

impl std::error::Error for BadTraceParent {}

/// Parses a W3C `traceparent`; an unsampled one (flags without bit 0)
/// parses as an error too, since nothing is recorded for it: the caller
/// then starts no trace from it. Versions above `00` are read by their
/// first four fields, as the specification asks.
impl FromStr for TraceParent {
    type Err = BadTraceParent;

    fn from_str(text: &str) -> Result<TraceParent, BadTraceParent> {
        let mut fields = text.trim().split('-');
        let (Some(version), Some(trace_id), Some(span_id), Some(flags)) = (fields.next(), fields.next(), fields.next(), fields.next()) else {
            return Err(BadTraceParent("expected four fields: version-traceid-spanid-flags"));
        };
        let lower_hex = |field: &str, length: usize| field.len() == length && field.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !lower_hex(version, 2) || version == "ff" {
            return Err(BadTraceParent("the version is not two lowercase hex digits (other than ff)"));
        }
        if version == "00" && fields.next().is_some() {
            return Err(BadTraceParent("version 00 has exactly four fields"));
        }
        if !lower_hex(trace_id, 32) || !lower_hex(span_id, 16) || !lower_hex(flags, 2) {
            return Err(BadTraceParent("the ids must be 32 and 16 lowercase hex digits, the flags 2"));
        }
        let flags = u8::from_str_radix(flags, 16).expect("checked hex");
        if flags & 1 == 0 {
            return Err(BadTraceParent("the trace is not sampled"));
        }
        let trace_id = u128::from_str_radix(trace_id, 16).expect("checked hex");
        let span_id = u64::from_str_radix(span_id, 16).expect("checked hex");
        TraceParent::new(trace_id, span_id).ok_or(BadTraceParent("an id is all zeros"))
    }
}

impl Serialize for TraceParent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A record whose context does not parse is read as having none (a reader
/// must never fail on tracing): see [`lenient`].
impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TraceParent, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `#[serde(deserialize_with = "trace::lenient")]`: an unreadable context
/// becomes `None` rather than an unreadable record.
pub fn lenient<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<TraceParent>, D::Error> {
    let text: Option<std::borrow::Cow<'de, str>> = Option::deserialize(deserializer)?;
    Ok(text.and_then(|text| text.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_w3c_form() {
        let parent = TraceParent::new(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7).unwrap();
        let text = parent.to_string();
        assert_eq!(text, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(text.parse::<TraceParent>(), Ok(parent));
        assert_eq!(serde_json::to_string(&parent).unwrap(), format!("\"{text}\""));
    }

    #[test]
    fn refuses_what_the_specification_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?} was accepted");
        }
        // A later version may add fields; its first four are read.
        assert!("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more".parse::<TraceParent>().is_ok());
    }

    #[test]
    fn an_unreadable_context_in_a_record_is_none() {
        #[derive(serde::Deserialize)]
        struct Record {
            #[serde(default, deserialize_with = "lenient")]
            trace: Option<TraceParent>,
        }
        let record: Record = serde_json::from_str(r#"{"trace":"garbage"}"#).unwrap();
        assert_eq!(record.trace, None);
        let record: Record = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(record.trace, None);
    }
}
