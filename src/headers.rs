//! Credential stripping on the forwarding path: every credential the client sent and a `key` query
//! parameter are dropped (with the hop-by-hop headers, a wire rule kept in `http1`) before keyproxy
//! adds the upstream's own key.

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderName, HOST};

use crate::http1::drop_hop_by_hop_and;

/// Every header an SDK may carry a key in (OpenAI, Anthropic, Azure and Gemini schemes), plus
/// `Host`, so the upstream's own authority is used.
fn is_client_credential(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization"
            | "proxy-authorization"
            | "x-api-key"
            | "api-key"
            | "x-goog-api-key"
            | "host"
    )
}

/// The request for the upstream: hop-by-hop headers and every credential the client sent go (SDKs
/// send dummy keys). `extra`: custom auth headers of any configured generic upstream. One pass
/// over the names; only what is present is removed.
pub fn strip_for_upstream(headers: &mut HeaderMap, extra: &[HeaderName]) {
    drop_hop_by_hop_and(headers, |name| {
        is_client_credential(name) || extra.contains(name) || has_underscore(name)
    });
}

/// `x_api_key`, `api_key`, `openai_api_key`...: some servers read `_` as `-`, so a credential
/// could ride past the names above. Like nginx (`underscores_in_headers off`), every header with
/// an underscore in its name is dropped.
fn has_underscore(name: &HeaderName) -> bool {
    memchr::memchr(b'_', name.as_str().as_bytes()).is_some()
}

/// True for headers `strip_for_upstream` always removes.
pub fn is_standard_credential(name: &HeaderName) -> bool {
    is_client_credential(name) && name != HOST
}

/// The first credential the app sent, without its scheme: `Authorization` (any scheme),
/// `x-api-key`, `api-key`, `x-goog-api-key`, a generic upstream's header, or a `key=` parameter.
pub fn presented_credential<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    custom: &[HeaderName],
) -> Option<&'a str> {
    // One pass over the headers, keeping the best-ranked credential (a lookup per candidate name
    // costs more than looking at each header once).
    let mut best: Option<(usize, &'a str)> = None;
    for (name, value) in headers {
        let rank = match name.as_str() {
            "authorization" => 0,
            "x-api-key" => 1,
            "api-key" => 2,
            "x-goog-api-key" => 3,
            _ => match custom.iter().position(|c| c == name) {
                Some(i) => 4 + i,
                None => continue,
            },
        };
        if best.is_some_and(|(b, _)| b <= rank) {
            continue;
        }
        let Ok(value) = value.to_str() else {
            continue;
        };
        let value = match rank {
            1..=3 => value.trim(),
            _ => value.split_once(' ').map_or(value, |(_, t)| t).trim(),
        };
        best = Some((rank, value));
    }
    if let Some((_, value)) = best {
        return Some(value);
    }
    query?
        .split('&')
        .find(|pair| is_key_param(pair))
        .and_then(|pair| pair.split_once('=').map(|(_, value)| value))
}

/// The query without any `key` parameter (Gemini's key-in-URL form), however it is spelled:
/// `key`, `Key`, `KEY`, `%6Bey`... Borrowed when there is none.
pub fn strip_key_param(query: &str) -> Cow<'_, str> {
    if !query.split('&').any(is_key_param) {
        return Cow::Borrowed(query);
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !is_key_param(pair) && !pair.is_empty())
        .collect();
    Cow::Owned(kept.join("&"))
}

/// A `key[=…]` pair, its name compared case-blind after percent-decoding.
fn is_key_param(pair: &str) -> bool {
    let name = pair.split_once('=').map_or(pair, |(n, _)| n).as_bytes();
    // At most 3 characters once decoded, at most 9 written ("%6B%65%79").
    if name.len() < 3 || name.len() > 9 {
        return false;
    }
    let mut decoded = [0u8; 3];
    let (mut i, mut n) = (0, 0);
    while i < name.len() {
        if n == 3 {
            return false;
        }
        let byte = match name[i] {
            b'%' => {
                let hex = name
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        i += 3;
                        b
                    }
                    None => return false,
                }
            }
            b => {
                i += 1;
                b
            }
        };
        decoded[n] = byte;
        n += 1;
    }
    n == 3 && decoded.eq_ignore_ascii_case(b"key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
        for spelled in ["x_api_key", "api_key", "x_goog_api_key", "openai_api_key"] {
            h.insert(
                HeaderName::from_bytes(spelled.as_bytes()).unwrap(),
                HeaderValue::from_static("sk-underscored"),
            );
        }
        h.insert("openai-organization", HeaderValue::from_static("org-1"));
        strip_for_upstream(&mut h, &[HeaderName::from_static("x-custom-auth")]);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("openai-organization"));
    }

    #[test]
    fn the_presented_credential_is_the_best_ranked_one() {
        let custom = [HeaderName::from_static("x-custom-auth")];
        let mut h = HeaderMap::new();
        assert_eq!(
            presented_credential(&h, Some("alt=sse&key=AIza1"), &custom),
            Some("AIza1")
        );
        h.insert("x-custom-auth", HeaderValue::from_static("Token c-1"));
        assert_eq!(presented_credential(&h, None, &custom), Some("c-1"));
        h.insert("x-goog-api-key", HeaderValue::from_static(" g-1 "));
        assert_eq!(presented_credential(&h, None, &custom), Some("g-1"));
        h.insert("x-api-key", HeaderValue::from_static("a-1"));
        assert_eq!(presented_credential(&h, None, &custom), Some("a-1"));
        h.insert(
            "authorization",
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(
            presented_credential(&h, None, &custom),
            Some("a-1"),
            "unreadable: next"
        );
        h.insert("authorization", HeaderValue::from_static("Bearer sk-1"));
        assert_eq!(presented_credential(&h, None, &custom), Some("sk-1"));
        assert_eq!(presented_credential(&HeaderMap::new(), None, &custom), None);
    }

    #[test]
    fn key_query_parameter_goes_and_the_rest_stays() {
        assert_eq!(strip_key_param("alt=sse"), "alt=sse");
        assert!(matches!(strip_key_param("alt=sse"), Cow::Borrowed(_)));
        assert_eq!(strip_key_param("key=AIzaXYZ&alt=sse"), "alt=sse");
        assert_eq!(strip_key_param("alt=sse&key=AIzaXYZ"), "alt=sse");
        assert_eq!(strip_key_param("key=AIzaXYZ"), "");
        assert_eq!(strip_key_param("monkey=1&keys=2"), "monkey=1&keys=2");
        for spelled in ["Key", "KEY", "kEy", "%6bey", "%6Bey", "%4B%45%59", "k%65y"] {
            assert_eq!(
                strip_key_param(&format!("alt=sse&{spelled}=AIzaXYZ")),
                "alt=sse",
                "{spelled}"
            );
        }
        assert_eq!(strip_key_param("%6bexy=1&ke%79s=2"), "%6bexy=1&ke%79s=2");
    }
}
