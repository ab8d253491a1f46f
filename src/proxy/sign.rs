//! SigV4 on the forwarding path, for upstreams with `key = { aws = … }` only (every other
//! upstream never comes here): the body is read whole — bounded,
//! a 413 above `SIGNED_BODY_LIMIT` — to be hashed, and the request is signed as it will be sent
//! (the upstream's `Host`, the rewritten path and query).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::Request;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::ProxyError;
use crate::http1::ClientFault;
use crate::key::aws::SIGNED_BODY_LIMIT;
use crate::key::KeyState;
use crate::upstream::pool::UpstreamBody;
use crate::upstream::Upstream;

/// Boxed in a function of its own, so the forwarding future of every other upstream does not
/// grow by this one's.
#[inline(never)]
pub fn signing<'a>(
    upstream: &'a Upstream,
    key: &'a KeyState,
    req: &'a mut Request<UpstreamBody>,
) -> Pin<Box<dyn Future<Output = Result<(), ProxyError>> + Send + 'a>> {
    Box::pin(sign(upstream, key, req))
}

async fn sign(
    upstream: &Upstream,
    key: &KeyState,
    req: &mut Request<UpstreamBody>,
) -> Result<(), ProxyError> {
    let unsigned = |message: String| ProxyError::Unsigned {
        upstream: Arc::clone(&upstream.name),
        provider: upstream.provider,
        message,
    };
    let Some(creds) = key.snapshot().and_then(|k| k.aws.as_ref()) else {
        return Err(unsigned(
            "the key in service is not a set of AWS credentials".into(),
        ));
    };
    let too_large = || ProxyError::BodyTooLarge {
        upstream: Arc::clone(&upstream.name),
        provider: upstream.provider,
        limit: SIGNED_BODY_LIMIT,
    };
    // (The app's own SigV4 headers were dropped with its credentials, in `prepare`.)
    let headers = req.headers();
    // Refused before a byte is read: the app learns at once, and never waits on an upload.
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > SIGNED_BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let body = std::mem::take(req.body_mut());
    let body = match Limited::new(body, SIGNED_BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => {
            return Err(ProxyError::Client(
                ClientFault::find(e.as_ref()).unwrap_or(ClientFault::Malformed("unreadable body")),
            ))
        }
    };
    upstream
        .sign(creds, req, &body)
        .map_err(|e| unsigned(e.to_string()))?;
    *req.body_mut() = match body.is_empty() {
        true => UpstreamBody::Empty,
        false => UpstreamBody::Whole(Some(body)),
    };
    Ok(())
}
