//! The documented error catalogues as data: each provider file holds a table of
//! `(what the provider says, what it means, where it is documented)` rows, and this module decides
//! which row a body matches. Structure before wording: a code, type, AWS `__type` or Google
//! `ErrorInfo.reason` that names exactly one cause decides on its own; otherwise the provider's
//! documented sentence does; only then a generic type (`authentication_error`, `PERMISSION_DENIED`)
//! is taken as a hint. Within a tier the most specific reason wins (a leaked key before an invalid
//! one), so the order of rows in a table never matters.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::ErrorFacts;
use crate::reason::Reason;

/// What a row looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum On {
    /// `error.code`, an AWS error type, an Entra `AADSTS` code (compared lowercased, exactly).
    Code(&'static str),
    /// `error.type` (OpenAI, Anthropic) or the Google RPC `status` (compared lowercased, exactly).
    Type(&'static str),
    /// A Google `ErrorInfo.reason` or legacy `errors[].reason` (exactly, as Google spells it).
    GoogleReason(&'static str),
    /// Words of the provider's sentence (ASCII case-insensitive substring).
    Phrase(&'static str),
}

/// How much a match says on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Names exactly one cause (`insufficient_quota`, `ExpiredTokenException`, `CONSUMER_SUSPENDED`).
    Decisive,
    /// The provider's documented wording.
    Wording,
    /// A generic category that only says which family the error is in; used when nothing else matched.
    Hint,
}

/// One documented row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub on: On,
    pub reason: Reason,
    pub tier: Tier,
    /// Where the provider documents it (or the public report it was first seen in).
    pub source: &'static str,
}

impl Entry {
    /// A code, type or Google reason that names one cause.
    pub const fn decisive(on: On, reason: Reason, source: &'static str) -> Entry {
        Entry {
            on,
            reason,
            tier: Tier::Decisive,
            source,
        }
    }

    /// Documented wording.
    pub const fn says(phrase: &'static str, reason: Reason, source: &'static str) -> Entry {
        Entry {
            on: On::Phrase(phrase),
            reason,
            tier: Tier::Wording,
            source,
        }
    }

    /// A generic category, taken only when nothing more specific matched.
    pub const fn hint(on: On, reason: Reason, source: &'static str) -> Entry {
        Entry {
            on,
            reason,
            tier: Tier::Hint,
            source,
        }
    }
}

/// Every provider's table, by the name shown in `keyproxy explain` and the README. A `static`, not a
/// `const`: `keyproxy explain` finds a row's table by address, which only a static keeps stable.
pub static CATALOGUES: &[(&str, &[Entry])] = &[
    ("OpenAI", super::openai::CATALOGUE),
    ("Anthropic", super::anthropic::CATALOGUE),
    ("Azure OpenAI", super::azure::CATALOGUE),
    ("Microsoft Entra ID", super::azure::ENTRA),
    ("Gemini / Vertex AI", super::google::CATALOGUE),
    ("Amazon Bedrock", super::bedrock::CATALOGUE),
    ("OpenRouter", super::hosts::OPENROUTER),
    ("Groq", super::hosts::GROQ),
    ("Mistral", super::hosts::MISTRAL),
    ("DeepSeek", super::hosts::DEEPSEEK),
    ("Together", super::hosts::TOGETHER),
    ("Cohere", super::hosts::COHERE),
    ("xAI", super::hosts::XAI),
    ("common wording", super::rules::GENERIC),
];

/// How specific a reason is: when rows of the same tier disagree, the higher one explains more
/// (a revoked key is also an invalid one; an org mismatch is also "unauthorized").
fn specificity(r: Reason) -> u8 {
    match r {
        Reason::RevokedKey => 14,
        Reason::ExpiredKey => 13,
        Reason::OrgMismatch => 12,
        Reason::ProjectMismatch => 11,
        Reason::IpNotAllowed => 10,
        Reason::RegionUnsupported => 9,
        Reason::AccountInactive => 8,
        Reason::QuotaExhausted => 7,
        Reason::RateLimited => 6,
        Reason::WrongEndpoint => 5,
        Reason::MalformedKey => 4,
        Reason::MissingKey => 3,
        Reason::InsufficientPermissions => 2,
        Reason::InvalidKey => 1,
        _ => 0,
    }
}

/// All phrase rows in one automaton, built once: a body is scanned once whatever the number of rows.
struct Phrases {
    automaton: Option<AhoCorasick>,
    entries: Vec<&'static Entry>,
}

static PHRASES: LazyLock<Phrases> = LazyLock::new(|| {
    let entries: Vec<&'static Entry> = CATALOGUES
        .iter()
        .flat_map(|(_, table)| table.iter())
        .filter(|e| matches!(e.on, On::Phrase(_)))
        .collect();
    let patterns = entries.iter().map(|e| match e.on {
        On::Phrase(p) => p,
        _ => "",
    });
    // Building can only fail on absurd pattern sets; the linear scan below is the fallback.
    let automaton = AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::Standard)
        .build(patterns)
        .ok();
    Phrases { automaton, entries }
});

