//! Turning a provider's refusal into a stable reason code and a sentence a person can act on.
//! Like linkerd's response classifiers, in two steps: the status decides whether the body is worth
//! reading at all (`worth_reading`); then the provider's error shape (one reader per provider file),
//! the documented error catalogues beside each reader (`catalogue.rs` decides between their rows),
//! and what keyproxy knows about the key it injected decide the reason.

mod anthropic;
mod azure;
mod bedrock;
pub mod catalogue;
mod google;
mod hosts;
pub mod message;
mod openai;
pub mod probe;
mod rules;
pub mod token_endpoint;

use std::time::SystemTime;

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::key::lint::{Finding, LintCode};
use crate::key::rotation::Attempt;
use crate::reason::Reason;

/// What a provider said in its error body, from whichever shape it used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFacts {
    /// `error.code` (string or number), an AWS error type or an Entra `aadsts…` code, lowercased.
    pub code: String,
    /// `error.type` (OpenAI, Anthropic), `error.status` (Google RPC) or the OAuth `error` (Entra).
    pub kind: String,
    /// The provider's own sentence.
    pub message: String,
    /// Google `details[].reason` / `errors[].reason` (`API_KEY_INVALID`, ...).
    pub reasons: Vec<String>,
}

/// How much of an error body is read to classify it (the proxy's peek, the probe, `explain`).
pub const PEEK_LIMIT: usize = 64 * 1024;

/// Only these statuses are about keys at all; the rest (and every 5xx) pass without a look.
pub fn worth_reading(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 401 | 402 | 403 | 429)
}

/// Read the provider's error facts from a body, whatever its shape.
pub fn facts(body: &[u8]) -> Option<ErrorFacts> {
    let value: Value = serde_json::from_slice(body).ok()?;
    read(&value, 2)
}

/// `facts`, plus what an AWS service puts in its `x-amzn-ErrorType` header instead of the body.
pub fn facts_with_headers(body: &[u8], headers: &HeaderMap) -> Option<ErrorFacts> {
    let aws_type = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(bedrock::error_type);
    match (facts(body), aws_type) {
        (Some(mut f), Some(t)) if f.code.is_empty() => {
            f.code = t;
            Some(f)
        }
        (None, Some(t)) => Some(ErrorFacts {
            code: t,
            ..ErrorFacts::default()
        }),
        (f, _) => f,
    }
}

fn read(value: &Value, depth: u8) -> Option<ErrorFacts> {
    // Some Google endpoints wrap the error in a one-element array.
    let value = match value {
        Value::Array(items) => items.first()?,
        _ => value,
    };
    let found = google::read(value)
        .or_else(|| bedrock::read(value))
        .or_else(|| azure::read(value))
        .or_else(|| anthropic::read(value))
        .or_else(|| openai::read(value))?;
    // A gateway (an SDK proxy, a CLI) that put the provider's whole error body in its message.
    let inner = found.message.trim_start();
    if depth > 0 && (inner.starts_with('{') || inner.starts_with('[')) {
        if let Some(provider) = serde_json::from_str::<Value>(inner)
            .ok()
            .and_then(|v| read(&v, depth - 1))
        {
            return Some(provider);
        }
    }
    Some(found)
}

/// The documented catalogue row that explains `facts`, if any (for `keyproxy explain`).
pub fn matched_rule(facts: &ErrorFacts) -> Option<&'static catalogue::Entry> {
    rules::matched(facts)
}

/// What keyproxy knows about the request and the key it injected.
#[derive(Debug, Clone, Default)]
pub struct Knowledge<'a> {
    pub expires_at: Option<SystemTime>,
    pub lint_warnings: &'a [Finding],
    /// The last rotation attempt, if it was refused.
    pub refused_rotation: Option<&'a Attempt>,
}

/// The reason for a refusal, or `None` for responses that are not about the key (an ordinary 400).
pub fn classify(
    status: StatusCode,
    facts: Option<&ErrorFacts>,
    known: &Knowledge<'_>,
    now: SystemTime,
) -> Option<Reason> {
    if !worth_reading(status) {
        return None;
    }
    let said = facts.and_then(|f| rules::reason(f, status));
    let reason = match (said, status.as_u16()) {
        (Some(r), _) => r,
        (None, 401 | 403) => Reason::UnknownAuthError,
        (None, 402) => Reason::QuotaExhausted,
        (None, 429) => Reason::RateLimited,
        (None, _) => return None,
    };
    Some(refine(reason, status, known, now))
}

