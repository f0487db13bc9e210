//! The fixture Rollout and its SkyWalking AnalysisTemplate, carried over (apiVersion changed,
//! trafficRouting.wasm instead of istio), on a real API server, judged by a local server that
//! answers SkyWalking's GraphQL as OAP does. Durations are shortened to seconds; nothing else
//! of the fixture is edited.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canary_cluster::ControlPlane;
use canary_controller::analysis::{AnalysisPhase, MetricResult};
use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::wasm_plugin_resource;
use canary_core::PluginConfig;
use chrono::{NaiveDateTime, Timelike, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use support::http_stub::{HttpStub, RecordedRequest, Reply};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(90);
/// The service the fixture's rollout asks about (its `service-name` argument): the canary.
const SERVICE: &str = "canary|reviews|bookinfo|cluster-1|-";
/// Another service OAP knows: the stable version. Its apdex is always the opposite verdict of
/// the canary's, so a query about the wrong service flips the outcome.
const STABLE_SERVICE: &str = "stable|reviews|bookinfo|cluster-1|-";

/// A stand-in for SkyWalking OAP's GraphQL endpoint, answering `readMetricsValues` as OAP 10.1
/// does: one point per minute of `$duration` (both ends included), each the service's apdex in
/// that minute; 0 for a service or a minute with no data. Each service's apdex is a cycle the
/// test sets, indexed by minute since the epoch, so every window has its own answer.
struct FakeOap {
    stub: HttpStub,
    apdex: Arc<Mutex<BTreeMap<String, Vec<i64>>>>,
}

impl FakeOap {
    async fn start(apdex: BTreeMap<String, Vec<i64>>) -> FakeOap {
        let apdex = Arc::new(Mutex::new(apdex));
        let series = apdex.clone();
        let stub = HttpStub::start(move |r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let (Some(service), Some((start, end))) = (
                service_name(body["query"].as_str().unwrap_or_default()),
                window(&body["variables"]["duration"]),
            ) else {
                return Reply::Json(
                    400,
                    json!({"errors": [{"message": "bad query"}]}).to_string(),
                );
            };
            Reply::ok(&json!({"data": apdex_answer(&series.lock().unwrap(), &service, start, end)}))
        })
        .await;
        FakeOap { stub, apdex }
    }

    fn url(&self) -> &str {
        &self.stub.url
    }

    /// Each service's apdex cycle from now on.
    fn set_apdex(&self, apdex: BTreeMap<String, Vec<i64>>) {
        *self.apdex.lock().unwrap() = apdex;
    }

    /// The answer OAP gives to a measurement taken at `started_at` (RFC 3339) with the
    /// fixture's window (`skywalking.interval: 3m`) for [`SERVICE`].
    fn expected_answer(&self, started_at: &str) -> Value {
        let end = chrono::DateTime::parse_from_rfc3339(started_at)
            .unwrap()
            .naive_utc();
        let minute = |t: NaiveDateTime| t.with_second(0).unwrap().with_nanosecond(0).unwrap();
        apdex_answer(
            &self.apdex.lock().unwrap(),
            SERVICE,
            minute(end - chrono::Duration::minutes(3)),
            minute(end),
        )
    }
}

/// `serviceName: "..."` in the GraphQL query.
fn service_name(query: &str) -> Option<String> {
    let rest = query.split_once("serviceName: \"")?.1;
    Some(rest.split_once('"')?.0.to_owned())
}

/// `$duration`'s start and end minutes.
fn window(duration: &Value) -> Option<(NaiveDateTime, NaiveDateTime)> {
    let parse = |v: &Value| NaiveDateTime::parse_from_str(v.as_str()?, "%Y-%m-%d %H%M").ok();
    Some((parse(&duration["start"])?, parse(&duration["end"])?))
}

/// `data` of OAP's answer: `service`'s apdex in each minute `start..=end`.
fn apdex_answer(
    apdex: &BTreeMap<String, Vec<i64>>,
    service: &str,
    start: NaiveDateTime,
    end: NaiveDateTime,
) -> Value {
    let minutes = |t: NaiveDateTime| t.and_utc().timestamp() / 60;
    let values: Vec<Value> = (minutes(start)..=minutes(end))
        .map(|m| {
            let v = apdex
                .get(service)
                .map_or(0, |cycle| cycle[usize::try_from(m).unwrap() % cycle.len()]);
            json!({"value": v})
        })
        .collect();
    json!({"service_apdex": {"label": null, "values": {"values": values}}})
}

