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
//!
//! The app's faults get the answers hyper's side gives them (see `proxy`): a short body that
//! stops arriving for the body timeout, or whose connection ends inside it, becomes a request
//! whose body fails that way ([`AppBody::faulted`]), and while a request is answered the
//! connection is watched, so an app that closes it drops the answer (and its upstream request).

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
    decimal, is_bodiless, no_length, put_date, put_framing, put_header, put_number,
    put_status_line, BodyError, ClientFault, ConnectionOptions, Delimit, KEEP_OUT, MAX_HEAD,
    MAX_HEADERS, MAX_URI, MAX_WHOLE_BODY, READ_SMALL,
};

/// How a connection's time here ended.
pub enum Ended<T> {
    /// Closed: by the app, after `Connection: close`, at shutdown, on a timeout or an error.
    Closed,
    /// A request head, begun, did not arrive whole within the header timeout. The connection is
    /// handed back to be closed once the fault is counted (so the app never sees the close first).
    HeaderTimeout(T),
    /// For hyper to serve from here on, starting with the bytes already read.
    HandOff(Rewound<T>),
}

/// How long the app may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The wait for a request (an idle keep-alive connection) and the time to send its head.
    pub header: Duration,
    /// The longest gap between two reads of a request body.
    pub body: Duration,
}

/// A request body as `serve` makes it: none, whole, or one the app failed to deliver.
pub trait AppBody: Default + From<Bytes> {
    /// A body of declared `length` that yields `partial` (what arrived) and then fails with
    /// `fault`: the request is answered as hyper's path answers a streamed body that fails the
    /// same way, so both paths agree on the status, the log and what the upstream sees.
    fn faulted(partial: Bytes, length: u64, fault: ClientFault) -> Self;
}

