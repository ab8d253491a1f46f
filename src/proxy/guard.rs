//! The browser guard, first thing on both ports: the key is never lent to a web page.
//!
//! - **Host**: a request is answered only when its `Host` (and `:authority`) is a loopback name or
//!   address (`localhost`, `*.localhost`, `127.0.0.0/8`, `[::1]`, any port), the listen address
//!   itself (on a `0.0.0.0`/`[::]` listener: any IP literal, since only a DNS *name* can be
//!   rebound), or a name in `[server] allowed_hosts`. Anything else is `421 host_not_allowed`:
//!   that is what a DNS-rebinding page looks like.
//! - **Origin**: a request with an `Origin` header (any value, `null` included), or without one
//!   but with `Sec-Fetch-Site: cross-site|same-site`, comes from a web page; it is `403
//!   origin_not_allowed` unless the origin is in `[server] allowed_origins` (exact match). The
//!   admin port has no allow-list.
//! - **Preflight**: an `OPTIONS` with `Origin` and `Access-Control-Request-Method` is answered here
//!   and never forwarded (it would carry the key upstream).
//!
//! Allowed origins get CORS headers set by keyproxy; upstreams' `Access-Control-*` never pass.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, HOST, ORIGIN, VARY,
};
use http::{Method, Request, StatusCode};

use crate::reason::Reason;

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
static REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
static ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

/// What a browser page on an allowed origin may read of keyproxy's answers.
const EXPOSED: HeaderValue =
    HeaderValue::from_static("x-keyproxy-reason, x-keyproxy-request-id, *");
/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: HeaderValue = HeaderValue::from_static("600");
const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

/// The rules of one listener.
#[derive(Debug, Clone)]
pub struct Guard {
    listen: IpAddr,
    /// Lowercase `name` (any port) or `name:port`.
    hosts: Vec<String>,
    /// Lowercase `scheme://host[:port]`; always empty on the admin port.
    origins: Vec<String>,
}

/// The guard's decision about one request.
#[derive(Debug)]
pub enum Verdict {
    /// Not from a web page, or from an allowed one: `cors` is its origin, to answer with.
    Pass {
        cors: Option<HeaderValue>,
    },
    /// A CORS preflight from an allowed origin: answered with these headers, never forwarded.
    Preflight(HeaderMap),
    Refused(Refusal),
}

/// A request the guard turns away, with the sentence that says why and what to change.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: Reason,
    pub message: String,
}

impl Guard {
    pub fn new(listen: IpAddr, hosts: &[String], origins: &[String]) -> Guard {
        Guard {
            listen,
            hosts: hosts.to_vec(),
            origins: origins.to_vec(),
        }
    }

    /// Judge a request's addressing and its browser provenance. No allocation on the way through.
    pub fn check<B>(&self, req: &Request<B>) -> Verdict {
        if let Some(refusal) = self.misdirected(req) {
            return Verdict::Refused(refusal);
        }
        let headers = req.headers();
        match headers.get(ORIGIN) {
            Some(origin) if self.origin_allowed(origin) => {
                if req.method() == Method::OPTIONS
                    && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
                {
                    return Verdict::Preflight(preflight_answer(origin, headers));
                }
                Verdict::Pass {
                    cors: Some(origin.clone()),
                }
            }
            Some(origin) => Verdict::Refused(self.page_refused(origin)),
            None => match headers.get(&SEC_FETCH_SITE).map(HeaderValue::as_bytes) {
                Some(b"cross-site") | Some(b"same-site") => Verdict::Refused(Refusal {
                    status: StatusCode::FORBIDDEN,
                    reason: Reason::OriginNotAllowed,
                    message: "keyproxy does not lend the key to web pages: a browser sent this request from another site (Sec-Fetch-Site). Apps that are not browsers send no such header; a page of your own needs its origin in [server] allowed_origins".into(),
                }),
                _ => Verdict::Pass { cors: None },
            },
        }
    }

