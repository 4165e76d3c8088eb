//! A small HTTP/1.1 client: one request per connection that reads until the server closes
//! ([`http()`], what the tests use), or a keep-alive connection that reads by `Content-Length` or
//! chunked framing ([`HttpConn`], what the bench uses). `Host: localhost` unless given.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::{KitError, WAIT, io};

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Resp {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The request head: method, path, `Host` (unless among `headers`), the header lines,
/// `Content-Length` when there is a body (or the method usually has one).
fn request_head(method: &str, path: &str, headers: &[String], body: &[u8]) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    let has_host = headers.iter().any(|h| {
        h.split(':')
            .next()
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("host"))
    });
    if !has_host {
        req.push_str("Host: localhost\r\n");
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req
}

/// One request with `Connection: close`; the response is everything read until the server closes.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Resp, KitError> {
    let mut lines: Vec<String> = vec!["Connection: close".into()];
    lines.extend(headers.iter().map(|(k, v)| format!("{k}: {v}")));
    let body = body.unwrap_or(b"");
    let mut s = TcpStream::connect(addr).map_err(io(format!("connect {addr}")))?;
    s.set_read_timeout(Some(WAIT)).map_err(io("socket"))?;
    let mut req = request_head(method, path, &lines, body).into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).map_err(io(format!("{method} {path}")))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(io(format!("{method} {path}")))?;
    try_parse_response(&raw)
}

/// [`try_http`] for tests (panics).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    try_http(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{e}"))
}

/// Parse a whole HTTP/1.1 response (chunked, or the rest is the body); panics if it is not one.
pub fn parse_response(raw: &[u8]) -> Resp {
    try_parse_response(raw).unwrap_or_else(|e| panic!("{e}"))
}

fn try_parse_response(raw: &[u8]) -> Result<Resp, KitError> {
    let split = find(raw, b"\r\n\r\n").ok_or_else(|| KitError::Http("no header end".into()))?;
    let (status, headers) = parse_head(&raw[..split])?;
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

type Head = (u16, Vec<(String, String)>);

fn parse_head(head: &[u8]) -> Result<Head, KitError> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| KitError::Http(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok((status, headers))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, KitError> {
    let bad = || KitError::Http("bad chunked body".into());
    let mut out = Vec::new();
    while let Some(eol) = find(b, b"\r\n") {
        let size_field = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_field.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        if size == 0 {
            break;
        }
        let chunk = b.get(eol + 2..eol + 2 + size).ok_or_else(bad)?;
        out.extend_from_slice(chunk);
        b = b.get(eol + 2 + size + 2..).ok_or_else(bad)?;
    }
    Ok(out)
}

/// A keep-alive HTTP/1.1 client connection (answers framed by `Content-Length` or chunked).
#[derive(Debug)]
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    /// Connect (read timeout [`WAIT`], no Nagle delay).
    pub fn connect(addr: SocketAddr) -> Result<HttpConn, KitError> {
        let stream = TcpStream::connect(addr).map_err(io(format!("connect {addr}")))?;
        stream.set_read_timeout(Some(WAIT)).map_err(io("socket"))?;
        stream.set_nodelay(true).map_err(io("socket"))?;
        Ok(HttpConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// One request; `headers` are whole lines (`Name: value`) without CRLF.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[String],
        body: &[u8],
    ) -> Result<Resp, KitError> {
        let mut all = request_head(method, path, headers, body).into_bytes();
        all.extend_from_slice(body);
        self.stream
            .write_all(&all)
            .map_err(io(format!("{method} {path}")))?;
        self.read_response(method == "HEAD")
    }

    fn fill(&mut self) -> Result<(), KitError> {
        let mut tmp = [0u8; 16384];
        let n = self
            .stream
            .read(&mut tmp)
            .map_err(io("reading a response"))?;
        if n == 0 {
            return Err(KitError::Http("connection closed".into()));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    fn read_response(&mut self, head_only: bool) -> Result<Resp, KitError> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            self.fill()?;
        };
        let (status, headers) = parse_head(&self.buf[..head_end])?;
        self.buf.drain(..head_end + 4);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let no_body = head_only || status == 204 || status == 304 || status < 200;
        let mut body = Vec::new();
        if no_body {
        } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                self.fill()?;
            }
            body = self.buf.drain(..len).collect();
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let eol = loop {
                    if let Some(p) = find(&self.buf, b"\r\n") {
                        break p;
                    }
                    self.fill()?;
                };
                let size_line = String::from_utf8_lossy(&self.buf[..eol]).into_owned();
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| KitError::Http("bad chunk size".into()))?;
                self.buf.drain(..eol + 2);
                while self.buf.len() < size + 2 {
                    self.fill()?;
                }
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}
