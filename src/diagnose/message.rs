//! The sentence: what happened, to which key (by fingerprint, generation, source and age), and what
//! to do next. Each reason has its own advice; nothing here ever prints a key.

use std::time::{Duration, SystemTime};

use crate::key::expiry;
use crate::key::lint::LintCode;
use crate::key::rotation::{Attempt, RotationResult};
use crate::key::KeySnapshot;
use crate::provider::Provider;
use crate::reason::Reason;

/// A refused rotation this recent is worth mentioning next to a refusal.
const RECENT_REFUSAL: Duration = Duration::from_secs(15 * 60);

pub struct Context<'a> {
    pub upstream: &'a str,
    pub provider: Provider,
    pub status: u16,
    pub key: Option<&'a KeySnapshot>,
    /// The provider's own sentence, if it gave one.
    pub provider_message: &'a str,
    pub client_org: Option<&'a str>,
    pub client_project: Option<&'a str>,
    pub retry_after: Option<&'a str>,
    pub last_attempt: Option<&'a Attempt>,
    pub base_url: &'a str,
    /// The header keyproxy put the key in (`authorization`, `x-api-key`, ...).
    pub auth_header: &'a str,
    /// `keyproxy rotate` works here (an admin token is configured).
    pub rotate_command: bool,
    pub now: SystemTime,
}

