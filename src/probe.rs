//! The live probe: one request to the provider's cheapest authenticated endpoint with a candidate
//! key, to learn whether the provider accepts it before it is swapped in.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Either, Empty, Limited};

use crate::reason::Reason;
use crate::upstream::{Provider, Upstream, ANTHROPIC_DEFAULT_VERSION, ANTHROPIC_VERSION};

/// How much of an error body the probe reads to explain a refusal.
const BODY_LIMIT: usize = 64 * 1024;
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The provider accepted the key (a 429 rate limit counts: the key itself was recognised).
    Accepted { status: u16 },
    /// The provider refused the key.
    Refused {
        reason: Reason,
        status: u16,
        message: String,
    },
    /// No answer to judge by (unreachable, timeout, 5xx).
    Failed { message: String },
}

/// The endpoint each provider answers cheaply when the key is good.
pub fn probe_target(upstream: &Upstream) -> (&str, Option<&str>) {
    match upstream.provider {
        Provider::Openai | Provider::Anthropic => ("/v1/models", None),
        Provider::Gemini => ("/v1beta/models", None),
        Provider::Azure => ("/openai/models", Some("api-version=2024-10-21")),
        Provider::Generic => (upstream.probe_path.as_deref().unwrap_or("/v1/models"), None),
    }
}

pub async fn probe(upstream: &Upstream, auth: &HeaderValue) -> ProbeOutcome {
    let (path, query) = probe_target(upstream);
    let uri = match upstream.uri(path, query) {
        Ok(uri) => uri,
        Err(e) => {
            return ProbeOutcome::Failed {
                message: format!("cannot build the probe URL: {e}"),
            }
        }
    };
    let mut req = Request::new(Either::Right(Empty::<Bytes>::new()));
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(upstream.auth_header.clone(), auth.clone());
    if upstream.provider == Provider::Anthropic {
        req.headers_mut()
            .insert(ANTHROPIC_VERSION, ANTHROPIC_DEFAULT_VERSION);
    }
    let timeout = upstream.response_header_timeout.min(PROBE_TIMEOUT);
    let response = match tokio::time::timeout(timeout, upstream.client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return ProbeOutcome::Failed {
                message: format!("the probe could not reach {}: {e}", upstream.name),
            }
        }
        Err(_) => {
            return ProbeOutcome::Failed {
                message: format!(
                    "the probe got no answer from {} within {}s",
                    upstream.name,
                    timeout.as_secs()
                ),
            }
        }
    };
    let status = response.status();
    let body = Limited::new(response.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    judge(upstream.provider, status, &body)
}

fn judge(provider: Provider, status: StatusCode, body: &[u8]) -> ProbeOutcome {
    let code = status.as_u16();
    let said = provider_message(body);
    if status.is_success() {
        return ProbeOutcome::Accepted { status: code };
    }
    let quota = said.to_ascii_lowercase().contains("quota")
        || String::from_utf8_lossy(body).contains("insufficient_quota");
    let reason = match code {
        429 if !quota => return ProbeOutcome::Accepted { status: code },
        429 | 402 => Reason::QuotaExhausted,
        401 => Reason::InvalidKey,
        400 if provider == Provider::Gemini => Reason::InvalidKey,
        403 => Reason::InsufficientPermissions,
        s if s >= 500 => {
            return ProbeOutcome::Failed {
                message: format!(
                    "the provider answered {status} to the probe, so the key could not be judged"
                ),
            }
        }
        _ => Reason::UnknownAuthError,
    };
    let message = if said.is_empty() {
        format!("the provider answered {status}")
    } else {
        format!("the provider answered {status}: {said}")
    };
    ProbeOutcome::Refused {
        reason,
        status: code,
        message,
    }
}

/// The provider's own error sentence, from the usual JSON shapes, shortened.
fn provider_message(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let v = v.as_array().and_then(|a| a.first()).unwrap_or(&v);
    let text = v
        .pointer("/error/message")
        .or_else(|| v.get("message"))
        .or_else(|| v.pointer("/detail/message"))
        .and_then(|m| m.as_str())
        .unwrap_or("");
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging_probe_answers() {
        let ok = judge(Provider::Openai, StatusCode::OK, b"{}");
        assert_eq!(ok, ProbeOutcome::Accepted { status: 200 });
        let limited = judge(
            Provider::Openai,
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"error":{"message":"Rate limit reached"}}"#,
        );
        assert_eq!(limited, ProbeOutcome::Accepted { status: 429 });
        let ProbeOutcome::Refused {
            reason, message, ..
        } = judge(
            Provider::Openai,
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"message":"Incorrect API key provided"}}"#,
        )
        else {
            panic!("not refused")
        };
        assert_eq!(reason, Reason::InvalidKey);
        assert!(message.contains("Incorrect API key provided"));
        let gemini = judge(
            Provider::Gemini,
            StatusCode::BAD_REQUEST,
            br#"[{"error":{"message":"API key not valid"}}]"#,
        );
        assert!(matches!(
            gemini,
            ProbeOutcome::Refused {
                reason: Reason::InvalidKey,
                ..
            }
        ));
        let quota = judge(Provider::Openai, StatusCode::TOO_MANY_REQUESTS, br#"{"error":{"type":"insufficient_quota","message":"You exceeded your current quota"}}"#);
        assert!(matches!(
            quota,
            ProbeOutcome::Refused {
                reason: Reason::QuotaExhausted,
                ..
            }
        ));
        assert!(matches!(
            judge(Provider::Openai, StatusCode::BAD_GATEWAY, b""),
            ProbeOutcome::Failed { .. }
        ));
    }
}
