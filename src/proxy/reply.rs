//! Responses keyproxy makes itself: the OpenAI error shape `{"error":{"message","type","code"}}`
//! plus `x-keyproxy-reason`, so SDKs raise their usual errors and people see why.

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

/// An error response in the OpenAI shape, tagged with a reason code.
pub fn error(status: StatusCode, reason: Reason, message: &str) -> Response<ReplyBody> {
    let mut resp = json_error(status, reason.as_str(), message);
    resp.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    resp
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<ReplyBody> {
    let body = serde_json::json!({
        "error": {
            "message": crate::redact::mask(message),
            "type": "keyproxy_error",
            "code": code,
        }
    });
    let mut resp = Response::new(ReplyBody::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
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
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_");
    json_error(status, &code, message)
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

    #[tokio::test]
    async fn error_has_openai_shape_and_reason_header() {
        let resp = error(StatusCode::NOT_FOUND, Reason::NoRoute, "no \"route\"");
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[REASON_HEADER], "no_route");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "no_route");
        assert_eq!(v["error"]["message"], "no \"route\"");
        assert_eq!(v["error"]["type"], "keyproxy_error");
    }
}
