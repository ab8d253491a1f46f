//! Offline lint: the copy/paste mistakes that end in an opaque 401, caught before a key is used or
//! swapped in. Each finding has a stable code and a sentence naming the source; none echoes the key.

use std::fmt;

use crate::provider::{KeyLength, Provider};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LintCode {
    Empty,
    SurroundingWhitespace,
    InnerWhitespace,
    SurroundingQuotes,
    BearerPrefix,
    NonAscii,
    Masked,
    Placeholder,
    WrongProvider,
    TooShort,
    WrongLength,
    BadCharacters,
    UnknownFormat,
    /// A key that says when it stops working (a Bedrock short-term API key), past that time.
    Expired,
    /// An aws table's parts that cannot work together or are not AWS's shape (an access key id
    /// that is not `AKIA…`/`ASIA…` + 16, temporary credentials without their session token).
    AwsCredentials,
}

impl LintCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            LintCode::Empty => "empty",
            LintCode::SurroundingWhitespace => "surrounding_whitespace",
            LintCode::InnerWhitespace => "inner_whitespace",
            LintCode::SurroundingQuotes => "surrounding_quotes",
            LintCode::BearerPrefix => "bearer_prefix",
            LintCode::NonAscii => "non_ascii",
            LintCode::Masked => "masked",
            LintCode::Placeholder => "placeholder",
            LintCode::WrongProvider => "wrong_provider",
            LintCode::TooShort => "too_short",
            LintCode::WrongLength => "wrong_length",
            LintCode::BadCharacters => "bad_characters",
            LintCode::UnknownFormat => "unknown_format",
            LintCode::Expired => "expired",
            LintCode::AwsCredentials => "aws_credentials",
        }
    }
}

impl fmt::Display for LintCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The key is refused: never used, never swapped in.
    Error,
    /// Logged and shown; the key is still used.
    Warning,
}

/// `lint = "enforce"` (default) refuses keys with errors; `"warn"` only reports them (for unusual
/// setups, e.g. an OpenAI-compatible endpoint that takes another provider's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LintMode {
    #[default]
    Enforce,
    Warn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub code: LintCode,
    pub severity: Severity,
    /// A sentence that says what is wrong, in which source, and what to do. Never contains the key.
    pub message: String,
    /// For `WrongProvider`: whose key it looks like.
    pub belongs_to: Option<&'static str>,
}

/// All findings, errors first. `host` is the upstream's host: another provider's key is expected
/// on that provider's own OpenAI-compatible endpoint.
pub fn lint(
    key: &str,
    provider: Provider,
    host: &str,
    source: &str,
    mode: LintMode,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut add = |code, severity, message: String| {
        findings.push(Finding {
            code,
            severity,
            message,
            belongs_to: None,
        })
    };
    if super::aws::is_bundle(key) {
        return finish(super::aws::lint(key, source), mode);
    }
    if key.trim().is_empty() {
        add(
            LintCode::Empty,
            Severity::Error,
            format!("the key from {source} is empty; put the key there (an emptied source never replaces a working key)"),
        );
        return findings;
    }
    // A placeholder or a masked copy is the whole story; other findings would only distract.
    let core = strip_scheme(strip_quotes(key.trim()));
    if is_placeholder(core) {
        add(
            LintCode::Placeholder,
            Severity::Error,
            format!("the key from {source} is a placeholder (like YOUR_API_KEY, sk-xxxx, <your key> or an unexpanded $VAR), not a key; put the real key there"),
        );
        return finish(findings, mode);
    }
    if is_masked(core) {
        add(
            LintCode::Masked,
            Severity::Error,
            format!("the key from {source} is a masked copy as dashboards display it (with '...', '…' or '***'); the full key is shown only once, when it is created: create a new key and copy it then"),
        );
        return finish(findings, mode);
    }
    let trimmed = key.trim_matches(|c: char| c.is_ascii_whitespace());
    if trimmed.len() != key.len() {
        let lead = key.len()
            - key
                .trim_start_matches(|c: char| c.is_ascii_whitespace())
                .len();
        let what = match (lead > 0, trimmed.len() + lead < key.len()) {
            (true, true) => "starts and ends with whitespace",
            (true, false) => "starts with whitespace",
            _ => "ends with whitespace (a space, tab or extra line break)",
        };
        add(
            LintCode::SurroundingWhitespace,
            Severity::Error,
            format!("the key from {source} {what}; remove it. keyproxy never trims a key silently: one that needs trimming was probably copied wrong"),
        );
    }
    let unquoted = strip_quotes(trimmed);
    if unquoted.len() != trimmed.len() {
        add(
            LintCode::SurroundingQuotes,
            Severity::Error,
            format!("the key from {source} is wrapped in quotes; store the key without them (quotes belong to shell or .env syntax, not to the key)"),
        );
    }
    let core = strip_scheme(unquoted);
    if core.len() != unquoted.len() {
        add(
            LintCode::BearerPrefix,
            Severity::Error,
            format!("the key from {source} starts with an auth scheme such as 'Bearer '; store only the key: keyproxy adds the provider's scheme itself"),
        );
    }
    if let Some(pos) = core.chars().position(|c| c.is_ascii_whitespace()) {
        let what = if core.contains(['\n', '\r']) {
            "a line break"
        } else {
            "whitespace"
        };
        add(
            LintCode::InnerWhitespace,
            Severity::Error,
            format!("the key from {source} has {what} inside it (at character {}); a key is one unbroken word, so it was probably wrapped or two values were pasted together", pos + 1),
        );
    }
    if let Some((pos, c)) = key.chars().enumerate().find(|(_, c)| !c.is_ascii()) {
        add(
            LintCode::NonAscii,
            Severity::Error,
            format!("the key from {source} contains {} at character {}; keys are plain ASCII, so it came from a word processor, chat app or web page: copy the key again from the provider's dashboard", describe_char(c), pos + 1),
        );
    }
    if provider != Provider::Generic {
        format_findings(core, provider, host, source, &mut findings);
    }
    if provider == Provider::Bedrock {
        super::aws::api_key_findings(core, source, std::time::SystemTime::now(), &mut findings);
    }
    finish(findings, mode)
}

