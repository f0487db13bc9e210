//! Runs wrk (bounded by `-d`) pinned to one CPU and reads its `--latency` report.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// Load parameters, the same for every run.
#[derive(Debug, Clone)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
    /// The CPU wrk is pinned to.
    pub cpu: u32,
    pub headers: Vec<(&'static str, String)>,
}

impl Load {
    /// The command line, for the results file.
    pub fn describe(&self) -> String {
        format!(
            "taskset -c {} wrk -t{} -c{} -d{}s --latency {}",
            self.cpu,
            self.threads,
            self.connections,
            self.duration.as_secs(),
            self.headers
                .iter()
                .map(|(k, v)| format!("-H '{k}: {v}'"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

/// What one wrk run reported.
#[derive(Debug, Clone, Default)]
pub struct WrkReport {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx/3xx responses plus socket errors: any is a broken run.
    pub errors: u64,
}

/// Fails with the make target that installs wrk when it is missing.
pub fn ensure_installed() -> anyhow::Result<()> {
    let found = Command::new("wrk").arg("--version").output().is_ok();
    if !found {
        bail!("wrk not found on PATH: run `make setup` (installs the Debian package wrk)");
    }
    if Command::new("taskset").arg("--version").output().is_err() {
        bail!("taskset not found on PATH (Debian package util-linux)");
    }
    Ok(())
}

/// Runs wrk against `addr` and parses its report.
pub fn run(load: &Load, addr: SocketAddr) -> anyhow::Result<WrkReport> {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(load.cpu.to_string())
        .arg("wrk")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs()))
        .arg("--latency")
        .arg("--timeout")
        .arg("5s");
    for (k, v) in &load.headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg(format!("http://{addr}/"));
    let out = cmd.output().context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&stdout).with_context(|| format!("reading wrk's report:\n{stdout}"))
}

/// Parses wrk 4.x output (`--latency`).
pub fn parse(text: &str) -> anyhow::Result<WrkReport> {
    let mut r = WrkReport::default();
    let mut in_distribution = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some(v) = t.strip_prefix("50%") {
                r.p50_ms = duration_ms(v.trim())?;
                continue;
            }
            if let Some(v) = t.strip_prefix("99%") {
                r.p99_ms = duration_ms(v.trim())?;
                in_distribution = false;
                continue;
            }
        }
        if t.contains(" requests in ") {
            // "123456 requests in 8.00s, 12.34MB read"
            let mut words = t.split_whitespace();
            r.requests = words.next().context("request count")?.parse()?;
            let secs = t
                .split(" requests in ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .context("run duration")?;
            r.seconds = duration_ms(secs)? / 1000.0;
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.requests_per_second = v.trim().parse()?;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>()?;
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    r.errors += n.parse::<u64>()?;
                }
            }
        }
    }
    if r.requests == 0 || r.requests_per_second == 0.0 || r.p50_ms == 0.0 {
        bail!("no requests, rate or latency distribution in the report");
    }
    Ok(r)
}

/// `"1.23ms"`, `"812.00us"`, `"1.01s"`, `"8.00s"` in milliseconds.
fn duration_ms(v: &str) -> anyhow::Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unknown duration unit in {v:?}")
    };
    Ok(num.trim().parse::<f64>()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latency_report_is_read() {
        let text = "Running 8s test @ http://127.0.0.1:4000/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   262.21us  101.11us   5.02ms   91.00%
    Req/Sec    60.12k     2.01k   63.00k    80.00%
  Latency Distribution
     50%  241.00us
     75%  280.00us
     90%  330.00us
     99%    1.02ms
  478123 requests in 8.00s, 40.12MB read
  Non-2xx or 3xx responses: 2
Requests/sec:  59765.12
Transfer/sec:      5.01MB
";
        let r = parse(text).unwrap();
        assert_eq!(r.requests, 478_123);
        assert!((r.seconds - 8.0).abs() < 1e-9);
        assert!((r.requests_per_second - 59_765.12).abs() < 1e-6);
        assert!((r.p50_ms - 0.241).abs() < 1e-9);
        assert!((r.p99_ms - 1.02).abs() < 1e-9);
        assert_eq!(r.errors, 2);
    }
}
