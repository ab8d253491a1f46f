//! HTTP/1.1 to the upstream on a connection we own, for ordinary requests (HTTP/2 and WebSocket
//! upgrades stay with hyper). The exchange runs in the request's own task: the head is written in
//! one go with the body's first bytes, the response head is parsed by `httparse` (hyper's parser),
//! and the body is framed as RFC 9112 §6.3 says and handed on as slices of the read buffer.
//!
//! Strict where it matters for a proxy: conflicting `Content-Length`s, a malformed chunk, a head
//! over 64 KiB or a `101` nobody asked for are errors; a body that ends early is an error, never a
//! short success. A connection is reusable only when its response ended exactly where the framing
//! said, on HTTP/1.1 without `Connection: close`.

use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::body::{step, write_body, BadChunk, Chunk, Framing, Stop};
use super::{
    put_framing, put_header, put_request_line, BodyError, Delimit, FramingHeaders, ResponseFraming,
    KEEP_OUT, MAX_HEAD, MAX_HEADERS, READ_LARGE, READ_SMALL,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the upstream closed the connection before the response headers")]
    ClosedBeforeHead,
    #[error("invalid response head: {0}")]
    Head(&'static str),
    #[error("the response head is larger than 64 KiB")]
    HeadTooLarge,
    #[error("invalid chunked body: {0}")]
    Chunk(&'static str),
    #[error("the upstream closed the connection {0} bytes before the end of the body")]
    Truncated(u64),
    #[error("the upstream closed the connection before the last chunk")]
    TruncatedChunked,
    #[error("reading the request body: {0}")]
    RequestBody(BodyError),
    #[error("no response headers in time")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<BadChunk> for Error {
    fn from(BadChunk(what): BadChunk) -> Error {
        Error::Chunk(what)
    }
}

impl From<httparse::Error> for Error {
    fn from(e: httparse::Error) -> Error {
        Error::Head(match e {
            httparse::Error::TooManyHeaders => "more than 100 headers",
            httparse::Error::Version => "not HTTP/1.x",
            httparse::Error::Status => "bad status code",
            httparse::Error::HeaderName => "bad header name",
            httparse::Error::HeaderValue => "bad header value",
            _ => "malformed",
        })
    }
}

/// One HTTP/1.1 connection and what has been read from it but not yet consumed.
pub struct Connection<T> {
    io: T,
    buf: BytesMut,
    read_size: usize,
    /// Scratch for header positions while a head is parsed (kept to avoid a fresh Vec per response).
    found: Vec<(HeaderName, usize, usize)>,
    /// The response-header deadline, one timer for the connection's life (see `read_head`).
    timer: Option<Pin<Box<Sleep>>>,
    /// Request bytes on their way out, kept between requests.
    out: BytesMut,
}

/// What happened when a request was sent, for the pool's retry decision.
pub struct Failed {
    pub error: Error,
    /// Nothing of the response arrived and nothing of the request's body was consumed: the same
    /// request may go again on another connection.
    pub replayable: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    pub fn new(io: T) -> Connection<T> {
        Connection {
            io,
            buf: BytesMut::new(),
            read_size: READ_SMALL,
            found: Vec::new(),
            timer: None,
            out: BytesMut::new(),
        }
    }

    /// Whether an idle connection is still usable: the upstream has neither closed it nor sent
    /// anything unasked. Costs no system call when the socket has been quiet (tokio remembers it
    /// drained the socket on the last short read).
    pub async fn is_usable(&mut self) -> bool {
        poll_fn(|cx| Poll::Ready(self.is_idle(cx))).await
    }

    /// The same check, leaving `cx`'s waker to be woken when the upstream closes the connection
    /// (or sends something unasked) while it sits idle.
    pub fn is_idle(&mut self, cx: &mut Context<'_>) -> bool {
        self.buf.is_empty() && self.poll_fill(cx).is_pending()
    }

    /// Send `req` (origin-form; `host` goes first) and read the response head. The request's body
    /// is taken only when it has bytes to send; an empty one stays, so the request can be replayed.
    pub async fn send<B>(
        mut self: Box<Self>,
        req: &mut Request<B>,
        host: &HeaderValue,
        deadline: Instant,
    ) -> Result<Response<ResponseBody<T>>, Failed>
    where
        B: HttpBody<Data = Bytes> + Default + Unpin,
        B::Error: Into<BodyError>,
    {
        let has_body = !req.body().is_end_stream();
        let out = &mut self.out;
        out.clear();
        let framing = encode_head(out, req, host);
        let mut deadline = deadline;
        let written = if has_body {
            let body = std::mem::take(req.body_mut());
            // The response-header timeout starts once the body is sent: an upload takes the app's
            // time, which the body's own gap timer (`client_body_timeout`) bounds, not ours.
            let began = Instant::now();
            let written = match write_body(&mut self.io, &mut self.out, body, framing).await {
                Ok(()) => Ok(()),
                Err(Stop::Io(e)) => Err(Error::Io(e)),
                Err(Stop::Body(e)) => Err(Error::RequestBody(e)),
                Err(Stop::Overrun) => Err(Error::RequestBody(
                    "the body is longer than its length".into(),
                )),
            };
            deadline += began.elapsed();
            written
        } else {
            self.io.write_all(&self.out).await.map_err(Error::from)
        };
        let written = match written {
            Ok(()) => self.io.flush().await.map_err(Error::from),
            Err(e) => Err(e),
        };
        if self.out.capacity() > KEEP_OUT {
            // A large upload grew it; an idle connection keeps only a small one.
            self.out = BytesMut::new();
        }
        if let Err(error) = written {
            if let Error::RequestBody(_) = error {
                // The request is incomplete: the upstream will not answer it, and the connection
                // goes with it.
                return Err(Failed {
                    error,
                    replayable: false,
                });
            }
            // The upstream may have answered and closed without reading everything (an early
            // 401 or 413): that answer is better than the write error.
            return match self.read_head(req.method(), deadline).await {
                Ok((parts, framing)) => Ok(self.into_response(parts, framing, false)),
                Err(_) => Err(Failed {
                    error,
                    replayable: !has_body,
                }),
            };
        }
        match self.read_head(req.method(), deadline).await {
            Ok((parts, framing)) => Ok(self.into_response(parts, framing, true)),
            Err(error) => {
                let replayable = !has_body
                    && matches!(error, Error::ClosedBeforeHead)
                    && is_idempotent(req.method());
                Err(Failed { error, replayable })
            }
        }
    }

    fn into_response(
        self: Box<Self>,
        parts: http::response::Parts,
        head: ResponseFraming,
        wrote_all: bool,
    ) -> Response<ResponseBody<T>> {
        let mut body = ResponseBody {
            conn: Some(self),
            framing: head.framing,
            reusable: head.reusable && wrote_all,
            fresh: false,
            held: None,
        };
        body.settle();
        Response::from_parts(parts, body)
    }

    /// Read until a final (non-1xx) response head is complete.
    async fn read_head(
        &mut self,
        method: &Method,
        deadline: Instant,
    ) -> Result<(http::response::Parts, ResponseFraming), Error> {
        loop {
            if let Some(head) = self.parse_head(method)? {
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
            let before = self.buf.len();
            let filled = poll_fn(|cx| {
                if let Poll::Ready(filled) = self.poll_fill(cx) {
                    return Poll::Ready(Some(filled));
                }
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            let Some(filled) = filled else {
                // The connection's timer was set for an earlier request's deadline; it counts
                // only once this one's has passed. (No timer operation per request.)
                if Instant::now() >= deadline {
                    return Err(Error::Timeout);
                }
                if let Some(timer) = &mut self.timer {
                    timer.as_mut().reset(deadline);
                }
                continue;
            };
            filled?;
            if self.buf.len() == before {
                return Err(if before == 0 {
                    Error::ClosedBeforeHead
                } else {
                    Error::Head("the connection closed inside the head")
                });
            }
        }
    }

    /// Parse a complete head at the front of the buffer, skipping interim (1xx) responses. Not
    /// inlined: its 3 KiB of header slots would sit in `read_head`'s every poll frame.
    #[inline(never)]
    fn parse_head(
        &mut self,
        method: &Method,
    ) -> Result<Option<(http::response::Parts, ResponseFraming)>, Error> {
        loop {
            // Left uninitialised: the parser writes the ones it finds (no 3 KiB clear per response).
            let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
            let mut res = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut res,
                &self.buf,
                &mut headers,
            );
            let len = match parsed? {
                httparse::Status::Complete(len) if len > MAX_HEAD => {
                    return Err(Error::HeadTooLarge)
                }
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => return Ok(None),
            };
            let code = res.code.unwrap_or(0);
            let status = StatusCode::from_u16(code).map_err(|_| Error::Head("bad status code"))?;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Error::Head(
                    "101 Switching Protocols to a request that asked for no upgrade",
                ));
            }
            if status.is_informational() {
                self.buf.advance(len);
                continue;
            }
            let http10 = res.version == Some(0);
            let start = self.buf.as_ptr() as usize;
            let mut framing = FramingHeaders::default();
            self.found.clear();
            for h in res.headers.iter() {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| Error::Head("bad header name"))?;
                if !framing.see(&name, h.value).map_err(Error::Head)? {
                    continue;
                }
                self.found
                    .push((name, h.value.as_ptr() as usize - start, h.value.len()));
            }
            let head = self.buf.split_to(len).freeze();
            let mut map = HeaderMap::with_capacity(self.found.len());
            for (name, at, len) in self.found.drain(..) {
                let value = HeaderValue::from_maybe_shared(head.slice(at..at + len))
                    .map_err(|_| Error::Head("bad header value"))?;
                map.append(name, value);
            }
            let framing = framing.decide(method, status, http10, &mut map);
            let (mut parts, ()) = Response::new(()).into_parts();
            parts.status = status;
            parts.version = Version::HTTP_11;
            parts.headers = map;
            return Ok(Some((parts, framing)));
        }
    }

    /// Read more into the buffer; `Ready(Ok)` with nothing added means end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        // A read that filled the buffer suggests a large body: read more at a time.
        self.read_size = if n == spare { READ_LARGE } else { READ_SMALL };
        Poll::Ready(Ok(()))
    }
}

