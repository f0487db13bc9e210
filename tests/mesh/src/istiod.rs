//! istiod (`pilot-discovery`) as a child process on kernel-picked loopback ports, reading its
//! configuration from the test's real kube-apiserver.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use canary_cluster::ControlPlane;
use kube::Client;
use serde_json::json;

use crate::objects;

/// What a test can ask of istiod's start-up.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Starts tried with fresh ports when one was taken between picking and binding.
const START_ATTEMPTS: u32 = 3;

/// A running istiod. Dropping it kills the process.
pub struct Istiod {
    child: Option<Child>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    /// Plaintext xDS (ADS over gRPC), what the sidecars connect to.
    pub grpc: SocketAddr,
    /// The HTTP debug and readiness server (`/ready`, `/debug/...`).
    pub http: SocketAddr,
    monitoring: SocketAddr,
    ctrlz_port: u16,
    starts: u32,
    revision: String,
}

impl Istiod {
    /// Prepares the cluster for istiod (namespace `istio-system`, mTLS off mesh-wide), then
    /// starts istiod and waits until `/ready` answers 200.
    pub async fn start(plane: &ControlPlane, client: &Client) -> anyhow::Result<Istiod> {
        Self::start_revision(plane, client, "default").await
    }

    /// Like [`Istiod::start`], as control plane revision `revision`: istiod then reads only
    /// config objects labelled `istio.io/rev: <revision>` or not labelled at all (the seed's
    /// Istio objects carry `istio.io/rev: tsb`).
    pub async fn start_revision(
        plane: &ControlPlane,
        client: &Client,
        revision: &str,
    ) -> anyhow::Result<Istiod> {
        prepare_cluster(plane, client).await?;
        let dir = tempfile::Builder::new().prefix("istiod-").tempdir()?;
        let mut istiod = Istiod {
            child: None,
            kubeconfig: plane.kubeconfig_path().to_owned(),
            dir,
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            monitoring: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ctrlz_port: 0,
            starts: 0,
            revision: revision.to_owned(),
        };
        // The ports are free when picked and bound by istiod about two seconds later, after its
        // informers have synced (`canary_cluster::ports` says why they are picked below the
        // ephemeral range); should one be taken in between, istiod exits with "address already
        // in use": pick new ports and start again.
        let mut attempt = 1;
        loop {
            istiod.pick_ports()?;
            istiod.write_mesh_config()?;
            match istiod.spawn() {
                Ok(()) => return Ok(istiod),
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

    fn pick_ports(&mut self) -> anyhow::Result<()> {
        let [grpc, http, monitoring, ctrlz] = canary_cluster::ports::free_loopback_ports::<4>()?;
        self.grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, grpc));
        self.http = SocketAddr::from((Ipv4Addr::LOCALHOST, http));
        self.monitoring = SocketAddr::from((Ipv4Addr::LOCALHOST, monitoring));
        self.ctrlz_port = ctrlz;
        Ok(())
    }

    fn write_mesh_config(&self) -> anyhow::Result<()> {
        // JSON is YAML: istiod reads both files as YAML.
        let mesh = json!({
            "rootNamespace": "istio-system",
            "trustDomain": "cluster.local",
            // No istio-agent hands the sidecars certificates: plaintext between them.
            "enableAutoMtls": false,
            // Tracing would point every listener at a zipkin cluster that does not exist.
            "enableTracing": false,
            // No `defaultProviders.metrics`: otherwise istiod inserts `istio.stats`, an
            // extension only Istio's own Envoy build has.
            "defaultProviders": {},
            "defaultConfig": {
                "discoveryAddress": self.grpc.to_string(),
                "proxyMetadata": {}
            }
        });
        fs::write(self.dir.path().join("mesh.yaml"), mesh.to_string())?;
        fs::write(self.dir.path().join("networks.yaml"), r#"{"networks": {}}"#)?;
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("istiod-{}.log", self.starts))
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let binary = crate::istio_bin_dir().join("pilot-discovery");
        anyhow::ensure!(
            binary.exists(),
            "{} not found: run `make mesh-build` first",
            binary.display()
        );
        let log = fs::File::create(self.log_path())?;
        let dir = self.dir.path();
        let child = Command::new(&binary)
            .current_dir(dir)
            .args(["discovery", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .args(["--clusterID", "Kubernetes", "--domain", "cluster.local"])
            .arg("--meshConfig")
            .arg(dir.join("mesh.yaml"))
            .arg("--networksConfig")
            .arg(dir.join("networks.yaml"))
            .arg("--httpAddr")
            .arg(self.http.to_string())
            .arg("--grpcAddr")
            .arg(self.grpc.to_string())
            .args(["--secureGRPCAddr", "", "--httpsAddr", ""])
            .arg("--monitoringAddr")
            .arg(self.monitoring.to_string())
            .args(["--ctrlz_address", "127.0.0.1", "--ctrlz_port"])
            .arg(self.ctrlz_port.to_string())
            .args(["--log_output_level", "default:info"])
            .env("REVISION", &self.revision)
            .env("CLUSTER_ID", "Kubernetes")
            .env("POD_NAMESPACE", "istio-system")
            .env("POD_NAME", "istiod-0")
            .env("ISTIOD_CUSTOM_HOST", "istiod.istio-system.svc")
            // No webhooks and no injection: nothing in this cluster calls them.
            .env("VALIDATION_WEBHOOK_CONFIG_NAME", "")
            .env("INJECT_ENABLED", "false")
            // Istio-only Envoy extensions: upstream Envoy would NACK listeners that use them.
            .env("PILOT_ENABLE_METADATA_EXCHANGE", "false")
            .env("PILOT_ENABLE_ALPN_FILTER", "false")
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "istiod exited during start-up ({status}); log tail:\n{}",
                        self.log_tail(40)
                    );
                }
            }
            if wasm_canary_e2e::http::admin_get(self.http, "/ready").is_ok_and(|r| r.status == 200)
            {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "istiod not ready after {READY_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100)); // polling interval
        }
    }

    /// Kills istiod (as a crashed or evicted pod would be); the sidecars keep their config.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts istiod again on the same ports (the sidecars reconnect to the same address).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// The current process's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        wasm_canary_e2e::tail(&self.log(), lines)
    }

    /// The folder istiod runs in (mesh config, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `istio-system` must exist before istiod starts (else `/ready` stays 503), and mTLS must be
/// off mesh-wide (else clusters wait forever for certificates no agent will send).
async fn prepare_cluster(plane: &ControlPlane, client: &Client) -> anyhow::Result<()> {
    plane.create_namespace(client, "istio-system").await?;
    objects::apply(
        client,
        "istio-system",
        &json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "DISABLE"}}
        }),
    )
    .await
}
