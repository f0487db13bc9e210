//! A calling pod whose sidecar is run by **pilot-agent**, as in a real cluster: pilot-agent
//! writes Envoy's bootstrap from its own template, starts Envoy, proxies xDS between Envoy and
//! istiod, and fetches remote Wasm modules (`oci://`, `https://`) into a local file before Envoy
//! sees the config (upstream Envoy alone ACKs a remote module and never fetches it).
//!
//! pilot-agent binds fixed ports on every interface (status 15020, health 15021, Prometheus
//! 15090, Envoy admin 15000) and keeps its Wasm cache in the fixed folder
//! `/var/lib/istio/data`, so each pod gets what a pod has in a cluster: its own network namespace
//! (`unshare --net`, loopback up) and mount namespace (a temporary folder bound over the cache
//! folder). The pod reaches istiod, the registry and the pods it calls through relays (Debian
//! `socat`, one process on each side of a unix socket), and the test reaches the pod's listeners
//! and Envoy's admin the same way. Needs root (namespaces), as CI and the dev machines run.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use serde_json::json;

use crate::sidecar::Pod;
use crate::Istiod;

/// Envoy's admin port, as pilot-agent's bootstrap template sets it.
const ENVOY_ADMIN_PORT: u16 = 15000;
/// Pod start (namespace, relays, agent, Envoy LIVE) on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The cache folder pilot-agent writes fetched modules to (`constants.IstioDataDir`).
const WASM_CACHE_DIR: &str = "/var/lib/istio/data";

/// What the pod's sidecar must reach outside the pod, and what the test must reach inside.
#[derive(Debug, Default, Clone)]
pub struct Reach {
    /// Addresses outside the pod (other pods, a registry) the sidecar connects to; each is
    /// relayed from the same address inside the pod.
    pub out: Vec<SocketAddr>,
    /// Addresses inside the pod the test connects to (the caller's outbound listeners); each
    /// gets a free loopback port outside ([`AgentPod::outside`]).
    pub into: Vec<SocketAddr>,
    /// Registries pilot-agent may pull from over plain HTTP (`WASM_INSECURE_REGISTRIES`).
    pub insecure_registries: Vec<SocketAddr>,
}

/// A running pod: namespaces, relays, pilot-agent and its Envoy. Dropping it kills them all.
pub struct AgentPod {
    pub pod: Pod,
    /// Envoy's admin, reached from outside the pod.
    pub admin: SocketAddr,
    into: Vec<(SocketAddr, SocketAddr)>,
    // Dropped in this order: the agent and its Envoy, then the relays, then the namespaces.
    agent: Option<Group>,
    _relays: Vec<Group>,
    holder: Group,
    dir: tempfile::TempDir,
}

/// A child leading its own process group (socat forks per connection, pilot-agent starts
/// Envoy): dropping it kills the whole group.
struct Group(Child);

