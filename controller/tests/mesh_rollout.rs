//! The controller driving a real Istio mesh: istiod reads what the controller writes
//! (WasmPlugin pluginConfig, DestinationRule subsets) from the real API server and pushes it to
//! Envoy sidecars; the rollout is the seed demo's Argo Rollout converted by `kubectl canary
//! convert`; the controller runs as a process with only its shipped RBAC; the pods the
//! ReplicaSets create run as apps behind their own sidecars (tests/mesh `MeshKubelet`).
//! Traffic is sent into the caller's (productpage's) sidecar, as productpage would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canary_cluster::ControlPlane;
use canary_controller::crd::{CanaryRollout, Phase};
use canary_mesh::kubelet::MeshKubelet;
use canary_mesh::sidecar::running_plugin_configs;
use canary_mesh::{objects, Bookinfo, Istiod};
use kube::api::Api;
use serde_json::{json, Value};
use wasm_canary_e2e::assert_binomial;
use wasm_canary_e2e::http::Response;

const NS: &str = "bookinfo";
const ROLLOUT: &str = "reviews-rollout";
const WAIT: Duration = Duration::from_secs(120);

fn fixtures() -> PathBuf {
    wasm_canary_e2e::workspace_root().join("../shared/fixtures/tse-gitops-demo")
}

fn yaml_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

/// A process killed when the test ends, also on failure.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The controller as the shipped Deployment runs it, but as a local process: the shipped
/// namespace, ServiceAccount and RBAC applied, and a kubeconfig holding that account's token.
async fn start_controller(plane: &ControlPlane, client: &kube::Client, dir: &Path) -> Process {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        objects::apply_yaml(client, "wasm-canary-system", &text)
            .await
            .unwrap();
    }
    let kubeconfig = dir.join("controller.kubeconfig");
    plane
        .write_kubeconfig_for_service_account(
            "wasm-canary-system",
            "wasm-canary-controller",
            &kubeconfig,
        )
        .await
        .unwrap();
    let log = std::fs::File::create(dir.join("controller.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wasm-canary-controller"))
        .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "text"])
        .args(["--lease-namespace", "wasm-canary-system"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Process(child)
}

/// `kubectl canary convert` on the seed's Rollout, Istio config and Bookinfo app, as a user
/// migrating from Argo Rollouts would run it.
fn convert_the_seed(wasm: &Path) -> Vec<Value> {
    let f = fixtures();
    let sha256 = sha256_hex(wasm);
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-canary"))
        .args(["convert", "-n", NS, "--client-selector", "app=productpage"])
        .arg("--wasm-url")
        .arg(format!("file://{}", wasm.display()))
        .args(["--wasm-sha256", &sha256])
        .arg("-f")
        .arg(f.join("argo/rollout/rollout.yaml"))
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

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// The seed's Bookinfo application (Deployments, Services, ServiceAccounts).
fn seed_app() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("application/bookinfo.yaml")).unwrap();
    yaml_documents(&text)
}

/// The seed's Deployment `reviews` (the Rollout's workloadRef), scaled to 0 as `convert`
/// advises: the rollout's ReplicaSets run the pods.
fn seed_reviews_deployment(image: &str) -> Value {
    let mut d = seed_app()
        .into_iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "reviews")
        .expect("the seed has Deployment reviews");
    d["metadata"]["namespace"] = json!(NS);
    d["spec"]["replicas"] = json!(0);
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
    d
}

