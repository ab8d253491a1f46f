//! Google RPC errors (Gemini API, Vertex AI): `{"error":{"code","message","status","details":[{"reason"}]}}`,
//! sometimes with `errors[].reason` too, sometimes wrapped in an array (handled by the caller).
//! Below the reader: the documented `google.rpc.ErrorInfo` reasons and the Gemini/Vertex sentences.

use serde_json::Value;

use super::catalogue::{Entry, On};
use super::ErrorFacts;
use crate::reason::Reason;

pub fn read(v: &Value) -> Option<ErrorFacts> {
    let error = v.get("error")?;
    let status = error.get("status")?.as_str()?;
    let mut reasons = Vec::new();
    for list in ["details", "errors"] {
        for item in error
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = item.get("reason").and_then(Value::as_str) {
                reasons.push(r.to_owned());
            }
        }
    }
    Some(ErrorFacts {
        code: error
            .get("code")
            .map(super::openai::text_of)
            .unwrap_or_default(),
        kind: status.to_ascii_lowercase(),
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        reasons,
    })
}

/// `google.api.ErrorReason`, the machine-readable reason Google APIs put in `ErrorInfo`.
const REASONS: &str =
    "https://github.com/googleapis/googleapis/blob/master/google/api/error_reason.proto";
const STATUS: &str = "https://cloud.google.com/apis/design/errors#handling_errors";
const GEMINI: &str = "https://ai.google.dev/gemini-api/docs/troubleshooting#error-codes";
const REGIONS: &str = "https://ai.google.dev/gemini-api/docs/available-regions";
const VERTEX_AUTH: &str = "https://cloud.google.com/vertex-ai/docs/general/access-control";
const API_KEYS: &str = "https://cloud.google.com/docs/authentication/api-keys";

pub const CATALOGUE: &[Entry] = &[
    // ErrorInfo reasons that name one cause.
    Entry::decisive(
        On::GoogleReason("SERVICE_DISABLED"),
        Reason::InsufficientPermissions,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("BILLING_DISABLED"),
        Reason::QuotaExhausted,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("API_KEY_SERVICE_BLOCKED"),
        Reason::InsufficientPermissions,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("API_KEY_HTTP_REFERRER_BLOCKED"),
        Reason::InsufficientPermissions,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("API_KEY_IP_ADDRESS_BLOCKED"),
        Reason::IpNotAllowed,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("API_KEY_ANDROID_APP_BLOCKED"),
        Reason::InsufficientPermissions,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("API_KEY_IOS_APP_BLOCKED"),
        Reason::InsufficientPermissions,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("RATE_LIMIT_EXCEEDED"),
        Reason::RateLimited,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("LOCATION_TAX_POLICY_VIOLATED"),
        Reason::RegionUnsupported,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("USER_PROJECT_DENIED"),
        Reason::InsufficientPermissions,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("CONSUMER_SUSPENDED"),
        Reason::AccountInactive,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("ACCESS_TOKEN_EXPIRED"),
        Reason::ExpiredKey,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("ACCESS_TOKEN_SCOPE_INSUFFICIENT"),
        Reason::InsufficientPermissions,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("ACCOUNT_STATE_INVALID"),
        Reason::AccountInactive,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("ACCESS_TOKEN_TYPE_UNSUPPORTED"),
        Reason::MalformedKey,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("CREDENTIALS_MISSING"),
        Reason::MissingKey,
        REASONS,
    ),
    Entry::decisive(
        On::GoogleReason("IAM_PERMISSION_DENIED"),
        Reason::InsufficientPermissions,
        VERTEX_AUTH,
    ),
    Entry::decisive(
        On::GoogleReason("API_KEY_EXPIRED"),
        Reason::ExpiredKey,
        API_KEYS,
    ),
    Entry::decisive(
        On::GoogleReason("insufficientPermissions"),
        Reason::InsufficientPermissions,
        STATUS,
    ),
    Entry::decisive(
        On::GoogleReason("rateLimitExceeded"),
        Reason::RateLimited,
        STATUS,
    ),
    // Reasons Google also uses for neighbouring causes (an expired key is API_KEY_INVALID too):
    // the sentence decides first.
    Entry::hint(
        On::GoogleReason("API_KEY_INVALID"),
        Reason::InvalidKey,
        REASONS,
    ),
    Entry::hint(
        On::GoogleReason("API_KEY_NOT_FOUND"),
        Reason::InvalidKey,
        API_KEYS,
    ),
    Entry::hint(
        On::GoogleReason("CONSUMER_INVALID"),
        Reason::InvalidKey,
        REASONS,
    ),
    Entry::hint(
        On::GoogleReason("RESOURCE_QUOTA_EXCEEDED"),
        Reason::QuotaExhausted,
        REASONS,
    ),
    Entry::hint(
        On::GoogleReason("SECURITY_POLICY_VIOLATED"),
        Reason::IpNotAllowed,
        REASONS,
    ),
    // The canonical status alone (google.rpc.Code), the weakest evidence.
    Entry::hint(On::Type("unauthenticated"), Reason::InvalidKey, STATUS),
    Entry::hint(
        On::Type("permission_denied"),
        Reason::InsufficientPermissions,
        STATUS,
    ),
    Entry::hint(On::Type("resource_exhausted"), Reason::RateLimited, STATUS),
    // Gemini API / Vertex AI sentences.
    Entry::says("api key not valid", Reason::InvalidKey, GEMINI),
    Entry::says("api key not found", Reason::InvalidKey, GEMINI),
    Entry::says("api key expired", Reason::ExpiredKey, GEMINI),
    Entry::says("reported as leaked", Reason::RevokedKey, GEMINI),
    Entry::says(
        "user location is not supported",
        Reason::RegionUnsupported,
        REGIONS,
    ),
    Entry::says(
        "api keys are not supported by this api",
        Reason::MalformedKey,
        VERTEX_AUTH,
    ),
    Entry::says(
        "expected oauth 2 access token",
        Reason::MalformedKey,
        STATUS,
    ),
    Entry::says("expected oauth2 access token", Reason::MalformedKey, STATUS),
    Entry::says("unregistered callers", Reason::MissingKey, STATUS),
    Entry::says(
        "request had invalid authentication credentials",
        Reason::InvalidKey,
        STATUS,
    ),
    Entry::says(
        "insufficient authentication scopes",
        Reason::InsufficientPermissions,
        STATUS,
    ),
    Entry::says(
        "caller does not have permission",
        Reason::InsufficientPermissions,
        STATUS,
    ),
    Entry::says(
        "has not been used in project",
        Reason::InsufficientPermissions,
        REASONS,
    ),
    Entry::says(
        "requests to this api",
        Reason::InsufficientPermissions,
        API_KEYS,
    ),
    Entry::says(
        "requests from referer",
        Reason::InsufficientPermissions,
        API_KEYS,
    ),
    Entry::says(
        "denied on resource",
        Reason::InsufficientPermissions,
        VERTEX_AUTH,
    ),
    Entry::says("resource has been exhausted", Reason::RateLimited, GEMINI),
    Entry::says(
        "has been disabled in this account",
        Reason::AccountInactive,
        GEMINI,
    ),
];