/// Write the request line and headers; returns how the body is delimited.
fn encode_head<B: HttpBody>(out: &mut BytesMut, req: &Request<B>, host: &HeaderValue) -> Delimit {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    put_request_line(out, req.method(), target, host);
    let mut declared_length = false;
    for (name, value) in req.headers() {
        // Framing is ours to state (below); Host is the upstream's own.
        if name == CONTENT_LENGTH {
            declared_length = true;
            continue;
        }
        if name == HOST || name == TRANSFER_ENCODING {
            continue;
        }
        put_header(out, name, value);
    }
    let delimit = match req.body().size_hint().exact() {
        // A body-less request with no Content-Length (a GET) says nothing about framing.
        Some(0) if !declared_length => Delimit::Length(0),
        exact => put_framing(out, exact),
    };
    out.extend_from_slice(b"\r\n");
    delimit
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A response body read straight from the connection. When it ends exactly where its framing says,
/// the connection is handed back through [`ResponseBody::into_reusable`].
pub struct ResponseBody<T> {
    conn: Option<Box<Connection<T>>>,
    framing: Framing,
    reusable: bool,
    /// Data was handed out since the last `Pending`: an error now waits one turn (see `poll_frame`).
    fresh: bool,
    held: Option<Error>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> ResponseBody<T> {
    /// The connection, if the body has ended cleanly and it may carry another request.
    pub fn into_reusable(&mut self) -> Option<Box<Connection<T>>> {
        if self.framing != Framing::Done || !self.reusable {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    /// Consume framing that needs no I/O (chunk ends, the last chunk, trailers) so the end of the
    /// body is known as soon as its bytes are here.
    fn settle(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        // Errors surface on the next poll, which re-runs the same step.
        while let Ok(true) = step(&mut self.framing, &mut conn.buf) {}
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // Control framing first, then data from the buffer, then read.
            loop {
                match step(&mut self.framing, &mut conn.buf) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                }
            }
            let data = match &mut self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left))
                    if !conn.buf.is_empty() =>
                {
                    let n = (*left).min(conn.buf.len() as u64) as usize;
                    *left -= n as u64;
                    Some(conn.buf.split_to(n).freeze())
                }
                Framing::Close if !conn.buf.is_empty() => Some(conn.buf.split().freeze()),
                _ => None,
            };
            if let Some(data) = data {
                match self.framing {
                    Framing::Length(0) => self.framing = Framing::Done,
                    Framing::Chunked(Chunk::Data(0)) => {
                        self.framing = Framing::Chunked(Chunk::DataEnd)
                    }
                    _ => {}
                }
                self.settle();
                return Poll::Ready(Some(Ok(data)));
            }
            let before = conn.buf.len();
            if let Err(e) = std::task::ready!(conn.poll_fill(cx)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            if conn.buf.len() == before {
                // End of stream from the upstream.
                return Poll::Ready(match self.framing {
                    Framing::Close => {
                        self.framing = Framing::Done;
                        None
                    }
                    Framing::Length(left) => Some(Err(Error::Truncated(left))),
                    _ => Some(Err(Error::TruncatedChunked)),
                });
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> HttpBody for ResponseBody<T> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.held.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let polled = this.poll_data(cx);
        match polled {
            Poll::Ready(Some(Err(e))) => {
                // The connection is in an unknown state: it goes.
                this.conn = None;
                this.framing = Framing::Done;
                this.reusable = false;
                if this.fresh {
                    // Data and then an error in one go (bytes followed by a reset): give the
                    // server a turn to flush what it has before it learns the stream is broken,
                    // or it drops the response head along with the connection.
                    this.fresh = false;
                    this.held = Some(e);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(data))) => {
                this.fresh = true;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                this.fresh = false;
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done && self.held.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io;

    use http_body_util::{BodyExt, Full};
    use tokio::io::ReadBuf;

    /// A connection whose reads return exactly the scripted pieces, then end; writes are kept.
    #[derive(Default)]
    struct Script {
        reads: VecDeque<io::Result<Vec<u8>>>,
        written: Vec<u8>,
    }

    impl Script {
        fn pieces(pieces: &[&[u8]]) -> Script {
            Script {
                reads: pieces.iter().map(|p| Ok(p.to_vec())).collect(),
                written: Vec::new(),
            }
        }
    }

    impl AsyncRead for Script {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            match this.reads.pop_front() {
                None => Poll::Ready(Ok(())),
                Some(Err(e)) => Poll::Ready(Err(e)),
                Some(Ok(mut piece)) => {
                    let n = piece.len().min(buf.remaining());
                    buf.put_slice(&piece[..n]);
                    if n < piece.len() {
                        this.reads.push_front(Ok(piece.split_off(n)));
                    }
                    Poll::Ready(Ok(()))
                }
            }
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn host() -> HeaderValue {
        HeaderValue::from_static("api.example.com")
    }

    /// A response-header deadline no test reaches.
    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(3600)
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/v1/models").body(Full::default()).unwrap()
    }

    /// Send a GET over a connection that answers with `pieces`; the response and its body's bytes,
    /// or the body's error, and whether the connection came back for reuse.
    async fn exchange(
        method: Method,
        pieces: &[&[u8]],
    ) -> (http::response::Parts, Result<Vec<u8>, String>, bool) {
        let conn = Box::new(Connection::new(Script::pieces(pieces)));
        let mut req = get();
        *req.method_mut() = method;
        let resp = match conn.send(&mut req, &host(), later()).await {
            Ok(resp) => resp,
            Err(failed) => panic!("no response: {}", failed.error),
        };
        let (parts, mut body) = resp.into_parts();
        let mut bytes = Vec::new();
        let outcome = loop {
            match body.frame().await {
                None => break Ok(bytes),
                Some(Ok(frame)) => bytes.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(e)) => break Err(e.to_string()),
            }
        };
        let reusable = body.into_reusable().is_some();
        (parts, outcome, reusable)
    }

    async fn refused(pieces: &[&[u8]]) -> String {
        let conn = Box::new(Connection::new(Script::pieces(pieces)));
        match conn.send(&mut get(), &host(), later()).await {
            Ok(resp) => match resp.into_body().collect().await {
                Ok(_) => panic!("a clean end: {:?}", pieces.first().map(|p| p.len())),
                Err(e) => e.to_string(),
            },
            Err(failed) => failed.error.to_string(),
        }
    }

    #[tokio::test]
    async fn a_get_is_written_with_host_first_and_no_framing() {
        let conn = Box::new(Connection::new(Script::pieces(&[
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])));
        let mut req = get();
        req.headers_mut()
            .insert("x-one", HeaderValue::from_static("1"));
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static("client.local"));
        let mut out = BytesMut::new();
        assert_eq!(encode_head(&mut out, &req, &host()), Delimit::Length(0));
        assert_eq!(
            &out[..],
            b"GET /v1/models HTTP/1.1\r\nhost: api.example.com\r\nx-one: 1\r\n\r\n"
        );
        let resp = conn.send(&mut req, &host(), later()).await.ok().unwrap();
        assert_eq!(resp.status(), 204);
        assert!(resp.body().is_end_stream());
    }

    #[tokio::test]
    async fn bodies_are_framed_by_their_length_or_chunked() {
        let mut out = BytesMut::new();
        let mut req = Request::post("/v1/chat")
            .header(CONTENT_LENGTH, "999")
            .header(http::header::TRANSFER_ENCODING, "chunked")
            .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
            .unwrap();
        assert_eq!(encode_head(&mut out, &req, &host()), Delimit::Length(7));
        assert_eq!(
            &out[..],
            b"POST /v1/chat HTTP/1.1\r\nhost: api.example.com\r\ncontent-length: 7\r\n\r\n",
            "the body's own length, once; the client's framing headers are not copied"
        );

        // A body of unknown length goes chunked, each frame one chunk.
        let frames = frames(&[b"hello ", b"world, this is sixteen+"]);
        let conn = Connection::new(Script::pieces(&[
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        ]));
        let mut conn = Box::new(conn);
        let mut streamed = Request::post("/v1/chat").body(frames).unwrap();
        let mut head = BytesMut::new();
        let delimit = encode_head(&mut head, &streamed, &host());
        assert_eq!(delimit, Delimit::Chunked);
        write_body(
            &mut conn.io,
            &mut head,
            std::mem::take(streamed.body_mut()),
            delimit,
        )
        .await
        .unwrap();
        let written = String::from_utf8(conn.io.written.clone()).unwrap();
        assert!(
            written.ends_with(
                "transfer-encoding: chunked\r\n\r\n6\r\nhello \r\n17\r\nworld, this is sixteen+\r\n0\r\n\r\n"
            ),
            "{written:?}"
        );
        *req.body_mut() = Full::default();
        assert_eq!(
            encode_head(&mut BytesMut::new(), &req, &host()),
            Delimit::Length(0)
        );
    }

    /// A request body of unknown length, handing out its frames one by one.
    #[derive(Default)]
    struct Frames(VecDeque<Bytes>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn frames(parts: &[&'static [u8]]) -> Frames {
        Frames(parts.iter().map(|p| Bytes::from_static(p)).collect())
    }

    #[tokio::test]
    async fn a_content_length_body_split_anywhere_arrives_whole_and_frees_the_connection() {
        let whole: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        for at in 1..whole.len() {
            let (parts, body, reusable) =
                exchange(Method::GET, &[&whole[..at], &whole[at..]]).await;
            assert_eq!(parts.status, 200);
            assert_eq!(parts.headers["content-type"], "application/json");
            assert_eq!(body.unwrap(), b"{\"ok\":true}", "split at {at}");
            assert!(reusable, "split at {at}");
        }
    }

    #[tokio::test]
    async fn a_chunked_body_with_extensions_and_trailers_split_anywhere_arrives_whole() {
        let whole: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=v\r\nhello\r\nA \r\n, chunked!\r\n0\r\nx-trailer: 1\r\n\r\n";
        for at in 1..whole.len() {
            let (_, body, reusable) = exchange(Method::GET, &[&whole[..at], &whole[at..]]).await;
            assert_eq!(body.unwrap(), b"hello, chunked!", "split at {at}");
            assert!(reusable, "split at {at}");
        }
        // Byte by byte.
        let pieces: Vec<&[u8]> = whole.chunks(1).collect();
        let (_, body, reusable) = exchange(Method::GET, &pieces).await;
        assert_eq!(body.unwrap(), b"hello, chunked!");
        assert!(reusable);
    }

    #[tokio::test]
    async fn what_ends_a_connection_is_not_reused() {
        // Connection: close; HTTP/1.0; a body delimited by the close; bytes beyond the body.
        for (pieces, expected) in [
            (
                &[&b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..]][..],
                &b"ok"[..],
            ),
            (
                &[&b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"[..]],
                b"ok",
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\n\r\nuntil"[..], b" the end"],
                b"until the end",
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"[..]],
                b"ok",
            ),
        ] {
            let (_, body, reusable) = exchange(Method::GET, pieces).await;
            assert_eq!(body.unwrap(), expected);
            assert!(!reusable, "{:?}", String::from_utf8_lossy(pieces[0]));
        }
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_bodyless_answers_have_no_body() {
        let (parts, body, reusable) = exchange(
            Method::GET,
            &[
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nk",
            ],
        )
        .await;
        assert_eq!((parts.status.as_u16(), body.unwrap()), (200, b"k".to_vec()));
        assert!(reusable);
        for (method, head) in [
            (
                Method::HEAD,
                &b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n"[..],
            ),
            (
                Method::GET,
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 99\r\n\r\n",
            ),
            (Method::GET, b"HTTP/1.1 204 No Content\r\n\r\n"),
        ] {
            let (_, body, reusable) = exchange(method, &[head]).await;
            assert_eq!(body.unwrap(), b"");
            assert!(reusable);
        }
    }

    #[tokio::test]
    async fn transfer_encoding_wins_over_content_length_and_the_connection_goes() {
        let (parts, body, reusable) = exchange(
            Method::GET,
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
        )
        .await;
        assert_eq!(body.unwrap(), b"ok");
        assert!(!parts.headers.contains_key(CONTENT_LENGTH));
        assert!(!reusable);
    }

    #[tokio::test]
    async fn malformed_or_cut_responses_are_errors_never_a_short_success() {
        for (pieces, says) in [
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..]][..],
                "conflicting Content-Length",
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"[..]],
                "bad Content-Length",
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..]],
                "5 bytes before the end",
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..]],
                "no chunk size",
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX\r\n"[..]],
                "not followed by CRLF",
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n"[..]],
                "not ended by CRLF",
            ),
            (
                &[
                    &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\n"
                        [..],
                ],
                "too large",
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel"[..]],
                "before the last chunk",
            ),
            (&[&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]], "101"),
            (&[&b"this is not HTTP\r\n\r\n"[..]], "invalid response head"),
            (&[&b"HTTP/1.1 200 OK\r\nconte"[..]], "inside the head"),
            (&[], "before the response headers"),
        ] {
            let error = refused(pieces).await;
            assert!(error.contains(says), "{error:?} should say {says:?}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(70 * 1024));
        let error = refused(&[huge.as_bytes()]).await;
        assert!(error.contains("larger than 64 KiB"), "{error}");
    }

    #[tokio::test]
    async fn connection_level_headers_stay_behind() {
        let (parts, body, reusable) = exchange(
            Method::GET,
            &[b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nx-request-id: r1\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
        )
        .await;
        assert_eq!(body.unwrap(), b"ok");
        assert!(reusable);
        let names: Vec<&str> = parts.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-request-id"]);
        // A Connection header that names other headers is kept, so they can be dropped with it.
        let (parts, _, reusable) = exchange(
            Method::GET,
            &[b"HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n"],
        )
        .await;
        assert!(!reusable);
        assert!(parts.headers.contains_key("connection"));
        let mut headers = parts.headers;
        crate::http1::drop_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("x-hop") && !headers.contains_key("connection"));
    }

    #[tokio::test]
    async fn an_error_right_after_data_waits_one_turn() {
        let conn = Box::new(Connection::new(Script {
            reads: VecDeque::from([
                Ok(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n".to_vec()),
                Err(io::Error::from(io::ErrorKind::ConnectionReset)),
            ]),
            written: Vec::new(),
        }));
        let mut body = conn
            .send(&mut get(), &host(), later())
            .await
            .ok()
            .unwrap()
            .into_body();
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        let first = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(matches!(first, Poll::Ready(Some(Ok(_)))));
        assert!(
            Pin::new(&mut body).poll_frame(&mut cx).is_pending(),
            "the server gets to flush first"
        );
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Err(_)))
        ));
        assert!(body.into_reusable().is_none());
    }

    /// The connection's one timer, first set for an earlier request, neither cuts a later
    /// request short nor lets one wait past its own deadline.
    #[tokio::test(start_paused = true)]
    async fn each_request_gets_its_own_deadline_from_one_timer() {
        use std::time::Duration;
        use tokio::io::AsyncReadExt;
        let (ours, mut upstream) = tokio::io::duplex(64 * 1024);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let secs = Duration::from_secs;
        let mut scratch = [0u8; 1024];

        // First request: answered at once; its deadline (t=10s) stays in the timer.
        upstream.write_all(ok).await.unwrap();
        let conn = Box::new(Connection::new(ours));
        let first = Instant::now() + secs(10);
        let mut body = conn
            .send(&mut get(), &host(), first)
            .await
            .ok()
            .unwrap()
            .into_body();
        let conn = body.into_reusable().unwrap();
        let _ = upstream.read(&mut scratch).await.unwrap();

        // Second request at t=5s (deadline t=15s), answered at t=12s: after the first deadline.
        tokio::time::sleep(secs(5)).await;
        let answer = async {
            tokio::time::sleep_until(first + secs(2)).await;
            upstream.write_all(ok).await.unwrap();
        };
        let (mut req, authority) = (get(), host());
        let second = conn.send(&mut req, &authority, Instant::now() + secs(10));
        let (sent, ()) = tokio::join!(second, answer);
        let mut body = sent
            .ok()
            .expect("answered before its own deadline")
            .into_body();
        let conn = body.into_reusable().unwrap();

        // Third request, never answered: refused at its own deadline, not later.
        let started = Instant::now();
        let deadline = started + secs(10);
        match conn.send(&mut get(), &host(), deadline).await {
            Err(Failed {
                error: Error::Timeout,
                ..
            }) => {}
            Err(other) => panic!("{}", other.error),
            Ok(_) => panic!("answered by nobody"),
        }
        assert_eq!(Instant::now(), deadline);
    }

    fn futures_waker() -> std::task::Waker {
        struct Nothing;
        impl std::task::Wake for Nothing {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        std::task::Waker::from(std::sync::Arc::new(Nothing))
    }
}
