//! The response phase for refusals: read a bounded prefix of the error body, classify it, and report
//! the reason in a header, the JSON body (one added `keyproxy` member), the log, a metric and
//! /status. Every byte of the provider's is passed on; only a complete JSON object body is extended.

use std::time::{Duration, SystemTime};

use crate::upstream::pool::PooledBody;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::response::Parts;
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use serde_json::json;

use crate::diagnose::message::{self, Context};
use crate::diagnose::{self, Knowledge};
use crate::key::rotation::RotationResult;
use crate::key::KeyState;
use crate::proxy::reply::{self, ReplyBody, REASON_HEADER, SHOULD_RETRY_HEADER};
use crate::reason::Reason;
use crate::upstream::{Diagnosis, Upstream};

use crate::diagnose::PEEK_LIMIT;

/// An error body arrives at once; one that dribbles is passed on with what arrived by then.
const PEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// A compressed error body is inflated up to this much.
const INFLATE_LIMIT: usize = 256 * 1024;

/// What the client's request said that the explanation may need.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub request_id: &'a str,
    /// The client index for metrics (0 without `[[clients]]`).
    pub client: usize,
    pub method: &'a str,
    pub path: &'a str,
    pub organization: Option<&'a HeaderValue>,
    pub project: Option<&'a HeaderValue>,
}

enum Peeked {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// The first part; the rest still to come.
    Partial(Bytes, PooledBody),
}

pub async fn explain(
    upstream: &Upstream,
    key: &KeyState,
    request: RequestFacts<'_>,
    response: Response<PooledBody>,
) -> Response<ReplyBody> {
    let (mut parts, body) = response.into_parts();
    let streaming = header_str(&parts.headers, CONTENT_TYPE.as_str())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    let mut peeked = if streaming {
        Peeked::Partial(Bytes::new(), body)
    } else {
        peek(body).await
    };
    let encoding =
        header_str(&parts.headers, CONTENT_ENCODING.as_str()).map(str::to_ascii_lowercase);
    // From here on nothing of the upstream's carries a secret it echoed.
    let decoded = redact_echoes(&mut parts, &mut peeked, encoding.as_deref());
    if parts.status == http::StatusCode::NOT_FOUND {
        return not_found(upstream, request, parts, peeked, decoded);
    }
    if !diagnose::worth_reading(parts.status) {
        return reassemble(parts, peeked);
    }
    let facts = decoded
        .as_deref()
        .and_then(|body| diagnose::facts_with_headers(body, &parts.headers));

    let now = SystemTime::now();
    let snapshot = key.snapshot();
    let last_attempt = upstream.key.last_attempt();
    let knowledge = Knowledge {
        expires_at: snapshot.and_then(|k| k.expires_at),
        lint_warnings: snapshot.map_or(&[][..], |k| &k.warnings[..]),
        refused_rotation: last_attempt
            .as_ref()
            .filter(|a| a.result == RotationResult::Rejected),
    };
    let Some(reason) = diagnose::classify(parts.status, facts.as_ref(), &knowledge, now) else {
        return reassemble(parts, peeked);
    };
    let org = request.organization.and_then(|v| v.to_str().ok());
    let project = request.project.and_then(|v| v.to_str().ok());
    let base_url = upstream.base_url.to_string();
    let message = message::explain(
        reason,
        &Context {
            upstream: &upstream.name,
            provider: upstream.provider,
            status: parts.status.as_u16(),
            key: snapshot,
            provider_message: facts.as_ref().map_or("", |f| f.message.as_str()),
            client_org: org,
            client_project: project,
            retry_after: header_str(&parts.headers, RETRY_AFTER.as_str()),
            last_attempt: last_attempt.as_ref(),
            base_url: &base_url,
            auth_header: upstream.auth_header.as_str(),
            rotate_command: upstream.rotate_command,
            now,
        },
    );
    report(upstream, request, &parts, reason, &message, key);
    parts
        .headers
        .insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    if let Some(retry) = reason.should_retry() {
        parts
            .headers
            .insert(SHOULD_RETRY_HEADER, reply::should_retry_value(retry));
    }
    let annotation = json!({
        "reason": reason.as_str(),
        "message": message,
        "upstream": &*upstream.name,
        "key_fingerprint": snapshot.map(|k| k.fingerprint.as_str()),
        "key_generation": snapshot.map(|k| k.generation),
    });
    let told = format!("keyproxy: {message} (reason: {reason})");
    match decoded.as_deref().and_then(|body| {
        let body = with_sentence(
            body,
            &told,
            upstream.provider == crate::provider::Provider::Bedrock,
        );
        with_member(body.as_deref()?, "keyproxy", &annotation)
    }) {
        Some(rewritten) => {
            parts.headers.remove(CONTENT_ENCODING);
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
            Response::from_parts(parts, ReplyBody::full(rewritten))
        }
        None => reassemble(parts, peeked),
    }
}