/// The structured rows (codes, types, Google reasons), kept apart from the phrases.
static STRUCTURED: LazyLock<Vec<&'static Entry>> = LazyLock::new(|| {
    CATALOGUES
        .iter()
        .flat_map(|(_, table)| table.iter())
        .filter(|e| !matches!(e.on, On::Phrase(_)))
        .collect()
});

fn structured_match(e: &Entry, facts: &ErrorFacts) -> bool {
    match e.on {
        On::Code(c) => !facts.code.is_empty() && facts.code == c,
        On::Type(t) => !facts.kind.is_empty() && facts.kind == t,
        On::GoogleReason(r) => facts.reasons.iter().any(|x| x == r),
        On::Phrase(_) => false,
    }
}

/// The row that explains `facts` best, if any.
pub fn best(facts: &ErrorFacts) -> Option<&'static Entry> {
    let mut found: Vec<&'static Entry> = STRUCTURED
        .iter()
        .copied()
        .filter(|e| structured_match(e, facts))
        .collect();
    // Curly apostrophes ("didn’t") read as straight ones, as the documented wording has them.
    let message = if facts.message.contains('\u{2019}') {
        std::borrow::Cow::Owned(facts.message.replace('\u{2019}', "'"))
    } else {
        std::borrow::Cow::Borrowed(facts.message.as_str())
    };
    let phrases = &*PHRASES;
    match &phrases.automaton {
        Some(ac) => found.extend(
            ac.find_overlapping_iter(message.as_ref())
                .filter_map(|m| phrases.entries.get(m.pattern().as_usize()).copied()),
        ),
        None => {
            let lower = message.to_ascii_lowercase();
            found.extend(phrases.entries.iter().copied().filter(|e| match e.on {
                On::Phrase(p) => lower.contains(&p.to_ascii_lowercase()),
                _ => false,
            }));
        }
    }
    found
        .into_iter()
        .min_by_key(|e| (e.tier, std::cmp::Reverse(specificity(e.reason))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_source_and_no_rule_is_written_twice() {
        let mut seen = std::collections::HashSet::new();
        for (provider, table) in CATALOGUES {
            assert!(!table.is_empty(), "{provider}");
            for e in *table {
                assert!(
                    e.source.starts_with("https://"),
                    "{provider}: {e:?} has no source URL"
                );
                assert!(seen.insert(e.on), "{provider}: {:?} is in two rows", e.on);
                if let On::Code(s) | On::Type(s) | On::Phrase(s) = e.on {
                    assert!(!s.trim().is_empty(), "{provider}: empty matcher");
                }
                if let On::Code(s) | On::Type(s) = e.on {
                    assert_eq!(
                        s,
                        s.to_ascii_lowercase(),
                        "{provider}: codes are lowercased"
                    );
                }
            }
        }
    }

    #[test]
    fn structure_beats_wording_and_wording_beats_a_hint() {
        let facts = ErrorFacts {
            code: "insufficient_quota".into(),
            kind: "invalid_request_error".into(),
            message: "Incorrect API key provided".into(),
            reasons: Vec::new(),
        };
        assert_eq!(best(&facts).map(|e| e.reason), Some(Reason::QuotaExhausted));
        let facts = ErrorFacts {
            kind: "authentication_error".into(),
            message: "x-api-key header is required".into(),
            ..ErrorFacts::default()
        };
        assert_eq!(best(&facts).map(|e| e.reason), Some(Reason::MissingKey));
        let facts = ErrorFacts {
            kind: "authentication_error".into(),
            message: "something new".into(),
            ..ErrorFacts::default()
        };
        assert_eq!(best(&facts).map(|e| e.reason), Some(Reason::InvalidKey));
    }

    #[test]
    fn phrases_match_whatever_the_case() {
        let facts = ErrorFacts {
            message: "INVALID X-API-KEY".into(),
            ..ErrorFacts::default()
        };
        assert_eq!(best(&facts).map(|e| e.reason), Some(Reason::InvalidKey));
    }
}
