//! A minimal blocking HTTP/1.1 client for the Ollama agent: one request per connection
//! (`Connection: close`), a body of `Content-Length`, chunked, or up to the end of the
//! connection, every read bounded by one deadline (a silent server is a timeout, never a
//! hang). `http://` over a plain `TcpStream`; `https://` over rustls (already a dependency
//! of the sidecar, blocking `StreamOwned`) with the bundled Mozilla roots.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The longest response head read.
const HEAD_MAX: usize = 64 * 1024;
/// The longest one connect attempt may take (within the deadline).
const CONNECT_MAX: Duration = Duration::from_secs(10);

/// Where requests go: `scheme://host:port/base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The path prefix, without a trailing `/` (empty for none).
    pub base: String,
}

impl Url {
    /// Parses `http://host:port[/base]`, `https://…`, or a bare `host:port` (taken as
    /// `http://`, as the hub gives Ollama endpoints).
    pub fn parse(text: &str) -> Result<Url, String> {
        let text = text.trim();
        let (tls, rest) = if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if text.contains("://") {
            return Err(format!("{text:?}: only http:// and https:// are supported"));
        } else {
            (false, text)
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!(
                "{text:?}: credentials in the URL are not supported"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            // [v6]:port
            let end = h
                .find(']')
                .ok_or_else(|| format!("{text:?}: bad IPv6 address"))?;
            let port = match &h[end + 1..] {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("{text:?}: bad port"))?,
            };
            (h[..end].to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("{text:?}: bad port"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        Ok(Url {
            tls,
            host,
            port,
            base: base.to_string(),
        })
    }

    /// `scheme://host:port/base`, for messages and the result.
    pub fn display(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}{}", self.host, self.port, self.base)
        } else {
            format!("{scheme}://{}:{}{}", self.host, self.port, self.base)
        }
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum Error {
    /// No connection could be made (refused, unreachable, unknown host).
    Connect(String),
    /// The deadline passed.
    Timeout,
    /// The connection failed after it was made (reset, closed early, not HTTP).
    Io(String),
}

/// A response whose body is still to be read.
pub struct Response {
    pub status: u16,
    pub body: Box<dyn BufRead + Send>,
}

impl Response {
    /// The rest of the body as text, at most `max` bytes.
    pub fn text(mut self, max: u64) -> Result<String, Error> {
        let mut bytes = Vec::new();
        (&mut self.body)
            .take(max)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// A read or write error as an [`Error`].
pub fn io_error(e: io::Error) -> Error {
    if matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        Error::Timeout
    } else {
        Error::Io(e.to_string())
    }
}

/// A stream whose every read and write must end before the deadline.
struct Deadline {
    stream: TcpStream,
    deadline: Instant,
}

impl Deadline {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
        } else {
            Ok(left)
        }
    }
}

fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
    } else {
        e
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf).map_err(timed_out)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

fn connect(url: &Url, deadline: Instant) -> Result<TcpStream, Error> {
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| Error::Connect(format!("{}: {e}", url.host)))?
        .collect();
    let mut last = Error::Connect(format!("{}: no address", url.host));
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout);
        }
        match TcpStream::connect_timeout(&addr, left.min(CONNECT_MAX)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut && Instant::now() >= deadline => {
                return Err(Error::Timeout)
            }
            Err(e) => last = Error::Connect(format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// Sends one request and reads the response head; the body is read through the response.
pub fn request(
    url: &Url,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    deadline: Instant,
) -> Result<Response, Error> {
    let stream = Deadline {
        stream: connect(url, deadline)?,
        deadline,
    };
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: agentcom-sidecar/{}\r\nAccept: application/x-ndjson, application/json\r\nConnection: close\r\n",
        url.base,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
    );
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut conn: Box<dyn ReadWrite> = if url.tls {
        let config = crate::tls::client_config(None).map_err(Error::Connect)?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| Error::Connect(format!("{}: {e}", url.host)))?;
        let tls = rustls::ClientConnection::new(config, name)
            .map_err(|e| Error::Connect(e.to_string()))?;
        Box::new(rustls::StreamOwned::new(tls, stream))
    } else {
        Box::new(stream)
    };
    let mut out = head.into_bytes();
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    conn.write_all(&out).map_err(io_error)?;
    conn.flush().map_err(io_error)?;
    let mut reader = BufReader::new(conn);
    let (status, framing) = read_head(&mut reader)?;
    let body: Box<dyn BufRead + Send> = match framing {
        Framing::Chunked => Box::new(BufReader::new(Chunked {
            inner: reader,
            left: 0,
            done: false,
        })),
        Framing::Length(n) => Box::new(BufReader::new(Exact {
            inner: reader.take(n),
            left: n,
        })),
        Framing::Close => Box::new(reader),
    };
    Ok(Response { status, body })
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

enum Framing {
    Chunked,
    Length(u64),
    Close,
}

fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> Result<String, Error> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(*budget as u64)
        .read_until(b'\n', &mut line)
        .map_err(io_error)?;
    if n == 0 {
        return Err(Error::Io("the connection closed before a response".into()));
    }
    if line.last() != Some(&b'\n') {
        return Err(Error::Io("the response head is cut or too long".into()));
    }
    *budget = budget.saturating_sub(n);
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

fn read_head(reader: &mut impl BufRead) -> Result<(u16, Framing), Error> {
    let mut budget = HEAD_MAX;
    let mut status_line = read_line(reader, &mut budget)?;
    // A 100 Continue (not asked for, but harmless) is followed by the real head.
    loop {
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .filter(|_| status_line.starts_with("HTTP/1."))
            .ok_or_else(|| Error::Io(format!("not an HTTP response: {status_line:?}")))?;
        let mut framing = Framing::Close;
        loop {
            let line = read_line(reader, &mut budget)?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
                framing = Framing::Chunked;
            } else if name == "content-length" && !matches!(framing, Framing::Chunked) {
                framing = Framing::Length(
                    value
                        .parse()
                        .map_err(|_| Error::Io(format!("bad Content-Length {value:?}")))?,
                );
            }
        }
        if status == 100 {
            status_line = read_line(reader, &mut budget)?;
            continue;
        }
        return Ok((status, framing));
    }
}

