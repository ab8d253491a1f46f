//! Redaction: every secret keyproxy holds (keys current and retired, candidates, client tokens, the
//! admin token) is registered here when it is read, and every text keyproxy copies from an upstream
//! or writes itself (log lines, refusals, error bodies, /status, the status page) is masked against
//! them before it leaves. A secret counts as echoed when any run of `WINDOW` of its characters
//! appears, not only the whole of it; the run is masked in place with the same length (the provider
//! prefix and, for long runs, the last 4 characters stay), so a `Content-Length` stays true.
//!
//! The matcher is an Aho-Corasick automaton over every `WINDOW`-byte piece of every secret, rebuilt
//! lazily after a secret is added. It runs only on error paths, the admin port and log lines.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use aho_corasick::{AhoCorasick, MatchKind};
use arc_swap::ArcSwap;
use zeroize::Zeroizing;

/// The shortest run of a secret's characters that counts as the secret.
pub const WINDOW: usize = 12;
/// Secrets shorter than this are not secrets worth the name (and would mask common words).
const MIN_SECRET: usize = 8;
/// Oldest secrets are forgotten past this many (a long-running process rotates often).
const MAX_SECRETS: usize = 128;
/// A masked run at least this long keeps its last 4 characters, as a fingerprint does.
const KEEP_TAIL_FROM: usize = 20;

/// Known key prefixes, longest first so `sk-proj-` wins over `sk-`. Public facts about key
/// families: shown in fingerprints and kept when a key is masked.
pub const KEY_PREFIXES: &[&str] = &[
    "sk-ant-admin01-",
    "sk-ant-api03-",
    "sk-svcacct-",
    "sk-or-v1-",
    "sk-admin-",
    "sk-proj-",
    "sk-ant-",
    "sk-",
    "AIza",
    "gsk_",
    "xai-",
];

struct Registry {
    secrets: Mutex<VecDeque<Zeroizing<String>>>,
    /// Bumped (under the lock) by every change to `secrets`.
    version: AtomicU64,
    /// The automaton and the version it was built from.
    matcher: ArcSwap<Matcher>,
}

struct Matcher {
    version: u64,
    automaton: Option<AhoCorasick>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry {
    secrets: Mutex::new(VecDeque::new()),
    version: AtomicU64::new(0),
    matcher: ArcSwap::from_pointee(Matcher {
        version: 0,
        automaton: None,
    }),
});

/// Remember `secret` so that no output carries it. Cheap: the matcher is rebuilt on next use.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET {
        return;
    }
    let mut secrets = lock();
    if let Some(i) = secrets.iter().position(|s| s.as_str() == secret) {
        // Seen again (a re-read of the same key): it moves to the young end.
        if let Some(s) = secrets.remove(i) {
            secrets.push_back(s);
        }
        return;
    }
    secrets.push_back(Zeroizing::new(secret.to_owned()));
    while secrets.len() > MAX_SECRETS {
        secrets.pop_front();
    }
    REGISTRY.version.fetch_add(1, Ordering::AcqRel);
}

fn lock() -> std::sync::MutexGuard<'static, VecDeque<Zeroizing<String>>> {
    REGISTRY
        .secrets
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The automaton for every secret registered before this call (rebuilt here when one is missing).
fn matcher() -> Arc<Matcher> {
    let current = REGISTRY.matcher.load_full();
    if current.version == REGISTRY.version.load(Ordering::Acquire) {
        return current;
    }
    let secrets = lock();
    let version = REGISTRY.version.load(Ordering::Acquire);
    let current = REGISTRY.matcher.load_full();
    if current.version == version {
        return current;
    }
    let mut pieces: HashSet<&[u8]> = HashSet::new();
    for s in secrets.iter() {
        let bytes = s.as_bytes();
        if bytes.len() <= WINDOW {
            pieces.insert(bytes);
        } else {
            pieces.extend(bytes.windows(WINDOW));
        }
    }
    let automaton = AhoCorasick::builder()
        .match_kind(MatchKind::Standard)
        .build(pieces)
        .ok();
    let built = Arc::new(Matcher { version, automaton });
    REGISTRY.matcher.store(Arc::clone(&built));
    built
}