/// A 404 is the provider's business, except the one keyproxy's config caused: a base_url ending
/// in the version the app's path starts with again (`/v1/v1/…`). That one gets the sentence.
fn not_found(
    upstream: &Upstream,
    request: RequestFacts<'_>,
    mut parts: Parts,
    peeked: Peeked,
    decoded: Option<Vec<u8>>,
) -> Response<ReplyBody> {
    let rest = match upstream.prefix.as_str() {
        "/" => request.path,
        prefix => request.path.strip_prefix(prefix).unwrap_or(request.path),
    };
    let Some(version) = upstream.doubled_version(rest) else {
        return reassemble(parts, peeked);
    };
    let told = format!(
        "keyproxy: this went to {}{} because base_url {} already ends in /{version}: remove /{version} from base_url in the keyproxy config (the apps' paths carry it)",
        upstream.base_url.path().trim_end_matches('/'),
        crate::redact::mask(rest),
        upstream.base_url,
    );
    tracing::warn!(request_id = request.request_id, upstream = %upstream.name, path = %crate::redact::mask(request.path), "{told}");
    match decoded.as_deref().and_then(|body| {
        with_sentence(
            body,
            &told,
            upstream.provider == crate::provider::Provider::Bedrock,
        )
    }) {
        Some(rewritten) if matches!(rewritten, std::borrow::Cow::Owned(_)) => {
            parts.headers.remove(CONTENT_ENCODING);
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
            Response::from_parts(parts, ReplyBody::full(rewritten.into_owned()))
        }
        _ => reassemble(parts, peeked),
    }
}

/// The warn line, the metric and the /status record.
fn report(
    upstream: &Upstream,
    request: RequestFacts<'_>,
    parts: &Parts,
    reason: Reason,
    message: &str,
    key: &KeyState,
) {
    let snapshot = key.snapshot();
    let provider_request_id = header_str(&parts.headers, "x-request-id")
        .or_else(|| header_str(&parts.headers, "request-id"))
        .or_else(|| header_str(&parts.headers, "apim-request-id"))
        .map(str::to_owned);
    tracing::warn!(
        request_id = request.request_id,
        upstream = %upstream.name,
        reason = reason.as_str(),
        status = parts.status.as_u16(),
        key = snapshot.map(|k| k.fingerprint.as_str()),
        generation = snapshot.map(|k| k.generation),
        provider_request_id = provider_request_id.as_deref(),
        path = %request.path,
        "{message}"
    );
    upstream.metrics.auth_failure(request.client, reason);
    upstream.record_diagnosis(Diagnosis {
        at: SystemTime::now(),
        method: request.method.to_owned(),
        path: request.path.to_owned(),
        status: parts.status.as_u16(),
        reason: reason.as_str(),
        message: message.to_owned(),
        key_fingerprint: snapshot.map(|k| k.fingerprint.to_string()),
        key_generation: snapshot.map(|k| k.generation),
        provider_request_id,
    });
}

