//! What a provider's words mean: the best catalogue row (see `catalogue.rs`), then what the HTTP
//! status adds. A 400 is an auth refusal only when a row says so (most 400s are ordinary request
//! errors); a 402 is about money whatever the wording; a 429 is a rate limit unless the provider
//! says the quota or balance is gone (and a "quota" per minute is still a rate limit).
//! Also here: the common wording many hosts share, cited to the standard that defines its meaning.

use http::StatusCode;

use super::catalogue::{self, Entry, On};
use super::ErrorFacts;
use crate::reason::Reason;

const RFC6750: &str = "https://www.rfc-editor.org/rfc/rfc6750#section-3.1";
const RFC9110_401: &str = "https://www.rfc-editor.org/rfc/rfc9110#name-401-unauthorized";
const RFC9110_402: &str = "https://www.rfc-editor.org/rfc/rfc9110#name-402-payment-required";
const RFC9110_403: &str = "https://www.rfc-editor.org/rfc/rfc9110#name-403-forbidden";
const RFC6585: &str = "https://www.rfc-editor.org/rfc/rfc6585#section-4";

/// Wording that is not one provider's: the OAuth bearer-token errors of RFC 6750 and the HTTP
/// status phrases, as gateways and smaller hosts word them.
pub const GENERIC: &[Entry] = &[
    // RFC 6750 invalid_token: "expired, revoked, malformed, or invalid".
    Entry::says("revoked", Reason::RevokedKey, RFC6750),
    Entry::says("leaked", Reason::RevokedKey, RFC6750),
    Entry::says("api key has been disabled", Reason::RevokedKey, RFC6750),
    Entry::says("api key is disabled", Reason::RevokedKey, RFC6750),
    Entry::says("key has been deactivated", Reason::RevokedKey, RFC6750),
    Entry::says("key has expired", Reason::ExpiredKey, RFC6750),
    Entry::says("key expired", Reason::ExpiredKey, RFC6750),
    Entry::says("expired api key", Reason::ExpiredKey, RFC6750),
    Entry::says("token has expired", Reason::ExpiredKey, RFC6750),
    Entry::says("token expired", Reason::ExpiredKey, RFC6750),
    Entry::says("token is expired", Reason::ExpiredKey, RFC6750),
    Entry::decisive(On::Code("expired_api_key"), Reason::ExpiredKey, RFC6750),
    // "malformed" alone would also catch an ordinary 400 about a malformed request body.
    Entry::says("malformed api key", Reason::MalformedKey, RFC6750),
    Entry::says("key is malformed", Reason::MalformedKey, RFC6750),
    Entry::says("malformed token", Reason::MalformedKey, RFC6750),
    Entry::says("malformed authorization", Reason::MalformedKey, RFC6750),
    Entry::says(
        "invalid authorization header",
        Reason::MalformedKey,
        RFC6750,
    ),
    Entry::says("invalid bearer", Reason::MalformedKey, RFC6750),
    Entry::says("invalid header value", Reason::MalformedKey, RFC6750),
    Entry::says("bad authorization", Reason::MalformedKey, RFC6750),
    Entry::says("did not provide an api key", Reason::MissingKey, RFC6750),
    Entry::says("no api key", Reason::MissingKey, RFC6750),
    Entry::says("api key is missing", Reason::MissingKey, RFC6750),
    Entry::says("missing api key", Reason::MissingKey, RFC6750),
    Entry::says("api key required", Reason::MissingKey, RFC6750),
    Entry::says("api key not provided", Reason::MissingKey, RFC6750),
    Entry::says("must provide an api key", Reason::MissingKey, RFC6750),
    Entry::says(
        "authorization header is missing",
        Reason::MissingKey,
        RFC6750,
    ),
    Entry::says("missing authorization", Reason::MissingKey, RFC6750),
    Entry::says("missing bearer", Reason::MissingKey, RFC6750),
    Entry::says("no authorization", Reason::MissingKey, RFC6750),
    // RFC 6750 insufficient_scope; HTTP 403.
    Entry::says(
        "insufficient permission",
        Reason::InsufficientPermissions,
        RFC6750,
    ),
    Entry::decisive(
        On::Code("insufficient_permissions"),
        Reason::InsufficientPermissions,
        RFC6750,
    ),
    Entry::says(
        "permission denied",
        Reason::InsufficientPermissions,
        RFC9110_403,
    ),
    Entry::says(
        "does not have access",
        Reason::InsufficientPermissions,
        RFC9110_403,
    ),
    Entry::says(
        "not have permission",
        Reason::InsufficientPermissions,
        RFC9110_403,
    ),
    Entry::says(
        "not authorized to",
        Reason::InsufficientPermissions,
        RFC9110_403,
    ),
    Entry::says(
        "restricted api key",
        Reason::InsufficientPermissions,
        RFC9110_403,
    ),
    // HTTP 401 wordings: the credential was not accepted.
    Entry::says("invalid api key", Reason::InvalidKey, RFC9110_401),
    Entry::says("invalid token", Reason::InvalidKey, RFC9110_401),
    Entry::says("invalid credentials", Reason::InvalidKey, RFC9110_401),
    Entry::says("bad credentials", Reason::InvalidKey, RFC9110_401),
    Entry::says("invalid key", Reason::InvalidKey, RFC9110_401),
    Entry::says("key is invalid", Reason::InvalidKey, RFC9110_401),
    Entry::says("unauthorized", Reason::InvalidKey, RFC9110_401),
    Entry::says("unauthenticated", Reason::InvalidKey, RFC9110_401),
    Entry::says("authentication failed", Reason::InvalidKey, RFC9110_401),
    // The account or organization, not the key.
    Entry::says("deactivated", Reason::AccountInactive, RFC9110_403),
    Entry::says("suspended", Reason::AccountInactive, RFC9110_403),
    Entry::says(
        "organization is disabled",
        Reason::AccountInactive,
        RFC9110_403,
    ),
    Entry::says(
        "account has been disabled",
        Reason::AccountInactive,
        RFC9110_403,
    ),
    Entry::says("account is disabled", Reason::AccountInactive, RFC9110_403),
    Entry::says("account disabled", Reason::AccountInactive, RFC9110_403),
    Entry::says(
        "account is not active",
        Reason::AccountInactive,
        RFC9110_403,
    ),
    Entry::says("account is inactive", Reason::AccountInactive, RFC9110_403),
    // Network and place.
    Entry::says("your ip", Reason::IpNotAllowed, RFC9110_403),
    Entry::says("ip address", Reason::IpNotAllowed, RFC9110_403),
    Entry::says("ip not allowed", Reason::IpNotAllowed, RFC9110_403),
    Entry::says("from this ip", Reason::IpNotAllowed, RFC9110_403),
    Entry::says("firewall", Reason::IpNotAllowed, RFC9110_403),
    Entry::says("virtual network", Reason::IpNotAllowed, RFC9110_403),
    Entry::says("ip allowlist", Reason::IpNotAllowed, RFC9110_403),
    Entry::says("ip whitelist", Reason::IpNotAllowed, RFC9110_403),
    Entry::says(
        "region not supported",
        Reason::RegionUnsupported,
        RFC9110_403,
    ),
    Entry::says(
        "region is not supported",
        Reason::RegionUnsupported,
        RFC9110_403,
    ),
    Entry::says(
        "location is not supported",
        Reason::RegionUnsupported,
        RFC9110_403,
    ),
    Entry::says(
        "not available in your country",
        Reason::RegionUnsupported,
        RFC9110_403,
    ),
    Entry::says(
        "not available in your region",
        Reason::RegionUnsupported,
        RFC9110_403,
    ),
    Entry::says("wrong api endpoint", Reason::WrongEndpoint, RFC9110_403),
    Entry::says("wrong endpoint", Reason::WrongEndpoint, RFC9110_403),
    Entry::says("regional api endpoint", Reason::WrongEndpoint, RFC9110_403),
    Entry::says("incorrect endpoint", Reason::WrongEndpoint, RFC9110_403),
    // HTTP 402: money.
    Entry::says("payment required", Reason::QuotaExhausted, RFC9110_402),
    Entry::says("out of credits", Reason::QuotaExhausted, RFC9110_402),
    Entry::says("no credits", Reason::QuotaExhausted, RFC9110_402),
    Entry::says("billing hard limit", Reason::QuotaExhausted, RFC9110_402),
    Entry::says("quota exceeded", Reason::QuotaExhausted, RFC9110_402),
    Entry::decisive(
        On::Code("quota_exceeded"),
        Reason::QuotaExhausted,
        RFC9110_402,
    ),
    Entry::says("purchase more", Reason::QuotaExhausted, RFC9110_402),
    Entry::says("add credits", Reason::QuotaExhausted, RFC9110_402),
    // HTTP 429: pace.
    Entry::says("rate limit", Reason::RateLimited, RFC6585),
    Entry::says("rate_limit", Reason::RateLimited, RFC6585),
    Entry::says("ratelimit", Reason::RateLimited, RFC6585),
    Entry::says("too many requests", Reason::RateLimited, RFC6585),
    Entry::says("requests per min", Reason::RateLimited, RFC6585),
    Entry::says("tokens per min", Reason::RateLimited, RFC6585),
    Entry::says("throttl", Reason::RateLimited, RFC6585),
    Entry::says("slow down", Reason::RateLimited, RFC6585),
];

