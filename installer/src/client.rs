//! A small blocking HTTP/1.1 client for the leaf's installer API and image
//! downloads: one request per connection, bounded waits, retries with
//! back-off for calls that must get through.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest JSON answer read.
const MAX_JSON_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0}")]
    Url(String),
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: malformed response: {detail}")]
    Malformed { url: String, detail: String },
}

impl HttpError {
    /// Whether trying again may help (the peer was unreachable or failing),
    /// as opposed to a request it refused.
    pub fn is_transient(&self) -> bool {
        match self {
            HttpError::Io { .. } | HttpError::Malformed { .. } => true,
            HttpError::Status { status, .. } => *status >= 500,
            HttpError::Url(_) => false,
        }
    }
}

/// `http://host:port/path` split into its parts.
#[derive(Debug, Clone)]
struct Url {
    host: String,
    addr: SocketAddr,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(index) => (&rest[..index], &rest[index..]),
        None => (rest, "/"),
    };
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| HttpError::Url(url.to_string()))?;
    Ok(Url {
        host: authority.to_string(),
        addr,
        path: path.to_string(),
    })
}

/// A response whose body is still to be read.
pub struct Response {
    pub status: u16,
    pub content_length: Option<u64>,
    body: BufReader<TcpStream>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("content_length", &self.content_length)
            .finish()
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.body.read(buf)
    }
}

/// Sends one request and reads the status line and headers.
pub fn request(method: &str, url: &str, body: Option<&[u8]>) -> Result<Response, HttpError> {
    let parsed = parse_url(url)?;
    let io = |source| HttpError::Io {
        url: url.to_string(),
        source,
    };
    let stream = TcpStream::connect_timeout(&parsed.addr, CONNECT_TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: metalmesh-installer\r\n",
        parsed.path, parsed.host
    );
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut writer = &stream;
    writer.write_all(head.as_bytes()).map_err(io)?;
    if let Some(body) = body {
        writer.write_all(body).map_err(io)?;
    }
    let mut reader = BufReader::new(stream);
    let malformed = |detail: &str| HttpError::Malformed {
        url: url.to_string(),
        detail: detail.to_string(),
    };
    let mut line = String::new();
    read_line(&mut reader, &mut line).map_err(io)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| malformed("no status line"))?;
    let mut content_length = None;
    for _ in 0..100 {
        line.clear();
        read_line(&mut reader, &mut line).map_err(io)?;
        let header = line.trim_end();
        if header.is_empty() {
            return Ok(Response {
                status,
                content_length,
                body: reader,
            });
        }
        if let Some((name, value)) = header.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if name == "content-length" {
                content_length = value.trim().parse().ok();
            } else if name == "transfer-encoding" && !value.trim().eq_ignore_ascii_case("identity")
            {
                return Err(malformed("chunked responses are not supported"));
            }
        }
    }
    Err(malformed("too many headers"))
}

/// Reads one header line of at most 8 KiB.
fn read_line(reader: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<usize> {
    reader.by_ref().take(8192).read_line(line)
}

/// POSTs `body` as JSON and decodes the JSON answer.
pub fn post_json<B: Serialize, T: DeserializeOwned>(url: &str, body: &B) -> Result<T, HttpError> {
    let bytes = serde_json::to_vec(body).map_err(|e| HttpError::Malformed {
        url: url.to_string(),
        detail: e.to_string(),
    })?;
    let mut response = request("POST", url, Some(&bytes))?;
    let mut text = Vec::new();
    (&mut response)
        .take(MAX_JSON_BYTES as u64)
        .read_to_end(&mut text)
        .map_err(|source| HttpError::Io {
            url: url.to_string(),
            source,
        })?;
    if !(200..300).contains(&response.status) {
        return Err(HttpError::Status {
            url: url.to_string(),
            status: response.status,
            body: String::from_utf8_lossy(&text).chars().take(500).collect(),
        });
    }
    serde_json::from_slice(&text).map_err(|e| HttpError::Malformed {
        url: url.to_string(),
        detail: e.to_string(),
    })
}

/// [`post_json`], retried with back-off (1 s doubling to 5 s) while the
/// failure is transient, up to `attempts` times.
pub fn post_json_retrying<B: Serialize, T: DeserializeOwned>(
    url: &str,
    body: &B,
    attempts: u32,
) -> Result<T, HttpError> {
    let mut delay = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        match post_json(url, body) {
            Ok(answer) => return Ok(answer),
            Err(error) if error.is_transient() && attempt < attempts => {
                eprintln!("metalmesh-installer: {error}; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}