fn finish(mut findings: Vec<Finding>, mode: LintMode) -> Vec<Finding> {
    if mode == LintMode::Warn {
        for f in &mut findings {
            f.severity = Severity::Warning;
        }
    }
    findings.sort_by_key(|f| f.severity == Severity::Warning);
    findings
}

/// The first finding that refuses the key, if any.
pub fn first_error(findings: &[Finding]) -> Option<&Finding> {
    findings.iter().find(|f| f.severity == Severity::Error)
}

fn strip_quotes(s: &str) -> &str {
    const QUOTES: &[char] = &['"', '\'', '`', '“', '”', '‘', '’', '«', '»'];
    s.trim_start_matches(QUOTES).trim_end_matches(QUOTES)
}

fn strip_scheme(s: &str) -> &str {
    let lower = s.to_ascii_lowercase();
    for scheme in [
        "authorization: bearer ",
        "authorization:bearer ",
        "bearer ",
        "bearer:",
        "x-api-key:",
        "api-key:",
        "token ",
    ] {
        if lower.starts_with(scheme) {
            return s[scheme.len()..].trim_start();
        }
    }
    s
}

fn describe_char(c: char) -> String {
    let name = match c {
        '\u{00A0}' => "a no-break space",
        '\u{200B}' => "a zero-width space",
        '\u{200C}' | '\u{200D}' => "a zero-width joiner",
        '\u{FEFF}' => "a byte-order mark",
        '\u{2018}' | '\u{2019}' => "a curly single quote",
        '\u{201C}' | '\u{201D}' => "a curly double quote",
        '\u{2013}' => "an en dash (a '-' autocorrected)",
        '\u{2014}' => "an em dash (a '-' autocorrected)",
        '\u{2026}' => "an ellipsis character",
        '\u{2022}' | '\u{25CF}' => "a bullet (a masked character)",
        _ => "a non-ASCII character",
    };
    format!("{name} (U+{:04X})", c as u32)
}

