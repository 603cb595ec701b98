//! The on-disk frame of one record:
//! `[payload length: u32 LE][crc32: u32 LE][offset: u64 LE][payload]`.
//! The checksum covers the offset and the payload, so a frame copied to the
//! wrong place, a torn write or a zero-filled tail all fail the check.

pub const HEADER_BYTES: usize = 16;

pub fn encode(offset: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(payload);
    let checksum = hasher.finalize();
    let length = u32::try_from(payload.len()).expect("record size is bounded far below 4 GiB by LogConfig");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(payload);
}

/// What decoding the bytes at one position found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Frame {
        offset: u64,
        payload: &'a [u8],
        frame_bytes: usize,
    },
    /// Fewer bytes than the frame needs: a torn tail, or a read that stopped short.
    Incomplete,
    Invalid(&'static str),
}

pub fn decode(bytes: &[u8], max_payload_bytes: usize) -> Decoded<'_> {
    if bytes.len() < HEADER_BYTES {
        return Decoded::Incomplete;
    }
    let length = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let checksum = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let offset = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if length == 0 && checksum == 0 {
        return Decoded::Invalid("zero-filled bytes");
    }
    if length > max_payload_bytes {
        return Decoded::Invalid("length over the record limit");
    }
    let Some(payload) = bytes.get(HEADER_BYTES..HEADER_BYTES + length) else {
        return Decoded::Incomplete;
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(payload);
    if hasher.finalize() != checksum {
        return Decoded::Invalid("checksum mismatch");
    }
    Decoded::Frame { offset, payload, frame_bytes: HEADER_BYTES + length }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_detected() {
        let mut bytes = Vec::new();
        encode(7, b"hello", &mut bytes);
        assert_eq!(decode(&bytes, 1024), Decoded::Frame { offset: 7, payload: b"hello", frame_bytes: 21 });
        assert_eq!(decode(&bytes[..20], 1024), Decoded::Incomplete);
        let mut flipped = bytes.clone();
        flipped[18] ^= 1;
        assert_eq!(decode(&flipped, 1024), Decoded::Invalid("checksum mismatch"));
        assert_eq!(decode(&[0u8; 32], 1024), Decoded::Invalid("zero-filled bytes"));
    }

    // Property-based fuzzing of the frame decoder. Briefly in CI; longer:
    // `PROPTEST_CASES=200000 cargo nextest run -p confab-log -E 'test(fuzz)'`.
    proptest::proptest! {
        /// Any bytes: a frame inside them, incomplete, or invalid; never a
        /// panic, and a frame never claims more bytes than there are.
        #[test]
        fn fuzz_any_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256), limit in 0usize..512) {
            match decode(&bytes, limit) {
                Decoded::Frame { payload, frame_bytes, .. } => {
                    proptest::prop_assert!(frame_bytes <= bytes.len());
                    proptest::prop_assert_eq!(frame_bytes, HEADER_BYTES + payload.len());
                    proptest::prop_assert!(payload.len() <= limit);
                }
                Decoded::Incomplete | Decoded::Invalid(_) => {}
            }
        }

        /// What is encoded decodes to itself, and any one flipped bit is
        /// caught: never read back as another record.
        #[test]
        fn fuzz_frames_round_trip_and_a_flipped_bit_is_caught(
            offset in proptest::num::u64::ANY,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 1..200),
            bit in proptest::num::usize::ANY,
        ) {
            let mut bytes = Vec::new();
            encode(offset, &payload, &mut bytes);
            proptest::prop_assert_eq!(decode(&bytes, 1024), Decoded::Frame { offset, payload: &payload, frame_bytes: bytes.len() });
            let bit = bit % (bytes.len() * 8);
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            if let Decoded::Frame { offset: read_offset, payload: read_payload, .. } = decode(&damaged, 1024) {
                proptest::prop_assert!(false, "a damaged frame was read as offset {read_offset} with {} bytes", read_payload.len());
            }
        }
    }
}
