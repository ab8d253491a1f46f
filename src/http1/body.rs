//! A body on the wire: one written as its [`Delimit`] says (request bodies going upstream,
//! response bodies going back to the app), and the framing state a received body is read by: a
//! length, chunks (RFC 9112 §7.1) or the connection's close.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{put_number, trim, BodyError, Delimit, MAX_HEAD, MAX_LINE, WRITE_BATCH};

/// What the body being written had next.
enum FromBody {
    /// Data (or trailers) to write.
    Frame(Frame<Bytes>),
    /// Nothing ready yet: what is gathered goes out now.
    Flush,
    End,
    Error(BodyError),
}

/// Why writing a body stopped.
#[derive(Debug)]
pub enum Stop {
    Io(std::io::Error),
    Body(BodyError),
    /// The body produced more bytes than its `Content-Length`.
    Overrun,
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Stop {
        Stop::Io(e)
    }
}

/// Write `out` (a head) and then `body` framed as `delimit` says, in as few writes as the body's
/// readiness allows: bytes are gathered in `out` until the body has nothing ready or the batch is
/// full. `out` is the connection's own buffer, kept between messages; it is left empty.
/// Used for request bodies going upstream and response bodies going back to the app.
pub async fn write_body<W, B>(
    io: &mut W,
    out: &mut BytesMut,
    mut body: B,
    delimit: Delimit,
) -> Result<(), Stop>
where
    W: AsyncWrite + Unpin,
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    let chunked = delimit == Delimit::Chunked;
    let mut left = match delimit {
        Delimit::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(FromBody::Flush),
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(FromBody::End),
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(FromBody::Frame(frame)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(FromBody::Error(e.into())),
        })
        .await;
        match next {
            FromBody::Frame(frame) => {
                // Trailers are not forwarded (no LLM API uses them); data is.
                let Ok(mut data) = frame.into_data() else {
                    continue;
                };
                if !data.has_remaining() || delimit == Delimit::Nothing {
                    continue;
                }
                let len = data.remaining() as u64;
                if len > left {
                    io.write_all(out).await?;
                    return Err(Stop::Overrun);
                }
                left -= len;
                if chunked {
                    put_number(out, len, 16);
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() + data.remaining() > WRITE_BATCH {
                    io.write_all(out).await?;
                    out.clear();
                    io.write_all_buf(&mut data).await?;
                } else {
                    out.extend_from_slice(data.chunk());
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= WRITE_BATCH {
                    io.write_all(out).await?;
                    out.clear();
                }
            }
            FromBody::Flush => {
                io.write_all(out).await?;
                io.flush().await?;
                out.clear();
            }
            FromBody::End => {
                // Let the body go first (its connection back to the pool, its in-flight count
                // down): once the peer has the last byte it may look at either.
                drop(body);
                if chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                io.write_all(out).await?;
                out.clear();
                return match delimit {
                    Delimit::Length(_) if left > 0 => Err(Stop::Body(
                        format!("the body ended {left} bytes before its length").into(),
                    )),
                    _ => Ok(()),
                };
            }
            FromBody::Error(e) => {
                // What was gathered goes out first: the peer sees the data, then the cut.
                drop(body);
                io.write_all(out).await?;
                return Err(Stop::Body(e));
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Where a received body's reader is in its framing.
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; how many bytes of them so far.
    Trailers(usize),
}

/// A malformed chunked body: what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk(pub &'static str);

/// One framing step that needs only buffered bytes. `Ok(true)`: progress, call again;
/// `Ok(false)`: data is next, or more bytes are needed.
pub fn step(framing: &mut Framing, buf: &mut BytesMut) -> Result<bool, BadChunk> {
    let Framing::Chunked(chunk) = framing else {
        return Ok(false);
    };
    match *chunk {
        Chunk::Data(_) => Ok(false),
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(false);
            }
            if &buf[..2] != b"\r\n" {
                return Err(BadChunk("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            *chunk = Chunk::Size;
            Ok(true)
        }
        Chunk::Size => {
            let Some(line) = line(buf)? else {
                return Ok(false);
            };
            let size = parse_chunk_size(&buf[..line - 2])?;
            buf.advance(line);
            *chunk = if size == 0 {
                Chunk::Trailers(0)
            } else {
                Chunk::Data(size)
            };
            Ok(true)
        }
        Chunk::Trailers(seen) => {
            let Some(line) = line(buf)? else {
                return Ok(false);
            };
            buf.advance(line);
            if line == 2 {
                *framing = Framing::Done;
            } else if seen + line > MAX_HEAD {
                return Err(BadChunk("trailers larger than 64 KiB"));
            } else {
                *chunk = Chunk::Trailers(seen + line);
            }
            Ok(true)
        }
    }
}

/// The length of the CRLF-terminated line at the front of `buf`, CRLF included.
fn line(buf: &[u8]) -> Result<Option<usize>, BadChunk> {
    match memchr::memchr(b'\n', &buf[..buf.len().min(MAX_LINE)]) {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i + 1)),
        Some(_) => Err(BadChunk("line not ended by CRLF")),
        None if buf.len() >= MAX_LINE => Err(BadChunk("line longer than 4 KiB")),
        None => Ok(None),
    }
}

/// `1a`, `1A;name=value`, `1a ; ext`: hex digits, then optional whitespace and extensions (ignored).
fn parse_chunk_size(line: &[u8]) -> Result<u64, BadChunk> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(BadChunk("no chunk size"));
    }
    if digits > 15 {
        return Err(BadChunk("chunk size too large"));
    }
    let rest = &line[digits..];
    let rest = trim(rest);
    let rest_ok = rest.is_empty() || rest[0] == b';';
    if !rest_ok {
        return Err(BadChunk("bad chunk size"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        n * 16 + u64::from(d)
    }))
}
