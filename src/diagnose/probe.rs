//! The live probe: one request to the provider's cheapest authenticated endpoint with a candidate
//! key, to learn whether the provider accepts it before it is swapped in.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::upstream::pool::{SendError, UpstreamBody};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
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
    if upstream.signs() {
        if let Err(message) = sign(upstream, auth, &mut req) {
            return ProbeOutcome::Failed { message };
        }
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
    let headers = response.headers().clone();
    let body = Limited::new(response.into_body(), diagnose::PEEK_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    judge(upstream.provider, status, &headers, &body)
}

/// A SigV4 upstream's probe is signed like its requests: `auth` is the candidate's header value,
/// which for `key = { aws = … }` carries the credentials (it never leaves keyproxy).
fn sign(
    upstream: &Upstream,
    auth: &HeaderValue,
    req: &mut Request<UpstreamBody>,
) -> Result<(), String> {
    let bundle = auth
        .to_str()
        .ok()
        .map(|a| a.strip_prefix(upstream.auth_prefix.as_str()).unwrap_or(a));
    let Some(creds) = bundle.and_then(crate::key::aws::Credentials::from_bundle) else {
        return Err(format!(
            "upstream {} signs with AWS credentials, and the candidate is not a set of them",
            upstream.name
        ));
    };
    upstream.sign(&creds, req, b"").map_err(|e| e.to_string())
}

/// The diagnosis classifier decides (reading AWS's `x-amzn-ErrorType` header as the proxy does);
/// a rate limit still means the key itself was recognised, and so, on Bedrock, does a refusal of
/// the probe's operation alone (AccessDenied: the credentials are AWS's, the policy lacks it).
fn judge(provider: Provider, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProbeOutcome {
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
    let facts = diagnose::facts_with_headers(body, headers);
    let reason = diagnose::classify(
        status,
        facts.as_ref(),
        &Knowledge::default(),
        SystemTime::now(),
    )
    .unwrap_or(Reason::UnknownAuthError);
    if reason == Reason::RateLimited
        || (provider == Provider::Bedrock && reason == Reason::InsufficientPermissions)
    {
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

    fn judged(status: StatusCode, body: &[u8]) -> ProbeOutcome {
        judge(Provider::Openai, status, &HeaderMap::new(), body)
    }

    #[test]
    fn bedrock_probes_read_the_error_type_header() {
        let mut headers = HeaderMap::new();
        headers.insert("x-amzn-errortype", HeaderValue::from_static("UnrecognizedClientException:http://internal.amazon.com/coral/com.amazon.coral.service/"));
        let refused = judge(
            Provider::Bedrock,
            StatusCode::FORBIDDEN,
            &headers,
            br#"{"message":"nothing specific"}"#,
        );
        assert!(
            matches!(
                refused,
                ProbeOutcome::Refused {
                    reason: Reason::InvalidKey,
                    ..
                }
            ),
            "{refused:?}"
        );
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("AccessDeniedException"),
        );
        let allowed = judge(
            Provider::Bedrock,
            StatusCode::FORBIDDEN,
            &headers,
            br#"{"message":"not authorized to perform bedrock:ListAsyncInvokes"}"#,
        );
        assert_eq!(allowed, ProbeOutcome::Accepted { status: 403 });
    }

    #[test]
    fn judging_probe_answers() {
        let ok = judged(StatusCode::OK, b"{}");
        assert_eq!(ok, ProbeOutcome::Accepted { status: 200 });
        let limited = judged(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"error":{"message":"Rate limit reached"}}"#,
        );
        assert_eq!(limited, ProbeOutcome::Accepted { status: 429 });
        let ProbeOutcome::Refused {
            reason, message, ..
        } = judged(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"message":"Incorrect API key provided"}}"#,
        )
        else {
            panic!("not refused")
        };
        assert_eq!(reason, Reason::InvalidKey);
        assert!(message.contains("Incorrect API key provided"));
        let gemini = judged(
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
        let quota = judged(StatusCode::TOO_MANY_REQUESTS, br#"{"error":{"type":"insufficient_quota","message":"You exceeded your current quota"}}"#);
        assert!(matches!(
            quota,
            ProbeOutcome::Refused {
                reason: Reason::QuotaExhausted,
                ..
            }
        ));
        assert!(matches!(
            judged(StatusCode::BAD_GATEWAY, b""),
            ProbeOutcome::Failed { .. }
        ));
    }
}
