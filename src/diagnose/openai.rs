//! OpenAI's shape and the OpenAI-compatible hosts' variations (OpenRouter, Groq, DeepSeek, Mistral,
//! Together, Cohere, xAI): `{"error":{"message","type","param","code"}}`, the same without the
//! `error` wrapper (gateways strip it), `{"detail":{...}}`, `{"error":"text"}`, a bare `{"message"}`,
//! and a gateway's `{"error":{"error":{...}}}`. Below the reader: OpenAI's documented error catalogue.

use serde_json::Value;

use super::catalogue::{Entry, On};
use super::ErrorFacts;
use crate::reason::Reason;

pub fn read(v: &Value) -> Option<ErrorFacts> {
    let mut inner = match (v.get("error"), v.get("detail")) {
        (Some(e @ Value::Object(_)), _) | (None, Some(e @ Value::Object(_))) => e,
        (Some(Value::String(text)), _) | (None, Some(Value::String(text))) => {
            return Some(ErrorFacts {
                message: text.clone(),
                code: v
                    .get("code")
                    .map(text_of)
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                ..ErrorFacts::default()
            })
        }
        _ => v,
    };
    // A gateway that wrapped the provider's error object in one of its own.
    while let Some(nested @ Value::Object(_)) = inner.get("error") {
        inner = nested;
    }
    let message = inner
        .get("message")
        .or_else(|| inner.get("msg"))
        .and_then(Value::as_str);
    let code = inner.get("code").map(text_of).unwrap_or_default();
    let kind = inner.get("type").map(text_of).unwrap_or_default();
    if message.is_none() && code.is_empty() && kind.is_empty() {
        return None;
    }
    Some(ErrorFacts {
        code: code.to_ascii_lowercase(),
        kind: kind.to_ascii_lowercase(),
        message: message.unwrap_or("").to_owned(),
        reasons: Vec::new(),
    })
}

/// A JSON scalar as text (`"invalid_api_key"`, `401`); null is empty.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

const ERRORS: &str = "https://platform.openai.com/docs/guides/error-codes#api-errors";
const ORGS: &str = "https://platform.openai.com/docs/api-reference/authentication";
const REGIONS: &str = "https://platform.openai.com/docs/supported-countries";
const ALLOWLIST: &str = "https://help.openai.com/en/articles/10416203-managing-ip-allowlists";

/// OpenAI's documented codes and sentences. The OpenAI-compatible hosts reuse many of them; what
/// they add is in `hosts.rs`.
pub const CATALOGUE: &[Entry] = &[
    // 401 Invalid Authentication / Incorrect API key provided.
    Entry::hint(On::Code("invalid_api_key"), Reason::InvalidKey, ERRORS),
    Entry::says("incorrect api key provided", Reason::InvalidKey, ERRORS),
    Entry::says("invalid authentication", Reason::InvalidKey, ERRORS),
    // The SDKs' "Bearer Bearer sk-..." mistake: the credential itself is unreadable.
    Entry::says(
        "incorrect api key provided: bearer",
        Reason::MalformedKey,
        "https://github.com/rawandahmad698/PyChatGPT/issues/26",
    ),
    Entry::says("you didn't provide an api key", Reason::MissingKey, ERRORS),
    // 401 You must be a member of an organization to use the API.
    Entry::decisive(On::Code("no_organization"), Reason::AccountInactive, ERRORS),
    Entry::says(
        "must be a member of an organization",
        Reason::AccountInactive,
        ERRORS,
    ),
    // A deactivated account is not a revoked key: the same key works once the account is restored.
    Entry::decisive(
        On::Code("account_deactivated"),
        Reason::AccountInactive,
        ERRORS,
    ),
    Entry::says(
        "associated with a deactivated account",
        Reason::AccountInactive,
        ERRORS,
    ),
    Entry::says(
        "account has been deactivated",
        Reason::AccountInactive,
        ERRORS,
    ),
    // 401 IP not authorized (project IP allow-lists).
    Entry::decisive(
        On::Code("ip_not_authorized"),
        Reason::IpNotAllowed,
        ALLOWLIST,
    ),
    Entry::says("ip is not authorized", Reason::IpNotAllowed, ALLOWLIST),
    // 403 Country, region, or territory not supported.
    Entry::decisive(
        On::Code("unsupported_country_region_territory"),
        Reason::RegionUnsupported,
        REGIONS,
    ),
    Entry::says(
        "country, region, or territory not supported",
        Reason::RegionUnsupported,
        REGIONS,
    ),
    // 429 You exceeded your current quota.
    Entry::decisive(
        On::Code("insufficient_quota"),
        Reason::QuotaExhausted,
        ERRORS,
    ),
    Entry::decisive(
        On::Type("insufficient_quota"),
        Reason::QuotaExhausted,
        ERRORS,
    ),
    Entry::says(
        "exceeded your current quota",
        Reason::QuotaExhausted,
        ERRORS,
    ),
    // 429 Your account is not active, please check your billing details (no payment method).
    Entry::decisive(
        On::Code("billing_not_active"),
        Reason::QuotaExhausted,
        ERRORS,
    ),
    Entry::decisive(
        On::Type("billing_not_active"),
        Reason::QuotaExhausted,
        ERRORS,
    ),
    Entry::says("check your billing details", Reason::QuotaExhausted, ERRORS),
    Entry::decisive(
        On::Code("billing_hard_limit_reached"),
        Reason::QuotaExhausted,
        ERRORS,
    ),
    // 429 Rate limit reached for requests / tokens.
    Entry::decisive(On::Code("rate_limit_exceeded"), Reason::RateLimited, ERRORS),
    Entry::says("rate limit reached for", Reason::RateLimited, ERRORS),
    // OpenAI-Organization / OpenAI-Project headers.
    Entry::decisive(
        On::Code("mismatched_organization"),
        Reason::OrgMismatch,
        ORGS,
    ),
    Entry::decisive(On::Code("invalid_organization"), Reason::OrgMismatch, ORGS),
    Entry::decisive(
        On::Code("organization_not_found"),
        Reason::OrgMismatch,
        ORGS,
    ),
    Entry::says(
        "openai-organization header should match",
        Reason::OrgMismatch,
        ORGS,
    ),
    Entry::says("no such organization", Reason::OrgMismatch, ORGS),
    Entry::decisive(
        On::Code("mismatched_project"),
        Reason::ProjectMismatch,
        ORGS,
    ),
    Entry::decisive(On::Code("invalid_project"), Reason::ProjectMismatch, ORGS),
    Entry::says(
        "openai-project header should match",
        Reason::ProjectMismatch,
        ORGS,
    ),
    // Restricted keys and project roles.
    Entry::says(
        "you have insufficient permissions for this operation",
        Reason::InsufficientPermissions,
        "https://help.openai.com/en/articles/8867743-assign-api-key-permissions",
    ),
    Entry::says(
        "missing scopes",
        Reason::InsufficientPermissions,
        "https://help.openai.com/en/articles/8867743-assign-api-key-permissions",
    ),
    // Session tokens of the ChatGPT web API (seen through reverse proxies).
    Entry::decisive(On::Code("token_expired"), Reason::ExpiredKey, ERRORS),
    Entry::says(
        "authentication token has expired",
        Reason::ExpiredKey,
        ERRORS,
    ),
];
