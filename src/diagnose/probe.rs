//! The live probe: one request to the provider's cheapest authenticated endpoint with a candidate
//! key, to learn whether the provider accepts it before it is swapped in.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::upstream::pool::{SendError, UpstreamBody};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Limited};

use std::time::SystemTime;

use crate::diagnose::{self, Knowledge};
use crate::key::lifecycle::{KeyProbe, ProbeOutcome};
use crate::provider::{Provider, ANTHROPIC_DEFAULT_VERSION, ANTHROPIC_VERSION};
use crate::reason::Reason;
use crate::upstream::Upstream;

const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The provider is asked through the upstream's own pool, the way requests go.
impl KeyProbe for Upstream {
    fn probe<'a>(
        &'a self,
        auth: &'a HeaderValue,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>> {
        Box::pin(probe(self, auth))
    }
}

pub async fn probe(upstream: &Upstream, auth: &HeaderValue) -> ProbeOutcome {
    let (path, query) = upstream
        .provider
        .probe_target(upstream.probe_path.as_deref());
    let uri = match upstream.uri(path, query) {
        Ok(uri) => uri,
        Err(e) => {
            return ProbeOutcome::Failed {
                message: format!("cannot build the probe URL: {e}"),
            }
        }
    };
    let mut req = Request::new(UpstreamBody::Empty);
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(upstream.auth_header.clone(), auth.clone());
    if upstream.provider == Provider::Anthropic {
        req.headers_mut()
            .insert(ANTHROPIC_VERSION.clone(), ANTHROPIC_DEFAULT_VERSION);
    }
    let timeout = upstream.response_header_timeout.min(PROBE_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let response = match upstream.pool.send(req, deadline).await {
        Ok(r) => r,
        Err(SendError::Timeout) => {
            return ProbeOutcome::Failed {
                message: format!(
                    "the probe got no answer from {} within {}s",
                    upstream.name,
                    timeout.as_secs()
                ),
            }
        }
        Err(e) => {
            return ProbeOutcome::Failed {
                message: format!("the probe could not reach {}: {e}", upstream.name),
            }
        }
    };
    let status = response.status();
    let body = Limited::new(response.into_body(), diagnose::PEEK_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    judge(status, &body)
}

/// The diagnosis classifier decides; a rate limit still means the key itself was recognised.
fn judge(status: StatusCode, body: &[u8]) -> ProbeOutcome {
    let code = status.as_u16();
    if status.is_success() {
        return ProbeOutcome::Accepted { status: code };
    }
    if status.is_server_error() {
        return ProbeOutcome::Failed {
            message: format!(
                "the provider answered {status} to the probe, so the key could not be judged"
            ),
        };
    }
    let facts = diagnose::facts(body);
    let reason = diagnose::classify(
        status,
        facts.as_ref(),
        &Knowledge::default(),
        SystemTime::now(),
    )
    .unwrap_or(Reason::UnknownAuthError);
    if reason == Reason::RateLimited {
        return ProbeOutcome::Accepted { status: code };
    }
    let said: String = facts
        .map(|f| f.message.chars().take(300).collect())
        .unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging_probe_answers() {
        let ok = judge(StatusCode::OK, b"{}");
        assert_eq!(ok, ProbeOutcome::Accepted { status: 200 });
        let limited = judge(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"error":{"message":"Rate limit reached"}}"#,
        );
        assert_eq!(limited, ProbeOutcome::Accepted { status: 429 });
        let ProbeOutcome::Refused {
            reason, message, ..
        } = judge(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"message":"Incorrect API key provided"}}"#,
        )
        else {
            panic!("not refused")
        };
        assert_eq!(reason, Reason::InvalidKey);
        assert!(message.contains("Incorrect API key provided"));
        let gemini = judge(
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
        let quota = judge(StatusCode::TOO_MANY_REQUESTS, br#"{"error":{"type":"insufficient_quota","message":"You exceeded your current quota"}}"#);
        assert!(matches!(
            quota,
            ProbeOutcome::Refused {
                reason: Reason::QuotaExhausted,
                ..
            }
        ));
        assert!(matches!(
            judge(StatusCode::BAD_GATEWAY, b""),
            ProbeOutcome::Failed { .. }
        ));
    }
}