/// Combine the provider's word with keyproxy's own: an expired key explains a generic refusal
/// better than "invalid"; another provider's key explains it better still.
fn refine(reason: Reason, status: StatusCode, known: &Knowledge<'_>, now: SystemTime) -> Reason {
    let about_the_key = matches!(
        reason,
        Reason::InvalidKey
            | Reason::UnknownAuthError
            | Reason::ExpiredKey
            | Reason::RevokedKey
            | Reason::MalformedKey
    ) && matches!(status.as_u16(), 400 | 401 | 403);
    if !about_the_key {
        return reason;
    }
    if known
        .lint_warnings
        .iter()
        .any(|w| w.code == LintCode::WrongProvider)
    {
        return Reason::WrongProviderKey;
    }
    if known.expires_at.is_some_and(|at| at <= now) && reason != Reason::RevokedKey {
        return Reason::ExpiredKey;
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Row {
        provider: String,
        status: u16,
        body: String,
        reason: String,
        also_ok: Vec<String>,
    }

    /// Every real error body in the fixture file gets its expected reason.
    #[test]
    fn every_fixture_row() {
        let fixture = include_str!("../../tests/fixtures/provider-errors.jsonl");
        let mut failures = Vec::new();
        for (n, line) in fixture.lines().enumerate() {
            let row: Row = serde_json::from_str(line).unwrap();
            let status = StatusCode::from_u16(row.status).unwrap();
            let facts = facts(row.body.as_bytes());
            let got = classify(
                status,
                facts.as_ref(),
                &Knowledge::default(),
                SystemTime::now(),
            );
            let ok = match row.reason.as_str() {
                "none" => got.is_none(),
                "any" => got.is_some(),
                want => got.is_some_and(|g| {
                    g.as_str() == want || row.also_ok.iter().any(|a| a == g.as_str())
                }),
            };
            if !ok {
                failures.push(format!(
                    "line {}: {} {} want {} got {got:?} ({facts:?})",
                    n + 1,
                    row.provider,
                    row.status,
                    row.reason
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Wordings and shapes beyond the fixture file, from the providers' documented error formats.
    #[test]
    fn variants_beyond_the_fixtures() {
        let cases: &[(u16, &str, Reason)] = &[
            (
                401,
                r#"{"error":{"message":"Invalid API Key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
                Reason::InvalidKey,
            ), // Groq
            (401, r#"{"detail":"Unauthorized"}"#, Reason::InvalidKey), // Mistral (older)
            (
                401,
                r#"{"message":"invalid api token"}"#,
                Reason::InvalidKey,
            ), // Cohere
            (
                401,
                r#"{"error":"Incorrect API key provided: xai-****"}"#,
                Reason::InvalidKey,
            ), // error as a string
            (
                401,
                r#"{"error":{"code":"invalid_api_key","message":""}}"#,
                Reason::InvalidKey,
            ),
            (
                401,
                r#"{"error":{"message":"Your authentication token has expired. Please try signing in again.","type":"invalid_request_error","code":"token_expired"}}"#,
                Reason::ExpiredKey,
            ),
            (
                401,
                r#"{"error":{"message":"The OpenAI-Project header should match project for API key","type":"invalid_request_error","code":"mismatched_project"}}"#,
                Reason::ProjectMismatch,
            ),
            (
                403,
                r#"{"error":{"code":"PERMISSION_DENIED","message":"Permission denied: Consumer 'api_key:AIza' has been suspended.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"CONSUMER_SUSPENDED"}]}}"#,
                Reason::AccountInactive,
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#,
                Reason::InvalidKey,
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"User location is not supported for the API use.","status":"FAILED_PRECONDITION"}}"#,
                Reason::RegionUnsupported,
            ),
            (
                403,
                r#"{"error":{"code":403,"message":"Requests from referer <empty> are blocked.","status":"PERMISSION_DENIED","details":[{"reason":"API_KEY_HTTP_REFERRER_BLOCKED"}]}}"#,
                Reason::InsufficientPermissions,
            ),
            (
                401,
                r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription."}}"#,
                Reason::InvalidKey,
            ), // Azure
            (
                429,
                r#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-02-01 have exceeded token rate limit of your current OpenAI S0 pricing tier."}}"#,
                Reason::RateLimited,
            ),
            (
                429,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
                Reason::RateLimited,
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#,
                Reason::QuotaExhausted,
            ),
            (
                403,
                r#"{"error":{"message":"You are not allowed to sample from this model","type":"invalid_request_error","param":null,"code":null}}"#,
                Reason::UnknownAuthError,
            ),
        ];
        for (status, body, want) in cases {
            let status = StatusCode::from_u16(*status).unwrap();
            let got = classify(
                status,
                facts(body.as_bytes()).as_ref(),
                &Knowledge::default(),
                SystemTime::now(),
            );
            assert_eq!(got, Some(*want), "{body}");
        }
    }

    #[test]
    fn gateway_wrappers_and_aws_headers_are_read_through() {
        // A gateway that put Google's whole body in its own message.
        let wrapped = br#"{"error":{"message":"{\n \"error\": {\"code\": 403, \"message\": \"Your API key was reported as leaked.\", \"status\": \"PERMISSION_DENIED\"}}","code":403,"status":"Forbidden"}}"#;
        let f = facts(wrapped).unwrap();
        assert_eq!(f.kind, "permission_denied");
        assert_eq!(
            classify(
                StatusCode::FORBIDDEN,
                Some(&f),
                &Knowledge::default(),
                SystemTime::now()
            ),
            Some(Reason::RevokedKey)
        );
        // A gateway that nested the provider's error object in its own.
        let nested = facts(
            br#"{"error":{"error":{"message":"More credits are required","code":402},"code":402}}"#,
        )
        .unwrap();
        assert_eq!(nested.message, "More credits are required");
        // Bedrock names the error in a header; the body may only have a message.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            http::HeaderValue::from_static(
                "ExpiredTokenException:http://internal.amazon.com/coral/com.amazon.coral.service/",
            ),
        );
        let f = facts_with_headers(br#"{"message":"nothing specific"}"#, &headers).unwrap();
        assert_eq!(f.code, "expiredtokenexception");
        assert_eq!(
            classify(
                StatusCode::FORBIDDEN,
                Some(&f),
                &Knowledge::default(),
                SystemTime::now()
            ),
            Some(Reason::ExpiredKey)
        );
        assert!(facts_with_headers(b"", &headers).is_some());
        assert!(facts_with_headers(b"", &HeaderMap::new()).is_none());
    }

    #[test]
    fn ordinary_errors_and_5xx_get_no_reason() {
        let k = Knowledge::default();
        let now = SystemTime::now();
        let bad_param = facts(br#"{"error":{"message":"Invalid value for 'temperature': must be <= 2","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#);
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, bad_param.as_ref(), &k, now),
            None
        );
        let overloaded = facts(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(
            classify(
                StatusCode::from_u16(529).unwrap(),
                overloaded.as_ref(),
                &k,
                now
            ),
            None
        );
        assert_eq!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, None, &k, now),
            None
        );
        assert_eq!(classify(StatusCode::NOT_FOUND, None, &k, now), None);
    }

    #[test]
    fn unrecognised_bodies_fall_back_on_the_status() {
        let k = Knowledge::default();
        let now = SystemTime::now();
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, None, &k, now),
            Some(Reason::UnknownAuthError)
        );
        assert_eq!(
            classify(
                StatusCode::FORBIDDEN,
                facts(b"<html>nope</html>").as_ref(),
                &k,
                now
            ),
            Some(Reason::UnknownAuthError)
        );
        assert_eq!(
            classify(StatusCode::PAYMENT_REQUIRED, None, &k, now),
            Some(Reason::QuotaExhausted)
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, None, &k, now),
            Some(Reason::RateLimited)
        );
        assert_eq!(classify(StatusCode::BAD_REQUEST, None, &k, now), None);
    }

    #[test]
    fn what_keyproxy_knows_refines_the_reason() {
        let now = SystemTime::now();
        let invalid = facts(
            br#"{"error":{"message":"Incorrect API key provided","code":"invalid_api_key"}}"#,
        );
        let expired = Knowledge {
            expires_at: Some(now - std::time::Duration::from_secs(60)),
            ..Knowledge::default()
        };
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, invalid.as_ref(), &expired, now),
            Some(Reason::ExpiredKey)
        );
        let warnings = [Finding {
            code: LintCode::WrongProvider,
            severity: crate::key::lint::Severity::Warning,
            message: String::new(),
            belongs_to: Some("Anthropic"),
        }];
        let wrong = Knowledge {
            lint_warnings: &warnings,
            ..Knowledge::default()
        };
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, invalid.as_ref(), &wrong, now),
            Some(Reason::WrongProviderKey)
        );
        // A rate limit is a rate limit, whatever the key's expiry.
        let limited =
            facts(br#"{"error":{"message":"Rate limit reached","code":"rate_limit_exceeded"}}"#);
        assert_eq!(
            classify(
                StatusCode::TOO_MANY_REQUESTS,
                limited.as_ref(),
                &expired,
                now
            ),
            Some(Reason::RateLimited)
        );
    }
}
