//! `Fingerprint`: how a key is shown anywhere a person might see it — the provider prefix, `…`,
//! the last 4 characters and 8 hex digits of its SHA-256. Never more of the key than that.

use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;

use crate::redact::KEY_PREFIXES as PREFIXES;

/// Keys shorter than this show no characters at all, only the hash: four characters of an
/// eight-character key would be half of it.
const MIN_LEN_FOR_TAIL: usize = 20;

#[derive(Clone, PartialEq, Eq)]
pub struct Fingerprint(Arc<str>);

impl Fingerprint {
    pub fn of(key: &str) -> Fingerprint {
        let digest = Sha256::digest(key.as_bytes());
        let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        // AWS credentials show their access key id (`AKIA…MPLE`); the hash is the whole bundle's,
        // so new credentials under the same id are still another fingerprint.
        let shown = super::aws::access_key_id(key);
        let key = shown.as_deref().unwrap_or(key);
        let chars = key.chars().count();
        if chars < MIN_LEN_FOR_TAIL || !key.is_ascii() {
            return Fingerprint(format!("…:{hash}").into());
        }
        let prefix = PREFIXES
            .iter()
            .find(|p| key.starts_with(**p))
            .copied()
            .unwrap_or("");
        let tail = &key[key.len() - 4..];
        Fingerprint(format!("{prefix}…{tail}:{hash}").into())
    }

    /// A fingerprint read back from the state store (it was made by `of`).
    pub fn from_stored(text: &str) -> Fingerprint {
        Fingerprint(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_prefix_last_four_and_hash_only() {
        let key = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123Xy7Q";
        let fp = Fingerprint::of(key);
        let s = fp.as_str();
        assert!(s.starts_with("sk-proj-…Xy7Q:"), "{s}");
        assert_eq!(s.len(), "sk-proj-…Xy7Q:".len() + 8);
        assert!(!s.contains("AbCd"));
        assert_eq!(Fingerprint::of(key), fp, "deterministic");
        assert_ne!(
            Fingerprint::of("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0124Xy7Q"),
            fp
        );
    }

    #[test]
    fn other_providers() {
        assert!(
            Fingerprint::of("sk-ant-api03-aaaaaaaaaaaaaaaaaaaaaaaa-bbbbAA")
                .as_str()
                .starts_with("sk-ant-api03-…bbAA:")
        );
        assert!(Fingerprint::of("AIzaSyA1234567890abcdefghijklmnopqrstu")
            .as_str()
            .starts_with("AIza…rstu:"));
        assert!(Fingerprint::of("0123456789abcdef0123456789abcdef")
            .as_str()
            .starts_with("…cdef:"));
    }

    #[test]
    fn short_or_odd_keys_show_only_the_hash() {
        for key in ["ai", "sk-short", "sk-ünïcödé-key-that-is-long"] {
            let s = Fingerprint::of(key).to_string();
            assert!(s.starts_with("…:"), "{s}");
            assert_eq!(s.chars().count(), 10);
        }
    }
}