/// Apdex cycles: the canary's, and the stable version's with the opposite verdict.
fn apdex(canary: &[i64], stable: &[i64]) -> BTreeMap<String, Vec<i64>> {
    BTreeMap::from([
        (SERVICE.to_owned(), canary.to_vec()),
        (STABLE_SERVICE.to_owned(), stable.to_vec()),
    ])
}

/// Every kept measurement's value is OAP's answer about [`SERVICE`] for the window ending when
/// it was taken: the right service, the right window, recorded as answered.
fn assert_measured_the_canary_over_its_window(oap: &FakeOap, metric: &MetricResult) {
    assert!(!metric.measurements.is_empty(), "{metric:#?}");
    for m in &metric.measurements {
        let value: Value = serde_json::from_str(m.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            value,
            oap.expected_answer(&m.started_at),
            "measurement taken at {}",
            m.started_at
        );
    }
}

struct Env {
    plane: Arc<ControlPlane>,
    client: Client,
    ns: String,
    controller: JoinHandle<()>,
    kubelet: JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.controller.abort();
        self.kubelet.abort();
    }
}

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/tse-gitops-demo/argo/rollout")
        .join(name);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

impl Env {
    async fn new(ns: &str) -> Env {
        let (plane, client) = support::namespace(ns).await;
        support::reviews_destination_rule(&client, ns).await;
        let kubelet = tokio::spawn(play_kubelet(client.clone(), ns.to_owned()));
        let (c, n) = (client.clone(), ns.to_owned());
        let controller =
            tokio::spawn(async move { canary_controller::reconcile::run(c, Some(n)).await });
        Env {
            plane,
            client,
            ns: ns.to_owned(),
            controller,
            kubelet,
        }
    }

    async fn apply(&self, api: &Api<DynamicObject>, name: &str, v: &Value) {
        api.patch(
            name,
            &PatchParams::apply("platform-team").force(),
            &Patch::Apply(v),
        )
        .await
        .unwrap();
    }

    async fn rollout(&self) -> CanaryRollout {
        Api::<CanaryRollout>::namespaced(self.client.clone(), &self.ns)
            .get("reviews-rollout")
            .await
            .unwrap()
    }