pub fn explain(reason: Reason, c: &Context<'_>) -> String {
    let key = key_description(c);
    let fp = c
        .key
        .map_or("the key".to_owned(), |k| k.fingerprint.to_string());
    let rotate = how_to_rotate(c);
    let said = said(c);
    let name = c.upstream;
    let mut text = match reason {
        Reason::InvalidKey => format!(
            "{name} rejected {key} as incorrect{said}. A key that was reset or deleted in the dashboard stops working at once: create or copy the current key at {} and {rotate}.",
            c.provider.keys_page()
        ),
        Reason::ExpiredKey => {
            let when = c.key.and_then(|k| k.expires_at).map_or_else(
                || "has expired".to_owned(),
                |at| format!("expired {}", expiry::describe(at, c.now)),
            );
            format!("{name} refused {key}: the key {when}{said}. Create a new key at {} and {rotate}.", c.provider.keys_page())
        }
        Reason::RevokedKey => format!(
            "{name} says {key} was revoked or reported as leaked{said}. It cannot be restored: create a new key at {}, {rotate}, and find where the old key was exposed (a public repository, a log, a shared file).",
            c.provider.keys_page()
        ),
        Reason::MissingKey => format!(
            "{name} says no key reached it, yet keyproxy sent {fp} in the {} header{said}. Either something between keyproxy and the provider drops that header, or {} expects the key elsewhere: check that provider = \"{}\" is right for base_url {}.",
            c.auth_header, c.base_url, c.provider.as_str(), c.base_url
        ),
        Reason::MalformedKey => format!(
            "{name} could not read the credential keyproxy sent ({fp} in the {} header){said}. The upstream's provider setting ({}) decides the header and scheme; check that it is what {} expects (an OAuth token or another provider's scheme will not do).",
            c.auth_header, c.provider.as_str(), c.base_url
        ),
        Reason::WrongProviderKey => {
            let owner = c
                .key
                .and_then(|k| k.warnings.iter().find(|w| w.code == LintCode::WrongProvider))
                .and_then(|w| w.belongs_to)
                .unwrap_or("another provider");
            format!(
                "{name} refused {key}, which looks like {owner}'s key, not a {} key{said}. Put a {} key in place and {rotate}, or move this key to an upstream with that provider.",
                c.provider.as_str(), c.provider.as_str()
            )
        }
        Reason::OrgMismatch => match c.client_org {
            Some(org) => format!(
                "{name} says the OpenAI-Organization header the app sent ({org}) does not match the organization of {key}{said}. Remove OpenAI-Organization from the app (keyproxy's key already decides the organization) or set it to the key's organization."
            ),
            None => format!("{name} says the organization does not match {key}{said}. Use a key from the organization the request is for, or remove the organization setting from the app."),
        },
        Reason::ProjectMismatch => match c.client_project {
            Some(project) => format!(
                "{name} says the OpenAI-Project header the app sent ({project}) does not match the project of {key}{said}. Remove OpenAI-Project from the app or use a key of that project."
            ),
            None => format!("{name} says the project does not match {key}{said}. Use a key of the project the request is for."),
        },
        Reason::InsufficientPermissions => format!(
            "{name} accepted {key} but it lacks permission for this request{said}. Give the key (or its project or service account) the needed permissions or scopes in the dashboard, or use a key that has them."
        ),
        Reason::IpNotAllowed => format!(
            "{name} refuses requests for {key} from this machine's IP address{said}. Add this host's outbound IP to the allow-list (or the resource's network/firewall rules) in the provider's settings."
        ),
        Reason::AccountInactive => format!(
            "The account or organization that owns {key} is deactivated or disabled at {name}{said}. Contact the provider's support, or use a key from an active account and {rotate}."
        ),
        Reason::RegionUnsupported => format!(
            "{name} does not serve requests from this region or country{said}. The key is not the problem: run keyproxy (or route its traffic) from a supported region."
        ),
        Reason::QuotaExhausted => format!(
            "The account behind {key} has no quota or credit left at {name}{said}. Add credit or raise the limit at {}; the same key works again once it has quota, no rotation needed.",
            c.provider.billing_page()
        ),
        Reason::RateLimited => {
            let wait = c.retry_after.map_or(String::new(), |s| format!(" (the provider asks to retry after {s}s)"));
            format!("{name} is rate-limiting {key}{said}. Slow down and retry with backoff{wait}; the key itself is fine. Raise the limits in the provider's dashboard if this is routine.")
        }
        Reason::WrongEndpoint => format!(
            "{name} refused {key} at {}{said}: the key does not belong to this endpoint. Check base_url and the region/resource the key was issued for (an Azure key works only with its own resource's endpoint).",
            c.base_url
        ),
        Reason::UnknownAuthError => {
            let next = if said.is_empty() {
                "the body carried no message keyproxy could read; the provider's status page or support can say more"
            } else {
                "the provider's own words above are the best lead"
            };
            // Offline (`keyproxy explain`) there is no key to name.
            let in_use = if c.key.is_some() {
                format!(" The key in use is {key}.")
            } else {
                String::new()
            };
            format!(
                "{name} refused the request with {} for a reason keyproxy does not recognise{said}. keyproxy compared the error's code, type, Google reason and wording with the documented error catalogues (OpenAI, Anthropic, Azure OpenAI and Entra ID, Gemini and Vertex AI, Bedrock, OpenRouter, Groq, Mistral, DeepSeek, Together, Cohere, xAI) and none fits, so it does not guess: {next}.{in_use}",
                c.status
            )
        }
        Reason::ClientUnauthorized
        | Reason::UpstreamUnreachable
        | Reason::UpstreamTimeout
        | Reason::NoRoute
        | Reason::HostNotAllowed
        | Reason::OriginNotAllowed
        | Reason::KeysExhausted
        | Reason::CredentialRefreshFailed => {
            format!("{name} answered {}{said}.", c.status)
        }
    };
    if c.provider == Provider::Bedrock {
        // A signature outside AWS's 5-minute window is the clock's fault, not the key's.
        if super::bedrock::clock_skew(reason, c.provider_message) {
            text =
                format!("{name} refused the request's signature as made at the wrong time{said}.");
        }
        let signed = c.key.map(|k| k.aws.is_some());
        if let Some(more) = super::bedrock::advice(reason, c.provider_message, signed) {
            text.push(' ');
            text.push_str(more);
        }
    }
    if let Some(token) = token_refused(reason, c, &key, &said) {
        return token;
    }
    // A refused new key explains a refusal of the key in use, and nothing else.
    let about_the_key = matches!(
        reason,
        Reason::InvalidKey
            | Reason::ExpiredKey
            | Reason::RevokedKey
            | Reason::WrongProviderKey
            | Reason::MalformedKey
    );
    if let Some(note) = refused_rotation(c).filter(|_| about_the_key) {
        text.push(' ');
        text.push_str(&note);
    }
    text
}

