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
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::body::{write_body, Stop};
use super::{
    decimal, is_bodiless, put_date, put_framing, put_header, put_status_line, BodyError,
    ConnectionOptions, Delimit, KEEP_OUT, MAX_HEAD, MAX_HEADERS, MAX_URI, MAX_WHOLE_BODY,
    READ_SMALL,
};

/// How a connection's time here ended.
pub enum Ended<T> {
    /// Closed: by the app, after `Connection: close`, at shutdown, on a timeout or an error.
    Closed,
    /// For hyper to serve from here on, starting with the bytes already read.
    HandOff(Rewound<T>),
}

/// Serve `stream` until it closes or needs hyper, answering each request with `answer`.
/// `header_timeout` bounds both the wait for a request (an idle keep-alive connection) and the
/// time to send its head (and short body). A request's body is `Q::default()` when it has none,
/// else `Q::from` its bytes.
pub async fn serve<T, Q, A, F, B>(
    stream: T,
    mut answer: A,
    header_timeout: Duration,
    shutdown: &Shutdown,
) -> Ended<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
    Q: Default + From<Bytes>,
    A: FnMut(Request<Q>) -> F,
    F: Future<Output = Response<B>>,
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    let mut conn = AppConnection {
        io: stream,
        buf: BytesMut::with_capacity(READ_SMALL),
        want: 0,
        found: Vec::new(),
        out: BytesMut::new(),
    };
    let stopped = pin!(shutdown.notify.notified());
    let mut interrupts = Interrupts {
        stopped,
        shutdown,
        // One timer for the connection's life, re-armed only when it fires early (see `next`).
        deadline: Box::pin(tokio::time::sleep(header_timeout)),
        armed: false,
    };
    loop {
        match conn.next(header_timeout, &mut interrupts).await {
            Received::Request(req, terms) => {
                let response = answer(req).await;
                let close = terms.close || shutdown.begun();
                if conn
                    .respond(response, terms.head_only, close)
                    .await
                    .is_err()
                    || close
                {
                    return Ended::Closed;
                }
            }
            Received::HandOff => {
                return Ended::HandOff(Rewound {
                    prefix: conn.buf.freeze(),
                    io: conn.io,
                })
            }
            Received::Reject => {
                let _ = conn.io.write_all(BAD_REQUEST).await;
                return Ended::Closed;
            }
            Received::Closed => return Ended::Closed,
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
struct Interrupts<'a, 's> {
    stopped: Pin<&'a mut Notified<'s>>,
    shutdown: &'s Shutdown,
    deadline: Pin<Box<Sleep>>,
    armed: bool,
}

/// The app's connection: the socket, what has been read from it, and buffers kept between requests.
struct AppConnection<T> {
    io: T,
    buf: BytesMut,
    /// Parse again only once the buffer holds this much (a head needing more, or its body).
    want: usize,
    /// Scratch for header positions while a head is parsed.
    found: Vec<(HeaderName, usize, usize)>,
    /// Response bytes on their way out, kept between responses.
    out: BytesMut,
}

/// What a wait for the next request ended with.
// Moved once per request; boxing it would cost an allocation per request instead.
#[allow(clippy::large_enum_variant)]
enum Received<Q> {
    /// A request served here.
    Request(Request<Q>, ResponseTerms),
    /// Something for hyper: the connection goes to it with the bytes read so far.
    HandOff,
    /// A head hyper would refuse with a 400.
    Reject,
    Closed,
}

/// What the request asks of its response: no body (HEAD), and the connection closed after it.
struct ResponseTerms {
    head_only: bool,
    close: bool,
}

/// What woke an idle wait for the next request.
enum WaitEnd {
    Read(io::Result<usize>),
    HeaderTimeout,
    Shutdown,
}

impl<T: AsyncRead + AsyncWrite + Unpin> AppConnection<T> {
    /// Wait for the next complete request.
    async fn next<Q: Default + From<Bytes>>(
        &mut self,
        timeout: Duration,
        interrupts: &mut Interrupts<'_, '_>,
    ) -> Received<Q> {
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
            if self.buf.capacity() - self.buf.len() < READ_SMALL / 2 {
                self.buf.reserve(READ_SMALL);
            }
            let (io, buf) = (&mut self.io, &mut self.buf);
            let ended = poll_fn(|cx: &mut Context<'_>| {
                if let Poll::Ready(read) =
                    tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)
                {
                    return Poll::Ready(WaitEnd::Read(read));
                }
                if !interrupts.armed {
                    // Registers with the shutdown notification (once: it stays registered) and
                    // with the timer (again after each re-arm).
                    interrupts.armed = true;
                    let _ = interrupts.stopped.as_mut().poll(cx);
                    let _ = interrupts.deadline.as_mut().poll(cx);
                }
                if interrupts.shutdown.begun() {
                    return Poll::Ready(WaitEnd::Shutdown);
                }
                if interrupts.deadline.is_elapsed() {
                    return Poll::Ready(WaitEnd::HeaderTimeout);
                }
                Poll::Pending
            })
            .await;
            match ended {
                WaitEnd::Read(Ok(0)) | WaitEnd::Read(Err(_)) | WaitEnd::Shutdown => {
                    return Received::Closed
                }
                WaitEnd::Read(Ok(_)) => {}
                WaitEnd::HeaderTimeout => {
                    // The timer was set for an earlier wait; it fires for real only when this
                    // wait has lasted the whole timeout. (No timer operation per request.)
                    let due = since + timeout;
                    if Instant::now() >= due {
                        tracing::debug!("no complete request within client_header_timeout");
                        return Received::Closed;
                    }
                    interrupts.deadline.as_mut().reset(due);
                    interrupts.armed = false;
                }
            }
        }
    }

    /// Make a request of a complete head (and its whole body) at the front of the buffer. Not
    /// inlined: its 3 KiB of header slots would sit in the connection future's every poll frame.
    #[inline(never)]
    /// `Err(n)`: incomplete, parse again once the buffer holds `n` bytes.
    fn parse<Q: Default + From<Bytes>>(&mut self) -> Result<Received<Q>, usize> {
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
                _ => return Ok(Received::HandOff),
            };
            let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
                return Ok(Received::HandOff);
            };
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                return Ok(Received::HandOff);
            };
            if method == Method::CONNECT || path.len() > MAX_URI {
                return Ok(Received::HandOff);
            }
            let start = self.buf.as_ptr() as usize;
            let mut body_len = None;
            let mut close = false;
            self.found.clear();
            for h in req.headers.iter() {
                let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                    return Ok(Received::HandOff);
                };
                if name == CONTENT_LENGTH {
                    match (body_len, decimal(h.value)) {
                        (None, Some(n)) if n <= MAX_WHOLE_BODY as u64 => {
                            body_len = Some(n as usize)
                        }
                        _ => return Ok(Received::HandOff),
                    }
                } else if name == CONNECTION {
                    let options = ConnectionOptions::parse(h.value);
                    if options.upgrade {
                        return Ok(Received::HandOff);
                    }
                    close |= options.close;
                    // Kept only when it names headers that must go too (`drop_hop_by_hop` drops
                    // them).
                    if !options.names_others {
                        continue;
                    }
                } else if name == TRANSFER_ENCODING || name == EXPECT || name == UPGRADE {
                    return Ok(Received::HandOff);
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
            return Ok(Received::Reject);
        };
        let mut headers = HeaderMap::with_capacity(self.found.len());
        for (name, at, len) in self.found.drain(..) {
            let Ok(value) = HeaderValue::from_maybe_shared(head.slice(at..at + len)) else {
                return Ok(Received::Reject);
            };
            headers.append(name, value);
        }
        let body = match body_len {
            0 => Q::default(),
            n => Q::from(self.buf.split_to(n).freeze()),
        };
        let head_only = method == Method::HEAD;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(Received::Request(req, ResponseTerms { head_only, close }))
    }

    /// Write the response: head, then the body as it comes, framed by its length when known.
    async fn respond<B>(
        &mut self,
        response: Response<B>,
        head_only: bool,
        close: bool,
    ) -> Result<(), Stop>
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: Into<BodyError>,
    {
        let (parts, body) = response.into_parts();
        self.out.clear();
        let delimit = encode_head(&mut self.out, &parts, &body, head_only, close);
        let written = write_body(&mut self.io, &mut self.out, body, delimit).await;
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
fn encode_head<B: HttpBody>(
    out: &mut BytesMut,
    parts: &http::response::Parts,
    body: &B,
    head_only: bool,
    close: bool,
) -> Delimit {
    put_status_line(out, parts.status);
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
        put_header(out, name, value);
    }
    if !dated {
        put_date(out);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let delimit = match (is_bodiless(head_only, parts.status), declared) {
        (true, _) => Delimit::Nothing,
        (false, Some(Some(n))) => Delimit::Length(n),
        (false, None) => put_framing(out, body.size_hint().exact()),
        // A Content-Length that is not a number.
        (false, Some(None)) => put_framing(out, None),
    };
    out.extend_from_slice(b"\r\n");
    delimit
}

/// A connection handed to hyper: the bytes already read come first, then the socket.
pub struct Rewound<T> {
    prefix: Bytes,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewound<T> {
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

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewound<T> {
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
