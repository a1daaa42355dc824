//! The metrics endpoint: a small HTTP/1.1 server on the daemon's own event
//! loop. One request per connection (`Connection: close`), `GET` or `HEAD`
//! of `/metrics` only (404 elsewhere, 405 for other methods), the request
//! head bounded to [`MAX_REQUEST_BYTES`] (431 past it), a client that does
//! not send its request within [`READ_TIMEOUT`] or read the answer within
//! [`WRITE_TIMEOUT`] is dropped, and at most [`MAX_CLIENTS`] connections are
//! served at once (more are closed at once): no client can block the daemon
//! or make it hold much memory.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::Format;

/// The longest request head (request line and headers) read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 16;
/// The one path served.
pub const PATH: &str = "/metrics";

/// Renders the metrics in a format into a buffer (its text replaced, its
/// room kept), or says why it cannot (a 500); runs on the daemon's loop, so
/// it must be quick.
pub type Render = Arc<dyn Fn(Format, String) -> Result<String, String> + Send + Sync>;

/// Bodies kept for the next scrapes: their pages stay mapped, where a fresh
/// megabyte (1 000 classes) costs page faults on every scrape.
const SPARE_BODIES: usize = 2;
/// A body larger than this is not kept.
const SPARE_MAX_BYTES: usize = 32 * 1024 * 1024;

/// The buffers of finished answers, taken by the next scrapes.
#[derive(Clone, Default)]
struct Spares(Arc<std::sync::Mutex<Vec<String>>>);

impl Spares {
    fn take(&self) -> String {
        self.0.lock().ok().and_then(|mut spare| spare.pop()).unwrap_or_default()
    }

    fn give(&self, body: String) {
        if let (Ok(mut spare), true) = (self.0.lock(), body.capacity() <= SPARE_MAX_BYTES) {
            if spare.len() < SPARE_BODIES {
                spare.push(body);
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// `HEAD`: the headers without the body.
    pub head_only: bool,
    pub format: Format,
}

/// A refused request: the status line's code and reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
}

const BAD_REQUEST: Refusal = Refusal { code: 400, reason: "Bad Request" };
const NOT_FOUND: Refusal = Refusal { code: 404, reason: "Not Found" };
const NOT_ALLOWED: Refusal = Refusal { code: 405, reason: "Method Not Allowed" };
const TIMEOUT: Refusal = Refusal { code: 408, reason: "Request Timeout" };
const TOO_LARGE: Refusal = Refusal { code: 431, reason: "Request Header Fields Too Large" };

/// The listening endpoint.
pub struct Server {
    listener: TcpListener,
}

impl Server {
    /// Binds `addr` (needs a tokio runtime).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self { listener: TcpListener::bind(addr).await? })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes until the task is dropped.
    pub async fn serve(self, render: Render) {
        let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
        let spares = Spares::default();
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    // Over the limit: the connection is closed unanswered.
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue };
                    let (render, spares) = (Arc::clone(&render), spares.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve_client(stream, render, spares).await {
                            log::debug!("metrics client {peer}: {e}");
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    log::warn!("metrics endpoint accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn serve_client(mut stream: TcpStream, render: Render, spares: Spares) -> io::Result<()> {
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => refusal(&TIMEOUT),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => return Ok(()), // closed before a request
        Ok(Ok(Some(Err(refused)))) => refusal(&refused),
        Ok(Ok(Some(Ok(head)))) => match parse(&head) {
            Ok(request) => match render(request.format, spares.take()) {
                Ok(body) => Answer {
                    head: head_of(200, "OK", request.format.content_type(), body.len()),
                    body,
                    head_only: request.head_only,
                },
                Err(why) => {
                    log::warn!("metrics: {why}");
                    let body = format!("500 Internal Server Error: {why}\n");
                    let head = head_of(500, "Internal Server Error", "text/plain; charset=utf-8", body.len());
                    Answer { head, body, head_only: false }
                }
            },
            Err(refused) => refusal(&refused),
        },
    };
    let write = async {
        stream.write_all(answer.head.as_bytes()).await?;
        if !answer.head_only {
            stream.write_all(answer.body.as_bytes()).await?;
        }
        stream.shutdown().await
    };
    let written = tokio::time::timeout(WRITE_TIMEOUT, write).await;
    spares.give(answer.body);
    match written {
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the client did not read the answer")),
        Ok(result) => result,
    }
}

/// A response: its head, and its body (written as it is, not copied).
struct Answer {
    head: String,
    body: String,
    /// `HEAD`: the body's length is in the head, the body is not sent.
    head_only: bool,
}

/// Reads up to the end of the request head: `None` when the client closed
/// before sending anything; 431 past [`MAX_REQUEST_BYTES`].
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Result<Vec<u8>, Refusal>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok((!head.is_empty()).then_some(Err(BAD_REQUEST)));
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(Some(Ok(head)));
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Ok(Some(Err(TOO_LARGE)));
        }
    }
}

/// Where the head ends (after its blank line, `\r\n\r\n` or a bare `\n\n`).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The request in a head: method, path, version and the `Accept` headers.
pub fn parse(head: &[u8]) -> Result<Request, Refusal> {
    let text = std::str::from_utf8(head).map_err(|_| BAD_REQUEST)?;
    let mut lines = text.lines();
    let mut words = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(BAD_REQUEST);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(BAD_REQUEST);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(NOT_ALLOWED),
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != PATH {
        return Err(NOT_FOUND);
    }
    let accept: Vec<&str> = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, value)| value.trim())
        .collect();
    let accept = (!accept.is_empty()).then(|| accept.join(","));
    Ok(Request { head_only, format: Format::negotiate(accept.as_deref()) })
}