impl Group {
    fn spawn(command: &mut Command) -> std::io::Result<Group> {
        command.process_group(0).spawn().map(Group)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl AgentPod {
    /// Starts `pod` as a caller: applies its `Sidecar` resource (outbound listeners on its
    /// address, [`crate::sidecar::caller_sidecar`]), creates its namespaces and relays, and runs
    /// pilot-agent against `istiod` until Envoy is LIVE.
    pub async fn start_caller(
        client: &Client,
        istiod: &Istiod,
        pod: Pod,
        reach: Reach,
    ) -> anyhow::Result<AgentPod> {
        crate::objects::apply(
            client,
            &pod.namespace,
            &crate::sidecar::caller_sidecar(&pod),
        )
        .await?;
        let root_cert = istio_root_cert(client, &pod.namespace).await?;
        let istiod_grpc = istiod.grpc;
        tokio::task::spawn_blocking(move || {
            Self::start_blocking(pod, reach, istiod_grpc, &root_cert)
        })
        .await?
    }

    fn start_blocking(
        pod: Pod,
        reach: Reach,
        istiod_grpc: SocketAddr,
        root_cert: &str,
    ) -> anyhow::Result<AgentPod> {
        let dir = tempfile::Builder::new().prefix("agent-pod-").tempdir()?;
        let holder = namespaces(dir.path())?;
        let mut relays = Vec::new();
        let ns = holder.0.id();
        let mut socket = 0;
        let mut next_socket = || {
            socket += 1;
            dir.path().join(format!("relay-{socket}.sock"))
        };
        for target in std::iter::once(istiod_grpc)
            .chain(reach.insecure_registries.iter().copied())
            .chain(reach.out.iter().copied())
        {
            relays.extend(relay_out(ns, target, &next_socket())?);
        }
        let admin = relay_into(
            ns,
            SocketAddr::from((Ipv4Addr::LOCALHOST, ENVOY_ADMIN_PORT)),
            &next_socket(),
            &mut relays,
        )?;
        let mut into = Vec::new();
        for inside in &reach.into {
            into.push((
                *inside,
                relay_into(ns, *inside, &next_socket(), &mut relays)?,
            ));
        }

        let work = dir.path().join("work");
        let certs = work.join("var/run/secrets/istio");
        fs::create_dir_all(&certs)?;
        fs::write(certs.join("root-cert.pem"), root_cert)?;
        let mut pod_ = AgentPod {
            pod,
            admin,
            into,
            agent: None,
            _relays: relays,
            holder,
            dir,
        };
        pod_.agent = Some(pod_.spawn_agent(istiod_grpc, &reach.insecure_registries, &work)?);
        pod_.wait_live()?;
        Ok(pod_)
    }

    fn spawn_agent(
        &self,
        istiod_grpc: SocketAddr,
        insecure: &[SocketAddr],
        work: &Path,
    ) -> anyhow::Result<Group> {
        let bin = crate::istio_bin_dir();
        let agent = bin.join("pilot-agent");
        let template = bin.join("envoy_bootstrap.json");
        for file in [&agent, &template] {
            anyhow::ensure!(
                file.exists(),
                "{} not found: run `make mesh-build`",
                file.display()
            );
        }
        let envoy = wasm_canary_e2e::envoy_binary()?.canonicalize()?;
        // What the injector's `proxy.istio.io/config` and the mesh's defaultConfig would say.
        let proxy_config = json!({
            "discoveryAddress": istiod_grpc.to_string(),
            // Plaintext xDS: no istio-agent certificates in this mesh (mTLS is off).
            "controlPlaneAuthPolicy": "NONE",
            "binaryPath": envoy,
            "configPath": work.join("etc/istio/proxy"),
            "proxyBootstrapTemplatePath": template,
            "concurrency": 1
        });
        let registries: Vec<String> = insecure.iter().map(SocketAddr::to_string).collect();
        let labels = serde_json::to_string(&self.pod.labels)?;
        let log = fs::File::create(self.log_path())?;
        let ns = self.holder.0.id();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/proc/{ns}/ns/net"))
            .arg(format!("--mount=/proc/{ns}/ns/mnt"))
            .arg(format!("--wd={}", work.display()))
            .arg(&agent)
            .args(["proxy", "sidecar", "--proxyLogLevel", "info", "--domain"])
            .arg(format!("{}.svc.cluster.local", self.pod.namespace))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", work)
            .env("PROXY_CONFIG", proxy_config.to_string())
            // What the injector gives the istio-proxy container.
            .env("POD_NAME", &self.pod.name)
            .env("POD_NAMESPACE", &self.pod.namespace)
            .env("INSTANCE_IP", self.pod.ip.to_string())
            .env("SERVICE_ACCOUNT", "default")
            .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
            .env("ISTIO_META_WORKLOAD_NAME", self.pod.workload())
            .env("ISTIO_METAJSON_LABELS", labels)
            // No iptables: outbound listeners bind the pod's address (its `Sidecar` resource).
            .env("ISTIO_META_INTERCEPTION_MODE", "NONE")
            .env("WASM_INSECURE_REGISTRIES", registries.join(","))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Group::spawn(&mut command).context("starting pilot-agent through nsenter")
    }

    fn wait_live(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(Group(child)) = self.agent.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "pilot-agent exited ({status}); log tail:\n{}",
                        self.log_tail(40)
                    );
                }
            }
            if wasm_canary_e2e::http::admin_get(self.admin, "/ready")
                .is_ok_and(|r| r.status == 200 && r.body.trim() == "LIVE")
            {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "the Envoy of pilot-agent not LIVE after {START_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100)); // polling interval
        }
    }

    /// Where the test reaches `inside` (one of [`Reach::into`]) from outside the pod.
    pub fn outside(&self, inside: SocketAddr) -> anyhow::Result<SocketAddr> {
        self.into
            .iter()
            .find(|(i, _)| *i == inside)
            .map(|(_, outside)| *outside)
            .with_context(|| format!("{inside} is not relayed into the pod"))
    }

    /// Waits until Envoy has a listener on `addr` (pushed by istiod), at most `timeout`.
    pub fn wait_for_listener(&self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let listeners = wasm_canary_e2e::http::admin_get(self.admin, "/listeners")?;
            if listeners
                .body
                .lines()
                .any(|l| l.ends_with(&format!("::{addr}")))
            {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "no listener on {addr} after {timeout:?}: {}",
                listeners.body
            );
            std::thread::sleep(Duration::from_millis(100)); // polling interval
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pilot-agent.log")
    }

    /// pilot-agent's log, Envoy's included.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        wasm_canary_e2e::tail(&self.log(), lines)
    }

    /// The files of the pod's Wasm cache (pilot-agent names a module by its digest).
    pub fn cached_modules(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.dir.path().join("data"))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.extend(
                fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
        out
    }
}