    /// Every authority the request names must be one keyproxy answers to.
    fn misdirected<B>(&self, req: &Request<B>) -> Option<Refusal> {
        let from_uri = req.uri().authority().map(|a| a.as_str().as_bytes());
        let from_header = req
            .headers()
            .get_all(HOST)
            .iter()
            .map(HeaderValue::as_bytes);
        let bad = from_uri
            .into_iter()
            .chain(from_header)
            .find(|host| !self.host_allowed(host))?;
        let shown: String = String::from_utf8_lossy(bad).chars().take(100).collect();
        Some(Refusal {
            status: StatusCode::MISDIRECTED_REQUEST,
            reason: Reason::HostNotAllowed,
            message: format!(
                "keyproxy answers only requests addressed to a loopback name or address (localhost, 127.0.0.1, [::1]) or to a name in [server] allowed_hosts; this one was addressed to {shown:?} (Host). A web page using DNS rebinding looks like this. If an app of yours reaches keyproxy by that name, add it to [server] allowed_hosts"
            ),
        })
    }

    fn host_allowed(&self, host: &[u8]) -> bool {
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        let (name, _) = split_port(host);
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.eq_ignore_ascii_case("localhost")
            || (name.len() > 10 && name[name.len() - 10..].eq_ignore_ascii_case(".localhost"))
        {
            return true;
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            if is_loopback(ip) || ip == self.listen || self.listen.is_unspecified() {
                return true;
            }
        }
        self.hosts.iter().any(|allowed| {
            let (allowed_name, allowed_port) = split_port(allowed);
            if allowed_port {
                host.eq_ignore_ascii_case(allowed)
            } else {
                name.eq_ignore_ascii_case(allowed_name)
            }
        })
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        let origin = origin.as_bytes();
        self.origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
    }

    fn page_refused(&self, origin: &HeaderValue) -> Refusal {
        let shown: String = String::from_utf8_lossy(origin.as_bytes())
            .chars()
            .take(100)
            .collect();
        let fix = if self.origins.is_empty() && self.hosts.is_empty() && self.listen.is_loopback() {
            "If it is a page of your own, add its origin to [server] allowed_origins (exact scheme://host:port)"
        } else {
            "If it is a page of your own, add its exact origin to [server] allowed_origins (the admin port answers no web page)"
        };
        Refusal {
            status: StatusCode::FORBIDDEN,
            reason: Reason::OriginNotAllowed,
            message: format!(
                "keyproxy does not lend the key to web pages: this request came from a page on {shown:?} (Origin). Apps that are not browsers send no Origin header. {fix}"
            ),
        }
    }
}