    async fn plugin_config(&self) -> Option<PluginConfig> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &wasm_plugin_resource());
        let wp = api.get_opt(&support::productpage_plugin()).await.unwrap()?;
        Some(PluginConfig::from_value(&wp.data["spec"]["pluginConfig"]).unwrap())
    }

    async fn until<T>(&self, what: &str, mut check: impl FnMut(&CanaryRollout) -> Option<T>) -> T {
        let start = tokio::time::Instant::now();
        loop {
            let r = self.rollout().await;
            if let Some(t) = check(&r) {
                return t;
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; status: {:#?}",
                r.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn set_image(&self, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "reviews", "image": image}]}}}});
        Api::<Deployment>::namespaced(self.client.clone(), &self.ns)
            .patch("reviews", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// The fixture's objects in this namespace, pointing at `oap`; healthy on v1. With
    /// `cluster_scope` the template is a ClusterAnalysisTemplate named after the namespace,
    /// referenced with `clusterScope: true`. Measurements every second, pauses of 2 s.
    async fn fixture_healthy_on_v1(&self, oap: &FakeOap, cluster_scope: bool) {
        self.fixture_with(oap.url(), cluster_scope, &Timing::FAST, SERVICE)
            .await;
    }

    /// [`Env::fixture_healthy_on_v1`] against the OAP at `address`, with `timing`, asking about
    /// `service` (the fixture's `service-name` argument).
    async fn fixture_with(
        &self,
        address: &str,
        cluster_scope: bool,
        timing: &Timing,
        service: &str,
    ) {
        let ns = &self.ns;
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "reviews", "namespace": ns},
            // The rollout runs the pods; the Deployment only holds the template (workloadRef).
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "reviews"}},
                     "template": {"metadata": {"labels": {"app": "reviews"}},
                                  "spec": {"containers": [{"name": "reviews", "image": "reviews:v1"}]}}}
        });
        Api::<Deployment>::namespaced(self.client.clone(), ns)
            .patch(
                "reviews",
                &PatchParams::apply("platform-team"),
                &Patch::Apply(&deployment),
            )
            .await
            .unwrap();

        let mut template = fixture("analysis.yaml");
        template["apiVersion"] = "wasmcanary.io/v1alpha1".into();
        template["metadata"]["namespace"] = json!(ns);
        let metric = &mut template["spec"]["metrics"][0];
        metric["interval"] = timing.interval.into();
        metric["provider"]["skywalking"]["address"] = json!(address);
        let template_name = if cluster_scope {
            template["kind"] = "ClusterAnalysisTemplate".into();
            template["metadata"]["name"] = json!(ns);
            template["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("namespace");
            let templates: Api<DynamicObject> = Api::all_with(
                self.client.clone(),
                &kube::api::ApiResource::erase::<
                    canary_controller::analysis::ClusterAnalysisTemplate,
                >(&()),
            );
            self.apply(&templates, ns, &template).await;
            ns.clone()
        } else {
            let templates: Api<DynamicObject> = Api::namespaced_with(
                self.client.clone(),
                ns,
                &kube::api::ApiResource::erase::<canary_controller::analysis::AnalysisTemplate>(&()),
            );
            self.apply(&templates, "apdex", &template).await;
            "apdex".to_owned()
        };

        let mut rollout = fixture("rollout.yaml");
        rollout["apiVersion"] = "wasmcanary.io/v1alpha1".into();
        rollout["kind"] = "CanaryRollout".into();
        rollout["metadata"]["namespace"] = json!(ns);
        let canary = &mut rollout["spec"]["strategy"]["canary"];
        if cluster_scope {
            canary["analysis"]["templates"] =
                json!([{"templateName": template_name, "clusterScope": true}]);
        }
        let istio = canary["trafficRouting"]["istio"].take();
        canary["trafficRouting"] = json!({"wasm": {
            "service": istio["virtualService"]["name"],
            "wasmPlugin": {"url": "oci://registry.example.com/wasm-canary/filter:0.1.0", "selector": {"app": "productpage"}},
            "destinationRule": {"name": istio["destinationRule"]["name"],
                "stableSubsetName": istio["destinationRule"]["stableSubsetName"],
                "canarySubsetName": istio["destinationRule"]["canarySubsetName"]}
        }});
        for step in canary["steps"].as_array_mut().unwrap() {
            if step.get("pause").is_some() {
                step["pause"]["duration"] = timing.pause.into();
            }
        }
        canary["analysis"]["args"][0]["value"] = json!(service);
        canary["abortScaleDownDelaySeconds"] = 2.into();
        canary["scaleDownDelaySeconds"] = 2.into();
        let rollouts: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            ns,
            &kube::api::ApiResource::erase::<CanaryRollout>(&()),
        );
        self.apply(&rollouts, "reviews-rollout", &rollout).await;
        self.until("v1 to be stable", |r| {
            (r.status.as_ref()?.phase == Phase::Healthy).then_some(())
        })
        .await;
    }
}

use canary_cluster::kubelet::play_kubelet;

/// The fixture's durations, shortened: the metric's `interval` and every pause.
struct Timing {
    interval: &'static str,
    pause: &'static str,
}

impl Timing {
    /// For the stand-in: a measurement a second.
    const FAST: Timing = Timing {
        interval: "1s",
        pause: "2s",
    };
}

