//! Header surgery on the forwarding path: what is dropped (hop-by-hop headers, every credential the
//! client sent, a `key` query parameter) before keyproxy adds the upstream's own key.

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderName, AUTHORIZATION, CONNECTION, HOST, PROXY_AUTHORIZATION};

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Every header an SDK may carry a key in: OpenAI, Anthropic, Azure and Gemini schemes.
const CREDENTIAL_HEADERS: [&str; 3] = ["x-api-key", "api-key", "x-goog-api-key"];

/// Remove hop-by-hop headers, including any the `Connection` header names. `upgrade` goes too;
/// WebSocket pass-through puts it back deliberately.
pub fn drop_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(http::header::UPGRADE);
}

/// Remove every credential the client sent (SDKs send dummy keys), plus `Host` so the upstream's
/// own authority is used. `extra`: custom auth headers of any configured generic upstream.
pub fn strip_client_credentials(headers: &mut HeaderMap, extra: &[HeaderName]) {
    headers.remove(AUTHORIZATION);
    headers.remove(PROXY_AUTHORIZATION);
    for name in CREDENTIAL_HEADERS {
        headers.remove(name);
    }
    for name in extra {
        headers.remove(name);
    }
    headers.remove(HOST);
}

/// True for headers `strip_client_credentials` always removes.
pub fn is_standard_credential(name: &HeaderName) -> bool {
    name == AUTHORIZATION
        || name == PROXY_AUTHORIZATION
        || CREDENTIAL_HEADERS.contains(&name.as_str())
}

/// The first credential the app sent, without its scheme: `Authorization` (any scheme),
/// `x-api-key`, `api-key`, `x-goog-api-key`, a generic upstream's header, or a `key=` parameter.
pub fn presented_credential<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    custom: &[HeaderName],
) -> Option<&'a str> {
    let value = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let without_scheme = |v: &'a str| v.split_once(' ').map_or(v, |(_, t)| t).trim();
    if let Some(auth) = value(&AUTHORIZATION) {
        return Some(without_scheme(auth));
    }
    for name in CREDENTIAL_HEADERS {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.trim());
        }
    }
    for name in custom {
        if let Some(v) = value(name) {
            return Some(without_scheme(v));
        }
    }
    query?.split('&').find_map(|pair| pair.strip_prefix("key="))
}

/// The query without any `key=` parameter (Gemini's key-in-URL form). Borrowed when there is none.
pub fn strip_key_param(query: &str) -> Cow<'_, str> {
    let has_key = query
        .split('&')
        .any(|pair| pair == "key" || pair.starts_with("key="));
    if !has_key {
        return Cow::Borrowed(query);
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| *pair != "key" && !pair.starts_with("key=") && !pair.is_empty())
        .collect();
    Cow::Owned(kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        drop_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn client_credentials_go() {
        let mut h = HeaderMap::new();
        for name in [
            "authorization",
            "x-api-key",
            "api-key",
            "x-goog-api-key",
            "host",
            "x-custom-auth",
        ] {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("dummy"),
            );
        }
        h.insert("openai-organization", HeaderValue::from_static("org-1"));
        strip_client_credentials(&mut h, &[HeaderName::from_static("x-custom-auth")]);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("openai-organization"));
    }

    #[test]
    fn key_query_parameter_goes_and_the_rest_stays() {
        assert_eq!(strip_key_param("alt=sse"), "alt=sse");
        assert!(matches!(strip_key_param("alt=sse"), Cow::Borrowed(_)));
        assert_eq!(strip_key_param("key=AIzaXYZ&alt=sse"), "alt=sse");
        assert_eq!(strip_key_param("alt=sse&key=AIzaXYZ"), "alt=sse");
        assert_eq!(strip_key_param("key=AIzaXYZ"), "");
        assert_eq!(strip_key_param("monkey=1&keys=2"), "monkey=1&keys=2");
    }
}
