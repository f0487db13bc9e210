//! A local OCI registry on 127.0.0.1 (the CNCF distribution registry, Debian package
//! `docker-registry`), for `oci://` WasmPlugin URLs, and the push of the image `make oci` writes.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// What a test can ask of the registry's start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried with fresh ports when the port was taken between picking and binding.
const START_ATTEMPTS: u32 = 3;

/// A running registry, storing its blobs in a temporary folder. Dropping it kills the process.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// Where it serves the distribution API (`/v2/`), plain HTTP.
    pub addr: SocketAddr,
}

/// An image pushed to a [`Registry`].
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `oci://127.0.0.1:<port>/<repository>:<tag>`, what a WasmPlugin's `url` names.
    pub url: String,
    /// The manifest's digest, hex without `sha256:`: what a WasmPlugin's `sha256` must say for
    /// an `oci://` URL (pilot-agent compares it with the digest of the manifest it pulled).
    pub digest: String,
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until `/v2/` answers 200.
    pub fn start() -> anyhow::Result<Registry> {
        let mut attempt = 1;
        loop {
            match Self::start_once() {
                Ok(registry) => return Ok(registry),
                Err(error)
                    if attempt < START_ATTEMPTS
                        && format!("{error:#}").contains("address already in use") =>
                {
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn start_once() -> anyhow::Result<Registry> {
        let dir = tempfile::Builder::new().prefix("registry-").tempdir()?;
        let port = canary_cluster::ports::free_loopback_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.path().join("config.yml");
        // JSON is YAML. No auth, no TLS: a registry on loopback, reached by pilot-agent with
        // `WASM_INSECURE_REGISTRIES` naming it.
        let settings = serde_json::json!({
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": false}},
            "storage": {"filesystem": {"rootdirectory": dir.path().join("data")}},
            "http": {"addr": addr.to_string()}
        });
        fs::write(&config, settings.to_string())?;
        let log = fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "starting docker-registry (Debian package `docker-registry`; `make setup` installs it)",
            )?;
        let mut registry = Registry { child, dir, addr };
        let start = Instant::now();
        loop {
            if let Some(status) = registry.child.try_wait()? {
                bail!(
                    "docker-registry exited during start-up ({status}):\n{}",
                    registry.log()
                );
            }
            if wasm_canary_e2e::http::admin_get(addr, "/v2/").is_ok_and(|r| r.status == 200) {
                return Ok(registry);
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "docker-registry not ready after {READY_TIMEOUT:?}:\n{}",
                    registry.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50)); // polling interval
        }
    }

    /// Pushes the image of the OCI image layout `layout` (what `make oci` writes to
    /// `build/oci`) tagged `tag` as `<repository>:<tag>`, with skopeo, as a user would push it
    /// to their registry.
    pub fn push_layout(
        &self,
        layout: &Path,
        tag: &str,
        repository: &str,
    ) -> anyhow::Result<PushedImage> {
        let reference = format!("{}/{repository}:{tag}", self.addr);
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .context("running skopeo (Debian package `skopeo`; `make setup` installs it)")?;
        anyhow::ensure!(
            out.status.success(),
            "skopeo copy to {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(PushedImage {
            url: format!("oci://{reference}"),
            digest: layout_digest(layout, tag)?,
        })
    }

    /// The registry's log (one access-log line per request).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The digest (hex) of the manifest tagged `tag` in the OCI image layout `layout`.
pub fn layout_digest(layout: &Path, tag: &str) -> anyhow::Result<String> {
    let index: Value = serde_json::from_str(
        &fs::read_to_string(layout.join("index.json"))
            .with_context(|| format!("reading {}/index.json", layout.display()))?,
    )?;
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .and_then(|d| d.strip_prefix("sha256:"))
        .map(str::to_owned)
        .with_context(|| format!("no manifest tagged {tag} in {}", layout.display()))
}

/// The only tag of the layout `make oci` wrote (the crate version), and the layout's path.
pub fn built_layout() -> anyhow::Result<(std::path::PathBuf, String)> {
    let layout = wasm_canary_e2e::workspace_root().join("build/oci");
    let index: Value = serde_json::from_str(
        &fs::read_to_string(layout.join("index.json"))
            .context("build/oci/index.json not found: run `make oci` first")?,
    )?;
    let tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .context("build/oci/index.json: no tagged manifest")?
        .to_owned();
    Ok((layout, tag))
}