async fn until<T>(
    api: &Api<CanaryRollout>,
    what: &str,
    mut check: impl FnMut(&CanaryRollout) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        let r = api.get(ROLLOUT).await.unwrap();
        if let Some(t) = check(&r) {
            return t;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: not within {WAIT:?}; status {:#?}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The canary weight (basis points) the caller's sidecar runs now for `reviews`.
fn weight_in_caller(mesh: &Bookinfo) -> Option<u64> {
    running_plugin_configs(&mesh.caller)
        .ok()?
        .into_iter()
        .find_map(|(_, c)| c["services"][0]["canaryWeight"].as_u64())
}

/// Waits until the caller's sidecar runs `weight`; returns how long that took.
fn until_caller_runs(mesh: &Bookinfo, weight: u64) -> Duration {
    let start = Instant::now();
    while weight_in_caller(mesh) != Some(weight) {
        assert!(
            start.elapsed() < WAIT,
            "the caller's sidecar never ran canaryWeight {weight} (runs {:?})",
            weight_in_caller(mesh)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Sends `n` user requests (no test header, no sticky key) through the caller; returns how
/// many the canary served. Every response is a 200 tagged with the hash of the pod that served
/// it (the server-side filter), which is `stable` or `canary`.
fn split(mesh: &Bookinfo, n: u64, stable: &str, canary: &str) -> u64 {
    let mut http = mesh.http();
    let mut on_canary = 0;
    for i in 0..n {
        let r: Response = http.get("reviews:9080", "/", &[]).unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let app = r.header("x-app-version").unwrap();
        assert_eq!(
            r.header("x-rollouts-pod-template-hash"),
            Some(app),
            "tagged with the serving pod's hash"
        );
        if app == canary {
            on_canary += 1;
        } else {
            assert_eq!(app, stable, "served by stable or canary only");
        }
    }
    on_canary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_rollout_shifts_real_traffic_at_every_step_and_promotes_in_a_real_mesh() {
    let plane = ControlPlane::start().await.unwrap();
    let client = plane.client().await.unwrap();
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds");
    for crd in [
        "canaryrollout.yaml",
        "analysistemplate.yaml",
        "clusteranalysistemplate.yaml",
    ] {
        plane.install_crds(&crds.join(crd)).await.unwrap();
    }
    // The seed's Istio objects are labelled for the control plane revision `tsb` (Tetrate's);
    // run istiod as that revision, as the seed's cluster does.
    let istiod = Istiod::start_revision(&plane, &client, "tsb")
        .await
        .unwrap();
    let mesh = Bookinfo::start(&plane, &client, &istiod, NS, &[])
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let _controller = start_controller(&plane, &client, work.path()).await;
    let kubelet = MeshKubelet::start(
        client.clone(),
        istiod.grpc,
        NS,
        "reviews",
        mesh.subnet.clone(),
    );

    // What the user applies: the converted seed (analysis left to the SkyWalking issue;
    // pauses held until the test promotes, so each weight is measured as long as needed).
    let wasm = wasm_canary_e2e::filter_wasm().unwrap();
    for account in seed_app().iter().filter(|d| d["kind"] == "ServiceAccount") {
        objects::apply(&client, NS, account).await.unwrap();
    }
    objects::apply(
        &client,
        NS,
        &seed_reviews_deployment("docker.io/istio/examples-bookinfo-reviews-v1:1.17.0"),
    )
    .await
    .unwrap();
    for mut object in convert_the_seed(&wasm) {
        if object["kind"] == "CanaryRollout" {
            object["spec"]["replicas"] = json!(2);
            object["spec"]["strategy"]["canary"]
                .as_object_mut()
                .unwrap()
                .remove("analysis");
            for step in object["spec"]["strategy"]["canary"]["steps"]
                .as_array_mut()
                .unwrap()
            {
                if step.get("pause").is_some() {
                    *step = json!({"pause": {}});
                }
            }
            object["spec"]["strategy"]["canary"]["scaleDownDelaySeconds"] = json!(5);
        }
        objects::apply(&client, NS, &object).await.unwrap();
    }
    let rollouts: Api<CanaryRollout> = Api::namespaced(client.clone(), NS);
    let v1 = until(&rollouts, "the first version Healthy", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Healthy)
            .then(|| s.stable_hash.clone())
            .flatten()
    })
    .await;
    // All traffic on v1 once its pods are Ready in the mesh.
    let start = Instant::now();
    loop {
        let mut http = mesh.http();
        if let Ok(r) = http.get("reviews:9080", "/", &[]) {
            if r.status == 200 && r.header("x-rollouts-pod-template-hash") == Some(v1.as_str()) {
                break;
            }
        }
        assert!(start.elapsed() < WAIT, "v1 never served through the mesh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A new version: the seed changes the Deployment's image.
    objects::apply(
        &client,
        NS,
        &seed_reviews_deployment("docker.io/istio/examples-bookinfo-reviews-v2:1.17.0"),
    )
    .await
    .unwrap();
    let v2 = until(&rollouts, "a canary", |r| {
        r.status.as_ref()?.canary_hash.clone()
    })
    .await;
    assert_ne!(v1, v2);

    let n = 2_000u64;
    let mut push_latencies = Vec::new();
    for (step, weight) in [
        (1, 1_000u64),
        (3, 2_000),
        (5, 4_000),
        (7, 6_000),
        (9, 8_000),
    ] {
        until(
            &rollouts,
            &format!("paused after setWeight {weight}"),
            |r| {
                let s = r.status.as_ref()?;
                (s.current_step_index == Some(step) && u64::from(s.canary_weight) == weight)
                    .then_some(())
            },
        )
        .await;
        push_latencies.push(until_caller_runs(&mesh, weight));
        let canary = split(&mesh, n, &v1, &v2);
        assert_binomial(
            canary,
            n,
            weight as f64 / 10_000.0,
            &format!("split at {weight} bp"),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-canary"))
            .args(["promote", ROLLOUT, "-n", NS, "--kubeconfig"])
            .arg(plane.kubeconfig_path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    until(&rollouts, "v2 promoted", |r| {
        (r.status.as_ref()?.stable_hash.as_deref() == Some(v2.as_str())).then_some(())
    })
    .await;
    until_caller_runs(&mesh, 0);
    let canary_after = split(&mesh, 200, &v2, &v1);
    assert_eq!(
        canary_after, 0,
        "after promotion every request is served by v2 (the new stable)"
    );
    eprintln!("controller step -> config running in the caller's sidecar: {push_latencies:?}");
    drop(kubelet);
}