/// Mask every echoed secret in `bytes`, in place. True when something was masked.
pub fn mask_in_place(bytes: &mut [u8]) -> bool {
    let matcher = matcher();
    let Some(ac) = &matcher.automaton else {
        return false;
    };
    // Union of the overlapping matches: the runs that belong to some secret.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for m in ac.find_overlapping_iter(&*bytes) {
        match runs.last_mut() {
            Some(last) if m.start() <= last.1 => last.1 = last.1.max(m.end()),
            _ => runs.push((m.start(), m.end())),
        }
    }
    for (start, end) in &runs {
        mask_run(&mut bytes[*start..*end]);
    }
    !runs.is_empty()
}

/// `text` with every echoed secret masked; borrowed when there was none.
pub fn mask(text: &str) -> Cow<'_, str> {
    let mut bytes = text.as_bytes().to_vec();
    if !mask_in_place(&mut bytes) {
        return Cow::Borrowed(text);
    }
    // Masking replaces whole bytes with '*'; a secret cut through a multi-byte character is
    // the only way to leave invalid UTF-8, and then the lossy form is still masked.
    Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
}

/// True when `text` carries any run of a registered secret.
pub fn contains_secret(text: &[u8]) -> bool {
    matches!(&matcher().automaton, Some(ac) if ac.is_match(text))
}

/// `sk-proj-AbCd…` becomes `sk-proj-****…****wxyz`: the public prefix and (for a long run) the
/// last 4 stay, the rest is `*`, byte for byte.
fn mask_run(run: &mut [u8]) {
    let keep_head = KEY_PREFIXES
        .iter()
        .find(|p| run.starts_with(p.as_bytes()))
        .map_or(0, |p| p.len());
    let keep_tail = if run.len() >= KEEP_TAIL_FROM { 4 } else { 0 };
    let end = run.len().saturating_sub(keep_tail).max(keep_head);
    for b in &mut run[keep_head..end] {
        *b = b'*';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The registry is process-wide: each test registers secrets of its own.
    #[test]
    fn whole_secrets_keep_prefix_and_last_four_and_their_length() {
        let key = "sk-proj-RedactWholeAbCdEfGhIjKlMnOpQrSt1234";
        register(key);
        let text = format!("Incorrect API key provided: {key}.");
        let masked = mask(&text);
        assert_eq!(masked.len(), text.len());
        assert!(!masked.contains("RedactWhole"), "{masked}");
        assert!(masked.contains("sk-proj-****"), "{masked}");
        assert!(masked.ends_with("1234."), "{masked}");
        assert!(masked.starts_with("Incorrect API key provided: "));
    }

    #[test]
    fn any_twelve_character_piece_is_masked() {
        let key = "tok-PieceMaskingZyXwVuTsRqPoNmLk-0001";
        register(key);
        let piece = &key[9..21];
        let text = format!("got '{piece}' and '{}'", &key[20..31]);
        let masked = mask(&text);
        assert!(!masked.contains(piece), "{masked}");
        assert!(masked.contains(&key[20..31]), "11 characters are not a run");
        assert!(!contains_secret(masked.as_bytes()));
        assert!(contains_secret(text.as_bytes()));
    }

    #[test]
    fn short_and_unknown_text_is_left_alone() {
        register("short");
        let text = "short texts and ordinary words stay";
        assert!(matches!(mask(text), Cow::Borrowed(_)));
    }

    #[test]
    fn adjacent_and_repeated_echoes_are_all_masked() {
        let key = "AIzaRepeatEchoQwErTyUiOpAsDfGhJkLzXcVb";
        register(key);
        let mut bytes = format!("{key}{key} {key}").into_bytes();
        assert!(mask_in_place(&mut bytes));
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("RepeatEcho"), "{text}");
        assert!(!contains_secret(text.as_bytes()), "{text}");
    }
}
