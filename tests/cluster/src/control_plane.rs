//! etcd + kube-apiserver + kube-controller-manager on loopback, owned by a test.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::AuthInfo;
use kube::{Api, Client};
use serde_json::json;
use tempfile::TempDir;

use crate::binaries::Binaries;
use crate::crds::{install_crds, istio_crds_path};
use crate::error::{Error, Result};
use crate::kubeconfig;
use crate::pki::Pki;
use crate::ports::free_ports;
use crate::process::{Lifetime, Process};
use crate::FIELD_MANAGER;

/// From spawning etcd to a ready API server, a working controller manager and Istio's
/// CRDs established. Generous: two busy cores building Rust at the same time.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Between two readiness checks. Readiness is polled, never assumed after a sleep.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A port can be taken between choosing and binding it; start again with new ones.
const START_ATTEMPTS: usize = 3;
/// Controllers tests rely on. No kubelet, scheduler or node controllers: Pods stay
/// Pending and tests write their status.
const CONTROLLERS: &str =
    "serviceaccount-controller,serviceaccount-token-controller,deployment-controller,replicaset-controller,\
endpointslice-controller,garbage-collector-controller,namespace-controller,clusterrole-aggregation-controller";

/// How long each phase of [`ControlPlane::start`] took, measured from its beginning.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartupTimings {
    /// `/readyz` of kube-apiserver answered `ok`.
    pub apiserver_ready: Duration,
    /// The `default` ServiceAccount exists, so kube-controller-manager's controllers run.
    pub controller_manager_ready: Duration,
    /// Istio's CRDs are Established; the control plane is ready for tests.
    pub ready: Duration,
}

enum Workdir {
    Temporary(TempDir),
    Given(PathBuf),
}

impl Workdir {
    fn path(&self) -> &Path {
        match self {
            Self::Temporary(dir) => dir.path(),
            Self::Given(dir) => dir,
        }
    }
}

/// A running control plane. Dropping it kills its processes and deletes its folder
/// (kept, with the logs, when the drop happens during a panic).
pub struct ControlPlane {
    // Stopped in reverse start order by Drop. Locked only briefly (never across an await), so
    // a test holding the plane in an `Arc` can still restart a component.
    processes: std::sync::Mutex<Vec<Process>>,
    workdir: Option<Workdir>,
    kubeconfig: PathBuf,
    server: String,
    timings: StartupTimings,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("kubeconfig", &self.kubeconfig)
            .field("pids", &self.pids())
            .finish_non_exhaustive()
    }
}

static SHARED: tokio::sync::Mutex<Weak<ControlPlane>> = tokio::sync::Mutex::const_new(Weak::new());

impl ControlPlane {
    /// Starts a control plane of its own in a new temporary folder, with Istio's CRDs
    /// installed. Tests that need an empty cluster use this; others share one with
    /// [`ControlPlane::shared`].
    pub async fn start() -> Result<Self> {
        Self::start_with_apiserver_flags(&[]).await
    }

    /// [`ControlPlane::start`] with extra kube-apiserver flags. `--watch-cache=false` serves
    /// watches from etcd's history, so a watch resumes at its last revision across a restart
    /// of the API server (a fresh watch cache would answer 410 Gone).
    pub async fn start_with_apiserver_flags(flags: &[&str]) -> Result<Self> {
        let workdir = tempfile::Builder::new()
            .prefix("wasm-canary-cluster-")
            .tempdir_in(scratch_root())
            .map_err(Error::io(
                "creating a temporary folder for the control plane",
            ))?;
        let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        Self::start_in(Workdir::Temporary(workdir), Lifetime::Owned, &flags).await
    }

