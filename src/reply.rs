//! Responses keyproxy makes itself: the OpenAI error shape `{"error":{"message","type","code"}}`
//! plus `x-keyproxy-reason`, so SDKs raise their usual errors and people see why.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};

use crate::reason::Reason;
use crate::tap::SseTap;

/// The body of every response the proxy sends back.
pub enum Body {
    /// The upstream's body, streamed through untouched.
    Upstream(Incoming),
    /// A body keyproxy wrote (its own errors, or a diagnosed error body with the `keyproxy` member).
    Full(Option<Bytes>),
    /// The part of an upstream body that was read to diagnose it, then the rest as it comes.
    Peeked { head: Option<Bytes>, rest: Incoming },
    /// An event stream, watched for in-band errors as it passes; no byte is held back.
    Tapped { inner: Incoming, tap: Box<SseTap> },
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Upstream(body) => Pin::new(body).poll_frame(cx),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Peeked { head, rest } => match head.take() {
                Some(h) => Poll::Ready(Some(Ok(Frame::data(h)))),
                None => Pin::new(rest).poll_frame(cx),
            },
            Body::Tapped { inner, tap } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        tap.observe(data);
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Upstream(body) | Body::Tapped { inner: body, .. } => body.is_end_stream(),
            Body::Full(bytes) => bytes.is_none(),
            Body::Peeked { head, rest } => head.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Upstream(body) | Body::Tapped { inner: body, .. } => body.size_hint(),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Peeked { head, rest } => {
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
pub fn error(status: StatusCode, reason: Reason, message: &str) -> Response<Body> {
    let mut resp = json_error(status, reason.as_str(), message);
    resp.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    resp
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": "keyproxy_error",
            "code": code,
        }
    });
    let mut resp = Response::new(Body::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A request keyproxy will not forward as it is; not an auth problem, so no reason header.
pub fn bad_request(message: &str) -> Response<Body> {
    json_error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Any other refusal of keyproxy's own that is not an auth problem.
pub fn status(status: StatusCode, message: &str) -> Response<Body> {
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_");
    json_error(status, &code, message)
}

/// A small plain-text response (admin endpoints).
pub fn text(status: StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(text.into()));
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
