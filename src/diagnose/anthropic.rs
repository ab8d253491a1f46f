//! Anthropic errors: `{"type":"error","error":{"type":"authentication_error","message"},"request_id"}`
//! (the outer `type` is sometimes missing behind gateways). Below the reader: Anthropic's documented
//! error types and the sentences its API sends with them.

use serde_json::Value;

use super::catalogue::{Entry, On};
use super::ErrorFacts;
use crate::reason::Reason;

pub fn read(v: &Value) -> Option<ErrorFacts> {
    let error = v.get("error")?;
    let kind = error.get("type")?.as_str()?;
    let anthropic_shape = v.get("type").and_then(Value::as_str) == Some("error")
        || (error.get("code").is_none() && error.get("param").is_none());
    if !anthropic_shape {
        return None;
    }
    Some(ErrorFacts {
        code: String::new(),
        kind: kind.to_ascii_lowercase(),
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        reasons: Vec::new(),
    })
}

const ERRORS: &str = "https://docs.anthropic.com/en/api/errors";
const REGIONS: &str = "https://docs.anthropic.com/en/api/supported-regions";

pub const CATALOGUE: &[Entry] = &[
    // 401 authentication_error: "There's an issue with your API key."
    Entry::hint(On::Type("authentication_error"), Reason::InvalidKey, ERRORS),
    Entry::says("invalid x-api-key", Reason::InvalidKey, ERRORS),
    Entry::says("x-api-key header is required", Reason::MissingKey, ERRORS),
    // An OAuth (Claude subscription) token sent where an API key is expected.
    Entry::says(
        "oauth authentication is currently not supported",
        Reason::MalformedKey,
        ERRORS,
    ),
    Entry::says("invalid bearer token", Reason::MalformedKey, ERRORS),
    // 403 permission_error: "Your API key does not have permission to use the specified resource."
    Entry::hint(
        On::Type("permission_error"),
        Reason::InsufficientPermissions,
        ERRORS,
    ),
    Entry::says(
        "does not have permission to use the specified resource",
        Reason::InsufficientPermissions,
        ERRORS,
    ),
    // 403 forbidden "Request not allowed": requests from outside the supported regions.
    Entry::says("request not allowed", Reason::RegionUnsupported, REGIONS),
    // 402 billing_error; the credit-balance sentence comes with a 400 invalid_request_error.
    Entry::decisive(On::Type("billing_error"), Reason::QuotaExhausted, ERRORS),
    Entry::says("credit balance is too low", Reason::QuotaExhausted, ERRORS),
    Entry::says(
        "reached your specified api usage limits",
        Reason::QuotaExhausted,
        ERRORS,
    ),
    // 429 rate_limit_error.
    Entry::decisive(On::Type("rate_limit_error"), Reason::RateLimited, ERRORS),
    Entry::decisive(On::Code("rate_limit_error"), Reason::RateLimited, ERRORS),
    Entry::says(
        "would exceed the rate limit for your organization",
        Reason::RateLimited,
        ERRORS,
    ),
    Entry::says(
        "would exceed your organization's rate limit",
        Reason::RateLimited,
        ERRORS,
    ),
    // A disabled organization (policy or billing), not a bad key.
    Entry::says(
        "organization has been disabled",
        Reason::AccountInactive,
        ERRORS,
    ),
];