/// "the key sk-proj-…Xy7Q:1a2b3c4d (generation 3, loaded from file /run/secrets/openai 47 days ago)".
fn key_description(c: &Context<'_>) -> String {
    match c.key {
        Some(k) => format!(
            "the key {} (generation {}, loaded from {} {})",
            k.fingerprint,
            k.generation,
            k.source,
            ago(k.loaded_at, c.now)
        ),
        None => "the key".to_owned(),
    }
}

fn said(c: &Context<'_>) -> String {
    let m = quote(c.provider_message);
    if m.is_empty() {
        return String::new();
    }
    format!(" (it said: \"{m}\")")
}

/// The provider's words as keyproxy may repeat them: every registered secret masked (`redact`), and
/// anything shaped like a key masked too (a key keyproxy never held, echoed by a gateway or pasted
/// into `keyproxy explain`); at most 240 characters.
pub fn quote(text: &str) -> String {
    let text = text.trim();
    let masked = mask_key_shapes(&crate::redact::mask(text));
    let short: String = masked.chars().take(240).collect();
    if short.len() < masked.len() {
        format!("{short}…")
    } else {
        short
    }
}

/// Runs that look like credentials: a known key prefix followed by 8+ key characters, or 24+ key
/// characters mixing letters and digits. Masked as `redact` masks: prefix and (for long runs) the
/// last 4 kept, the rest `*`, so the provider's own masked quotes (`sk-****abcd`) read the same.
fn mask_key_shapes(text: &str) -> String {
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_key_char) {
        out.push_str(&rest[..start]);
        let run_len = rest[start..]
            .find(|c: char| !is_key_char(c))
            .unwrap_or(rest.len() - start);
        let run = &rest[start..start + run_len];
        out.push_str(&mask_if_key(run));
        rest = &rest[start + run_len..];
    }
    out.push_str(rest);
    out
}

fn mask_if_key(run: &str) -> String {
    let prefix = crate::redact::KEY_PREFIXES
        .iter()
        .find(|p| run.starts_with(*p))
        .map_or("", |p| p);
    let body = &run[prefix.len()..];
    let letters = body.chars().any(|c| c.is_ascii_alphabetic());
    let digits = body.chars().any(|c| c.is_ascii_digit());
    let looks_like_key = if prefix.is_empty() {
        run.len() >= 24 && letters && digits
    } else {
        body.len() >= 8 && (letters || digits)
    };
    if !looks_like_key {
        return run.to_owned();
    }
    let keep_tail = if run.len() >= 20 { 4 } else { 0 };
    let hidden = run.len() - prefix.len() - keep_tail;
    format!(
        "{prefix}{}{}",
        "*".repeat(hidden),
        &run[run.len() - keep_tail..]
    )
}

/// The way in for a new key that works with this setup: `keyproxy rotate` only where an admin
/// token is configured; otherwise the file, the command or the env var (with the restart it needs).
fn how_to_rotate(c: &Context<'_>) -> String {
    let name = c.upstream;
    let source = c.key.map_or("", |k| &*k.source);
    let rotate = c.rotate_command;
    if let Some(path) = source.strip_prefix("file ") {
        format!("write it to {path}: keyproxy picks it up without a restart")
    } else if let Some(var) = source.strip_prefix("env ") {
        if rotate {
            format!("rotate it in with `keyproxy rotate --upstream {name} --key-stdin` (a running process cannot see a changed {var}; update it too for the next start)")
        } else {
            format!("set {var} to it and restart keyproxy (a running process cannot see a changed variable; key = {{ file = \"…\" }} instead is picked up without a restart)")
        }
    } else if let Some(cmd) = source.strip_prefix("command ") {
        format!("make `{cmd}` return it and send keyproxy SIGHUP")
    } else if rotate {
        format!("rotate it in with `keyproxy rotate --upstream {name} --key-stdin`")
    } else {
        "put it where this upstream's key = setting reads it (a key file is picked up without a restart; an env var needs one)".to_owned()
    }
}

