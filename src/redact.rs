//! Redaction: every secret keyproxy holds (keys current and retired, candidates, client tokens, the
//! admin token) is registered here when it is read, and every text keyproxy copies from an upstream
//! or writes itself (log lines, refusals, error bodies, /status, the status page) is masked against
//! them before it leaves. A secret counts as echoed when any run of `WINDOW` of its characters
//! appears, not only the whole of it; the run is masked in place with the same length (the provider
//! prefix and, for long runs, the last 4 characters stay), so a `Content-Length` stays true.
//!
//! The matcher is an Aho-Corasick automaton over pieces of every secret: the 8-byte runs that start
//! at every 4th character (any 12-character run contains one), each hit then extended along its
//! secret to see how long the echoed run really is. It is built when a secret is registered, in
//! two tiers so that a rotation rebuilds only the small one: `recent` (the last few secrets) and
//! `settled` (the rest, rebuilt once every `RECENT` registrations). It runs on error paths, the
//! admin port and log lines; never on the forwarding path of a successful request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use aho_corasick::{AhoCorasick, MatchKind};
use arc_swap::ArcSwap;
use zeroize::Zeroizing;

/// The shortest run of a secret's characters that counts as the secret.
pub const WINDOW: usize = 12;
/// The pieces searched for: `PIECE` bytes starting every `STRIDE` bytes. Any run of `WINDOW`
/// holds one (`STRIDE - 1 + PIECE <= WINDOW`).
const PIECE: usize = 8;
const STRIDE: usize = 4;
/// Secrets shorter than this are not secrets worth the name (and would mask common words).
const MIN_SECRET: usize = 8;
/// Oldest secrets are forgotten past this many (a long-running process rotates often).
const MAX_SECRETS: usize = 64;
/// Registrations that rebuild only the small tier before it is folded into the settled one.
const RECENT: usize = 8;
/// A masked run at least this long keeps its last 4 characters, as a fingerprint does.
const KEEP_TAIL_FROM: usize = 20;

/// Known key prefixes, longest first so `sk-proj-` wins over `sk-`. Public facts about key
/// families: shown in fingerprints and kept when a key is masked.
pub const KEY_PREFIXES: &[&str] = &[
    "bedrock-api-key-",
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
    "ABSK",
    "AKIA",
    "ASIA",
];

type Held = Arc<Zeroizing<String>>;

#[derive(Default)]
struct Registry {
    settled: Vec<Held>,
    recent: Vec<Held>,
}

/// One tier: the automaton, and for each of its patterns where that piece stands in which secret.
struct Tier {
    automaton: AhoCorasick,
    secrets: Vec<Held>,
    /// Pattern id -> (secret index, offset of the piece in it).
    places: Vec<Vec<(usize, usize)>>,
}

#[derive(Default)]
struct Matcher {
    settled: Option<Arc<Tier>>,
    recent: Option<Tier>,
}

impl Matcher {
    fn tiers(&self) -> impl Iterator<Item = &Tier> {
        self.settled
            .as_deref()
            .into_iter()
            .chain(self.recent.as_ref())
    }
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);
static MATCHER: LazyLock<ArcSwap<Matcher>> = LazyLock::new(ArcSwap::default);

/// Remember `secret` so that no output carries it. Done before this returns: whatever is masked
/// afterwards is masked against it.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET {
        return;
    }
    let mut registry = REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let known = |held: &Held| held.as_str() == secret;
    if registry.settled.iter().any(known) || registry.recent.iter().any(known) {
        return;
    }
    registry
        .recent
        .push(Arc::new(Zeroizing::new(secret.to_owned())));
    let previous = MATCHER.load_full();
    let mut settled = None;
    if registry.recent.len() > RECENT {
        let Registry {
            settled: old,
            recent,
        } = &mut *registry;
        old.append(recent);
        let excess = old.len().saturating_sub(MAX_SECRETS);
        old.drain(..excess);
        settled = Some(Tier::build(old).map(Arc::new));
    }
    let recent = Tier::build(&registry.recent);
    let settled = match settled {
        Some(tier) => tier,
        // The settled tier did not change: shared, not rebuilt.
        None => previous.settled.clone(),
    };
    MATCHER.store(Arc::new(Matcher { settled, recent }));
}

