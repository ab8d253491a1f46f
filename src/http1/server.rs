//! The app-facing HTTP/1.1 connection on the proxy port. The requests apps send all day — a head
//! with no body, or with a `Content-Length` body of up to 64 KiB — are read, answered and written
//! here, one after another in the connection's own task: the head parsed by `httparse` (hyper's
//! parser) straight into the request, the response head and body written in one go.
//!
//! Everything else is handed, with the bytes read so far, to hyper, which serves the rest of that
//! connection exactly as it serves the admin port: h2c, WebSocket and other upgrades, `Expect`,
//! `Transfer-Encoding` (chunked uploads) and longer bodies, HTTP/1.0, CONNECT, duplicate
//! `Content-Length`s, and any head `httparse` refuses or that is over 64 KiB (hyper answers those
//! with its 400 or 431). Nothing unusual is interpreted here, so nothing unusual can be
//! misread here.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::client::UpstreamBody;
use crate::http1::client::{self as h1, Delimit};
use crate::proxy::Proxy;
use crate::reply::Body;

/// The most header lines (hyper's limit too) and the largest head served here.
const MAX_HEADERS: usize = 100;
const MAX_HEAD: usize = 64 * 1024;
/// Request bodies up to this size are read with their head; longer ones stream through hyper.
const MAX_WHOLE_BODY: usize = 64 * 1024;
/// Longer request targets get hyper's 414.
const MAX_URI: usize = u16::MAX as usize - 1;
const READ_SIZE: usize = 8 * 1024;
/// The largest write buffer a connection keeps between responses.
const KEEP_OUT: usize = 16 * 1024;

/// How a connection's time here ended.
pub enum Ended {
    /// Closed: by the app, after `Connection: close`, at shutdown, on a timeout or an error.
    Closed,
    /// For hyper to serve from here on, starting with the bytes already read.
    HandOff(Rewound),
}

/// Serve `stream` until it closes or needs hyper. `header_timeout` bounds both the wait for a
/// request (an idle keep-alive connection) and the time to send its head (and short body).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: &Proxy,
    header_timeout: Duration,
    shutdown: &Shutdown,
) -> Ended {
    let mut conn = Front {
        io: stream,
        buf: BytesMut::with_capacity(READ_SIZE),
        want: 0,
        found: Vec::new(),
        out: BytesMut::new(),
    };
    let stopped = pin!(shutdown.notify.notified());
    let mut waits = Waits {
        stopped,
        shutdown,
        // One timer for the connection's life, re-armed only when it fires early (see `next`).
        deadline: Box::pin(tokio::time::sleep(header_timeout)),
        armed: false,
    };
    loop {
        match conn.next(header_timeout, &mut waits).await {
            Next::Request(req, shape) => {
                let response = proxy.handle(req, peer).await;
                let close = shape.close || shutdown.begun();
                if conn
                    .respond(response, shape.head_only, close)
                    .await
                    .is_err()
                    || close
                {
                    return Ended::Closed;
                }
            }
            Next::HandOff => {
                return Ended::HandOff(Rewound {
                    prefix: conn.buf.freeze(),
                    io: conn.io,
                })
            }
            Next::Reject => {
                let _ = conn.io.write_all(BAD_REQUEST).await;
                return Ended::Closed;
            }
            Next::Closed => return Ended::Closed,
        }
    }
}

/// hyper's own answer to a head it cannot make a request of.
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Shutdown as the connections see it: a flag they read per request (a plain load of a line nobody
/// writes until then) and a notification for the ones waiting idle.
#[derive(Default)]
pub struct Shutdown {
    begun: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    /// Idle connections close now; busy ones after their response.
    pub fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }
}

/// What a wait for the next request also watches. Both are polled (which leaves the task's waker
/// with them) once, and then only looked at: the connection's task does not change, so the
/// wakers they hold stay right. The timer is polled again only after it fired and was re-armed.
struct Waits<'a, 's> {
    stopped: Pin<&'a mut Notified<'s>>,
    shutdown: &'s Shutdown,
    deadline: Pin<Box<Sleep>>,
    armed: bool,
}

struct Front {
    io: TcpStream,
    buf: BytesMut,
    /// Parse again only once the buffer holds this much (a head needing more, or its body).
    want: usize,
    /// Scratch for header positions while a head is parsed.
    found: Vec<(HeaderName, usize, usize)>,
    /// Response bytes on their way out, kept between responses.
    out: BytesMut,
}

// Moved once per request; boxing it would cost an allocation per request instead.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(Request<UpstreamBody>, Shape),
    HandOff,
    Reject,
    Closed,
}

/// What of the request shapes the response.
struct Shape {
    head_only: bool,
    close: bool,
}

enum Woke {
    Read(io::Result<usize>),
    Timer,
    Stop,
}

