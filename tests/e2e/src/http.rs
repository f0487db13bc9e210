//! A minimal HTTP/1.1 keep-alive client (Content-Length and chunked bodies), enough to drive
//! Envoy from tests without pulling an async stack, and with full control of `Host`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names; a repeated header keeps its last value.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One keep-alive connection to `addr`. Reconnects transparently if the server closed it.
pub struct Client {
    addr: SocketAddr,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    fn connect(&mut self) -> anyhow::Result<&mut (TcpStream, BufReader<TcpStream>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .with_context(|| format!("connecting to {}", self.addr))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let r = BufReader::new(s.try_clone()?);
            self.conn = Some((s, r));
        }
        self.conn.as_mut().context("connection")
    }

    /// GET `path` with `Host: host` and extra headers.
    pub fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n").into_bytes();
        for (k, v) in headers {
            req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        self.send(&req)
    }

    /// GET with header values given as raw bytes (e.g. not UTF-8), as a hostile client might.
    pub fn get_raw(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> anyhow::Result<Response> {
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n").into_bytes();
        for (k, v) in headers {
            req.extend_from_slice(k.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        self.send(&req)
    }

    fn send(&mut self, req: &[u8]) -> anyhow::Result<Response> {
        // One retry, and only on a reused keep-alive connection (the server may have closed it
        // between requests, as HTTP clients allow for): a failure on a fresh connection is the
        // request's, and is returned, so tests counting failed requests see it.
        let reused = self.conn.is_some();
        match self.round_trip(req) {
            Ok(r) => Ok(r),
            Err(_) if reused => {
                self.conn = None;
                self.round_trip(req)
            }
            Err(e) => Err(e),
        }
    }

    fn round_trip(&mut self, req: &[u8]) -> anyhow::Result<Response> {
        let (w, r) = self.connect()?;
        w.write_all(req)?;
        let resp = read_response(r);
        if let Ok(resp) = &resp {
            if resp
                .header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
            {
                self.conn = None;
            }
        } else {
            self.conn = None;
        }
        resp
    }
}

fn read_response(r: &mut BufReader<TcpStream>) -> anyhow::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed before a response");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .context("status line")?
        .parse()?;
    let mut headers = HashMap::new();
    loop {
        let mut raw = Vec::new();
        r.read_until(b'\n', &mut raw)?;
        let h = String::from_utf8_lossy(&raw);
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let body = if let Some(len) = headers.get("content-length") {
        let mut body = vec![0; len.parse()?];
        r.read_exact(&mut body)?;
        body
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            body.extend(chunk);
        }
        body
    } else {
        Vec::new()
    };
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Plain GET on the admin interface (no keep-alive needed).
pub fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    Client::new(addr).get("admin", path, &[("connection", "close")])
}

/// Result of a bounded load run.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub sent: u64,
    /// By `x-app-version` of the response (which version served it).
    pub by_version: HashMap<String, u64>,
    /// By status code.
    pub by_status: HashMap<u16, u64>,
    pub errors: u64,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn version(&self, v: &str) -> u64 {
        self.by_version.get(v).copied().unwrap_or(0)
    }
    pub fn non_2xx(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.errors
    }
    pub fn merge(&mut self, other: &LoadReport) {
        self.sent += other.sent;
        self.errors += other.errors;
        for (k, v) in &other.by_version {
            *self.by_version.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.by_status {
            *self.by_status.entry(*k).or_default() += v;
        }
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// Sends `requests` GETs over `connections` keep-alive connections (bounded in count and time:
/// stops at `deadline` whatever is left). `headers_for(i)` gives request i's extra headers.
pub fn run_load(
    addr: SocketAddr,
    host: &str,
    requests: u64,
    connections: u64,
    deadline: Duration,
    headers_for: impl Fn(u64) -> Vec<(String, String)> + Sync,
) -> LoadReport {
    let start = Instant::now();
    let per = requests.div_ceil(connections.max(1));
    let headers_for = &headers_for;
    let reports: Vec<LoadReport> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                s.spawn(move || {
                    let mut client = Client::new(addr);
                    let mut rep = LoadReport::default();
                    for i in (c * per)..((c + 1) * per).min(requests) {
                        if start.elapsed() > deadline {
                            break;
                        }
                        let hs = headers_for(i);
                        let hs: Vec<(&str, &str)> =
                            hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        rep.sent += 1;
                        match client.get(host, "/", &hs) {
                            Ok(r) => {
                                *rep.by_status.entry(r.status).or_default() += 1;
                                let v = r.header("x-app-version").unwrap_or("none").to_owned();
                                *rep.by_version.entry(v).or_default() += 1;
                            }
                            Err(_) => rep.errors += 1,
                        }
                    }
                    rep
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut total = LoadReport::default();
    for r in &reports {
        total.merge(r);
    }
    total.elapsed = start.elapsed();
    total
}