fn refused_rotation(c: &Context<'_>) -> Option<String> {
    let a = c.last_attempt?;
    if a.result != RotationResult::Rejected {
        return None;
    }
    let age = c.now.duration_since(a.at).ok()?;
    if age > RECENT_REFUSAL {
        return None;
    }
    let which = a
        .fingerprint
        .as_deref()
        .map_or("A new key".to_owned(), |fp| format!("A new key ({fp})"));
    Some(format!(
        "{which} was refused {} ({}), so keyproxy is still using the previous key: fix the new key and rotate again.",
        ago(a.at, c.now),
        a.finding.as_deref().unwrap_or("no details")
    ))
}

fn ago(then: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(then).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        0..=59 => "just now".to_owned(),
        60..=3599 => format!("{} minutes ago", secs / 60),
        3600..=86_399 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// A token credential's token refused as a key would be: the advice is about the credential, not
/// about rotating a key in (keyproxy mints the tokens, and refreshes a refused one at once).
fn token_refused(reason: Reason, c: &Context<'_>, key: &str, said: &str) -> Option<String> {
    if !matches!(
        reason,
        Reason::InvalidKey | Reason::ExpiredKey | Reason::RevokedKey
    ) {
        return None;
    }
    let source = &*c.key?.source;
    let kind = crate::key::minted::KINDS.into_iter().find(|k| {
        source
            .strip_prefix(k)
            .is_some_and(|rest| rest.starts_with(' '))
    })?;
    let role = match c.provider {
        Provider::Azure => {
            " (on Azure OpenAI: the Cognitive Services OpenAI User role on the resource)"
        }
        Provider::Vertex | Provider::Gemini => {
            " (on Vertex AI: the Vertex AI User role in the project)"
        }
        _ => "",
    };
    Some(format!(
        "{} refused {key}, a token minted by its {kind} credential{said}. keyproxy refreshes a refused token at once (at most every few seconds) and sends a request that can be replayed again; a new token refused too is not a token for this resource: check the credential's scope and that its app registration or service account has access here{role}.",
        c.upstream
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_mask_anything_shaped_like_a_key() {
        let q =
            quote("Incorrect API key provided: sk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234. See docs.");
        assert!(!q.contains("AbCdEfGh"), "{q}");
        assert!(q.contains("sk-proj-****"), "{q}");
        assert!(q.ends_with("1234. See docs."), "{q}");
        let q =
            quote("Consumer 'api_key:AIzaSyAhTarnL1PaQn_yu_uVf0gia9wUyJx8RSI' has been suspended.");
        assert!(!q.contains("TarnL1"), "{q}");
        // Words, masked quotes and short ids stay readable.
        let plain = "Authentication Fails, Your api key: ****d569 is invalid (request id: abc123)";
        assert_eq!(quote(plain), plain);
        assert_eq!(quote("User not found."), "User not found.");
    }

    #[test]
    fn a_refused_rotation_is_mentioned_only_next_to_a_key_refusal() {
        let now = SystemTime::now();
        let attempt = Attempt {
            at: now - Duration::from_secs(120),
            trigger: crate::key::rotation::Trigger::Admin,
            result: RotationResult::Rejected,
            fingerprint: Some("sk-…abcd:12345678".into()),
            generation: Some(1),
            code: Some("too_short".into()),
            finding: Some("too short".into()),
        };
        let c = Context {
            upstream: "openai",
            provider: Provider::Openai,
            status: 401,
            key: None,
            provider_message: "",
            client_org: None,
            client_project: None,
            retry_after: None,
            last_attempt: Some(&attempt),
            base_url: "https://api.openai.com",
            auth_header: "authorization",
            rotate_command: false,
            now,
        };
        assert!(explain(Reason::InvalidKey, &c).contains("was refused 2 minutes ago"));
        for unrelated in [
            Reason::RateLimited,
            Reason::QuotaExhausted,
            Reason::OrgMismatch,
        ] {
            let text = explain(unrelated, &c);
            assert!(!text.contains("was refused"), "{text}");
        }
    }

    #[test]
    fn long_quotes_are_cut() {
        let long = "x ".repeat(300);
        let q = quote(&long);
        assert!(q.chars().count() <= 241 && q.ends_with('…'), "{q}");
    }
}
