//! `KeyStore`: one upstream's current key behind an `ArcSwap`. A request takes one snapshot with a
//! single lock-free load and keeps it to the end; a rotation builds the next snapshot and `store()`s it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::lint::Finding;
use super::{Fingerprint, Secret};
use crate::reason::Reason;

/// Everything a request needs about the key, built once per load so requests do no work for it.
#[derive(Debug)]
pub struct KeySnapshot {
    /// The ready auth header value (scheme prefix + key), marked sensitive.
    pub header: HeaderValue,
    pub fingerprint: Fingerprint,
    /// 1 for the first key loaded, +1 for every key swapped in after it.
    pub generation: u64,
    /// Where it came from: `env OPENAI_API_KEY`, `file /run/secrets/openai`, ...
    pub source: Arc<str>,
    pub loaded_at: SystemTime,
    pub expires_at: Option<SystemTime>,
    /// SHA-256 of the key, to recognise it later without keeping it.
    pub digest: [u8; 32],
    /// Its length, so most client credentials can be told apart without hashing them.
    pub len: usize,
    /// Lint warnings about the key in use (errors would have refused it).
    pub warnings: Box<[Finding]>,
    /// AWS credentials (`key = { aws = … }`) that sign each request instead of `header`.
    pub aws: Option<Arc<super::aws::Credentials>>,
}

/// What is known about a key besides the key itself.
#[derive(Debug, Clone, Default)]
pub struct KeyMeta {
    pub source: String,
    pub expires_at: Option<SystemTime>,
    pub warnings: Vec<Finding>,
}

/// Why there is no usable key, said so that a person can fix it.
#[derive(Debug, Clone)]
pub struct Unavailable {
    pub reason: Reason,
    pub message: String,
    pub source: Arc<str>,
}

#[derive(Debug)]
pub enum KeyState {
    Ready(KeySnapshot),
    Unavailable(Unavailable),
}

impl KeyState {
    pub fn snapshot(&self) -> Option<&KeySnapshot> {
        match self {
            KeyState::Ready(s) => Some(s),
            KeyState::Unavailable(_) => None,
        }
    }
}

/// The key cannot be put in a header (control characters, a line break...).
#[derive(Debug, thiserror::Error)]
#[error("the key from {source_desc} contains characters that cannot be sent in an HTTP header (control characters or line breaks)")]
pub struct InvalidHeaderKey {
    pub source_desc: String,
}

pub struct KeyStore {
    state: ArcSwap<KeyState>,
    generations: AtomicU64,
}

impl KeyStore {
    /// A store with no key yet; `install` or `mark_unavailable` follow at startup.
    pub fn new(source: &str) -> KeyStore {
        KeyStore {
            state: ArcSwap::from_pointee(KeyState::Unavailable(Unavailable {
                reason: Reason::MissingKey,
                message: format!("the key from {source} has not been loaded yet"),
                source: source.into(),
            })),
            generations: AtomicU64::new(0),
        }
    }

    /// The current state: one atomic load. Hold the `Arc` for the whole request.
    #[inline]
    pub fn current(&self) -> Arc<KeyState> {
        self.state.load_full()
    }

    /// Build the snapshot for `secret` and swap it in atomically. In-flight requests keep theirs.
    pub fn install(
        &self,
        secret: &Secret,
        auth_prefix: &str,
        meta: KeyMeta,
    ) -> Result<Arc<KeyState>, InvalidHeaderKey> {
        let state = self.prepare(secret, auth_prefix, meta)?;
        self.swap_in(Arc::clone(&state));
        Ok(state)
    }