/// Reasons that can explain a 400: the rest of the 400s are ordinary request errors.
fn plausible_for_400(r: Reason) -> bool {
    !matches!(
        r,
        Reason::RateLimited | Reason::UnknownAuthError | Reason::WrongEndpoint
    )
}

/// A "quota" that resets within the minute is a rate limit (Gemini's free tier words it so).
fn per_minute(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "per minute",
        "perminute",
        "rate-limits",
        "rate limit",
        "retry in",
    ]
    .iter()
    .any(|p| message.contains(p))
}

/// The catalogue row that explains `facts`, if any.
pub fn matched(facts: &ErrorFacts) -> Option<&'static Entry> {
    catalogue::best(facts)
}

pub fn reason(facts: &ErrorFacts, status: StatusCode) -> Option<Reason> {
    let found = matched(facts).map(|e| e.reason);
    match status.as_u16() {
        400 => found.filter(|r| plausible_for_400(*r)),
        429 => Some(match found {
            Some(Reason::QuotaExhausted) if !per_minute(&facts.message) => Reason::QuotaExhausted,
            _ => Reason::RateLimited,
        }),
        402 => Some(match found {
            Some(r @ (Reason::AccountInactive | Reason::RegionUnsupported)) => r,
            _ => Reason::QuotaExhausted,
        }),
        _ => found,
    }
}