/// Read up to `PEEK_LIMIT` bytes, or the whole body if it is smaller.
async fn peek(mut body: PooledBody) -> Peeked {
    let mut head = BytesMut::new();
    let read = tokio::time::timeout(PEEK_TIMEOUT, async {
        while head.len() < PEEK_LIMIT {
            match body.frame().await {
                None => return true,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        head.extend_from_slice(&data);
                    }
                }
                // The error surfaces to the client when it reads the rest.
                Some(Err(_)) => return false,
            }
        }
        false
    })
    .await;
    match read {
        Ok(true) => Peeked::Complete(head.freeze()),
        _ => Peeked::Partial(head.freeze(), body),
    }
}

/// Mask every registered secret an upstream echoed (a gateway quoting the key it received) in
/// the header values and the body prefix, in place and length for length. Returns the body as
/// the provider meant it (inflated), when it was read whole. A compressed body that carried a
/// secret is passed on inflated and masked; one too large to read whole or in an encoding
/// keyproxy cannot read is passed on as it came.
fn redact_echoes(
    parts: &mut Parts,
    peeked: &mut Peeked,
    encoding: Option<&str>,
) -> Option<Vec<u8>> {
    for value in parts.headers.values_mut() {
        if crate::redact::contains_secret(value.as_bytes()) {
            let mut masked = value.as_bytes().to_vec();
            crate::redact::mask_in_place(&mut masked);
            if let Ok(v) = HeaderValue::from_bytes(&masked) {
                *value = v;
            }
        }
    }
    let identity = matches!(encoding, None | Some("identity"));
    let head = match peeked {
        Peeked::Complete(b) | Peeked::Partial(b, _) => b,
    };
    if identity && crate::redact::contains_secret(head) {
        let mut masked = head.to_vec();
        crate::redact::mask_in_place(&mut masked);
        *head = masked.into();
    }
    let Peeked::Complete(whole) = peeked else {
        return None;
    };
    let mut decoded = decode(whole, encoding)?;
    if !identity && crate::redact::mask_in_place(&mut decoded) {
        parts.headers.remove(CONTENT_ENCODING);
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(decoded.len()));
        *whole = Bytes::from(decoded.clone());
    }
    Some(decoded)
}

fn reassemble(parts: Parts, peeked: Peeked) -> Response<ReplyBody> {
    let body = match peeked {
        Peeked::Complete(b) => ReplyBody::full(b),
        Peeked::Partial(head, rest) => ReplyBody::peeked(head, rest),
    };
    Response::from_parts(parts, body)
}

/// The body as the provider meant it: inflated when gzip/deflate, `None` for encodings we can't read.
fn decode(body: &[u8], encoding: Option<&str>) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    let limit = INFLATE_LIMIT as u64;
    let ok = match encoding {
        None | Some("identity") => return Some(body.to_vec()),
        Some("gzip") | Some("x-gzip") => flate2::read::GzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        Some("deflate") => flate2::read::ZlibDecoder::new(body)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        Some(_) => false,
    };
    ok.then_some(out)
}