    /// Build the next snapshot (its generation taken) without serving it yet, so what must be
    /// recorded first can be recorded before any request sees the key. One rotation at a time.
    pub fn prepare(
        &self,
        secret: &Secret,
        auth_prefix: &str,
        meta: KeyMeta,
    ) -> Result<Arc<KeyState>, InvalidHeaderKey> {
        let source = meta.source.as_str();
        let key = secret.expose();
        let aws = super::aws::Credentials::from_bundle(key);
        let header = match aws {
            // Replaced by the signature on every request; the bundle itself never goes out.
            Some(_) => HeaderValue::from_static("AWS4-HMAC-SHA256"),
            None => header_value(secret, auth_prefix, source)?,
        };
        let snapshot = KeySnapshot {
            header,
            fingerprint: Fingerprint::of(key),
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            source: source.into(),
            loaded_at: SystemTime::now(),
            expires_at: meta.expires_at,
            digest: digest(key),
            len: key.len(),
            warnings: meta.warnings.into_boxed_slice(),
            aws,
        };
        Ok(Arc::new(KeyState::Ready(snapshot)))
    }

    /// Serve a prepared snapshot from now on.
    pub fn swap_in(&self, state: Arc<KeyState>) {
        self.state.store(state);
    }

    /// Continue counting generations after `generation` (what the state store last recorded),
    /// so a restart does not start over at 1.
    pub fn resume_after(&self, generation: u64) {
        self.generations.store(generation, Ordering::Relaxed);
    }

    /// How many keys have been installed so far (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generations.load(Ordering::Relaxed)
    }

    /// Record that there is no usable key (startup only: a failed rotation keeps the old key).
    pub fn mark_unavailable(&self, why: Unavailable) {
        self.state.store(Arc::new(KeyState::Unavailable(why)));
    }
}

/// The auth header value for `secret` (scheme prefix + key), marked sensitive.
pub fn header_value(
    secret: &Secret,
    auth_prefix: &str,
    source: &str,
) -> Result<HeaderValue, InvalidHeaderKey> {
    let key = secret.expose();
    let mut value = Zeroizing::new(String::with_capacity(auth_prefix.len() + key.len()));
    value.push_str(auth_prefix);
    value.push_str(key);
    let mut header = HeaderValue::from_str(&value).map_err(|_| InvalidHeaderKey {
        source_desc: source.to_owned(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// SHA-256 of the per-install salt and a key: how retired keys are remembered on disk, so the
/// store holds nothing a dictionary of leaked keys could be matched against without the salt.
pub fn salted_digest(salt: &[u8; 32], key: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(key.as_bytes());
    hasher.finalize().into()
}

/// SHA-256 of a key or token.
pub fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> KeyMeta {
        KeyMeta {
            source: "env X".into(),
            ..KeyMeta::default()
        }
    }

    #[test]
    fn install_swaps_and_old_snapshots_live_on() {
        let store = KeyStore::new("env X");
        assert!(store.current().snapshot().is_none());
        store
            .install(
                &Secret::new("sk-first-key-0000000001".into()),
                "Bearer ",
                meta(),
            )
            .unwrap();
        let held = store.current();
        store
            .install(
                &Secret::new("sk-second-key-000000002".into()),
                "Bearer ",
                meta(),
            )
            .unwrap();
        let old = held.snapshot().unwrap();
        let new = store.current();
        let new = new.snapshot().unwrap();
        assert_eq!(old.header, "Bearer sk-first-key-0000000001");
        assert_eq!(old.generation, 1);
        assert_eq!(new.header, "Bearer sk-second-key-000000002");
        assert_eq!(new.generation, 2);
        assert!(new.header.is_sensitive());
        assert!(!format!("{new:?}").contains("second-key"));
    }

    #[test]
    fn a_key_that_cannot_be_a_header_is_refused_and_the_old_one_kept() {
        let store = KeyStore::new("env X");
        store
            .install(&Secret::new("sk-good-key-00000000001".into()), "", meta())
            .unwrap();
        let err = store
            .install(&Secret::new("sk-bad\nkey".into()), "", meta())
            .unwrap_err();
        assert!(err.to_string().contains("env X"));
        assert_eq!(
            store.current().snapshot().unwrap().header,
            "sk-good-key-00000000001"
        );
    }
}
