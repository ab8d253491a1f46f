//! The HTTP/1.1 wire, one copy of each rule: the limits, how a body is delimited (RFC 9112 §6), the
//! head writer, comma-list and `Connection` token parsing, hop-by-hop headers and the `date`
//! header. [`server`] is the app-facing connection on the proxy port, [`client`] our connection to
//! an upstream, [`body`] a body on the wire (written framed; read by length, chunks or close).
//!
//! A low layer: it knows HTTP/1.1 and nothing of keyproxy's config, routes or upstreams. The
//! server is handed what answers a request as a function.

use bytes::BytesMut;
use http::header::{
    CONNECTION, CONTENT_LENGTH, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

pub mod body;
pub mod client;
pub mod server;

/// What a body's producer may fail with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The app failed to deliver its request: its fault, never the upstream's. Carried as a
/// [`BodyError`] by the request body (found again by [`ClientFault::find`]) and answered by the
/// proxy with 400, 408 or (nobody left to answer) 499.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientFault {
    /// The body's framing is broken: a bad chunk, or the connection ended inside the body.
    #[error("the request body is malformed: {0}")]
    Malformed(&'static str),
    /// Nothing more of the body arrived for `client_body_timeout`.
    #[error("the request body stopped arriving: nothing came for {} (client_body_timeout)", crate::time::human_duration(*.0))]
    BodyTimeout(std::time::Duration),
    /// The app closed its connection before the response.
    #[error("the app closed the connection before the response")]
    Disconnected,
    /// A request head that did not arrive whole within `client_header_timeout`.
    #[error("the request headers did not arrive within client_header_timeout")]
    HeaderTimeout,
}

/// The sentence for a body cut short by the app's connection ending, on both server paths.
pub const BODY_CUT: &str = "the connection ended before the end of the body";

impl ClientFault {
    /// The fault somewhere in `e`'s chain of sources, if the error is one.
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
        let mut next = Some(e);
        while let Some(err) = next {
            if let Some(fault) = err.downcast_ref::<ClientFault>() {
                return Some(*fault);
            }
            next = err.source();
        }
        None
    }
}

// Limits.

/// The most header lines in a head (hyper's limit too).
pub const MAX_HEADERS: usize = 100;
/// The largest head, request or response (hyper, serving the rest of an app's connection, answers
/// a larger one with 431), and the largest trailer section.
pub const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size or trailer line.
pub const MAX_LINE: usize = 4 * 1024;
/// App request bodies up to this size are read with their head; longer ones stream through hyper.
pub const MAX_WHOLE_BODY: usize = 64 * 1024;
/// Longer request targets get hyper's 414.
pub const MAX_URI: usize = u16::MAX as usize - 1;

// Buffers.

/// Read buffer growth: small for heads and short bodies, larger once reads come back full.
pub const READ_SMALL: usize = 8 * 1024;
pub const READ_LARGE: usize = 64 * 1024;
/// Bytes gathered before they are written (a head plus as much body as is ready).
pub const WRITE_BATCH: usize = 64 * 1024;
/// The largest write buffer a connection keeps between messages.
pub const KEEP_OUT: usize = 16 * 1024;

// Framing (RFC 9112 §6.3).

/// How a body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimit {
    /// Exactly this many bytes (more is refused, fewer ends the connection).
    Length(u64),
    Chunked,
    /// No body is sent (HEAD, 204, 304): frames are drained and dropped.
    Nothing,
}