/// The namespaces' holder: `sleep` in a new network namespace (loopback up) and mount namespace
/// (`<dir>/data` bound over the Wasm cache folder), awaited until it has exec'd `sleep`.
fn namespaces(dir: &Path) -> anyhow::Result<Group> {
    let data = dir.join("data");
    fs::create_dir_all(&data)?;
    fs::create_dir_all(WASM_CACHE_DIR).with_context(|| {
        format!("creating {WASM_CACHE_DIR} (the mount point of each pod's cache; needs root)")
    })?;
    let log = dir.join("namespaces.log");
    let mut holder = Group::spawn(
        Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "ip link set lo up && mount --bind \"$0\" {WASM_CACHE_DIR} && exec sleep infinity"
            ))
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?),
    )
    .context("running unshare (util-linux)")?;
    let start = Instant::now();
    loop {
        if let Some(status) = holder.0.try_wait()? {
            bail!(
                "creating the pod's namespaces failed ({status}; unshare needs root): {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let comm = fs::read_to_string(format!("/proc/{}/comm", holder.0.id())).unwrap_or_default();
        if comm.trim() == "sleep" {
            return Ok(holder);
        }
        anyhow::ensure!(
            start.elapsed() < START_TIMEOUT,
            "the pod's namespaces: not ready"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling interval
    }
}

fn socat(ns: Option<u32>, listen: String, connect: String) -> anyhow::Result<Group> {
    let mut command = match ns {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/proc/{pid}/ns/net")).arg("socat");
            c
        }
        None => Command::new("socat"),
    };
    command
        .arg(listen)
        .arg(connect)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Group::spawn(&mut command).context("running socat (Debian package `socat`; `make setup`)")
}

/// The sidecar inside the pod (namespaces held by `ns`) connects to `target` outside at the same
/// address: socat outside listens on `socket`, socat inside listens on `target`.
fn relay_out(ns: u32, target: SocketAddr, socket: &Path) -> anyhow::Result<[Group; 2]> {
    let outside = socat(
        None,
        format!("UNIX-LISTEN:{},fork", socket.display()),
        format!("TCP:{target}"),
    )?;
    wait_for(|| socket.exists(), "the relay's unix socket")?;
    let inside = socat(
        Some(ns),
        format!(
            "TCP-LISTEN:{},bind={},fork,reuseaddr",
            target.port(),
            target.ip()
        ),
        format!("UNIX-CONNECT:{}", socket.display()),
    )?;
    let pid = inside.0.id();
    wait_for(
        || listening_in(pid, target),
        "the relay's listener inside the pod",
    )?;
    Ok([outside, inside])
}

/// The test connects to `inside` (an address in the pod) at a free loopback port outside,
/// returned; the relay's processes go to `relays`.
fn relay_into(
    ns: u32,
    inside: SocketAddr,
    socket: &Path,
    relays: &mut Vec<Group>,
) -> anyhow::Result<SocketAddr> {
    relays.push(socat(
        Some(ns),
        format!("UNIX-LISTEN:{},fork", socket.display()),
        format!("TCP:{inside}"),
    )?);
    wait_for(|| socket.exists(), "the relay's unix socket")?;
    let port = canary_cluster::ports::free_loopback_port()?;
    let outside = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    relays.push(socat(
        None,
        format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"),
        format!("UNIX-CONNECT:{}", socket.display()),
    )?);
    wait_for(
        || std::net::TcpStream::connect(outside).is_ok(),
        "the relay's listener outside the pod",
    )?;
    Ok(outside)
}

/// Whether process `pid`'s network namespace has a TCP socket listening on `addr`
/// (`/proc/<pid>/net/tcp`: addresses in hex, IPv4 little-endian; state 0A is LISTEN).
fn listening_in(pid: u32, addr: SocketAddr) -> bool {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        return false;
    };
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        addr.port()
    );
    fs::read_to_string(format!("/proc/{pid}/net/tcp")).is_ok_and(|table| {
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&wanted.as_str()) && fields.get(3) == Some(&"0A")
        })
    })
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ready() {
        anyhow::ensure!(
            start.elapsed() < START_TIMEOUT,
            "{what}: not ready within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10)); // polling interval
    }
    Ok(())
}

/// The mesh's root certificate, as istiod publishes it in every namespace (ConfigMap
/// `istio-ca-root-cert`) and the injector mounts it: pilot-agent refuses to start without it,
/// even with mTLS off.
async fn istio_root_cert(client: &Client, namespace: &str) -> anyhow::Result<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let start = Instant::now();
    loop {
        if let Some(cm) = api.get_opt("istio-ca-root-cert").await? {
            if let Some(pem) = cm.data.and_then(|mut d| d.remove("root-cert.pem")) {
                return Ok(pem);
            }
        }
        anyhow::ensure!(
            start.elapsed() < START_TIMEOUT,
            "istiod did not publish ConfigMap istio-ca-root-cert in {namespace}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // polling interval
    }
}
