//! The byte layout of the store's keys and rows: fixed-width big-endian
//! integers (so keys sort by number) and strings prefixed by a 16-bit
//! length (so a prefix of whole fields never matches a longer field).
//! Hand-written rather than a serde format: it is small, it is the one
//! thing every row needs, and its layout is what the keys' order rests on.

/// Builds a key or a row.
#[derive(Debug, Default)]
pub struct Encoder {
    bytes: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder { bytes: Vec::with_capacity(64) }
    }

    pub fn u8(mut self, value: u8) -> Encoder {
        self.bytes.push(value);
        self
    }

    pub fn bool(self, value: bool) -> Encoder {
        self.u8(value as u8)
    }

    pub fn u32(mut self, value: u32) -> Encoder {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn u64(mut self, value: u64) -> Encoder {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn i64(mut self, value: i64) -> Encoder {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A string of at most 65,535 bytes (longer ones are cut: no field the
    /// server accepts comes near that).
    pub fn str(mut self, value: &str) -> Encoder {
        let bytes = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
        self.bytes.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// An ID in a key: its bytes reversed, behind their length. IDs start
    /// with a type and their time, so keys of IDs made close together share
    /// long prefixes; reversed, they differ in their first bytes, which is
    /// what makes the store's comparisons cheap. A prefix of whole fields
    /// still selects exactly one ID.
    pub fn id(mut self, value: &str) -> Encoder {
        let bytes = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
        self.bytes.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        self.bytes.extend(bytes.iter().rev());
        self
    }

    /// A long string (a body, attachments): 32-bit length.
    pub fn text(mut self, value: &str) -> Encoder {
        self.bytes.extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(value.as_bytes());
        self
    }

    pub fn opt_str(self, value: Option<&str>) -> Encoder {
        match value {
            Some(value) => self.u8(1).str(value),
            None => self.u8(0),
        }
    }

    pub fn opt_u64(self, value: Option<u64>) -> Encoder {
        match value {
            Some(value) => self.u8(1).u64(value),
            None => self.u8(0),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads what an [`Encoder`] wrote; `None` when the bytes run out or are
/// not what was expected (the caller reports the row as damaged).
#[derive(Debug)]
pub struct Decoder<'a> {
    bytes: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { bytes }
    }

    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(taken)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }

    pub fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|bytes| u32::from_be_bytes(bytes.try_into().expect("four bytes")))
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|bytes| u64::from_be_bytes(bytes.try_into().expect("eight bytes")))
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.take(8).map(|bytes| i64::from_be_bytes(bytes.try_into().expect("eight bytes")))
    }

    pub fn str(&mut self) -> Option<String> {
        let length = u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes")) as usize;
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }

    /// An ID written by [`Encoder::id`].
    pub fn id(&mut self) -> Option<String> {
        let length = u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes")) as usize;
        let reversed: Vec<u8> = self.take(length)?.iter().rev().copied().collect();
        String::from_utf8(reversed).ok()
    }

    pub fn text(&mut self) -> Option<String> {
        let length = self.u32()? as usize;
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }

    pub fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }

    pub fn opt_u64(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u64()?)),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_keys_sort_by_number() {
        let reversed = Encoder::new().id("c_01é").finish();
        assert_eq!(Decoder::new(&reversed).id().as_deref(), Some("c_01é"));
        let bytes = Encoder::new().str("c_1").u64(7).opt_str(Some("t")).opt_str(None).text("body").bool(true).i64(-3).finish();
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(decoder.str().as_deref(), Some("c_1"));
        assert_eq!(decoder.u64(), Some(7));
        assert_eq!(decoder.opt_str(), Some(Some("t".to_string())));
        assert_eq!(decoder.opt_str(), Some(None));
        assert_eq!(decoder.text().as_deref(), Some("body"));
        assert_eq!(decoder.bool(), Some(true));
        assert_eq!(decoder.i64(), Some(-3));
        assert!(decoder.is_empty());
        assert_eq!(decoder.u8(), None, "reading past the end fails instead of panicking");
        let nine = Encoder::new().str("c").u64(9).finish();
        let ten = Encoder::new().str("c").u64(10).finish();
        assert!(nine < ten);
        // A shorter ID is never a prefix match of a longer one.
        assert!(!Encoder::new().str("c_12").finish().starts_with(&Encoder::new().str("c_1").finish()));
    }
}
