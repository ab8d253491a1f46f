//! Responses keyproxy makes itself: errors in the shape of the upstream's provider (so SDKs raise
//! their usual errors, with keyproxy's sentence as the exception text) plus `x-keyproxy-reason` and
//! `x-should-retry`, so people see why and SDKs do not retry what no retry can fix.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Frame, SizeHint};

use crate::upstream::pool::PooledBody;

use crate::metrics::{InFlight, UpstreamError};
use crate::provider::Provider;
use crate::proxy::tap::Tap;
use crate::reason::Reason;

/// The body of every response the proxy sends back: what it carries, plus what watches it.
pub struct ReplyBody {
    kind: Kind,
    tap: Option<Box<Tap>>,
    /// Keeps the request counted in flight until the body is done.
    in_flight: Option<InFlight>,
    /// Cuts an upstream stream that sends nothing for this long.
    idle: Option<Idle>,
}

/// The timer is armed only when the stream waits (most bodies never do), and re-armed only after
/// progress: a quick response costs no timer operation at all.
struct Idle {
    after: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    progressed: bool,
}

/// A stream the upstream stopped feeding.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {}; keyproxy closed the stream (stream_idle_timeout)", humantime::format_duration(*.0))]
pub struct StreamIdle(pub Duration);

enum Kind {
    /// The upstream's body, streamed through untouched.
    Upstream(PooledBody),
    /// A body keyproxy wrote (its own errors, or a diagnosed error body with the `keyproxy` member).
    Full(Option<Bytes>),
    /// The part of an upstream body that was read to diagnose it, then the rest as it comes.
    Peeked {
        head: Option<Bytes>,
        rest: PooledBody,
    },
}

impl ReplyBody {
    pub fn upstream(body: PooledBody) -> ReplyBody {
        ReplyBody::of(Kind::Upstream(body))
    }

    pub fn full(bytes: impl Into<Bytes>) -> ReplyBody {
        ReplyBody::of(Kind::Full(Some(bytes.into())))
    }

    pub fn peeked(head: Bytes, rest: PooledBody) -> ReplyBody {
        let head = (!head.is_empty()).then_some(head);
        ReplyBody::of(Kind::Peeked { head, rest })
    }

    fn of(kind: Kind) -> ReplyBody {
        ReplyBody {
            kind,
            tap: None,
            in_flight: None,
            idle: None,
        }
    }

    /// Cut the stream if the upstream sends nothing for `after`.
    pub fn idle_timeout(mut self, after: Duration) -> ReplyBody {
        self.idle = Some(Idle {
            after,
            deadline: None,
            progressed: false,
        });
        self
    }

    /// Watch the upstream's bytes as they pass (usage, in-band errors).
    pub fn tapped(mut self, tap: Tap) -> ReplyBody {
        self.tap = Some(Box::new(tap));
        self
    }

    pub fn in_flight(mut self, guard: InFlight) -> ReplyBody {
        self.in_flight = Some(guard);
        self
    }
}

pub use crate::http1::BodyError;

impl ReplyBody {
    /// Count the tapped tokens and leave "in flight" (at the end, or when dropped before it).
    fn finish(&mut self) {
        if let (Some(tap), Some(guard)) = (self.tap.take(), &self.in_flight) {
            tap.finish(guard.metrics());
        }
        self.in_flight = None;
    }
}

impl Drop for ReplyBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl hyper::body::Body for ReplyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Peeked { head, rest } => match head.take() {
                Some(h) => Poll::Ready(Some(Ok(Frame::data(h)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        };
        if let Some(idle) = &mut this.idle {
            if polled.is_pending() {
                let deadline = tokio::time::Instant::now() + idle.after;
                let timer = match &mut idle.deadline {
                    Some(timer) => {
                        if idle.progressed {
                            timer.as_mut().reset(deadline);
                        }
                        timer
                    }
                    None => idle
                        .deadline
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                idle.progressed = false;
                if timer.as_mut().poll(cx).is_ready() {
                    let after = idle.after;
                    this.idle = None;
                    if let Some(guard) = this.in_flight.take() {
                        guard.metrics().upstream_error(UpstreamError::Timeout);
                    }
                    tracing::warn!("{}", StreamIdle(after));
                    return Poll::Ready(Some(Err(Box::new(StreamIdle(after)))));
                }
            } else {
                idle.progressed = true;
            }
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(tap), Some(data)) = (&mut this.tap, frame.data_ref()) {
                    tap.observe(data);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(guard) = &this.in_flight {
                    guard.metrics().upstream_error(UpstreamError::Body);
                }
            }
            Poll::Ready(None) => {
                // Done: count tokens and leave "in flight" now, not when the body is dropped.
                this.finish();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Peeked { head, rest } => head.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Peeked { head, rest } => {
                let head = head.as_ref().map_or(0, |h| h.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + head);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + head);
                }
                hint
            }
        }
    }
}

pub const REASON_HEADER: &str = "x-keyproxy-reason";
/// Whether the app's SDK should retry (see `Reason::should_retry`).
pub const SHOULD_RETRY_HEADER: &str = "x-should-retry";

/// An error response in the OpenAI shape, tagged with a reason code.
pub fn error(status: StatusCode, reason: Reason, message: &str) -> Response<ReplyBody> {
    refusal(
        Provider::Openai,
        status,
        Some(reason),
        message,
        reason.should_retry(),
    )
}