/// `body` with keyproxy's sentence after the provider's own in `error.message`, the one field
/// every SDK puts in its exception text (OpenAI, Azure and compatible APIs, Anthropic and Google
/// all keep it there); every other byte as it was. A body without a string `error.message` is
/// returned as it was.
fn with_sentence<'b>(body: &'b [u8], told: &str, aws: bool) -> Option<std::borrow::Cow<'b, [u8]>> {
    use serde_json::value::RawValue;
    use std::borrow::Cow;
    type Members<'a> = std::collections::HashMap<String, &'a RawValue>;
    let top: Members<'_> = serde_json::from_slice(body).ok()?;
    let message = top
        .get("error")
        .and_then(|error| serde_json::from_str::<Members<'_>>(error.get()).ok())
        .and_then(|error| error.get("message").copied())
        // AWS's `{"message": …}` (or `Message`): the text botocore puts in its exception.
        .or_else(|| {
            aws.then(|| top.get("message").or_else(|| top.get("Message")).copied())
                .flatten()
        });
    let Some(raw) = message else {
        return Some(Cow::Borrowed(body));
    };
    let Ok(text) = serde_json::from_str::<String>(raw.get()) else {
        return Some(Cow::Borrowed(body));
    };
    // The raw value borrows from `body`: its place there is where its bytes start.
    let start = (raw.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start + raw.get().len();
    let joined = serde_json::Value::from(format!("{text} — {told}")).to_string();
    let mut out = Vec::with_capacity(body.len() + joined.len());
    out.extend_from_slice(body.get(..start)?);
    out.extend_from_slice(joined.as_bytes());
    out.extend_from_slice(body.get(end..)?);
    Some(Cow::Owned(out))
}

/// `body` with one more top-level member, every byte of the original members left as it was.
/// `None` unless `body` is a JSON object that has no such member yet.
fn with_member(body: &[u8], name: &str, value: &serde_json::Value) -> Option<Vec<u8>> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    if object.contains_key(name) {
        return None;
    }
    let end = body.iter().rposition(|b| *b == b'}')?;
    let member = format!("{}:{}", serde_json::Value::from(name), value);
    let mut out = Vec::with_capacity(body.len() + member.len() + 1);
    out.extend_from_slice(&body[..end]);
    if !object.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(&body[end..]);
    Some(out)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_is_added_and_nothing_else_changes() {
        let body = br#"{ "error": {"message": "Incorrect API key", "code": "invalid_api_key"} }"#;
        let out = with_member(body, "keyproxy", &json!({"reason": "invalid_key"})).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{ "error": {"message": "Incorrect API key", "code": "invalid_api_key"} ,"keyproxy":{"reason":"invalid_key"}}"#
        );
        let empty = with_member(b"{}\n", "keyproxy", &json!(1)).unwrap();
        assert_eq!(empty, b"{\"keyproxy\":1}\n");
        assert!(with_member(b"[{}]", "keyproxy", &json!(1)).is_none());
        assert!(with_member(b"not json", "keyproxy", &json!(1)).is_none());
        assert!(with_member(br#"{"keyproxy":0}"#, "keyproxy", &json!(1)).is_none());
    }

    #[test]
    fn the_sentence_follows_the_providers_message() {
        let openai = br#"{"error": {"message": "Incorrect \"key\"", "code": "invalid_api_key"}}"#;
        let out = with_sentence(openai, "keyproxy: x (reason: invalid_key)", false).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"error": {"message": "Incorrect \"key\" — keyproxy: x (reason: invalid_key)", "code": "invalid_api_key"}}"#
        );
        let anthropic = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        let out = with_sentence(anthropic, "keyproxy: y", false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["message"], "invalid x-api-key — keyproxy: y");
        assert_eq!(v["error"]["type"], "authentication_error");
        // No string message: nothing to join, the body stays as it was.
        for body in [
            &br#"{"error":"bad key"}"#[..],
            br#"{"message":"x"}"#,
            br#"{"error":{"message":1}}"#,
        ] {
            assert_eq!(&*with_sentence(body, "k", false).unwrap(), body);
        }
        assert!(with_sentence(b"[1]", "k", false).is_none());
        // AWS's own shape, on a Bedrock upstream: the message botocore shows carries the sentence.
        let bedrock = br#"{"message":"The security token included in the request is expired"}"#;
        let out = with_sentence(bedrock, "keyproxy: z", true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["message"],
            "The security token included in the request is expired — keyproxy: z"
        );
        let capital = with_sentence(br#"{"Message":"denied"}"#, "keyproxy: z", true).unwrap();
        assert!(std::str::from_utf8(&capital)
            .unwrap()
            .contains("denied — keyproxy: z"));
    }

    #[test]
    fn compressed_bodies_are_inflated() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"a\":1}").unwrap();
        let packed = gz.finish().unwrap();
        assert_eq!(decode(&packed, Some("gzip")).unwrap(), b"{\"a\":1}");
        assert_eq!(decode(b"{}", None).unwrap(), b"{}");
        assert!(decode(b"xx", Some("br")).is_none());
        assert!(decode(b"not gzip", Some("gzip")).is_none());
    }
}
