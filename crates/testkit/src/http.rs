//! Hand-written HTTP/1.1 on a raw `TcpStream`: request parsing with `httparse`, response framing.
//!
//! The mock does not use hyper or axum because its job includes misbehaving on purpose: resetting
//! a connection before any byte (which needs `SO_LINGER` 0 on the socket), cutting a chunked body
//! without its terminating chunk, or stalling mid-stream. A well-behaved server library hides the
//! socket and always frames bodies correctly, so it cannot do these. Owning the socket and every
//! byte written also makes the mock cheap enough for benchmarks.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests with more header lines than this are rejected (connection closed).
const MAX_HEADERS: usize = 100;
/// Bound on the request line plus headers.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bound on a request body.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// One parsed request with its whole body.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// The request target: path and query string.
    pub target: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

impl Request {
    /// The path without the query string.
    pub(crate) fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(path, _)| path)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One accepted connection with its read buffer (which may hold the start of the next request).
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self { stream, buf: BytesMut::with_capacity(8 * 1024) }
    }

    /// Reads the next request. `Ok(None)` is a clean close between requests; any malformed
    /// input is an `InvalidData` error, on which the caller closes the connection.
    pub(crate) async fn read_request(&mut self) -> io::Result<Option<Request>> {
        let Some(mut request) = self.read_head().await? else {
            return Ok(None);
        };
        let expects_continue = request.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let chunked =
            request.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().trim_end().ends_with("chunked"));
        let length = match request.header("content-length") {
            Some(v) if !chunked => v.trim().parse::<usize>().map_err(|_| invalid("bad content-length"))?,
            _ => 0,
        };
        if expects_continue && (chunked || length > 0) {
            self.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        request.body = if chunked { self.read_chunked().await? } else { self.read_exact_body(length).await? };
        Ok(Some(request))
    }

    async fn read_head(&mut self) -> io::Result<Option<Request>> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Request::new(&mut headers);
                let status = parsed.parse(&self.buf).map_err(invalid)?;
                if let httparse::Status::Complete(len) = status {
                    let request = owned_request(&parsed);
                    self.buf.advance(len);
                    return Ok(Some(request));
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Err(invalid("request head too large"));
                }
            }
            if self.fill().await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    async fn read_exact_body(&mut self, length: usize) -> io::Result<Vec<u8>> {
        if length > MAX_BODY_BYTES {
            return Err(invalid("request body too large"));
        }
        self.fill_to(length).await?;
        Ok(self.buf.split_to(length).to_vec())
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let (consumed, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) => self.fill_or_eof().await?,
                    Err(_) => return Err(invalid("bad chunk size")),
                }
            };
            self.buf.advance(consumed);
            let size = usize::try_from(size).map_err(invalid)?;
            if size == 0 {
                self.skip_trailers().await?;
                return Ok(body);
            }
            if body.len().saturating_add(size) > MAX_BODY_BYTES {
                return Err(invalid("request body too large"));
            }
            self.fill_to(size + 2).await?;
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(invalid("chunk not followed by CRLF"));
            }
            self.buf.advance(size + 2);
        }
    }

    async fn skip_trailers(&mut self) -> io::Result<()> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(&self.buf, &mut headers).map_err(invalid)? {
                httparse::Status::Complete((len, _)) => {
                    self.buf.advance(len);
                    return Ok(());
                }
                httparse::Status::Partial => self.fill_or_eof().await?,
            }
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(8 * 1024);
        self.stream.read_buf(&mut self.buf).await
    }

    async fn fill_or_eof(&mut self) -> io::Result<()> {
        match self.fill().await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }

    async fn fill_to(&mut self, len: usize) -> io::Result<()> {
        while self.buf.len() < len {
            self.fill_or_eof().await?;
        }
        Ok(())
    }

    /// Writes bytes straight to the socket (no buffering, and `TCP_NODELAY` is set on accept),
    /// so each call leaves the machine as it is written.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Closes with a TCP RST instead of a FIN.
    pub(crate) fn reset(self) {
        if let Err(error) = self.stream.set_zero_linger() {
            tracing::debug!(%error, "could not set SO_LINGER 0");
        }
    }

    /// Keeps the connection open, discarding whatever arrives, until the client goes away.
    pub(crate) async fn hold_until_closed(mut self) {
        let mut scratch = [0u8; 4096];
        while let Ok(1..) = self.stream.read(&mut scratch).await {}
    }
}

fn owned_request(parsed: &httparse::Request<'_, '_>) -> Request {
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let connection = headers.iter().find(|(n, _)| n == "connection").map(|(_, v)| v.to_ascii_lowercase());
    let has = |token: &str| connection.as_deref().is_some_and(|v| v.split(',').any(|t| t.trim() == token));
    let keep_alive = match parsed.version {
        Some(1) => !has("close"),
        _ => has("keep-alive"),
    };
    Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        target: parsed.path.unwrap_or_default().to_owned(),
        headers,
        body: Vec::new(),
        keep_alive,
    }
}

fn invalid(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Framing {
    Length(usize),
    Chunked,
}

/// The status line and headers of a response, ending with the blank line.
pub(crate) fn response_head(
    status: u16,
    content_type: &str,
    framing: Framing,
    extra: &[(String, String)],
    keep_alive: bool,
) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n", reason(status));
    match framing {
        Framing::Length(len) => {
            let _ = write!(head, "content-length: {len}\r\n");
        }
        Framing::Chunked => head.push_str("cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"),
    }
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// One chunk of a chunked body.
pub(crate) fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The terminating chunk of a chunked body (no trailers).
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Status",
    }
}