/// One of keyproxy's own refusals, in the error shape the app's SDK parses for `provider`, so the
/// sentence (and the reason code after it) is the SDK's exception text: OpenAI's
/// `{"error":{"message","type","code"}}` (OpenAI, Azure and OpenAI-compatible upstreams),
/// Anthropic's `{"type":"error","error":{"type","message"}}`, Google's
/// `{"error":{"code","message","status"}}`. A `keyproxy` member carries the reason for programs.
pub fn refusal(
    provider: Provider,
    status: StatusCode,
    reason: Option<Reason>,
    message: &str,
    should_retry: Option<bool>,
) -> Response<ReplyBody> {
    let message = crate::redact::mask(message);
    let code = reason.map_or_else(|| status_word(status), |r| r.as_str().to_owned());
    let text = match reason {
        Some(r) => format!("{message} (reason: {r})"),
        None => message.to_string(),
    };
    let keyproxy = serde_json::json!({ "reason": reason.map(Reason::as_str), "message": message });
    let body = match provider {
        Provider::Anthropic => serde_json::json!({
            "type": "error",
            "error": { "type": anthropic_type(status), "message": text },
            "keyproxy": keyproxy,
        }),
        Provider::Gemini | Provider::Vertex => serde_json::json!({
            "error": { "code": status.as_u16(), "message": text, "status": google_status(status) },
            "keyproxy": keyproxy,
        }),
        // What botocore reads for an error's text (its code comes from `x-amzn-ErrorType`).
        Provider::Bedrock => serde_json::json!({
            "message": text,
            "keyproxy": keyproxy,
        }),
        Provider::Openai | Provider::Azure | Provider::Generic => serde_json::json!({
            "error": { "message": text, "type": "keyproxy_error", "code": code },
            "keyproxy": keyproxy,
        }),
    };
    let mut resp = Response::new(ReplyBody::full(body.to_string()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(reason) = reason {
        headers.insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    }
    // botocore takes an error's code from this header only; without it boto3 says "()".
    if provider == Provider::Bedrock {
        if let Ok(code) = HeaderValue::from_str(&code) {
            headers.insert(AMZN_ERROR_TYPE.clone(), code);
        }
    }
    if let Some(retry) = should_retry {
        headers.insert(SHOULD_RETRY_HEADER, should_retry_value(retry));
    }
    resp
}

/// Where AWS services (and botocore) put an error's code.
static AMZN_ERROR_TYPE: http::header::HeaderName =
    http::header::HeaderName::from_static("x-amzn-errortype");

pub fn should_retry_value(retry: bool) -> HeaderValue {
    HeaderValue::from_static(if retry { "true" } else { "false" })
}

/// "not_found" for 404: the `code` of a refusal without a reason.
fn status_word(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_")
}

/// Anthropic's error `type` for a status, as its API documents them.
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Google's canonical error `status` for an HTTP status.
fn google_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        400..=499 => "INVALID_ARGUMENT",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// keyproxy's own answer to an allowed origin's CORS preflight (never forwarded).
pub fn preflight(headers: http::HeaderMap) -> Response<ReplyBody> {
    let mut resp = Response::new(ReplyBody::full(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    *resp.headers_mut() = headers;
    resp
}

/// Any other refusal of keyproxy's own that is not an auth problem.
pub fn status(status: StatusCode, message: &str) -> Response<ReplyBody> {
    refusal(Provider::Openai, status, None, message, None)
}

/// A small plain-text response (admin endpoints).
pub fn text(status: StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut text: Bytes = text.into();
    if crate::redact::contains_secret(&text) {
        let mut masked = text.to_vec();
        crate::redact::mask_in_place(&mut masked);
        text = masked.into();
    }
    let mut resp = Response::new(Full::new(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(resp: Response<ReplyBody>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn error_has_openai_shape_and_reason_header() {
        let resp = error(StatusCode::NOT_FOUND, Reason::NoRoute, "no \"route\"");
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[REASON_HEADER], "no_route");
        assert_eq!(resp.headers()[SHOULD_RETRY_HEADER], "false");
        let v = body_of(resp).await;
        assert_eq!(v["error"]["code"], "no_route");
        assert_eq!(v["error"]["message"], "no \"route\" (reason: no_route)");
        assert_eq!(v["error"]["type"], "keyproxy_error");
        assert_eq!(v["keyproxy"]["reason"], "no_route");
    }

    #[tokio::test]
    async fn refusals_take_the_providers_shape() {
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        let resp = refusal(
            Provider::Anthropic,
            unavailable,
            Some(Reason::MissingKey),
            "no key",
            Some(false),
        );
        assert_eq!(resp.headers()[SHOULD_RETRY_HEADER], "false");
        let v = body_of(resp).await;
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["message"], "no key (reason: missing_key)");

        let resp = refusal(
            Provider::Gemini,
            StatusCode::UNAUTHORIZED,
            Some(Reason::ClientUnauthorized),
            "token",
            Some(false),
        );
        let v = body_of(resp).await;
        assert_eq!(v["error"]["code"], 401);
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(v["error"]["message"], "token (reason: client_unauthorized)");

        // A refusal without a reason code: no reason header, no retry advice unless given.
        let resp = status(StatusCode::BAD_REQUEST, "bad");
        assert!(resp.headers().get(REASON_HEADER).is_none());
        assert!(resp.headers().get(SHOULD_RETRY_HEADER).is_none());
        let v = body_of(resp).await;
        assert_eq!(v["error"]["code"], "bad_request");
        assert_eq!(v["error"]["message"], "bad");
    }
}