/// What every query to OAP must look like: POST /graphql, the fixture's query with the
/// rollout's argument substituted, `$duration` the last 3 minutes at minute precision.
fn assert_skywalking_queries(requests: &[RecordedRequest]) {
    assert!(!requests.is_empty(), "SkyWalking was queried");
    for r in requests {
        assert_eq!((r.method.as_str(), r.target.as_str()), ("POST", "/graphql"));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        let query = body["query"].as_str().unwrap();
        assert_eq!(
            service_name(query).as_deref(),
            Some(SERVICE),
            "argument substituted: {query}"
        );
        assert!(
            query.contains("readMetricsValues") && !query.contains("{{"),
            "{query}"
        );
        let d = &body["variables"]["duration"];
        assert_eq!(d["step"], "MINUTE");
        let (start, end) = window(d).unwrap_or_else(|| panic!("minute precision: {d}"));
        assert_eq!(
            end - start,
            chrono::Duration::minutes(3),
            "skywalking.interval 3m: {d}"
        );
        assert!(
            (chrono::Utc::now() - end.and_utc()).num_seconds().abs() < 120,
            "ends now: {d}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_rollout_promotes_when_skywalking_apdex_stays_above_9900_from_a_cluster_template(
) {
    let oap = FakeOap::start(apdex(&[9950, 9990, 9970], &[9800])).await;
    let env = Env::new("analysis-sw-pass").await;
    // The template as a ClusterAnalysisTemplate this time: one platform-wide definition.
    env.fixture_healthy_on_v1(&oap, true).await;
    let v1 = env.rollout().await.status.unwrap().stable_hash.unwrap();
    env.set_image("reviews:v2").await;

    let status = env
        .until("the canary to be promoted", |r| {
            let s = r.status.as_ref()?;
            assert_ne!(s.phase, Phase::Aborted, "{:#?}", s);
            (s.phase == Phase::Healthy && s.stable_hash.as_deref() != Some(v1.as_str()))
                .then(|| s.clone())
        })
        .await;
    let run = &status.analysis_runs[0];
    assert_eq!(
        (run.name.as_str(), run.phase),
        ("background", AnalysisPhase::Successful)
    );
    let apdex = &run.metrics[0];
    assert!(
        apdex.successful >= 2,
        "measured every second from step 2: {apdex:#?}"
    );
    assert_eq!((apdex.failed, apdex.error), (0, 0), "{apdex:#?}");
    assert_measured_the_canary_over_its_window(&oap, apdex);
    assert_eq!(
        env.plugin_config().await.unwrap().services[0].canary_weight,
        0
    );
    assert_skywalking_queries(&oap.stub.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_rollout_aborts_to_weight_zero_when_skywalking_apdex_drops_below_9900() {
    let oap = FakeOap::start(apdex(&[9950, 9800], &[9990])).await;
    let env = Env::new("analysis-sw-fail").await;
    env.fixture_healthy_on_v1(&oap, false).await;
    env.set_image("reviews:v2").await;

    // Traffic reached the canary before the analysis judged it...
    env.until("the canary to take traffic", |r| {
        (r.status.as_ref()?.canary_weight >= 1000).then_some(())
    })
    .await;
    // ...and failureLimit 3: the fourth failed measurement aborts.
    let status = env
        .until("the analysis to abort the rollout", |r| {
            let s = r.status.as_ref()?;
            assert_ne!(
                s.phase,
                Phase::Healthy,
                "promoted despite a failing apdex: {:#?}",
                s
            );
            (s.phase == Phase::Aborted).then(|| s.clone())
        })
        .await;
    assert!(status.analysis_aborted);
    let run = &status.analysis_runs[0];
    assert_eq!(run.phase, AnalysisPhase::Failed);
    assert_eq!(run.metrics[0].failed, 4, "{:#?}", run.metrics[0]);
    assert_measured_the_canary_over_its_window(&oap, &run.metrics[0]);
    let message = status.message.unwrap();
    assert!(message.contains("analysis background Failed"), "{message}");
    let config = env.plugin_config().await.unwrap();
    assert_eq!(
        config.services[0].canary_weight, 0,
        "all traffic back on stable"
    );
    assert!(config.services[0].header_routes.is_empty());
    assert_skywalking_queries(&oap.stub.requests());
    // No measurement once aborted.
    let taken = oap.stub.requests().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        oap.stub.requests().len(),
        taken,
        "no queries after the abort"
    );

    // The service is fixed; `kubectl canary retry` starts the same canary again from step 0 with
    // a fresh analysis, which now passes, and the canary is promoted.
    oap.set_apdex(apdex(&[9950, 9990], &[9800]));
    let v1 = status.stable_hash.clone().unwrap();
    let v2 = status.canary_hash.clone().unwrap();
    let (kubeconfig, ns) = (env.plane.kubeconfig_path().to_owned(), env.ns.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-canary"))
            .args(["retry", "reviews-rollout", "-n", &ns])
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "kubectl canary retry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("retrying"));
    let status = env
        .until("the retried canary to be promoted", |r| {
            let s = r.status.as_ref()?;
            (s.phase == Phase::Healthy && s.stable_hash.as_deref() == Some(v2.as_str()))
                .then(|| s.clone())
        })
        .await;
    assert_ne!(v1, v2);
    assert!(!status.analysis_aborted && !status.aborted);
    let run = &status.analysis_runs[0];
    assert_eq!(run.phase, AnalysisPhase::Successful, "{run:#?}");
    assert_eq!(
        (run.metrics[0].failed, run.metrics[0].error),
        (0, 0),
        "a fresh run, not the failed one's counts: {run:#?}"
    );
    assert!(
        !env.rollout().await.spec.abort,
        "retry leaves spec.abort unset"
    );
}

/// A real OAP's one-minute buckets: a measurement a minute, pauses of a minute after the
/// analysis starts (step 2), so a failing canary reaches the fixture's `failureLimit: 3`
/// (a fourth failed measurement, 3 minutes in) before the rollout could promote.
const REAL: Timing = Timing {
    interval: "1m",
    pause: "1m",
};

/// Reports `service`'s requests to `oap` until dropped: 10 a second at `latency_ms`, after
/// 20 a minute for the past 4 minutes (the canary's traffic during the steps before the
/// analysis started, which the tests do not wait through).
struct Traffic {
    task: Option<std::thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Traffic {
    fn start(oap: Arc<support::oap::Oap>, service: &'static str, latency_ms: u64) -> Traffic {
        let now = || chrono::Utc::now().timestamp_millis();
        for minutes_ago in 1..=4 {
            oap.send_segments(service, &[latency_ms; 20], now() - minutes_ago * 60_000);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                oap.send_segments(service, &[latency_ms; 10], now());
                std::thread::sleep(Duration::from_secs(1)); // the traffic's own pace
            }
        });
        Traffic {
            task: Some(task),
            stop,
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.join();
        }
    }
}

/// Requests through `addr` on `connections` keep-alive connections until dropped (each waits
/// for its answer: bounded by the app's pace).
struct GatewayLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl GatewayLoad {
    fn start(addr: std::net::SocketAddr, connections: usize) -> GatewayLoad {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut http = wasm_canary_e2e::http::Client::new(addr);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = http.get("reviews", "/", &[]);
                    }
                })
            })
            .collect();
        GatewayLoad { stop, threads }
    }
}