/// `name:port` → (`name`, true); `[::1]:8787` → (`::1`, true); `name` → (`name`, false).
fn split_port(host: &str) -> (&str, bool) {
    if let Some(v6) = host.strip_prefix('[') {
        return match v6.split_once(']') {
            Some((addr, rest)) => (addr, rest.starts_with(':')),
            None => (host, false),
        };
    }
    match host.rsplit_once(':') {
        Some((name, _)) if !name.contains(':') => (name, true),
        _ => (host, false),
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The preflight answer for an allowed origin: what it asked for, for this origin, cacheable.
fn preflight_answer(origin: &HeaderValue, request: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    let methods = request
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .cloned()
        .unwrap_or(HeaderValue::from_static("GET, POST"));
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
    if let Some(asked) = request.get(ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    if request
        .get(&REQUEST_PRIVATE_NETWORK)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        headers.insert(
            ALLOW_PRIVATE_NETWORK.clone(),
            HeaderValue::from_static("true"),
        );
    }
    headers.insert(ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE);
    headers.insert(VARY, PREFLIGHT_VARY);
    headers
}

/// CORS headers on an answer to an allowed origin (keyproxy's own, or an upstream's after
/// `strip_cors`).
pub fn allow(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
    headers.append(VARY, HeaderValue::from_static("Origin"));
}

/// Remove every `Access-Control-*` header an upstream sent: only keyproxy decides who may read.
/// One pass over the names when there are none.
pub fn strip_cors(headers: &mut HeaderMap) {
    while let Some(name) = headers
        .keys()
        .find(|n| n.as_str().starts_with("access-control-"))
        .cloned()
    {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(
            IpAddr::from([127, 0, 0, 1]),
            &["keyproxy.internal".into(), "svc.example:9000".into()],
            &["http://localhost:3000".into()],
        )
    }

    fn req(host: &str, extra: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::post("/v1/chat/completions").header("host", host);
        for (n, v) in extra {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    fn reason(v: Verdict) -> Option<Reason> {
        match v {
            Verdict::Refused(r) => Some(r.reason),
            _ => None,
        }
    }

    #[test]
    fn loopback_and_listed_hosts_pass_and_others_are_misdirected() {
        let g = guard();
        for ok in [
            "127.0.0.1:8787",
            "127.8.9.10",
            "localhost",
            "LOCALHOST:1",
            "localhost.:8787",
            "app.localhost:8787",
            "[::1]:8787",
            "[::ffff:127.0.0.1]:8787",
            "keyproxy.internal:8787",
            "KEYPROXY.internal",
            "svc.example:9000",
        ] {
            assert_eq!(reason(g.check(&req(ok, &[]))), None, "{ok}");
        }
        for bad in [
            "attacker.example:8787",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "svc.example:9001",
            "svc.example",
            "10.0.0.5:8787",
            "[fe80::1]:8787",
            "",
            "keyproxy.internal.evil",
        ] {
            assert_eq!(
                reason(g.check(&req(bad, &[]))),
                Some(Reason::HostNotAllowed),
                "{bad}"
            );
        }
        let absolute = Request::get("http://attacker.example/v1/models")
            .header("host", "127.0.0.1")
            .body(())
            .unwrap();
        assert_eq!(reason(g.check(&absolute)), Some(Reason::HostNotAllowed));
    }

    #[test]
    fn an_unspecified_listener_answers_ip_literals_but_not_names() {
        let g = Guard::new(IpAddr::from([0, 0, 0, 0]), &[], &[]);
        assert_eq!(reason(g.check(&req("10.1.2.3:8788", &[]))), None);
        assert_eq!(
            reason(g.check(&req("rebound.example:8788", &[]))),
            Some(Reason::HostNotAllowed)
        );
    }

    #[test]
    fn pages_are_refused_unless_their_origin_is_listed() {
        let g = guard();
        for origin in ["https://evil.example", "null", "http://localhost:3001"] {
            let r = req("127.0.0.1:8787", &[("origin", origin)]);
            assert_eq!(
                reason(g.check(&r)),
                Some(Reason::OriginNotAllowed),
                "{origin}"
            );
        }
        for site in ["cross-site", "same-site"] {
            let r = req("127.0.0.1:8787", &[("sec-fetch-site", site)]);
            assert_eq!(
                reason(g.check(&r)),
                Some(Reason::OriginNotAllowed),
                "{site}"
            );
        }
        for site in ["same-origin", "none"] {
            let r = req("127.0.0.1:8787", &[("sec-fetch-site", site)]);
            assert_eq!(reason(g.check(&r)), None, "{site}");
        }
        let r = req("127.0.0.1:8787", &[("origin", "http://LOCALHOST:3000")]);
        assert!(matches!(g.check(&r), Verdict::Pass { cors: Some(_) }));
    }

    #[test]
    fn preflights_are_answered_for_allowed_origins_only() {
        let g = guard();
        let ask = |origin: &str| {
            let mut r = req(
                "localhost:8787",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "authorization, content-type",
                    ),
                    ("access-control-request-private-network", "true"),
                ],
            );
            *r.method_mut() = Method::OPTIONS;
            g.check(&r)
        };
        let Verdict::Preflight(h) = ask("http://localhost:3000") else {
            panic!("an allowed preflight is answered");
        };
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "http://localhost:3000");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, content-type"
        );
        assert_eq!(h[&ALLOW_PRIVATE_NETWORK], "true");
        assert!(h[VARY].to_str().unwrap().contains("Origin"));
        assert_eq!(
            reason(ask("https://evil.example")),
            Some(Reason::OriginNotAllowed)
        );
    }

    #[test]
    fn upstream_cors_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("request-id"),
        );
        h.insert("content-type", HeaderValue::from_static("application/json"));
        strip_cors(&mut h);
        assert_eq!(h.len(), 1);
    }
}