fn refusal(refused: &Refusal) -> Answer {
    let body = format!("{} {}\n", refused.code, refused.reason);
    let head = head_of(refused.code, refused.reason, "text/plain; charset=utf-8", body.len());
    Answer { head, body, head_only: false }
}

/// A response's head for a body of `length` bytes, with `Connection: close`.
fn head_of(code: u16, reason: &str, content_type: &str, length: usize) -> String {
    let allow = if code == NOT_ALLOWED.code { "Allow: GET, HEAD\r\n" } else { "" };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n{allow}Connection: close\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> Result<Request, Refusal> {
        parse(head.as_bytes())
    }

    #[test]
    fn only_get_and_head_of_metrics_are_served() {
        let get = parsed("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(get, Request { head_only: false, format: Format::Text });
        assert!(parsed("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n").unwrap().head_only);
        assert_eq!(parsed("GET / HTTP/1.1\r\n\r\n").unwrap_err().code, 404);
        assert_eq!(parsed("GET /metricsx HTTP/1.1\r\n\r\n").unwrap_err().code, 404);
        assert_eq!(parsed("POST /metrics HTTP/1.1\r\n\r\n").unwrap_err().code, 405);
        assert_eq!(parsed("GET /metrics\r\n\r\n").unwrap_err().code, 400);
        assert_eq!(parsed("GET /metrics SPDY/3\r\n\r\n").unwrap_err().code, 400);
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nX: \xff\r\n\r\n").unwrap_err().code, 400);
    }

    #[test]
    fn the_accept_header_picks_the_format() {
        let with =
            |accept: &str| parsed(&format!("GET /metrics HTTP/1.1\r\naccept: {accept}\r\n\r\n")).unwrap();
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(with(prometheus).format, Format::OpenMetrics);
        assert_eq!(with("application/openmetrics-text").format, Format::OpenMetrics);
        assert_eq!(
            with("text/plain;version=0.0.4;q=1, application/openmetrics-text;q=0.5").format,
            Format::Text
        );
        assert_eq!(with("application/openmetrics-text; version=0.0.1").format, Format::Text);
        assert_eq!(with("application/openmetrics-text;q=0").format, Format::Text);
        assert_eq!(with("*/*").format, Format::Text);
        assert_eq!(parsed("GET /metrics HTTP/1.1\r\n\r\n").unwrap().format, Format::Text);
    }

    #[test]
    fn spare_bodies_are_few_and_bounded() {
        let spares = Spares::default();
        assert_eq!(spares.take().capacity(), 0, "none yet");
        for room in [10, 20, 30, SPARE_MAX_BYTES + 1] {
            spares.give(String::with_capacity(room));
        }
        let mut kept: Vec<usize> = (0..4).map(|_| spares.take().capacity()).collect();
        kept.sort_unstable();
        assert_eq!(kept.iter().filter(|c| **c > 0).count(), SPARE_BODIES, "{kept:?}");
        assert!(kept.iter().all(|c| *c < SPARE_MAX_BYTES), "{kept:?}");
    }

    #[test]
    fn the_head_ends_at_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn responses_say_their_length_and_close() {
        assert_eq!(
            head_of(200, "OK", Format::Text.content_type(), 4),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\n"
        );
        let refused = refusal(&NOT_ALLOWED);
        assert!(refused.head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{}", refused.head);
        assert!(refused.head.contains("\r\nAllow: GET, HEAD\r\n"), "{}", refused.head);
        assert!(refused.head.contains(&format!("\r\nContent-Length: {}\r\n", refused.body.len())));
        assert_eq!(refused.body, "405 Method Not Allowed\n");
    }
}