impl Drop for GatewayLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits (at most 10 minutes) until the canary is promoted or aborted; the status then.
async fn until_ended(env: &Env, what: &str) -> canary_controller::crd::CanaryRolloutStatus {
    let deadline = Duration::from_secs(600);
    let start = tokio::time::Instant::now();
    loop {
        let r = env.rollout().await;
        let status = r.status.clone().unwrap_or_default();
        let promoted = status.phase == Phase::Healthy
            && !status.analysis_runs.is_empty()
            && status.canary_hash.is_none();
        if status.phase == Phase::Aborted || promoted {
            return status;
        }
        assert!(
            start.elapsed() < deadline,
            "{what} not within {deadline:?}: {status:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The fixture's template, unchanged but for `interval: 1m`, against a real SkyWalking OAP
/// (`make oap-build`) fed with the canaries' requests: a fast canary (50 ms, apdex 10000,
/// reported as segments) is promoted; a slow one (1 s, tolerating: apdex 5000), whose requests
/// go through an Envoy sending access logs to OAP as in the seed's mesh, is aborted at its
/// fourth failed measurement. About 6 minutes: the real one-minute granularity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn against_a_real_oap_the_fixture_promotes_a_fast_canary_and_aborts_a_slow_one() {
    const FAST: &str = "canary|reviews|analysis-oap-fast|cluster-1|-";
    const SLOW: &str = "canary|reviews|analysis-oap-slow|cluster-1|-";
    // OAP writes a minute to storage every persistentPeriod (25 s by default); until then the
    // current minute reads 0 and the fixture's all(... >= 9900) fails. 2 s here: see README.
    let oap = Arc::new(
        tokio::task::spawn_blocking(|| support::oap::Oap::start(Duration::from_secs(2)))
            .await
            .unwrap(),
    );
    let _fast_traffic = Traffic::start(oap.clone(), FAST, 50);
    // The slow canary the seed's way: its requests go through an Envoy that sends its access
    // logs to OAP (ALS, mx-mesh); the app answers in 1 s (tolerating: apdex 5000).
    let gateway = support::oap::AlsGateway::start(
        &oap,
        "analysis-oap-slow",
        "canary",
        Duration::from_secs(1),
    );
    let _slow_traffic = GatewayLoad::start(gateway.addr, 4);
    let fast = Env::new("analysis-oap-fast").await;
    let slow = Env::new("analysis-oap-slow").await;
    let url = oap.url();
    tokio::join!(
        fast.fixture_with(&url, false, &REAL, FAST),
        slow.fixture_with(&url, false, &REAL, SLOW)
    );
    let v1 = fast.rollout().await.status.unwrap().stable_hash.unwrap();
    // The analysis starts a pause (1 minute) after the canary and measures every minute: start
    // the canaries at 15-30 s into a minute, so every measurement falls mid-minute. One taken in
    // a minute's first seconds reads that minute as 0 until OAP has written it (every
    // persistentPeriod), failing even a perfect canary (tests/oap/README.md).
    let second = u64::from(Utc::now().second());
    let wait = match second {
        0..15 => 15 - second,
        15..=30 => 0,
        _ => 75 - second,
    };
    tokio::time::sleep(Duration::from_secs(wait)).await; // wall-clock alignment, not readiness
    fast.set_image("reviews:v2").await;
    slow.set_image("reviews:v2").await;
    let (promoted, aborted) = tokio::join!(
        until_ended(&fast, "the fast canary's promotion"),
        until_ended(&slow, "the slow canary's abort")
    );
    assert_eq!(
        promoted.phase,
        Phase::Healthy,
        "the fast canary: {promoted:#?}"
    );
    assert_ne!(promoted.stable_hash.as_deref(), Some(v1.as_str()));
    let run = &promoted.analysis_runs[0];
    assert_eq!(run.phase, AnalysisPhase::Successful, "{run:#?}");
    assert!(run.metrics[0].successful >= 2, "{run:#?}");
    assert_eq!(
        aborted.phase,
        Phase::Aborted,
        "the slow canary: {aborted:#?}"
    );
    assert!(aborted.analysis_aborted);
    let run = &aborted.analysis_runs[0];
    assert_eq!(run.phase, AnalysisPhase::Failed, "{run:#?}");
    assert_eq!(run.metrics[0].failed, 4, "{run:#?}");
    // What the real OAP answered: one point per minute of the 3-minute window, both ends
    // included (4), `label` null; for the slow canary every point 0 (frustrated requests, and
    // a minute without data also reads 0).
    let points = |value: &Option<String>| -> Vec<i64> {
        let v: Value = serde_json::from_str(value.as_deref().unwrap()).unwrap();
        assert!(v["service_apdex"]["label"].is_null(), "{v}");
        v["service_apdex"]["values"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["value"].as_i64().unwrap())
            .collect()
    };
    for m in &run.metrics[0].measurements {
        let p = points(&m.value);
        assert!(p.len() == 4 && p.iter().all(|v| *v < 9_900), "{m:#?}");
    }
    // The access logs reached OAP and drove the canary's apdex to "tolerating".
    let last = points(&run.metrics[0].measurements.last().unwrap().value);
    assert!(
        last.contains(&5_000),
        "the slow canary's apdex from its access logs: {last:?}"
    );
    assert!(gateway.app.served() > 100, "{}", gateway.app.served());
    let fast_run = &promoted.analysis_runs[0].metrics[0];
    let successes: Vec<&_> = fast_run
        .measurements
        .iter()
        .filter(|m| m.phase == AnalysisPhase::Successful)
        .collect();
    for m in &successes {
        let p = points(&m.value);
        assert!(p.len() == 4 && p.iter().all(|v| *v >= 9_900), "{m:#?}");
    }
    eprintln!(
        "fast canary: {} measurements, {} failed; slow canary: {} failed",
        fast_run.measurements.len(),
        fast_run.failed,
        run.metrics[0].failed
    );
    assert_eq!(
        slow.plugin_config().await.unwrap().services[0].canary_weight,
        0
    );
}