/// A response to HEAD, a 1xx, 204 or 304 has no body, whatever its headers say (§6.3 rule 1).
#[inline]
pub fn is_bodiless(head_request: bool, status: StatusCode) -> bool {
    head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Statuses whose responses go out without a `Content-Length`: 1xx and 204 must not have one
/// (RFC 9110 §8.6); a 304's may only repeat the length of a 200, which nobody needs, and hyper
/// leaves it out, so both server paths do.
#[inline]
pub fn no_length(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Write the framing header of a body we send: its length when known, else chunked.
#[inline]
pub fn put_framing(out: &mut BytesMut, exact: Option<u64>) -> Delimit {
    match exact {
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            put_number(out, n, 10);
            out.extend_from_slice(b"\r\n");
            Delimit::Length(n)
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Delimit::Chunked
        }
    }
}

/// What the framing headers of a received response said, collected as its head is parsed.
#[derive(Default)]
pub struct FramingHeaders {
    length: Option<u64>,
    /// More than one length was stated (a list, or several headers): restated once (see `decide`).
    repeated: bool,
    /// `Some(true)`: a Transfer-Encoding whose last coding is chunked.
    transfer_chunked: Option<bool>,
    connection: ConnectionOptions,
}

/// How a response's body is read, and whether its connection may carry another request after it.
pub struct ResponseFraming {
    pub framing: body::Framing,
    pub reusable: bool,
}

impl FramingHeaders {
    /// Note what a framing header says; returns whether the header belongs in the response the
    /// app gets (connection-level ones do not, unless `Connection` names others to drop too).
    pub fn see(&mut self, name: &HeaderName, value: &[u8]) -> Result<bool, &'static str> {
        if name == CONTENT_LENGTH {
            // One value, or a list of identical values (RFC 9110 §8.6); anything else is refused.
            for part in list(value) {
                let n = decimal(part).ok_or("bad Content-Length")?;
                match self.length {
                    Some(seen) if seen != n => return Err("conflicting Content-Length values"),
                    Some(_) => self.repeated = true,
                    None => self.length = Some(n),
                }
            }
        } else if name == TRANSFER_ENCODING {
            let last = list(value).next_back().unwrap_or_default();
            self.transfer_chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            return Ok(false);
        } else if name == CONNECTION {
            let options = ConnectionOptions::parse(value);
            self.connection.close |= options.close;
            self.connection.keep_alive |= options.keep_alive;
            return Ok(options.names_others);
        }
        Ok(!is_hop_by_hop(name))
    }

    /// The body's framing: no body (§6.3 rule 1), Transfer-Encoding over Content-Length, else
    /// until the connection closes. `headers` is left with one framing for the app to get: a
    /// Content-Length that Transfer-Encoding overrides goes, a list of identical lengths becomes
    /// one, and a 1xx, 204 or 304 keeps none (see [`no_length`]; an answer to HEAD keeps its
    /// length, which describes the body it does not carry).
    pub fn decide(
        self,
        method: &Method,
        status: StatusCode,
        http10: bool,
        headers: &mut HeaderMap,
    ) -> ResponseFraming {
        use body::{Chunk, Framing};
        let mut reusable = !self.connection.close && (!http10 || self.connection.keep_alive);
        if let Some(n) = self.length {
            if no_length(status) {
                headers.remove(CONTENT_LENGTH);
            } else if self.repeated {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        let framing = if is_bodiless(*method == Method::HEAD, status) {
            Framing::Length(0)
        } else if let Some(chunked) = self.transfer_chunked {
            if self.length.is_some() {
                // Both: Transfer-Encoding wins, and the connection is not trusted again.
                headers.remove(CONTENT_LENGTH);
                reusable = false;
            }
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                reusable = false;
                Framing::Close
            }
        } else if let Some(n) = self.length {
            Framing::Length(n)
        } else {
            reusable = false;
            Framing::Close
        };
        let framing = if framing == Framing::Length(0) {
            Framing::Done
        } else {
            framing
        };
        ResponseFraming { framing, reusable }
    }
}

// Tokens.

/// The elements of a comma-separated header value (RFC 9110 §5.6.1), each without the whitespace
/// around it; empty elements included.
#[inline]
pub fn list(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim)
}

/// Without optional whitespace (spaces and tabs) at either end.
#[inline]
fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// What a `Connection` header's tokens say (case-blind).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// It names something besides `close` and `keep-alive`: headers that go with it.
    pub names_others: bool,
}

