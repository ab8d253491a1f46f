//! What a provider's words mean. Google's machine-readable `reason` codes first; then an ordered
//! table of phrases over the code, type and message together, most specific first (a leaked key
//! before an invalid one, a malformed header before "incorrect API key"). Phrases are the ones the
//! providers' documented error formats use, so a new wording of the same error still matches.

use http::StatusCode;

use super::ErrorFacts;
use crate::reason::Reason;

/// Google RPC `ErrorInfo.reason` values (and legacy `errors[].reason`).
fn google_reason(reason: &str, message: &str) -> Option<Reason> {
    Some(match reason {
        "API_KEY_INVALID" if message.contains("expired") => Reason::ExpiredKey,
        "API_KEY_INVALID" | "API_KEY_NOT_FOUND" => Reason::InvalidKey,
        "API_KEY_EXPIRED" => Reason::ExpiredKey,
        "API_KEY_IP_ADDRESS_BLOCKED" => Reason::IpNotAllowed,
        "API_KEY_SERVICE_BLOCKED"
        | "API_KEY_HTTP_REFERRER_BLOCKED"
        | "API_KEY_ANDROID_APP_BLOCKED"
        | "API_KEY_IOS_APP_BLOCKED"
        | "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
        | "IAM_PERMISSION_DENIED"
        | "SERVICE_DISABLED"
        | "insufficientPermissions" => Reason::InsufficientPermissions,
        "CREDENTIALS_MISSING" => Reason::MissingKey,
        "CONSUMER_SUSPENDED" => Reason::AccountInactive,
        "BILLING_DISABLED" => Reason::QuotaExhausted,
        "RATE_LIMIT_EXCEEDED" | "rateLimitExceeded" => Reason::RateLimited,
        "USER_LOCATION_INVALID" | "LOCATION_NOT_SUPPORTED" => Reason::RegionUnsupported,
        _ => return None,
    })
}

