//! The seed in a real mesh (tests/mesh): its Bookinfo app and its Argo Rollout converted by
//! `kubectl canary convert`, the controller as a process with only its shipped RBAC, `kubectl
//! canary` as a user runs it, and background user traffic through the caller's sidecar.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary_cluster::ControlPlane;
use canary_mesh::{objects, Bookinfo};
use serde_json::{json, Value};

use super::owned_process::OwnedProcess;

/// The seed's namespace.
pub const NS: &str = "bookinfo";

/// The seed's repository (`tse-gitops-demo`), as the shared fixtures hold it.
pub fn fixtures() -> PathBuf {
    wasm_canary_e2e::workspace_root().join("../shared/fixtures/tse-gitops-demo")
}

/// Every object of a multi-document YAML stream.
pub fn yaml_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

/// A control plane with the controller's CRDs and istiod running as revision `tsb`: the seed's
/// Istio objects are labelled for Tetrate's control plane revision, and istiod runs as that
/// revision, as the seed's cluster does.
pub async fn plane_with_seed_istiod() -> (ControlPlane, kube::Client, canary_mesh::Istiod) {
    let plane = ControlPlane::start().await.unwrap();
    let client = plane.client().await.unwrap();
    super::install_controller_crds(&plane).await;
    let istiod = canary_mesh::Istiod::start_revision(&plane, &client, "tsb")
        .await
        .unwrap();
    (plane, client, istiod)
}

/// The controller as the shipped Deployment runs it, but as a local process: the shipped
/// namespace, ServiceAccount and RBAC applied, and a kubeconfig holding that account's token.
pub async fn start_controller(plane: &ControlPlane, client: &kube::Client) -> OwnedProcess {
    let dir = tempfile::tempdir().unwrap();
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        objects::apply_yaml(client, "wasm-canary-system", &text)
            .await
            .unwrap();
    }
    let kubeconfig = dir.path().join("controller.kubeconfig");
    plane
        .write_kubeconfig_for_service_account(
            "wasm-canary-system",
            "wasm-canary-controller",
            &kubeconfig,
        )
        .await
        .unwrap();
    let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasm-canary-controller"));
    command
        .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "text"])
        .args(["--lease-namespace", "wasm-canary-system"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    OwnedProcess::spawn(&mut command, dir).unwrap()
}

/// `kubectl canary convert` on the seed's Rollout, Istio config and Bookinfo app, as a user
/// migrating from Argo Rollouts would run it.
pub fn convert_the_seed(wasm: &Path) -> Vec<Value> {
    convert_seed_with_rollout(wasm, &fixtures().join("argo/rollout/rollout.yaml"))
}

/// [`convert_the_seed`] for the seed's Rollout with Argo's `blueGreen` strategy `blue_green`
/// instead of its canary one, as a user of Argo's blue-green writes it (the rest of the
/// Rollout, and the seed's Istio config, as they are).
pub fn convert_the_seed_blue_green(wasm: &Path, blue_green: Value) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("argo/rollout/rollout.yaml")).unwrap();
    let mut rollout: Value = serde_yaml::from_str(&text).unwrap();
    rollout["spec"]["strategy"] = json!({ "blueGreen": blue_green });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollout-blue-green.yaml");
    std::fs::write(&path, serde_yaml::to_string(&rollout).unwrap()).unwrap();
    convert_seed_with_rollout(wasm, &path)
}

/// `kubectl canary convert` on the Rollout at `rollout` with the seed's Istio config.
fn convert_seed_with_rollout(wasm: &Path, rollout: &Path) -> Vec<Value> {
    let f = fixtures();
    let sha256 = sha256_hex(wasm);
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-canary"))
        .args(["convert", "-n", NS, "--client-selector", "app=productpage"])
        .arg("--wasm-url")
        .arg(format!("file://{}", wasm.display()))
        .args(["--wasm-sha256", &sha256])
        .arg("-f")
        .arg(rollout)
        .arg("-f")
        .arg(f.join("argo/tse/conf.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8(out.stdout).unwrap())
}

/// The SHA-256 of a file, as `sha256sum` prints it.
pub fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// The seed's Bookinfo application (Deployments, Services, ServiceAccounts).
pub fn seed_app() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("application/bookinfo.yaml")).unwrap();
    yaml_documents(&text)
}

/// The seed's Deployment `name` (a rollout's workloadRef) running `image`, scaled to 0 as
/// `convert` advises: the rollout's ReplicaSets run the pods.
pub fn seed_deployment(name: &str, image: &str) -> Value {
    let mut d = seed_app()
        .into_iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the seed has no Deployment {name}"));
    d["metadata"]["namespace"] = json!(NS);
    d["spec"]["replicas"] = json!(0);
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
    d
}

/// `kubectl canary <args> -n bookinfo`, as a user runs it; panics with its stderr if it fails.
pub fn kubectl_canary(plane: &ControlPlane, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-canary"))
        .args(args)
        .args(["-n", NS, "--kubeconfig"])
        .arg(plane.kubeconfig_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl canary {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Background user traffic to one Service through the caller (one keep-alive connection, no
/// sticky key), recording every response, until stopped. Bounded: at most 200,000 requests or
/// 10 minutes.
pub struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One response the load got.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    /// 0: no response (the connection failed).
    pub status: u16,
    /// The serving pod's hash (server-side tag), if any.
    pub hash: Option<String>,
}

impl Load {
    /// Starts sending requests with `Host: host` (`reviews:9080`) into the caller's sidecar.
    pub fn start(mesh: &Bookinfo, host: &str) -> Load {
        Self::start_with_headers(mesh, host, &[])
    }

    /// [`Load::start`] with `headers` on every request (testers' `x-preview: yes`, say).
    pub fn start_with_headers(mesh: &Bookinfo, host: &str, headers: &[(&str, &str)]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let mut http = mesh.http();
        let host = host.to_owned();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let thread = std::thread::spawn(move || {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let deadline = Instant::now() + Duration::from_secs(600);
            for _ in 0..200_000 {
                if s.load(Ordering::Relaxed) || Instant::now() > deadline {
                    return;
                }
                let r = http.get(&host, "/", &headers);
                let seen = match r {
                    Ok(r) => Seen {
                        at: Instant::now(),
                        status: r.status,
                        hash: r.header("x-rollouts-pod-template-hash").map(str::to_owned),
                    },
                    Err(_) => Seen {
                        at: Instant::now(),
                        status: 0,
                        hash: None,
                    },
                };
                v.lock().unwrap().push(seen);
            }
        });
        Load {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Every response so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops the load; every response it got.
    pub fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every response was a 200.
pub fn assert_all_ok(seen: &[Seen], what: &str) {
    let bad: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} responses not 200; first: {:?}",
        bad.len(),
        seen.len(),
        bad.first()
    );
}