impl Front {
    /// Wait for the next complete request.
    async fn next(&mut self, timeout: Duration, waits: &mut Waits<'_, '_>) -> Next {
        let since = Instant::now();
        loop {
            if !self.buf.is_empty() && self.buf.len() >= self.want {
                match self.parse() {
                    Ok(next) => {
                        self.want = 0;
                        return next;
                    }
                    Err(need) => self.want = need,
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
                self.buf.reserve(READ_SIZE);
            }
            let (io, buf) = (&mut self.io, &mut self.buf);
            let woke = poll_fn(|cx: &mut Context<'_>| {
                if let Poll::Ready(read) =
                    tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)
                {
                    return Poll::Ready(Woke::Read(read));
                }
                if !waits.armed {
                    // Registers with the shutdown notification (once: it stays registered) and
                    // with the timer (again after each re-arm).
                    waits.armed = true;
                    let _ = waits.stopped.as_mut().poll(cx);
                    let _ = waits.deadline.as_mut().poll(cx);
                }
                if waits.shutdown.begun() {
                    return Poll::Ready(Woke::Stop);
                }
                if waits.deadline.is_elapsed() {
                    return Poll::Ready(Woke::Timer);
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woke::Read(Ok(0)) | Woke::Read(Err(_)) | Woke::Stop => return Next::Closed,
                Woke::Read(Ok(_)) => {}
                Woke::Timer => {
                    // The timer was set for an earlier wait; it fires for real only when this
                    // wait has lasted the whole timeout. (No timer operation per request.)
                    let due = since + timeout;
                    if Instant::now() >= due {
                        tracing::debug!("no complete request within client_header_timeout");
                        return Next::Closed;
                    }
                    waits.deadline.as_mut().reset(due);
                    waits.armed = false;
                }
            }
        }
    }

    /// Make a request of a complete head (and its whole body) at the front of the buffer. Not
    /// inlined: its 3 KiB of header slots would sit in the connection future's every poll frame.
    #[inline(never)]
    /// `Err(n)`: incomplete, parse again once the buffer holds `n` bytes.
    fn parse(&mut self) -> Result<Next, usize> {
        let (head_len, method, path, body_len, close) = {
            let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
            let mut req = httparse::Request::new(&mut []);
            let parsed = httparse::ParserConfig::default()
                .parse_request_with_uninit_headers(&mut req, &self.buf, &mut slots);
            let head_len = match parsed {
                Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => {
                    return Err(self.buf.len() + 1)
                }
                _ => return Ok(Next::HandOff),
            };
            let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
                return Ok(Next::HandOff);
            };
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                return Ok(Next::HandOff);
            };
            if method == Method::CONNECT || path.len() > MAX_URI {
                return Ok(Next::HandOff);
            }
            let start = self.buf.as_ptr() as usize;
            let mut body_len = None;
            let mut close = false;
            self.found.clear();
            for h in req.headers.iter() {
                let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                    return Ok(Next::HandOff);
                };
                if name == CONTENT_LENGTH {
                    match (body_len, decimal(h.value)) {
                        (None, Some(n)) if n <= MAX_WHOLE_BODY => body_len = Some(n),
                        _ => return Ok(Next::HandOff),
                    }
                } else if name == CONNECTION {
                    let mut names_others = false;
                    for token in h.value.split(|b| *b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"upgrade") {
                            return Ok(Next::HandOff);
                        }
                        let said_close = token.eq_ignore_ascii_case(b"close");
                        close |= said_close;
                        names_others |= !said_close
                            && !token.eq_ignore_ascii_case(b"keep-alive")
                            && !token.is_empty();
                    }
                    // Kept only when it names headers that must go too (`headers` drops them).
                    if !names_others {
                        continue;
                    }
                } else if name == TRANSFER_ENCODING || name == EXPECT || name == UPGRADE {
                    return Ok(Next::HandOff);
                }
                let at = h.value.as_ptr() as usize - start;
                self.found.push((name, at, h.value.len()));
            }
            let path = (path.as_ptr() as usize - start, path.len());
            (head_len, method, path, body_len.unwrap_or(0), close)
        };
        let whole = head_len + body_len;
        if self.buf.len() < whole {
            return Err(whole);
        }
        let head = self.buf.split_to(head_len).freeze();
        let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1)) else {
            return Ok(Next::Reject);
        };
        let mut headers = HeaderMap::with_capacity(self.found.len());
        for (name, at, len) in self.found.drain(..) {
            let Ok(value) = HeaderValue::from_maybe_shared(head.slice(at..at + len)) else {
                return Ok(Next::Reject);
            };
            headers.append(name, value);
        }
        let body = match body_len {
            0 => UpstreamBody::Empty,
            n => UpstreamBody::Whole(Some(self.buf.split_to(n).freeze())),
        };
        let head_only = method == Method::HEAD;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(Next::Request(req, Shape { head_only, close }))
    }

    /// Write the response: head, then the body as it comes, framed by its length when known.
    async fn respond(
        &mut self,
        response: Response<Body>,
        head_only: bool,
        close: bool,
    ) -> Result<(), h1::Stop> {
        let (parts, body) = response.into_parts();
        self.out.clear();
        let delimit = encode_head(&mut self.out, &parts, &body, head_only, close);
        let written = h1::write_body(&mut self.io, &mut self.out, body, delimit).await;
        if self.out.capacity() > KEEP_OUT {
            // A large download grew it; an idle connection keeps only a small one.
            self.out = BytesMut::new();
        }
        if let Err(e) = &written {
            tracing::debug!("response to the app cut short: {e:?}");
        }
        written
    }
}

/// The status line and headers, plus the framing and `date` headers hyper would add.
fn encode_head(
    out: &mut BytesMut,
    parts: &http::response::Parts,
    body: &Body,
    head_only: bool,
    close: bool,
) -> Delimit {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut declared = None;
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        if name == CONTENT_LENGTH {
            declared = Some(decimal(value.as_bytes()));
        }
        dated |= name == DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date::now());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let delimit = match (bodiless, declared, body.size_hint().exact()) {
        (true, _, _) => Delimit::Nothing,
        (false, Some(Some(n)), _) => Delimit::Length(n as u64),
        (false, None, Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            h1::put_number(out, n, 10);
            out.extend_from_slice(b"\r\n");
            Delimit::Length(n)
        }
        // Unknown length (a stream), or a Content-Length that is not a number.
        (false, _, _) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Delimit::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    delimit
}

/// A Content-Length value: ASCII digits only (no sign, no list), at most 18 of them.
fn decimal(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
    )
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

/// A connection handed to hyper: the bytes already read come first, then the socket.
pub struct Rewound {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewound {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
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
}
