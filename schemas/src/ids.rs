//! Opaque identifiers: a type prefix, then 20 characters of time and
//! randomness (sortable by creation time, unguessable enough for IDs; they
//! are never secrets, so a fast generator is used).

pub type UserId = String;
pub type DeviceId = String;
pub type ConversationId = String;
pub type MessageId = String;
/// An upload (`f_...`).
pub type MediaId = String;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new ID such as `u_01j9z3...`: 10 characters of milliseconds, 10 random.
pub fn new_id(prefix: &str, now_ms: i64) -> String {
    let mut id = String::with_capacity(prefix.len() + 21);
    id.push_str(prefix);
    id.push('_');
    let time = now_ms.max(0) as u64;
    for shift in (0..10).rev() {
        id.push(ALPHABET[((time >> (shift * 5)) & 31) as usize] as char);
    }
    let random = fastrand::u64(..);
    for shift in 0..10 {
        id.push(ALPHABET[((random >> (shift * 5)) & 31) as usize] as char);
    }
    id
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// A stable hash (FNV-1a) for choosing partitions: it must not change
/// between runs, so the standard library's randomly keyed hasher won't do.
pub fn stable_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_hash_is_stable() {
        let earlier = new_id("m", 1_700_000_000_000);
        let later = new_id("m", 1_700_000_000_001);
        assert!(earlier < later);
        assert_eq!(earlier.len(), 22);
        assert_eq!(stable_hash("c_abc"), stable_hash("c_abc"));
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
    }
}