    /// Starts a control plane in `dir` (emptied first) whose processes can outlive this
    /// program with [`ControlPlane::detach`]. For `make cluster-up`.
    pub async fn start_detachable(dir: &Path) -> Result<Self> {
        if dir.exists() {
            // Only ever empty a folder an earlier `up` made, never one given by mistake.
            let empty = dir
                .read_dir()
                .map(|mut entries| entries.next().is_none())
                .unwrap_or(false);
            if !empty && !dir.join("pki/ca.crt").is_file() {
                return Err(Error::Io {
                    action: format!(
                        "{} is not empty and holds no earlier control plane",
                        dir.display()
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                });
            }
            std::fs::remove_dir_all(dir)
                .map_err(Error::io(format!("emptying {}", dir.display())))?;
        }
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(Error::io(format!("resolving {}", dir.display())))?;
        Self::start_in(Workdir::Given(dir), Lifetime::Detachable, &[]).await
    }

    /// The control plane shared by the tests of one test binary that run at the same
    /// time. It stops when the last test holding it finishes; a later test starts a new
    /// one. Isolate tests by namespace ([`ControlPlane::create_namespace`]).
    pub async fn shared() -> Result<Arc<Self>> {
        let mut shared = SHARED.lock().await;
        if let Some(plane) = shared.upgrade() {
            return Ok(plane);
        }
        let plane = Arc::new(Self::start().await?);
        *shared = Arc::downgrade(&plane);
        Ok(plane)
    }

    async fn start_in(
        workdir: Workdir,
        lifetime: Lifetime,
        apiserver_flags: &[String],
    ) -> Result<Self> {
        let binaries = Binaries::locate()?;
        let started = Instant::now();
        let dir = workdir.path().to_owned();
        let pki = Pki::generate(&dir)?;
        let mut attempt = 1;
        loop {
            match start_processes(&binaries, &pki, &dir, lifetime, started, apiserver_flags).await {
                Ok((processes, kubeconfig, server, timings)) => {
                    let mut plane = Self {
                        processes: std::sync::Mutex::new(processes),
                        workdir: Some(workdir),
                        kubeconfig,
                        server,
                        timings,
                    };
                    let client = plane.client().await?;
                    install_crds(&client, &istio_crds_path()).await?;
                    plane.timings.ready = started.elapsed();
                    return Ok(plane);
                }
                Err(Error::ProcessExited { tail, .. })
                    if attempt < START_ATTEMPTS && tail.contains("address already in use") =>
                {
                    attempt += 1;
                    let etcd_data = dir.join("etcd");
                    let _ = std::fs::remove_dir_all(etcd_data);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Kills `component` (`etcd` or `kube-apiserver`) with SIGKILL, starts it again with the
    /// same flags and data, and waits until the API server answers `/readyz` again: a crash
    /// and restart mid-test. Returns how long the API was unavailable.
    pub async fn restart(&self, component: &str) -> Result<Duration> {
        let started = Instant::now();
        self.with_processes(|processes| {
            processes
                .iter_mut()
                .find(|p| p.name == component)
                .ok_or_else(|| Error::Io {
                    action: format!("restarting {component}: no such control-plane process"),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })?
                .restart()
        })?;
        let admin = self.client().await?;
        wait_until(
            &format!("kube-apiserver /readyz after restarting {component}"),
            || self.with_processes(|processes| ensure_running(processes)),
            || readyz(&admin),
        )
        .await?;
        Ok(started.elapsed())
    }

    fn with_processes<T>(&self, f: impl FnOnce(&mut Vec<Process>) -> Result<T>) -> Result<T> {
        let mut processes = self
            .processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut processes)
    }

    /// A new client acting as cluster admin (`system:masters`). Make one per test: a
    /// client belongs to the tokio runtime it was made in.
    pub async fn client(&self) -> Result<Client> {
        client_from(self.config().await?)
    }

    /// The admin client configuration, to build clients with other credentials.
    pub async fn config(&self) -> Result<kube::Config> {
        kubeconfig::load(&self.kubeconfig).await
    }

    /// A client that authenticates as ServiceAccount `namespace/name` with a token from
    /// the TokenRequest API, so RBAC applies to it as to a pod running as that account.
    pub async fn client_for_service_account(&self, namespace: &str, name: &str) -> Result<Client> {
        let token = self.service_account_token(namespace, name).await?;
        let mut config = self.config().await?;
        config.auth_info =
            serde_json::from_value::<AuthInfo>(json!({ "token": token })).map_err(|e| {
                Error::Kubeconfig {
                    path: self.kubeconfig.clone(),
                    message: e.to_string(),
                }
            })?;
        client_from(config)
    }

    /// Writes a kubeconfig at `path` that authenticates as ServiceAccount `namespace/name`
    /// (a TokenRequest token valid for an hour), for a process the test runs as that account,
    /// e.g. the controller with only its shipped RBAC.
    pub async fn write_kubeconfig_for_service_account(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
    ) -> Result<()> {
        let token = self.service_account_token(namespace, name).await?;
        let invalid = |message: String| Error::Kubeconfig {
            path: self.kubeconfig.clone(),
            message,
        };
        let mut kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| invalid(e.to_string()))?;
        for named in &mut kubeconfig.auth_infos {
            named.auth_info = Some(
                serde_json::from_value::<AuthInfo>(json!({ "token": token }))
                    .map_err(|e| invalid(e.to_string()))?,
            );
        }
        let text = serde_saphyr::to_string(&kubeconfig).map_err(|e| invalid(e.to_string()))?;
        std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
    }

    async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        let admin = self.client().await?;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let token = Api::<ServiceAccount>::namespaced(admin, namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(Error::api(format!(
                "requesting a token for ServiceAccount {namespace}/{name}"
            )))?
            .status
            .and_then(|status| status.token)
            .unwrap_or_default();
        Ok(token)
    }

    /// Creates (server-side applies) namespace `name`.
    pub async fn create_namespace(&self, client: &Client, name: &str) -> Result<()> {
        let namespace =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        Api::<Namespace>::all(client.clone())
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(namespace),
            )
            .await
            .map_err(Error::api(format!("creating namespace {name}")))?;
        Ok(())
    }

    /// Installs the CustomResourceDefinitions in a YAML file (our own CRD, say) and waits
    /// until they are Established. Returns their names.
    pub async fn install_crds(&self, path: &Path) -> Result<Vec<String>> {
        install_crds(&self.client().await?, path).await
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// The folder holding certificates, logs and etcd's data.
    pub fn dir(&self) -> Option<&Path> {
        self.workdir.as_ref().map(Workdir::path)
    }

    /// How long start-up took.
    pub fn timings(&self) -> StartupTimings {
        self.timings
    }

    /// Process ids of etcd, kube-apiserver and kube-controller-manager, with their names.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|p| (p.name, p.pid()))
            .collect()
    }

    /// Leaves the processes running after this value is gone and writes their ids to
    /// `<dir>/pids` (`name pid` lines), which `cluster-down.sh` reads. Only for a control
    /// plane from [`ControlPlane::start_detachable`]; others would be orphaned in the
    /// test's process group.
    pub fn detach(mut self) -> Result<PathBuf> {
        let dir = self.dir().map(Path::to_owned).unwrap_or_default();
        let pids_file = dir.join("pids");
        let lines: String = self
            .pids()
            .iter()
            .map(|(name, pid)| format!("{name} {pid}\n"))
            .collect();
        std::fs::write(&pids_file, lines)
            .map_err(Error::io(format!("writing {}", pids_file.display())))?;
        for process in self
            .processes
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            process.detach();
        }
        Ok(dir)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for process in self
            .processes
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter_mut()
            .rev()
        {
            process.stop();
        }
        if let Some(Workdir::Temporary(dir)) = self.workdir.take() {
            if std::thread::panicking() {
                let kept = dir.keep();
                eprintln!("control plane logs kept in {}", kept.display());
            }
        }
    }
}

/// etcd's data is written with fsync; on tmpfs that costs nothing.
fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("WASM_CANARY_CLUSTER_TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir()
        && tempfile::Builder::new()
            .prefix("wasm-canary-probe-")
            .tempfile_in(shm)
            .is_ok();
    if writable {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

fn client_from(config: kube::Config) -> Result<Client> {
    Client::try_from(config).map_err(Error::api("building a kube client"))
}

type Started = (Vec<Process>, PathBuf, String, StartupTimings);

async fn start_processes(
    binaries: &Binaries,
    pki: &Pki,
    dir: &Path,
    lifetime: Lifetime,
    started: Instant,
    apiserver_flags: &[String],
) -> Result<Started> {
    let [etcd_client, etcd_peer, apiserver_port] = free_ports::<3>()?;
    let path = |p: &Path| p.display().to_string();
    let mut processes = Vec::with_capacity(3);

    let etcd_client_url = format!("http://127.0.0.1:{etcd_client}");
    let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer}");
    processes.push(Process::spawn(
        "etcd",
        &binaries.etcd,
        &[
            "--name=wasm-canary".to_owned(),
            format!("--data-dir={}", path(&dir.join("etcd"))),
            format!("--listen-client-urls={etcd_client_url}"),
            format!("--advertise-client-urls={etcd_client_url}"),
            format!("--listen-peer-urls={etcd_peer_url}"),
            format!("--initial-advertise-peer-urls={etcd_peer_url}"),
            format!("--initial-cluster=wasm-canary={etcd_peer_url}"),
            "--log-level=warn".to_owned(),
            "--logger=zap".to_owned(),
        ],
        dir,
        lifetime,
    )?);

    let server = format!("https://127.0.0.1:{apiserver_port}");
    processes.push(Process::spawn(
        "kube-apiserver",
        &binaries.kube_apiserver,
        &[
            format!("--etcd-servers={etcd_client_url}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={apiserver_port}"),
            format!("--cert-dir={}", path(&dir.join("apiserver"))),
            format!("--tls-cert-file={}", path(&pki.apiserver_cert)),
            format!("--tls-private-key-file={}", path(&pki.apiserver_key)),
            format!("--client-ca-file={}", path(&pki.ca_cert)),
            "--authorization-mode=RBAC".to_owned(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!(
                "--service-account-key-file={}",
                path(&pki.service_account_pub)
            ),
            format!(
                "--service-account-signing-key-file={}",
                path(&pki.service_account_key)
            ),
            "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
            // The built-in `kubernetes` Service would get a loopback endpoint, which
            // endpoint validation refuses; nothing here reaches the API through it.
            "--endpoint-reconciler-type=none".to_owned(),
            "--profiling=false".to_owned(),
        ]
        .into_iter()
        .chain(apiserver_flags.iter().cloned())
        .collect::<Vec<_>>(),
        dir,
        lifetime,
    )?);

    let admin_kubeconfig = dir.join("kubeconfig");
    kubeconfig::write(
        &admin_kubeconfig,
        &server,
        &pki.ca_cert,
        &pki.admin_cert,
        &pki.admin_key,
    )?;
    let admin = client_from(kubeconfig::load(&admin_kubeconfig).await?)?;
    wait_until(
        "kube-apiserver /readyz",
        || ensure_running(&mut processes),
        || readyz(&admin),
    )
    .await?;
    let apiserver_ready = started.elapsed();

    let controller_manager_kubeconfig = dir.join("controller-manager.kubeconfig");
    kubeconfig::write(
        &controller_manager_kubeconfig,
        &server,
        &pki.ca_cert,
        &pki.controller_manager_cert,
        &pki.controller_manager_key,
    )?;
    processes.push(Process::spawn(
        "kube-controller-manager",
        &binaries.kube_controller_manager,
        &[
            format!("--kubeconfig={}", path(&controller_manager_kubeconfig)),
            // No serving endpoint at all: nothing listens, on loopback or elsewhere.
            "--secure-port=0".to_owned(),
            "--leader-elect=false".to_owned(),
            format!("--controllers={CONTROLLERS}"),
            // Each controller acts as its own ServiceAccount, under the bootstrap RBAC
            // roles, as in a real cluster.
            "--use-service-account-credentials=true".to_owned(),
            format!(
                "--service-account-private-key-file={}",
                path(&pki.service_account_key)
            ),
            format!("--root-ca-file={}", path(&pki.ca_cert)),
        ],
        dir,
        lifetime,
    )?);

    // Pods need the namespace's `default` ServiceAccount (ServiceAccount admission); the
    // serviceaccount controller creating it shows the controller manager works.
    let service_accounts = Api::<ServiceAccount>::namespaced(admin.clone(), "default");
    wait_until(
        "the default ServiceAccount (kube-controller-manager)",
        || ensure_running(&mut processes),
        || async {
            match service_accounts.get_opt("default").await {
                Ok(found) => Ok(found.is_some()),
                Err(error) => Err(error.to_string()),
            }
        },
    )
    .await?;
    let timings = StartupTimings {
        apiserver_ready,
        controller_manager_ready: started.elapsed(),
        ready: Duration::ZERO,
    };
    Ok((processes, admin_kubeconfig, server, timings))
}

/// Polls `check` until it says ready, failing early if a process exits and after
/// [`START_TIMEOUT`] with the last error seen.
/// Whether the API server answers `/readyz` with `ok`.
async fn readyz(admin: &Client) -> std::result::Result<bool, String> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match admin.request_text(request).await {
        Ok(body) if body.trim() == "ok" => Ok(true),
        Ok(body) => Err(body),
        Err(error) => Err(error.to_string()),
    }
}

fn ensure_running(processes: &mut [Process]) -> Result<()> {
    processes.iter_mut().try_for_each(Process::ensure_running)
}

/// Polls `check` until it says true; fails early when `running` finds a process exited.
async fn wait_until<F, Fut>(
    what: &str,
    mut running: impl FnMut() -> Result<()>,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<bool, String>>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last_error = None;
    loop {
        running()?;
        match tokio::time::timeout(Duration::from_secs(5), check()).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => last_error = Some(error),
            Err(_) => last_error = Some("no answer within 5s".to_owned()),
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                what: what.to_owned(),
                timeout: START_TIMEOUT,
                last_error,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
