//! Signed URLs of the local store: HMAC-SHA256 with the server's media key
//! over the method, the object, the exact length (uploads) and the expiry,
//! as S3's query signing covers them. A URL is a bearer capability for a
//! short time; anything changed in it (another object, length or expiry)
//! breaks the signature.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Signer(..)")
    }
}

/// What a URL allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant<'a> {
    /// PUT exactly `size` bytes of `content_type` to the object.
    Put { object: &'a str, size: u64, content_type: &'a str },
    /// GET the object.
    Get { object: &'a str },
}

impl Signer {
    pub fn new(key: Vec<u8>) -> Signer {
        Signer { key }
    }

    fn mac(&self, grant: &Grant<'_>, expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        let text = match grant {
            Grant::Put { object, size, content_type } => format!("PUT\n{object}\n{size}\n{content_type}\n{expires}"),
            Grant::Get { object } => format!("GET\n{object}\n{expires}"),
        };
        mac.update(text.as_bytes());
        mac
    }

    /// The signature (lowercase hex) of a grant until `expires` (ms).
    pub fn sign(&self, grant: &Grant<'_>, expires: i64) -> String {
        hex(&self.mac(grant, expires).finalize().into_bytes())
    }

    /// Whether `signature` is this grant's (in constant time).
    pub fn verify(&self, grant: &Grant<'_>, expires: i64, signature: &str) -> bool {
        let Some(bytes) = unhex(signature) else { return false };
        self.mac(grant, expires).verify_slice(&bytes).is_ok()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_every_part_of_the_grant() {
        let signer = Signer::new(b"k".to_vec());
        let grant = Grant::Put { object: "f_1/original", size: 10, content_type: "image/png" };
        let signature = signer.sign(&grant, 1000);
        assert!(signer.verify(&grant, 1000, &signature));
        assert!(!signer.verify(&grant, 1001, &signature), "another expiry");
        assert!(!signer.verify(&Grant::Put { object: "f_1/original", size: 11, content_type: "image/png" }, 1000, &signature), "another length");
        assert!(!signer.verify(&Grant::Put { object: "f_2/original", size: 10, content_type: "image/png" }, 1000, &signature), "another object");
        assert!(!signer.verify(&Grant::Put { object: "f_1/original", size: 10, content_type: "text/html" }, 1000, &signature), "another type");
        assert!(!signer.verify(&Grant::Get { object: "f_1/original" }, 1000, &signature), "another method");
        assert!(!Signer::new(b"other".to_vec()).verify(&grant, 1000, &signature), "another key");
        assert!(!signer.verify(&grant, 1000, "zz"), "not hex");
    }
}