/// Ordered: the first row with a phrase in the haystack wins.
const PHRASES: &[(Reason, &[&str])] = &[
    (
        Reason::RevokedKey,
        &[
            "leaked",
            "revoked",
            "api key has been disabled",
            "api key is disabled",
            "key has been deactivated",
        ],
    ),
    (
        Reason::ExpiredKey,
        &[
            "api key expired",
            "key has expired",
            "key expired",
            "expired api key",
            "api_key_expired",
            "token has expired",
            "token expired",
            "expired_api_key",
        ],
    ),
    (
        Reason::OrgMismatch,
        &[
            "mismatched_organization",
            "invalid_organization",
            "organization header should match",
            "openai-organization",
            "no such organization",
            "organization_not_found",
            "not a member of an organization",
            "not a member of organization",
        ],
    ),
    (
        Reason::ProjectMismatch,
        &[
            "mismatched_project",
            "invalid_project",
            "openai-project",
            "project header should match",
            "does not belong to project",
        ],
    ),
    (
        Reason::IpNotAllowed,
        &[
            "ip_not_authorized",
            "ip_not_allowed",
            "your ip",
            "ip address",
            "ip not allowed",
            "from this ip",
            "firewall",
            "virtual network",
            "ip allowlist",
            "ip whitelist",
        ],
    ),
    (
        Reason::RegionUnsupported,
        &[
            "unsupported_country",
            "country, region, or territory",
            "region not supported",
            "region is not supported",
            "location is not supported",
            "user location",
            "not available in your country",
            "not available in your region",
            "request not allowed",
            "unsupported_region",
        ],
    ),
    (
        Reason::AccountInactive,
        &[
            "account_deactivated",
            "deactivated",
            "organization has been disabled",
            "organization is disabled",
            "account has been disabled",
            "account is disabled",
            "account disabled",
            "suspended",
            "account is not active",
            "account_inactive",
            "account is inactive",
        ],
    ),
    (
        Reason::QuotaExhausted,
        &[
            "insufficient_quota",
            "exceeded your current quota",
            "insufficient credits",
            "insufficient balance",
            "insufficient_balance",
            "credit balance is too low",
            "out of credits",
            "no credits",
            "payment required",
            "billing_hard_limit",
            "billing hard limit",
            "quota_exceeded",
            "purchase more",
            "add credits",
        ],
    ),
    (
        Reason::RateLimited,
        &[
            "rate_limit",
            "rate limit",
            "ratelimit",
            "too many requests",
            "requests per min",
            "tokens per min",
            "resource_exhausted",
            "throttl",
            "slow down",
        ],
    ),
    (
        Reason::WrongEndpoint,
        &[
            "wrong api endpoint",
            "wrong endpoint",
            "regional api endpoint",
            "incorrect endpoint",
        ],
    ),
    (
        Reason::MalformedKey,
        &[
            "incorrect api key provided: bearer",
            "expected oauth 2 access token",
            "malformed",
            "invalid authorization header",
            "invalid bearer",
            "invalid header value",
            "oauth authentication is currently not supported",
            "bad authorization",
        ],
    ),
    (
        Reason::MissingKey,
        &[
            "didn't provide an api key",
            "did not provide an api key",
            "no api key",
            "api key is missing",
            "missing api key",
            "api key required",
            "api key not provided",
            "must provide an api key",
            "no auth credentials",
            "no cookie auth credentials",
            "unregistered callers",
            "credentials_missing",
            "authorization header is missing",
            "missing authorization",
            "missing bearer",
            "no authorization",
        ],
    ),
    (
        Reason::InsufficientPermissions,
        &[
            "insufficient permission",
            "insufficient_permissions",
            "insufficient authentication scopes",
            "missing scopes",
            "permission_error",
            "permissiondenied",
            "permission denied",
            "does not have access",
            "not have permission",
            "not authorized to",
            "restricted api key",
        ],
    ),
    (
        Reason::InvalidKey,
        &[
            "invalid_api_key",
            "incorrect api key",
            "invalid api key",
            "invalid x-api-key",
            "api key not valid",
            "api_key_invalid",
            "api key not found",
            "authentication_error",
            "authentication fails",
            "authentication failed",
            "invalid_authentication",
            "invalid authentication",
            "unauthenticated",
            "unauthorized",
            "invalid token",
            "invalid api token",
            "invalid subscription key",
            "invalid credentials",
            "bad credentials",
            "no such user",
            "invalid key",
            "key is invalid",
        ],
    ),
];

/// Reasons that can explain a 400: the rest of the 400s are ordinary request errors.
fn plausible_for_400(r: Reason) -> bool {
    !matches!(
        r,
        Reason::RateLimited | Reason::UnknownAuthError | Reason::WrongEndpoint
    )
}

fn per_minute(message: &str) -> bool {
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

pub fn reason(facts: &ErrorFacts, status: StatusCode) -> Option<Reason> {
    let message = facts.message.to_ascii_lowercase();
    let from_google = facts
        .reasons
        .iter()
        .find_map(|r| google_reason(r, &message));
    let found = from_google.or_else(|| {
        let haystack = format!(
            "{} {} {} {}",
            facts.code,
            facts.kind,
            facts.reasons.join(" ").to_ascii_lowercase(),
            message
        )
        // Curly apostrophes ("didn’t") read as straight ones.
        .replace('\u{2019}', "'");
        PHRASES
            .iter()
            .find(|(_, phrases)| phrases.iter().any(|p| haystack.contains(p)))
            .map(|(reason, _)| *reason)
    });
    match status.as_u16() {
        400 => found.filter(|r| plausible_for_400(*r)),
        // "Quota" on a 429 that talks about per-minute limits is a rate limit (Gemini's free tier).
        429 => Some(match found {
            Some(Reason::QuotaExhausted) if !per_minute(&message) => Reason::QuotaExhausted,
            _ => Reason::RateLimited,
        }),
        402 => Some(match found {
            Some(r @ (Reason::AccountInactive | Reason::RegionUnsupported)) => r,
            _ => Reason::QuotaExhausted,
        }),
        _ => found,
    }
}