impl Tier {
    fn build(secrets: &[Held]) -> Option<Tier> {
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut places: Vec<Vec<(usize, usize)>> = Vec::new();
        for (k, secret) in secrets.iter().enumerate() {
            let bytes = secret.as_bytes();
            let piece = PIECE.min(bytes.len());
            let mut starts: Vec<usize> = (0..=bytes.len() - piece).step_by(STRIDE).collect();
            starts.push(bytes.len() - piece);
            for j in starts {
                let at = *index.entry(&bytes[j..j + piece]).or_insert_with(|| {
                    pieces.push(&bytes[j..j + piece]);
                    places.push(Vec::new());
                    pieces.len() - 1
                });
                if !places[at].contains(&(k, j)) {
                    places[at].push((k, j));
                }
            }
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&pieces)
            .ok()?;
        Some(Tier {
            automaton,
            secrets: secrets.to_vec(),
            places,
        })
    }

    /// The runs of `text` that are a run of some secret at least `WINDOW` long (or the whole of a
    /// shorter secret), merged.
    fn runs(&self, text: &[u8], out: &mut Vec<(usize, usize)>) {
        for hit in self.automaton.find_overlapping_iter(text) {
            for &(k, j) in &self.places[hit.pattern().as_usize()] {
                let secret = self.secrets[k].as_bytes();
                let (mut start, mut from) = (hit.start(), j);
                while start > 0 && from > 0 && text[start - 1] == secret[from - 1] {
                    start -= 1;
                    from -= 1;
                }
                let (mut end, mut to) = (hit.end(), j + hit.len());
                while end < text.len() && to < secret.len() && text[end] == secret[to] {
                    end += 1;
                    to += 1;
                }
                if end - start >= WINDOW.min(secret.len()) {
                    out.push((start, end));
                }
            }
        }
    }
}

/// Every run of a registered secret in `text`, sorted and merged.
fn echoed(text: &[u8]) -> Vec<(usize, usize)> {
    let matcher = MATCHER.load();
    let mut runs = Vec::new();
    for tier in matcher.tiers() {
        tier.runs(text, &mut runs);
    }
    runs.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(runs.len());
    for (start, end) in runs {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Mask every echoed secret in `bytes`, in place. True when something was masked.
pub fn mask_in_place(bytes: &mut [u8]) -> bool {
    let runs = echoed(bytes);
    for (start, end) in &runs {
        mask_run(&mut bytes[*start..*end]);
    }
    !runs.is_empty()
}

/// `text` with every echoed secret masked; borrowed when there was none.
pub fn mask(text: &str) -> Cow<'_, str> {
    if !contains_secret(text.as_bytes()) {
        return Cow::Borrowed(text);
    }
    let mut bytes = text.as_bytes().to_vec();
    mask_in_place(&mut bytes);
    // Masking replaces whole bytes with '*'; a secret cut through a multi-byte character is
    // the only way to leave invalid UTF-8, and then the lossy form is still masked.
    Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
}

/// True when `text` carries any run of a registered secret.
pub fn contains_secret(text: &[u8]) -> bool {
    let matcher = MATCHER.load();
    let any_piece = matcher.tiers().any(|tier| tier.automaton.is_match(text));
    any_piece && !echoed(text).is_empty()
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
    fn every_run_of_twelve_at_every_offset_is_found_across_both_tiers() {
        let first = "tok-EveryOffsetFirst-qWeRtYuIoPaSdFgHjKl-0123456789";
        register(first);
        // Enough newer secrets to fold `first` into the settled tier.
        for n in 0..RECENT + 2 {
            register(&format!("tok-EveryOffsetFiller{n:02}-zXcVbNmAsDfGhJkL"));
        }
        let last = "tok-EveryOffsetLast-MnBvCxZlKjHgFdSa-9876543210";
        register(last);
        for secret in [first, last] {
            for i in 0..=secret.len() - WINDOW {
                let run = &secret[i..i + WINDOW];
                let text = format!("<<{run}>>");
                let masked = mask(&text);
                assert!(!masked.contains(run), "{secret} at {i}: {masked}");
                assert_eq!(masked.len(), text.len());
                assert!(
                    masked.starts_with("<<") && masked.ends_with(">>"),
                    "{masked}"
                );
            }
        }
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
