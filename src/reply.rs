//! Responses keyproxy makes itself: the OpenAI error shape `{"error":{"message","type","code"}}`
//! plus `x-keyproxy-reason`, so SDKs raise their usual errors and people see why.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::reason::Reason;

/// The body every proxied response carries: the upstream's stream untouched, or one of ours.
pub type Body = Either<Incoming, Full<Bytes>>;

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
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
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