/// Serve `stream` until it closes or needs hyper, answering each request with `answer`. A
/// request's body is `Q::default()` when it has none, else `Q::from` its bytes, or
/// `Q::faulted` when it stopped arriving for `timeouts.body` or the connection ended inside it.
/// While a request is being answered the connection is watched: if the app closes it, the answer
/// is dropped (which cancels the upstream request).
pub async fn serve<T, Q, A, F, B>(
    stream: T,
    mut answer: A,
    timeouts: Timeouts,
    shutdown: &Shutdown,
) -> Ended<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
    Q: AppBody,
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
        in_body: None,
        read_closed: false,
    };
    let stopped = pin!(shutdown.notify.notified());
    let mut interrupts = Interrupts {
        stopped,
        shutdown,
        // One timer for the connection's life, re-armed only when it fires early (see `next`).
        deadline: Box::pin(tokio::time::sleep(timeouts.header)),
        armed: false,
    };
    loop {
        match conn.next(timeouts, &mut interrupts).await {
            Received::Request(req, terms) => {
                let Some(response) = conn.answer_watched(answer(req)).await else {
                    return Ended::Closed;
                };
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
            Received::HeaderTimeout => return Ended::HeaderTimeout(conn.io),
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
    /// A complete head is waiting for its body: when the body's last bytes arrived (see `next`).
    in_body: Option<Instant>,
    /// The app has closed its side: nothing more to read, nothing more to watch for.
    read_closed: bool,
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
    /// A head begun and not finished within the header timeout.
    HeaderTimeout,
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
    async fn next<Q: AppBody>(
        &mut self,
        timeouts: Timeouts,
        interrupts: &mut Interrupts<'_, '_>,
    ) -> Received<Q> {
        let since = Instant::now();
        loop {
            if !self.buf.is_empty() && self.buf.len() >= self.want {
                match self.parse(None) {
                    Ok(next) => {
                        self.want = 0;
                        self.in_body = None;
                        return next;
                    }
                    Err((need, body)) => {
                        self.want = need;
                        if body && self.in_body.is_none() {
                            // The body is late (rare: most come with their head). From now on
                            // the wait is bounded by the body timeout, from its last bytes.
                            let now = Instant::now();
                            self.in_body = Some(now);
                            let due = now + timeouts.body;
                            if interrupts.deadline.deadline() > due {
                                interrupts.deadline.as_mut().reset(due);
                                interrupts.armed = false;
                            }
                        } else if self.in_body.is_some() {
                            self.in_body = Some(Instant::now());
                        }
                    }
                }
            }
            if self.read_closed {
                return Received::Closed;
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
                WaitEnd::Read(Ok(0)) if self.in_body.is_some() => {
                    self.read_closed = true;
                    return self.cut(ClientFault::Malformed(super::BODY_CUT));
                }
                WaitEnd::Read(Err(_)) if self.in_body.is_some() => {
                    self.read_closed = true;
                    return self.cut(ClientFault::Disconnected);
                }
                WaitEnd::Read(Ok(0)) | WaitEnd::Read(Err(_)) | WaitEnd::Shutdown => {
                    return Received::Closed
                }
                WaitEnd::Read(Ok(_)) => {}
                WaitEnd::HeaderTimeout => {
                    // The timer was set for an earlier wait; it fires for real only when this
                    // wait has lasted the whole timeout. (No timer operation per request.)
                    let due = match self.in_body {
                        Some(last) => last + timeouts.body,
                        None => since + timeouts.header,
                    };
                    if Instant::now() >= due {
                        if self.in_body.is_some() {
                            return self.cut(ClientFault::BodyTimeout(timeouts.body));
                        }
                        tracing::debug!("no complete request within client_header_timeout");
                        return match self.buf.is_empty() {
                            true => Received::Closed,
                            false => Received::HeaderTimeout,
                        };
                    }
                    interrupts.deadline.as_mut().reset(due);
                    interrupts.armed = false;
                }
            }
        }
    }

    /// The request whose body the app failed to deliver: what arrived, then `fault`. The
    /// connection closes after its answer (the rest of the body cannot be told from a next
    /// request).
    fn cut<Q: AppBody>(&mut self, fault: ClientFault) -> Received<Q> {
        self.in_body = None;
        match self.parse(Some(fault)) {
            Ok(Received::Request(req, terms)) => Received::Request(
                req,
                ResponseTerms {
                    close: true,
                    ..terms
                },
            ),
            Ok(other) => other,
            Err(_) => Received::Closed,
        }
    }

    /// Answer with `answer`, watching the connection meanwhile: bytes the app sends ahead (a
    /// pipelined request) are kept, and if it closes the connection the answer is dropped, which
    /// cancels whatever it was waiting for. Costs no system call while the app is quiet (the
    /// socket's readiness is already known to be clear after the read that brought the request).
    async fn answer_watched<R>(&mut self, answer: impl Future<Output = R>) -> Option<R> {
        let mut answer = pin!(answer);
        let mut watching = !self.read_closed;
        poll_fn(|cx| {
            if let Poll::Ready(response) = answer.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            while watching {
                if self.buf.len() >= MAX_HEAD + MAX_WHOLE_BODY {
                    // Enough read ahead: the rest waits in the socket.
                    watching = false;
                    break;
                }
                if self.buf.capacity() - self.buf.len() < READ_SMALL / 2 {
                    self.buf.reserve(READ_SMALL);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        tracing::debug!("the app closed the connection before its answer");
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Make a request of a complete head (and its whole body) at the front of the buffer. Not
    /// inlined: its 3 KiB of header slots would sit in the connection future's every poll frame.
    /// `Err((n, body))`: incomplete, parse again once the buffer holds `n` bytes (`body`: the
    /// head is complete, its body is not). With `fault`, a head whose body is incomplete makes a
    /// request whose body fails with it.
    #[inline(never)]
    fn parse<Q: AppBody>(
        &mut self,
        fault: Option<ClientFault>,
    ) -> Result<Received<Q>, (usize, bool)> {
        let (head_len, method, path, body_len, close) = {
            let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
            let mut req = httparse::Request::new(&mut []);
            let parsed = httparse::ParserConfig::default()
                .parse_request_with_uninit_headers(&mut req, &self.buf, &mut slots);
            let head_len = match parsed {
                Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => {
                    return Err((self.buf.len() + 1, false))
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
        let fault = match fault {
            _ if self.buf.len() >= whole => None,
            None => return Err((whole, true)),
            Some(fault) => Some(fault),
        };
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
        let body = match (body_len, fault) {
            (n, Some(fault)) => Q::faulted(self.buf.split().freeze(), n as u64, fault),
            (0, None) => Q::default(),
            (n, None) => Q::from(self.buf.split_to(n).freeze()),
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
            let length = decimal(value.as_bytes());
            declared = Some(length);
            if length.is_none() || no_length(parts.status) {
                // Not a length (the body goes chunked: never both), or a status without one.
                continue;
            }
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
        (true, None) if head_only && !no_length(parts.status) => {
            // The length the body would have had, as hyper states it (RFC 9110 §9.3.2).
            if let Some(n @ 1..) = body.size_hint().exact() {
                out.extend_from_slice(b"content-length: ");
                put_number(out, n, 10);
                out.extend_from_slice(b"\r\n");
            }
            Delimit::Nothing
        }
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
