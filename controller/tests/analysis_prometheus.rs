//! Analysis with a real Prometheus scraping a real Envoy: the e2e harness's mesh (client
//! sidecar with the wasm filter, stable and canary sidecars and apps) serves load; this test
//! plays istiod, pushing the WasmPlugin the controller writes (on a real API server) to the
//! client sidecar; Prometheus (Debian package `prometheus`, started here on a free loopback
//! port) scrapes the sidecar's `/stats/prometheus`. A canary answering 500s fails the
//! analysis step and the rollout aborts; a healthy one promotes.
//!
//! Needs `make wasm` (the filter) and the Envoy of `make setup`, plus `prometheus` on PATH.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_cluster::ControlPlane;
use canary_controller::analysis::{AnalysisPhase, AnalysisTemplate};
use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::wasm_plugin_resource;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::Client;
use serde_json::{json, Value};
use support::owned_process::{free_loopback_addr, OwnedProcess};
use tokio::task::JoinHandle;
use wasm_canary_e2e::mesh::{reviews_config, Mesh};

const WAIT: Duration = Duration::from_secs(120);

/// A Prometheus server owned by the test: killed on drop, also when the test fails.
struct Prometheus {
    process: OwnedProcess,
    addr: std::net::SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets`' `/stats/prometheus` every second; returns once
    /// `/-/ready` answers 200 (bounded).
    fn start(targets: &[std::net::SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - job_name: envoy\n  metrics_path: /stats/prometheus\n  static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr = free_loopback_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut command = Command::new("prometheus");
        command
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log);
        let process = OwnedProcess::spawn(&mut command, dir)
            .expect("prometheus on PATH (Debian package `prometheus`; `make setup` installs it)");
        let p = Prometheus { process, addr };
        let start = Instant::now();
        loop {
            if wasm_canary_e2e::http::admin_get(addr, "/-/ready").is_ok_and(|r| r.status == 200) {
                return p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Prometheus not ready in 30s: {}",
                std::fs::read_to_string(p.process.dir().join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (bounded) until Prometheus has scraped every target successfully.
    fn wait_for_target_up(&self) {
        let start = Instant::now();
        loop {
            let up = wasm_canary_e2e::http::admin_get(self.addr, "/api/v1/query?query=min(up)")
                .ok()
                .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
                .is_some_and(|v| v["data"]["result"][0]["value"][1] == "1");
            if up {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Envoy never scraped"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Load on the client sidecar in bounded batches until dropped (and at most `WAIT`).
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) && start.elapsed() < WAIT {
                wasm_canary_e2e::http::run_load(
                    addr,
                    "reviews",
                    100,
                    2,
                    Duration::from_secs(2),
                    |_| Vec::new(),
                );
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
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

struct Env {
    _plane: Arc<ControlPlane>,
    client: Client,
    ns: String,
    /// The controller, the kubelet and istiod stand-ins: each runs until aborted.
    tasks: Vec<JoinHandle<()>>,
    /// The last pluginConfig the istiod stand-in got Envoy to accept.
    pushed: Arc<std::sync::Mutex<String>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Env {
    async fn new(ns: &str, mesh: Arc<Mesh>) -> Env {
        Self::with_stale_caller(ns, mesh, None).await
    }

    /// [`Env::new`], the istiod stand-in also feeding `stale` the configs that send nothing to
    /// the canary by weight ([`play_istiod_with_stale_caller`]).
    async fn with_stale_caller(ns: &str, mesh: Arc<Mesh>, stale: Option<Arc<Mesh>>) -> Env {
        let (plane, client) = support::namespace(ns).await;
        support::reviews_destination_rule(&client, ns).await;
        let (c, n) = (client.clone(), ns.to_owned());
        let controller =
            tokio::spawn(async move { canary_controller::reconcile::run(c, Some(n)).await });
        let kubelet = tokio::spawn(play_kubelet(client.clone(), ns.to_owned()));
        let pushed = Arc::new(std::sync::Mutex::new(String::new()));
        let istiod = tokio::spawn(play_istiod_with_stale_caller(
            client.clone(),
            ns.to_owned(),
            mesh,
            stale,
            pushed.clone(),
        ));
        Env {
            _plane: plane,
            client,
            ns: ns.to_owned(),
            tasks: vec![controller, kubelet, istiod],
            pushed,
        }
    }

    async fn apply(&self, resource: &ApiResource, name: &str, v: &Value) {
        support::apply_as_platform_team(&self.client, &self.ns, resource, name, v).await;
    }

    async fn rollout(&self) -> CanaryRollout {
        Api::<CanaryRollout>::namespaced(self.client.clone(), &self.ns)
            .get("reviews")
            .await
            .unwrap()
    }

    /// Waits until the first version is Healthy and `prometheus` scrapes every sidecar.
    async fn healthy_and_scraped(&mut self, prometheus: Prometheus) -> Arc<Prometheus> {
        self.until("v1 to be stable", |r| {
            (r.status.as_ref()?.phase == Phase::Healthy).then_some(())
        })
        .await;
        let p = Arc::new(prometheus);
        let pp = p.clone();
        tokio::task::spawn_blocking(move || pp.wait_for_target_up())
            .await
            .unwrap();
        p
    }

    /// A background task that ended has panicked (the istiod stand-in's assertion that the
    /// filter accepted the controller's pluginConfig, say): re-raises its panic here, where the
    /// test observes it. A panic in a spawned task is otherwise lost with its JoinHandle.
    async fn assert_tasks_running(&mut self) {
        for task in &mut self.tasks {
            if task.is_finished() {
                match task.await {
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    ended => panic!("a background task ended: {ended:?}"),
                }
            }
        }
    }

    async fn until<T>(
        &mut self,
        what: &str,
        mut check: impl FnMut(&CanaryRollout) -> Option<T>,
    ) -> T {
        let start = tokio::time::Instant::now();
        loop {
            self.assert_tasks_running().await;
            let r = self.rollout().await;
            if let Some(t) = check(&r) {
                return t;
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; status: {:#?}",
                r.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn rollout_spec(&self, image: &str) -> Value {
        let args = json!([{"name": "cluster", "value": "reviews-canary"}]);
        let mut rollout =
            support::rollout_with_analysis_step(&self.ns, image, 2, 50, "error-rate", args);
        // The mesh's client sidecar calls `reviews.bookinfo`.
        rollout["spec"]["strategy"]["canary"]["trafficRouting"]["wasm"]["hosts"] = json!([
            "reviews.bookinfo",
            "reviews.bookinfo.svc",
            "reviews.bookinfo.svc.cluster.local"
        ]);
        rollout
    }

    /// The error-rate template: the canary cluster's 5xx share of the last 5 s, from the
    /// client sidecar's upstream stats (Envoy exports `cluster.<name>.upstream_rq_5xx` as
    /// `envoy_cluster_upstream_rq_xx{envoy_response_code_class="5"}`); and that the canary
    /// takes traffic at all.
    async fn apply_template(&self, prometheus: &str) {
        let rate = |class: &str| {
            format!(
                "sum(rate(envoy_cluster_upstream_rq_xx{{envoy_cluster_name=\"{{{{ args.cluster }}}}\",envoy_response_code_class{class}}}[5s]))"
            )
        };
        let template = json!({
            "apiVersion": "wasmcanary.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "error-rate", "namespace": self.ns},
            "spec": {
                "args": [{"name": "cluster"}],
                "metrics": [
                    {"name": "canary-5xx-ratio", "interval": "2s", "initialDelay": "4s", "count": 2,
                     "successCondition": "result[0] < 0.05", "failureLimit": 0,
                     "provider": {"prometheus": {"address": prometheus, "timeout": 5,
                         "query": format!("({} or vector(0)) / {}", rate("=\"5\""), rate("=~\".+\""))}}},
                    {"name": "canary-requests-per-second", "interval": "2s", "initialDelay": "4s", "count": 2,
                     "successCondition": "result[0] > 1",
                     "provider": {"prometheus": {"address": prometheus, "query": rate("=~\".+\"")}}}
                ]
            }
        });
        self.apply(
            &ApiResource::erase::<AnalysisTemplate>(&()),
            "error-rate",
            &template,
        )
        .await;
    }
}

use canary_cluster::kubelet::play_kubelet;

/// What istiod does with a WasmPlugin: its pluginConfig reaches the client sidecar (ECDS); and,
/// with a second caller (`stale`), that gets only the configs sending no
/// request to the canary by weight: a sidecar that lost istiod before the first setWeight
/// reached it, and keeps deciding with the old config.
async fn play_istiod_with_stale_caller(
    client: Client,
    ns: String,
    mesh: Arc<Mesh>,
    stale: Option<Arc<Mesh>>,
    accepted: Arc<std::sync::Mutex<String>>,
) {
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &wasm_plugin_resource());
    let mut pushed = String::new();
    loop {
        if let Ok(Some(wp)) = api.get_opt("wasm-canary").await {
            let config = wp.data["spec"]["pluginConfig"].to_string();
            if config != pushed {
                let m = mesh.clone();
                let c = config.clone();
                let push = tokio::task::spawn_blocking(move || m.push_config(&c)).await;
                assert!(
                    matches!(push, Ok(Ok(wasm_canary_e2e::mesh::Push::Accepted))),
                    "the filter refused the controller's pluginConfig {config}: {push:?}"
                );
                let no_weight = wp.data["spec"]["pluginConfig"]["services"]
                    .as_object()
                    .is_some_and(|by_name| by_name.values().all(|s| s["canaryWeight"] == 0));
                if let Some(stale) = stale.clone().filter(|_| no_weight) {
                    let c = config.clone();
                    let push = tokio::task::spawn_blocking(move || stale.push_config(&c)).await;
                    assert!(
                        matches!(push, Ok(Ok(wasm_canary_e2e::mesh::Push::Accepted))),
                        "the stale caller refused {config}: {push:?}"
                    );
                }
                pushed = config;
                *accepted.lock().unwrap() = pushed.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_canary(
    canary_status: u16,
    ns: &str,
) -> (CanaryRollout, wasm_canary_e2e::http::LoadReport) {
    let mesh = Arc::new(
        tokio::task::spawn_blocking(|| Mesh::start(&reviews_config(0)))
            .await
            .unwrap()
            .unwrap(),
    );
    mesh.canary.set_status(canary_status);
    let admin = mesh.client.admin;
    let prometheus = tokio::task::spawn_blocking(move || Prometheus::start(&[admin]))
        .await
        .unwrap();
    let mut env = Env::new(ns, mesh.clone()).await;
    env.apply_template(&prometheus.url()).await;
    env.apply(
        &ApiResource::erase::<CanaryRollout>(&()),
        "reviews",
        &env.rollout_spec("reviews:v1"),
    )
    .await;
    let p = env.healthy_and_scraped(prometheus).await;
    let load = Load::start(mesh.client_addr);
    env.apply(
        &ApiResource::erase::<CanaryRollout>(&()),
        "reviews",
        &env.rollout_spec("reviews:v2"),
    )
    .await;
    let done = env
        .until("the analysis to decide", |r| {
            let s = r.status.as_ref()?;
            let decided = matches!(s.phase, Phase::Aborted)
                || (s.phase == Phase::Healthy
                    && s.analysis_runs
                        .iter()
                        .any(|a| a.phase == AnalysisPhase::Successful));
            decided.then(|| r.clone())
        })
        .await;
    drop(load);
    // istiod's push is asynchronous: measure "after" only once Envoy runs the controller's
    // latest pluginConfig (bounded).
    let wp: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &wasm_plugin_resource());
    let start = tokio::time::Instant::now();
    loop {
        env.assert_tasks_running().await;
        let current = wp.get("wasm-canary").await.unwrap().data["spec"]["pluginConfig"].to_string();
        if *env.pushed.lock().unwrap() == current {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "istiod stand-in never pushed {current}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // For the failure messages: which canary-cluster series Prometheus holds.
    let pa = p.addr;
    let series = tokio::task::spawn_blocking(move || {
        wasm_canary_e2e::http::admin_get(
            pa,
            "/api/v1/query?query=count%20by%20(__name__%2Cenvoy_response_code_class)(%7Benvoy_cluster_name%3D%22reviews-canary%22%7D)",
        )
        .map(|r| r.body)
        .unwrap_or_default()
    })
    .await
    .unwrap();
    eprintln!("canary-cluster series in Prometheus: {series}");
    env.assert_tasks_running().await;
    let report = wasm_canary_e2e::http::run_load(
        mesh.client_addr,
        "reviews",
        200,
        2,
        Duration::from_secs(10),
        |_| Vec::new(),
    );
    drop(env);
    drop(p);
    (done, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answering_500s_fails_its_prometheus_analysis_and_the_rollout_aborts_to_stable() {
    let (rollout, after) = run_canary(500, "analysis-prom-fail").await;
    let s = rollout.status.unwrap();
    assert_eq!(s.phase, Phase::Aborted, "{s:#?}");
    assert!(s.analysis_aborted);
    let run = &s.analysis_runs[0];
    assert_eq!(
        (run.name.as_str(), run.phase),
        ("step-1", AnalysisPhase::Failed),
        "{run:#?}"
    );
    let ratio = run
        .metrics
        .iter()
        .find(|m| m.name == "canary-5xx-ratio")
        .unwrap();
    assert_eq!(ratio.failed, 1, "{ratio:#?}");
    let v: f64 =
        serde_json::from_str::<Value>(ratio.measurements.last().unwrap().value.as_deref().unwrap())
            .unwrap()[0]
            .as_f64()
            .unwrap();
    assert!(v > 0.5, "the canary's 5xx share as Prometheus saw it: {v}");
    // Traffic is back on stable: every request answered by stable, none fails.
    assert_eq!(s.canary_weight, 0);
    assert_eq!(after.non_2xx(), 0, "{after:?}");
    assert_eq!(after.version("canary"), 0, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_passes_its_prometheus_analysis_and_is_promoted() {
    let (rollout, after) = run_canary(200, "analysis-prom-pass").await;
    let s = rollout.status.unwrap();
    assert_eq!(s.phase, Phase::Healthy, "{s:#?}");
    let run = &s.analysis_runs[0];
    assert_eq!(run.phase, AnalysisPhase::Successful, "{run:#?}");
    for m in &run.metrics {
        assert_eq!((m.successful, m.failed), (2, 0), "{m:#?}");
    }
    assert_eq!(after.non_2xx(), 0, "{after:?}");
}

/// A template checking the split the callers made: `wasmSplit` over the last 10 s (not before
/// the weight was in force), twice, 3 s apart; one measurement outside the weight fails it.
async fn apply_split_template(env: &Env, prometheus: &str) {
    let template = json!({
        "apiVersion": "wasmcanary.io/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "split", "namespace": env.ns},
        "spec": {"metrics": [{
            "name": "callers-split", "interval": "3s", "initialDelay": "8s", "count": 2,
            "successCondition": "result.within", "failureLimit": 0, "consecutiveErrorLimit": 2,
            "provider": {"wasmSplit": {"address": prometheus, "window": "10s", "minRequests": 200}}
        }]}
    });
    env.apply(
        &ApiResource::erase::<AnalysisTemplate>(&()),
        "split",
        &template,
    )
    .await;
}

/// A rollout at 50% whose analysis step checks the callers' split, with two callers under
/// load: the one istiod keeps up to date and, with `stale`, one that never got the setWeight.
/// The rollout when the analysis decided, and the run's last measurement.
async fn run_split_check(ns: &str, stale: bool) -> CanaryRollout {
    let start_mesh = || async {
        Arc::new(
            tokio::task::spawn_blocking(|| Mesh::start(&reviews_config(0)))
                .await
                .unwrap()
                .unwrap(),
        )
    };
    let mesh = start_mesh().await;
    let stale_mesh = if stale {
        Some(start_mesh().await)
    } else {
        None
    };
    let mut scraped = vec![mesh.client.admin];
    scraped.extend(stale_mesh.iter().map(|m| m.client.admin));
    let prometheus = tokio::task::spawn_blocking(move || Prometheus::start(&scraped))
        .await
        .unwrap();
    let mut env = Env::with_stale_caller(ns, mesh.clone(), stale_mesh.clone()).await;
    apply_split_template(&env, &prometheus.url()).await;
    let spec = |env: &Env, image: &str| {
        let mut r = env.rollout_spec(image);
        r["spec"]["strategy"]["canary"]["steps"][1]["analysis"] =
            json!({"templates": [{"templateName": "split"}]});
        r
    };
    env.apply(
        &ApiResource::erase::<CanaryRollout>(&()),
        "reviews",
        &spec(&env, "reviews:v1"),
    )
    .await;
    let p = env.healthy_and_scraped(prometheus).await;
    let _load = Load::start(mesh.client_addr);
    let _stale_load = stale_mesh.as_ref().map(|m| Load::start(m.client_addr));
    env.apply(
        &ApiResource::erase::<CanaryRollout>(&()),
        "reviews",
        &spec(&env, "reviews:v2"),
    )
    .await;
    let decided = env
        .until("the split check to decide", |r| {
            let s = r.status.as_ref()?;
            let decided = s.phase == Phase::Aborted
                || (s.phase == Phase::Healthy
                    && s.analysis_runs
                        .iter()
                        .any(|a| a.phase == AnalysisPhase::Successful));
            decided.then(|| r.clone())
        })
        .await;
    // For the failure messages: the filter's decision series Prometheus holds.
    let pa = p.addr;
    let names = tokio::task::spawn_blocking(move || {
        wasm_canary_e2e::http::admin_get(pa, "/api/v1/label/__name__/values")
            .map(|r| r.body)
            .unwrap_or_default()
    })
    .await
    .unwrap();
    let names: Value = serde_json::from_str(&names).unwrap_or(Value::Null);
    let decisions: Vec<&str> = names["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|n| n.contains("decision"))
        .collect();
    eprintln!("decision series in Prometheus: {decisions:?}");
    decided
}

/// The run's measurements of the split, as (canary, total, within).
fn split_measurements(rollout: &CanaryRollout) -> Vec<(u64, u64, bool)> {
    let run = &rollout.status.as_ref().unwrap().analysis_runs[0];
    run.metrics[0]
        .measurements
        .iter()
        .filter_map(|m| {
            let v: Value = serde_json::from_str(m.value.as_deref()?).ok()?;
            Some((
                v["canary"].as_u64()?,
                v["total"].as_u64()?,
                v["within"].as_bool()?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_the_callers_made_is_checked_through_prometheus_and_the_rollout_proceeds() {
    let rollout = run_split_check("analysis-split-ok", false).await;
    let s = rollout.status.as_ref().unwrap();
    assert_eq!(s.phase, Phase::Healthy, "{s:#?}");
    let measured = split_measurements(&rollout);
    eprintln!("split measured (canary, total, within): {measured:?}");
    assert!(!measured.is_empty(), "{s:#?}");
    for (canary, total, within) in measured {
        // 50%, exact binomial bounds of `total` (false-alarm rate 1e-6), as the provider judged.
        assert!(within && total >= 200, "{canary} of {total}");
        let region = canary_core::binomial::acceptance_region(total, 0.5, 1e-6).unwrap();
        assert!(region.contains(canary), "{canary} of {total}: {region}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_still_running_the_old_config_fails_the_split_check_and_the_rollout_aborts() {
    let rollout = run_split_check("analysis-split-stale", true).await;
    let s = rollout.status.as_ref().unwrap();
    assert_eq!(s.phase, Phase::Aborted, "{s:#?}");
    assert!(s.analysis_aborted);
    let measured = split_measurements(&rollout);
    eprintln!("split measured with a stale caller (canary, total, within): {measured:?}");
    let (canary, total, within) = *measured.last().expect("a measurement");
    assert!(!within, "{canary} of {total}");
    // Half the requests come from the stale caller (all to stable): about a quarter on canary.
    let share = canary as f64 / total as f64;
    assert!((0.1..0.4).contains(&share), "{canary} of {total}");
}
