//! The tests' one HTTP/1.1 client: a request on a fresh connection (`Connection: close`), the
//! answer read by its `Content-Length` (chromedriver keeps connections open despite the
//! `close`), or to the end without one. Enough for simpool's control API, osmo-remsim's REST
//! API and WebDriver; no TLS, no chunked bodies.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Longest wait for any answer: a hung server fails its test instead of hanging it.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Status line and headers, without the blank line.
    pub head: String,
    pub body: String,
}

impl Response {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }

    /// The body as JSON; panics naming the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.body))
    }
}

/// One request. A body goes with `Content-Type: application/json` (what simpool's API and
/// osmo-remsim's REST API expect). `Err` when nothing answers or the connection ends before a
/// whole head arrived.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    } else {
        req.push_str("Content-Length: 0\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    // A server may answer (413, 408) and close before it has read a big body: the write then
    // fails, and its answer is still worth reading.
    let written = s.write_all(req.as_bytes());
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut buf) {
            Ok(0) => {
                written?;
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => {
                written?;
                return Err(e);
            }
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut body = raw[head_end + 4..].to_vec();
    match header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) => {
            while body.len() < len {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                }
            }
        }
        None => {
            let _ = s.read_to_end(&mut body);
        }
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(Response {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// [`request`] as (status, head, body); status 0 when nothing answered.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    match request(addr, method, path, headers, body) {
        Ok(r) => (r.status, r.head, r.body),
        Err(_) => (0, String::new(), String::new()),
    }
}

/// [`request`] without extra headers, as (status, body); status 0 when nothing answered.
pub fn call(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let (status, _, body) = http(addr, method, path, &[], body);
    (status, body)
}

/// `GET path` answered 200 with JSON; panics otherwise, naming what came.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let r = request(addr, "GET", path, &[], None)
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.json()
}

/// The value of header `name` in a response head (case-insensitive).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
