//! An Envoy process owned by its creator: started on loopback with OS-picked ports, ready when
//! its admin `/ready` says LIVE, killed (and reaped) on drop, also when a test panics.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::http::admin_get;

pub struct Envoy {
    pub name: String,
    child: Child,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

/// Options for [`Envoy::start`].
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// `--log-level`.
    pub log_level: &'static str,
    /// Run pinned to this CPU (`taskset`), for benchmarks.
    pub cpu: Option<u32>,
    /// `--service-node` (the node id Envoy presents to its xDS server); default: the name.
    /// An Istio sidecar's must be `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    pub service_node: Option<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            log_level: "info",
            cpu: None,
            service_node: None,
        }
    }
}

impl Envoy {
    /// Starts Envoy with `config` (YAML/JSON bootstrap). The bootstrap's admin and listeners
    /// should bind `127.0.0.1` port 0; the chosen ports are read back from the admin API.
    /// `prepare` may write files (e.g. an ECDS resource) into the working folder first; the
    /// string `{dir}` in `config` is replaced by that folder's path.
    pub fn start(
        name: &str,
        config: &str,
        options: &EnvoyOptions,
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Envoy> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("envoy-{name}-"))
            .tempdir()?;
        prepare(dir.path())?;
        let config = config.replace("{dir}", &dir.path().display().to_string());
        let config_path = dir.path().join("bootstrap.yaml");
        fs::write(&config_path, config)?;
        let admin_path = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        let envoy = crate::envoy_binary()?;
        let mut cmd = match options.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&envoy);
                c
            }
            None => Command::new(&envoy),
        };
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--log-level")
            .arg(options.log_level)
            .arg("--log-path")
            .arg(&log)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--disable-hot-restart")
            .arg("--service-node")
            .arg(options.service_node.as_deref().unwrap_or(name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", envoy.display()))?;
        let mut envoy = Envoy {
            name: name.to_owned(),
            child,
            admin: "127.0.0.1:1".parse()?,
            dir,
            log,
        };
        envoy.wait_ready(&admin_path, Duration::from_secs(30))?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_path: &Path, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(5);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "envoy {} exited during start-up ({status}); log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "envoy {} not ready after {timeout:?}; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if let Ok(addr) = fs::read_to_string(admin_path) {
                if let Ok(addr) = addr.trim().parse() {
                    self.admin = addr;
                    if admin_get(addr, "/ready")
                        .is_ok_and(|r| r.status == 200 && r.body.trim() == "LIVE")
                    {
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(backoff); // polling interval, not a readiness assumption
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The bound address of listener `name` (its config said port 0).
    pub fn listener(&self, name: &str) -> anyhow::Result<SocketAddr> {
        let r = admin_get(self.admin, "/listeners?format=json")?;
        let v: serde_json::Value = serde_json::from_str(&r.body)?;
        for l in v["listener_statuses"]
            .as_array()
            .context("listener_statuses")?
        {
            if l["name"] == name {
                let sa = &l["local_address"]["socket_address"];
                let addr = format!(
                    "{}:{}",
                    sa["address"].as_str().unwrap_or("?"),
                    sa["port_value"]
                );
                return Ok(addr.parse()?);
            }
        }
        bail!("envoy {} has no listener {name}", self.name)
    }

    /// All counters and gauges whose name contains `filter`.
    pub fn stats(&self, filter: &str) -> anyhow::Result<HashMap<String, u64>> {
        let r = admin_get(self.admin, &format!("/stats?format=json&filter={filter}"))?;
        let v: serde_json::Value = serde_json::from_str(&r.body)?;
        let mut out = HashMap::new();
        for s in v["stats"].as_array().into_iter().flatten() {
            if let (Some(n), Some(val)) = (s["name"].as_str(), s["value"].as_u64()) {
                out.insert(n.to_owned(), val);
            }
        }
        Ok(out)
    }

    /// One stat's value (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats(name)
            .ok()
            .and_then(|m| m.get(name).copied())
            .unwrap_or(0)
    }

    /// Resident memory of the Envoy process, in bytes (VmRSS).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("VmRSS")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb * 1024)
    }

    /// Bytes Envoy's allocator (tcmalloc) has handed out and not taken back: admin `/memory`
    /// `allocated`. Unlike RSS it excludes V8's own heap pages and freed-but-cached memory, so
    /// it moves only with what Envoy itself keeps (stats, config objects, timers).
    pub fn allocated_bytes(&self) -> anyhow::Result<u64> {
        let r = admin_get(self.admin, "/memory")?;
        let v: serde_json::Value = serde_json::from_str(&r.body)?;
        let allocated = &v["allocated"];
        allocated
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| allocated.as_u64())
            .context("/memory has no allocated field")
    }

    /// CPU time (user + system) consumed so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let after = stat.rsplit_once(')').context("stat")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f.get(11).context("utime")?.parse::<f64>()?
            + f.get(12).context("stime")?.parse::<f64>()?;
        Ok(ticks / clock_ticks_per_second())
    }

    /// The Envoy log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::tail(&self.log(), lines)
    }

    /// Waits until the log contains `needle` (Envoy writes its log file in batches), polling
    /// (bounded by `timeout`).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if start.elapsed() > timeout {
                bail!(
                    "envoy {}: no {needle:?} in the log within {timeout:?}; log tail:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until `predicate(stat value)` holds, polling (bounded by `timeout`).
    pub fn wait_for_stat(
        &self,
        name: &str,
        timeout: Duration,
        predicate: impl Fn(u64) -> bool,
    ) -> anyhow::Result<u64> {
        let start = Instant::now();
        loop {
            let v = self.stat(name);
            if predicate(v) {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                bail!("envoy {}: stat {name} = {v} did not reach the expected value within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; getconf confirms it where available.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