/// A chunked body: the end of the connection before the last chunk is an error.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection closed in the middle of the response",
    )
}

impl<R: BufRead> Chunked<R> {
    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        (&mut self.inner).take(4096).read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            return Err(cut());
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {size:?}"),
                )
            })?;
            if self.left == 0 {
                // Trailers, up to the empty line.
                while !self.line()?.is_empty() {}
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(cut());
        }
        self.left -= n as u64;
        if self.left == 0 {
            // The CRLF after the chunk's data.
            if !self.line()?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk longer than its size",
                ));
            }
        }
        Ok(n)
    }
}

/// A body of known length: the end of the connection before it is an error.
struct Exact<R> {
    inner: io::Take<R>,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(cut());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("127.0.0.1:11434").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (false, "127.0.0.1", 11434)
        );
        let u = Url::parse("https://ollama.example/api/").unwrap();
        assert_eq!((u.tls, u.port, u.base.as_str()), (true, 443, "/api"));
        let u = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        assert_eq!(u.display(), "http://[::1]:8080");
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://user:pw@x").is_err());
        assert!(Url::parse("localhost").is_ok());
    }

    #[test]
    fn chunked_bodies() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut r = Chunked {
            inner: &body[..],
            left: 0,
            done: false,
        };
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
        let cut_body = b"5\r\nhello\r\n6\r\n wo";
        let mut r = Chunked {
            inner: &cut_body[..],
            left: 0,
            done: false,
        };
        let mut s = String::new();
        assert_eq!(
            r.read_to_string(&mut s).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