impl ConnectionOptions {
    #[inline]
    pub fn parse(value: &[u8]) -> ConnectionOptions {
        let mut options = ConnectionOptions::default();
        for token in list(value) {
            let close = token.eq_ignore_ascii_case(b"close");
            let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
            options.close |= close;
            options.keep_alive |= keep_alive;
            options.upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            options.names_others |= !close && !keep_alive && !token.is_empty();
        }
        options
    }
}

/// A Content-Length value: ASCII digits only (no sign, no list), at most 18 of them.
#[inline]
pub fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

// Hop-by-hop headers.

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1). `upgrade` goes too;
/// WebSocket pass-through puts it back deliberately.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Compared as names, not strings: a standard name against another is one integer compare
    // (this runs for every response header).
    name == CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
}

/// Remove hop-by-hop headers, including any the `Connection` header names.
pub fn drop_hop_by_hop(headers: &mut HeaderMap) {
    drop_hop_by_hop_and(headers, |_| false);
}

/// Remove hop-by-hop headers, any the `Connection` header names, and those `also` picks, in one
/// pass over the names; only what is present is removed.
pub fn drop_hop_by_hop_and(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    // Names the `Connection` header lists are hop-by-hop too (rare: collected only when present).
    // Values that are not visible ASCII are skipped whole.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter(|v| v.to_str().is_ok())
        .flat_map(|v| list(v.as_bytes()))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // Usually two or three names go (Host, the SDK's dummy key): find, remove, look again, with no
    // list to allocate.
    while let Some(name) = headers
        .keys()
        .find(|n| is_hop_by_hop(n) || also(n))
        .cloned()
    {
        headers.remove(name);
    }
}

// The head writer.

/// `HTTP/1.1 200 OK\r\n`.
#[inline]
pub fn put_status_line(out: &mut BytesMut, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `GET /v1/models HTTP/1.1\r\nhost: api.example.com\r\n`: the request line, `host` first.
#[inline]
pub fn put_request_line(out: &mut BytesMut, method: &Method, target: &str, host: &HeaderValue) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `name: value\r\n`.
#[inline]
pub fn put_header(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `date: Sun, 06 Dec 2026 20:09:19 GMT\r\n`.
#[inline]
pub fn put_date(out: &mut BytesMut) {
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&date::now());
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal or hex, without allocating.
pub fn put_number(out: &mut BytesMut, mut n: u64, radix: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The `date` header, formatted once a second per thread (as hyper does).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub fn now() -> [u8; 29] {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs {
                let text = httpdate::fmt_http_date(now);
                if let Ok(bytes) = <[u8; 29]>::try_from(text.as_bytes()) {
                    *cached = (secs, bytes);
                }
            }
            cached.1
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1,1",
            b" 1",
            b"1 ",
            b"0x10",
            b"1234567890123456789",
        ] {
            assert_eq!(decimal(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_date_is_an_http_date() {
        let date = date::now();
        let text = std::str::from_utf8(&date).unwrap();
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
    }

    #[test]
    fn numbers_are_written_without_allocating() {
        for (n, radix, text) in [
            (0, 10, "0"),
            (1234567890, 10, "1234567890"),
            (255, 16, "ff"),
            (u64::MAX, 16, "ffffffffffffffff"),
        ] {
            let mut out = BytesMut::new();
            put_number(&mut out, n, radix);
            assert_eq!(&out[..], text.as_bytes());
        }
    }

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
    fn connection_tokens_are_read_case_blind_with_whitespace() {
        let options = ConnectionOptions::parse(b" Keep-Alive ,\tUPGRADE,,close ");
        assert_eq!(
            options,
            ConnectionOptions {
                close: true,
                keep_alive: true,
                upgrade: true,
                names_others: true,
            }
        );
        assert!(!ConnectionOptions::parse(b"keep-alive, close, ").names_others);
        assert_eq!(list(b"gzip, chunked ").next_back(), Some(&b"chunked"[..]));
        assert_eq!(list(b"chunked, ").next_back(), Some(&b""[..]));
    }
}
