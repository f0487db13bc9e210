//! The split the filter actually made, from an Envoy admin endpoint's counters
//! `wasmcustom.wasmcanary.decision.<service>.<subset>.<reason>` (`/stats?format=json`).
//!
//! The admin endpoint is reached with a plain HTTP/1.1 GET (it is loopback or a
//! `kubectl port-forward`): no TLS, no redirects, bounded by a timeout.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use canary_core::decision::{Reason, Subset};
use canary_core::metrics::{stat_safe, PREFIX};
use serde_json::Value;

/// Why the filter's counters could not be read from an Envoy admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyAdminError {
    /// Not an `http://host:port` URL.
    #[error("--envoy-admin {0}: give an http:// URL, e.g. http://127.0.0.1:15000 after `kubectl port-forward POD 15000`")]
    NotHttp(String),
    /// The host does not resolve.
    #[error("resolving {authority}: {source}")]
    Resolve {
        /// `host:port`.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host resolves to nothing.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// Connecting, writing or reading failed.
    #[error("{action} Envoy admin {url}: {source}; is `kubectl port-forward POD 15000` running?")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The admin URL.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not an HTTP 200 with a JSON body.
    #[error("Envoy admin {url}/stats: {problem}")]
    Answer {
        /// The admin URL.
        url: String,
        /// What is wrong with the answer.
        problem: String,
    },
    /// The blocking read was cancelled.
    #[error("reading Envoy stats: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Decision counts of one service, as the filter counted them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedSplit {
    /// `[subset][reason]` counts, in [`Subset::ALL`] x [`Reason::ALL`] order.
    pub counts: [[u64; 3]; 2],
}

impl ObservedSplit {
    /// Requests decided for a subset, any reason.
    pub fn subset_total(&self, subset: Subset) -> u64 {
        self.counts[subset_index(subset)].iter().sum()
    }

    /// Every decided request.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Requests decided for any subset because of `reason`.
    pub fn reason_total(&self, reason: Reason) -> u64 {
        self.counts.iter().map(|r| r[reason_index(reason)]).sum()
    }

    /// Counts accumulated since `earlier` (counters only grow; a restart resets them).
    pub fn since(&self, earlier: &ObservedSplit) -> ObservedSplit {
        let mut d = self.clone();
        for (row, old) in d.counts.iter_mut().zip(earlier.counts.iter()) {
            for (c, o) in row.iter_mut().zip(old.iter()) {
                *c = c.saturating_sub(*o);
            }
        }
        d
    }
}

fn subset_index(s: Subset) -> usize {
    Subset::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

fn reason_index(r: Reason) -> usize {
    Reason::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

/// The counter prefix of a service (`<namespace>/<service>` as the controller names it).
pub fn counter_prefix(namespace: &str, service: &str) -> String {
    format!(
        "wasmcustom.{PREFIX}.decision.{}.",
        stat_safe(&format!("{namespace}/{service}"))
    )
}

/// Reads one service's counts out of a `/stats?format=json` body. `None` when the filter has
/// not counted any decision for it (no counter present).
pub fn split_from_stats(body: &Value, namespace: &str, service: &str) -> Option<ObservedSplit> {
    let prefix = counter_prefix(namespace, service);
    let mut split = ObservedSplit::default();
    let mut found = false;
    for stat in body["stats"].as_array().into_iter().flatten() {
        let (Some(name), Some(value)) = (stat["name"].as_str(), stat["value"].as_u64()) else {
            continue;
        };
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some((subset, reason)) = rest.split_once('.') else {
            continue;
        };
        let (Some(s), Some(r)) = (
            Subset::ALL.iter().position(|x| x.as_str() == subset),
            Reason::ALL.iter().position(|x| x.as_str() == reason),
        ) else {
            continue;
        };
        if let Some(cell) = split.counts.get_mut(s).and_then(|row| row.get_mut(r)) {
            *cell = value;
            found = true;
        }
    }
    found.then_some(split)
}

/// Fetches `/stats?format=json` (only the filter's counters) from an admin URL
/// `http://host:port`.
pub fn fetch_stats(admin_url: &str, timeout: Duration) -> Result<Value, EnvoyAdminError> {
    let rest = admin_url
        .strip_prefix("http://")
        .ok_or_else(|| EnvoyAdminError::NotHttp(admin_url.to_owned()))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr = authority
        .to_socket_addrs()
        .map_err(|source| EnvoyAdminError::Resolve {
            authority: authority.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| EnvoyAdminError::NoAddress(authority.to_owned()))?;
    let io = |action: &'static str| {
        move |source| EnvoyAdminError::Io {
            action,
            url: admin_url.to_owned(),
            source,
        }
    };
    let answer = |problem: String| EnvoyAdminError::Answer {
        url: admin_url.to_owned(),
        problem,
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io("connecting to"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io("connecting to"))?;
    // One write: a request split over several segments confuses minimal servers.
    let request = format!(
        "GET /stats?format=json&filter=wasmcanary HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(io("writing to"))?;
    let mut raw = Vec::new();
    stream
        .take(64 << 20)
        .read_to_end(&mut raw)
        .map_err(io("reading from"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| answer("no HTTP response".into()))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(answer(format!("answered {status:?}")));
    }
    let body = if head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    }) {
        dechunk(body).map_err(|e| answer(e.into()))?
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).map_err(|e| answer(format!("not JSON: {e}")))
}

/// The split the filter behind `admin_url` made for `service` in `namespace`, read without
/// blocking the caller's thread (3 s timeout). `None`: no decision counted yet.
pub async fn read_split(
    admin_url: &str,
    namespace: &str,
    service: &str,
) -> Result<Option<ObservedSplit>, EnvoyAdminError> {
    let url = admin_url.trim_end_matches('/').to_owned();
    let body = tokio::task::spawn_blocking(move || fetch_stats(&url, Duration::from_secs(3)))
        .await
        .map_err(EnvoyAdminError::Task)??;
    Ok(split_from_stats(&body, namespace, service))
}

fn dechunk(mut body: &str) -> Result<String, &'static str> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("bad chunked encoding")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..n).ok_or("truncated chunk")?;
        out.push_str(chunk);
        body = rest.get(n..).unwrap_or("").trim_start_matches("\r\n");
    }
}