/// Placeholders people leave in templates and .env files.
fn is_placeholder(core: &str) -> bool {
    let lower = core.to_ascii_lowercase();
    let body = lower.strip_prefix("sk-").unwrap_or(&lower);
    const WHOLE: &[&str] = &[
        "dummy",
        "changeme",
        "change-me",
        "change_me",
        "none",
        "null",
        "undefined",
        "placeholder",
        "test",
        "unused",
        "key",
        "apikey",
        "api_key",
        "api-key",
        "token",
        "secret",
        "example",
        "todo",
        "fixme",
        "replace_me",
        "replaceme",
    ];
    WHOLE.contains(&body)
        || lower.contains('<')
        || lower.contains('>')
        || lower.contains("${")
        || (lower.starts_with('$')
            && core[1..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        || (lower.starts_with('%') && lower.ends_with('%') && lower.len() > 2)
        // `sk-...`, a document's "key goes here": nothing after the ellipsis, so not a masked key.
        || ["...", "…"].iter().any(|e| lower.strip_suffix(e).is_some_and(|b| b.len() <= 16))
        || lower.contains("xxxx")
        || ["your", "insert", "replace", "enter", "paste", "here"]
            .iter()
            .any(|w| {
                lower.contains(w)
                    && (lower.contains("key") || lower.contains("token") || lower.contains("api"))
            })
}

fn is_masked(core: &str) -> bool {
    core.contains("...")
        || core.contains('…')
        || core.contains("***")
        || core.contains('•')
        || core.contains('●')
}

/// Known key families: prefix, whose keys they are, the host where that provider takes them.
const FAMILIES: &[(&str, &str, &str)] = &[
    ("sk-ant-", "Anthropic", "anthropic.com"),
    ("AIza", "Google (Gemini)", "googleapis.com"),
    ("sk-or-", "OpenRouter", "openrouter.ai"),
    ("gsk_", "Groq", "groq.com"),
    ("xai-", "xAI", "x.ai"),
    ("pplx-", "Perplexity", "perplexity.ai"),
    ("sk-proj-", "OpenAI", "openai.com"),
    ("sk-svcacct-", "OpenAI", "openai.com"),
    ("sk-admin-", "OpenAI", "openai.com"),
    ("sk-", "OpenAI", "openai.com"),
];

fn family(key: &str) -> Option<(&'static str, &'static str)> {
    if key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(("Azure OpenAI", "azure.com"));
    }
    FAMILIES
        .iter()
        .find(|(prefix, _, _)| key.starts_with(prefix))
        .map(|(_, owner, host)| (*owner, *host))
}

/// Provider-specific checks: whose key it is, its length and its alphabet.
fn format_findings(
    key: &str,
    provider: Provider,
    host: &str,
    source: &str,
    out: &mut Vec<Finding>,
) {
    let own = provider.display_name();
    if let Some((owner, owner_host)) = family(key) {
        let on_owners_host = host == owner_host || host.ends_with(&format!(".{owner_host}"));
        let azure_hex = owner == "Azure OpenAI";
        if owner != own && on_owners_host {
            // Another provider's OpenAI-compatible endpoint: its own key, its own format.
            return;
        }
        if owner != own && !(azure_hex && provider != Provider::Openai) {
            out.push(Finding {
                code: LintCode::WrongProvider,
                severity: Severity::Error,
                message: format!(
                    "the key from {source} looks like {} key, but this upstream is {}; put the {own} key here, or give the {owner} key to an upstream with provider = \"{}\"",
                    article(owner),
                    provider.as_str(),
                    Provider::setting_for(owner)
                ),
                belongs_to: Some(owner),
            });
            return;
        }
    }
    let (alphabet_ok, alphabet) = provider.key_alphabet();
    if let Some(pos) = key.bytes().position(|b| b.is_ascii() && !alphabet_ok(b)) {
        let c = key.as_bytes()[pos] as char;
        let shown = if c.is_ascii_punctuation() {
            format!(" ('{c}')")
        } else {
            String::new()
        };
        out.push(Finding {
            code: LintCode::BadCharacters,
            severity: Severity::Error,
            message: format!(
                "the key from {source} has a character{shown} at character {} that {} keys never contain (only {alphabet}); it was probably copied with surrounding text",
                pos + 1,
                own
            ),
            belongs_to: None,
        });
    }
    let len = key.chars().count();
    let KeyLength {
        min,
        exact,
        expected,
    } = provider.key_length(key);
    if len < min {
        out.push(Finding {
            code: LintCode::TooShort,
            severity: Severity::Error,
            message: format!("the key from {source} is only {len} character{} long and {expected}; it was probably cut off when copied: copy the whole key again", if len == 1 { "" } else { "s" }),
            belongs_to: None,
        });
    } else if exact.is_some_and(|n| len != n) {
        out.push(Finding {
            code: LintCode::WrongLength,
            severity: Severity::Error,
            message: format!("the key from {source} is {len} characters long but {expected}; something was added to it when copied"),
            belongs_to: None,
        });
    }
    let known_prefix = provider.has_known_prefix(key);
    if !known_prefix && !out.iter().any(|f| f.code == LintCode::WrongProvider) {
        out.push(Finding {
            code: LintCode::UnknownFormat,
            severity: Severity::Warning,
            message: format!("the key from {source} does not start the way {own} keys do; if this upstream is not {own} itself, use provider = \"generic\""),
            belongs_to: None,
        });
    }
    if provider == Provider::Anthropic && key.starts_with("sk-ant-oat") {
        out.push(Finding {
            code: LintCode::WrongProvider,
            severity: Severity::Error,
            message: format!("the key from {source} is an Anthropic OAuth token (sk-ant-oat...), which the API does not accept as x-api-key; create an API key (sk-ant-api03-...) in the Anthropic console"),
            belongs_to: Some("Anthropic OAuth"),
        });
    }
}

fn article(owner: &str) -> String {
    match owner.chars().next() {
        Some('A' | 'O' | 'E' | 'I' | 'U') => format!("an {owner}"),
        _ => format!("a {owner}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: &str = "sk-proj-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghij";
    const OPENAI_LEGACY: &str = "sk-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV";
    const ANTHROPIC: &str = "sk-ant-api03-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-abcdefghijklmnopqrstuvwxyzAA";
    const GEMINI: &str = "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234";
    const AZURE: &str = "0123456789abcdef0123456789abcdef";
    const AZURE_NEW: &str =
        "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKl";

    fn codes(key: &str, provider: Provider) -> Vec<&'static str> {
        lint(
            key,
            provider,
            "api.example.com",
            "file /run/secrets/k",
            LintMode::Enforce,
        )
        .iter()
        .map(|f| f.code.as_str())
        .collect()
    }

    #[test]
    fn good_keys_of_every_provider_are_clean() {
        for (key, provider) in [
            (OPENAI, Provider::Openai),
            (OPENAI_LEGACY, Provider::Openai),
            (ANTHROPIC, Provider::Anthropic),
            (GEMINI, Provider::Gemini),
            (AZURE, Provider::Azure),
            (AZURE_NEW, Provider::Azure),
            ("anything-goes-for-generic-0001", Provider::Generic),
            (ANTHROPIC, Provider::Generic),
        ] {
            assert_eq!(codes(key, provider), Vec::<&str>::new(), "{provider:?}");
        }
    }

    #[test]
    fn every_finding_table() {
        let cases: Vec<(String, Provider, &str)> = vec![
            (String::new(), Provider::Openai, "empty"),
            ("  \t".into(), Provider::Generic, "empty"),
            (format!("{OPENAI} "), Provider::Openai, "surrounding_whitespace"),
            (format!(" {ANTHROPIC}"), Provider::Anthropic, "surrounding_whitespace"),
            (format!("{GEMINI}\t"), Provider::Gemini, "surrounding_whitespace"),
            (format!("{AZURE}\n"), Provider::Azure, "surrounding_whitespace"),
            (format!("{} {}", &OPENAI[..60], &OPENAI[60..]), Provider::Openai, "inner_whitespace"),
            (format!("{}\n{}", &ANTHROPIC[..50], &ANTHROPIC[50..]), Provider::Anthropic, "inner_whitespace"),
            (format!("\"{OPENAI}\""), Provider::Openai, "surrounding_quotes"),
            (format!("'{GEMINI}'"), Provider::Gemini, "surrounding_quotes"),
            (format!("“{ANTHROPIC}”"), Provider::Anthropic, "surrounding_quotes"),
            (format!("\"{AZURE}"), Provider::Generic, "surrounding_quotes"),
            (format!("Bearer {OPENAI}"), Provider::Openai, "bearer_prefix"),
            (format!("bearer {ANTHROPIC}"), Provider::Anthropic, "bearer_prefix"),
            (format!("{}\u{00A0}", OPENAI), Provider::Openai, "non_ascii"),
            (format!("{}\u{200B}{}", &OPENAI[..20], &OPENAI[20..]), Provider::Openai, "non_ascii"),
            (format!("sk\u{2013}{}", &OPENAI_LEGACY[3..]), Provider::Openai, "non_ascii"),
            ("sk-proj-...abcd".into(), Provider::Openai, "masked"),
            ("sk-ant-api03-…Xy7Q".into(), Provider::Anthropic, "masked"),
            ("sk-************************abcd".into(), Provider::Openai, "masked"),
            ("YOUR_API_KEY".into(), Provider::Openai, "placeholder"),
            ("sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".into(), Provider::Openai, "placeholder"),
            ("<your key>".into(), Provider::Generic, "placeholder"),
            ("${OPENAI_API_KEY}".into(), Provider::Openai, "placeholder"),
            ("$ANTHROPIC_API_KEY".into(), Provider::Anthropic, "placeholder"),
            ("insert-your-key-here".into(), Provider::Gemini, "placeholder"),
            ("changeme".into(), Provider::Generic, "placeholder"),
            // The README's own `sk-...`: nothing after the dots, so a placeholder, not a masked key.
            ("sk-...".into(), Provider::Openai, "placeholder"),
            ("sk-proj-…".into(), Provider::Openai, "placeholder"),
            (ANTHROPIC.into(), Provider::Openai, "wrong_provider"),
            (GEMINI.into(), Provider::Anthropic, "wrong_provider"),
            (OPENAI.into(), Provider::Anthropic, "wrong_provider"),
            (OPENAI.into(), Provider::Gemini, "wrong_provider"),
            (AZURE.into(), Provider::Openai, "wrong_provider"),
            ("sk-ant-oat01-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-abcdefghijklmnopqrstuvwxyz".into(), Provider::Anthropic, "wrong_provider"),
            (OPENAI_LEGACY[..30].into(), Provider::Openai, "too_short"),
            (OPENAI[..70].into(), Provider::Openai, "too_short"),
            (ANTHROPIC[..60].into(), Provider::Anthropic, "too_short"),
            (GEMINI[..30].into(), Provider::Gemini, "too_short"),
            (AZURE[..20].into(), Provider::Azure, "too_short"),
            (format!("{GEMINI}abc"), Provider::Gemini, "wrong_length"),
            (format!("{}+/{}", &OPENAI[..40], &OPENAI[40..]), Provider::Openai, "bad_characters"),
            (format!("{}-{}", &AZURE[..16], &AZURE[16..]), Provider::Azure, "bad_characters"),
            ("pk-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW".into(), Provider::Openai, "unknown_format"),
        ];
        for (key, provider, want) in cases {
            let got = codes(&key, provider);
            assert_eq!(
                got.first().copied(),
                Some(want),
                "{provider:?} {key:?}: {got:?}"
            );
        }
    }

    #[test]
    fn messages_name_the_source_and_never_echo_the_key() {
        let keys = [
            format!(" {OPENAI}"),
            format!("\"{ANTHROPIC}\""),
            format!("Bearer {OPENAI}"),
            ANTHROPIC.to_string(),
            format!("{GEMINI}x"),
            format!("{}+{}", &OPENAI[..40], &OPENAI[40..]),
        ];
        for key in keys {
            let findings = lint(
                &key,
                Provider::Openai,
                "api.openai.com",
                "file /run/secrets/openai",
                LintMode::Enforce,
            );
            assert!(!findings.is_empty(), "{key}");
            for f in findings {
                assert!(
                    f.message.contains("file /run/secrets/openai"),
                    "{}",
                    f.message
                );
                for window in key.as_bytes().windows(8) {
                    let piece = String::from_utf8_lossy(window);
                    assert!(
                        !f.message.contains(piece.as_ref()),
                        "{} echoes {piece}",
                        f.message
                    );
                }
            }
        }
    }

    #[test]
    fn another_providers_key_is_fine_on_that_providers_own_host() {
        let f = lint(
            GEMINI,
            Provider::Openai,
            "generativelanguage.googleapis.com",
            "env K",
            LintMode::Enforce,
        );
        assert!(first_error(&f).is_none(), "{f:?}");
        let f = lint(
            ANTHROPIC,
            Provider::Openai,
            "api.anthropic.com",
            "env K",
            LintMode::Enforce,
        );
        assert!(first_error(&f).is_none(), "{f:?}");
    }

    #[test]
    fn wrong_provider_says_whose_key_it_is() {
        let f = lint(
            ANTHROPIC,
            Provider::Openai,
            "api.openai.com",
            "env K",
            LintMode::Enforce,
        );
        assert_eq!(f[0].belongs_to, Some("Anthropic"));
        assert!(f[0].message.contains("Anthropic"), "{}", f[0].message);
        assert!(
            f[0].message.contains("provider = \"anthropic\""),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn warn_mode_reports_but_does_not_refuse() {
        let f = lint(
            ANTHROPIC,
            Provider::Openai,
            "127.0.0.1",
            "env K",
            LintMode::Warn,
        );
        assert_eq!(f[0].code, LintCode::WrongProvider);
        assert!(first_error(&f).is_none());
    }
}
