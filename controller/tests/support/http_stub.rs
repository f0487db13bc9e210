//! A local HTTP/1.1 server standing in for a metric provider (a web endpoint, Prometheus,
//! SkyWalking's GraphQL): binds 127.0.0.1 on a port the OS picks, records every request
//! (method, target, headers, body) and answers what the test's function says. Dropping it stops
//! the server and every connection it holds.

#![allow(clippy::panic, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// One request as the server read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target: path and query, as sent.
    pub target: String,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The value of header `name` (any case), if sent once or more (the first).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The query parameter `name`, percent-decoded (`+` is a space, as in a form).
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the server does with a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Answers with this status and body (`content-type: application/json`).
    Json(u16, String),
    /// Reads the request and never answers (until the stub is dropped): a provider that hangs.
    Silence,
    /// Answers as the inner reply after this long: a slow provider.
    Delayed(std::time::Duration, Box<Reply>),
}

impl Reply {
    /// 200 with `body` as JSON.
    pub fn ok(body: &serde_json::Value) -> Reply {
        Reply::Json(200, body.to_string())
    }
}

/// The server. See the module documentation.
pub struct HttpStub {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    task: JoinHandle<()>,
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        // The accept loop owns the connections' JoinSet: aborting it ends them all.
        self.task.abort();
    }
}

impl HttpStub {
    /// Starts a server answering each request with `answer(request)`.
    pub async fn start(
        answer: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> HttpStub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((sock, _)) = listener.accept().await {
                connections.spawn(serve(sock, recorded.clone(), answer.clone()));
                // Reap finished connections so the set stays small.
                while connections.try_join_next().is_some() {}
            }
        });
        HttpStub {
            url,
            requests,
            task,
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve<F>(mut sock: TcpStream, recorded: Arc<Mutex<Vec<RecordedRequest>>>, answer: Arc<F>)
where
    F: Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
{
    // Keep-alive: one connection may carry several requests.
    while let Some(request) = read_request(&mut sock).await {
        recorded.lock().unwrap().push(request.clone());
        let mut reply = answer(&request);
        while let Reply::Delayed(delay, inner) = reply {
            tokio::time::sleep(delay).await;
            reply = *inner;
        }
        match reply {
            Reply::Json(status, body) => {
                let response = format!(
                    "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    reason(status),
                    body.len()
                );
                if sock.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                // A client that asked to close reads until the connection ends (Envoy's
                // admin endpoint closes it, and `kubectl canary`'s reader relies on that).
                if request
                    .header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                {
                    return;
                }
            }
            Reply::Silence | Reply::Delayed(..) => {
                // Holds the connection open; the stub's Drop ends this task.
                std::future::pending::<()>().await;
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Reads one request (head and a `content-length` body); `None` when the peer closes or
/// sends nothing for 10 s.
async fn read_request(sock: &mut TcpStream) -> Option<RecordedRequest> {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        read_more(sock, &mut buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < end + 4 + len {
        read_more(sock, &mut buf).await?;
    }
    Some(RecordedRequest {
        method,
        target,
        headers,
        body: buf[end + 4..end + 4 + len].to_vec(),
    })
}

/// Appends what the peer sends next; `None` when it closes or is silent for 10 s.
async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
        _ => None,
    }
}

/// Decodes `%XX` escapes and `+` (a space in a query).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| b == b'%')
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b, escaped) {
            (_, Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (other, None) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
