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

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canary_cluster::ControlPlane;
use canary_controller::analysis::AnalysisPhase;
use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::wasm_plugin_resource;
use canary_core::PluginConfig;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(90);
const SERVICE: &str = "canary|reviews|bookinfo|cluster-1|-";

/// A stand-in for SkyWalking OAP's GraphQL endpoint: records every request, answers
/// `readMetricsValues` with the apdex values set by the test.
struct FakeOap {
    url: String,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    apdex: Arc<Mutex<Vec<i64>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeOap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOap {
    async fn start(apdex: Vec<i64>) -> FakeOap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let apdex = Arc::new(Mutex::new(apdex));
        let (reqs, values) = (requests.clone(), apdex.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (reqs, values) = (reqs.clone(), values.clone());
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut sock).await else {
                        return;
                    };
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    reqs.lock().unwrap().push((line, body));
                    let v: Vec<Value> = values
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|v| json!({"value": v}))
                        .collect();
                    let answer = json!({"data": {"service_apdex": {"label": null, "values": {"values": v}}}}).to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        FakeOap {
            url,
            requests,
            apdex,
            task,
        }
    }

    /// What the following queries answer.
    fn set_apdex(&self, values: Vec<i64>) {
        *self.apdex.lock().unwrap() = values;
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk))
                    .await
                    .ok()?
                    .ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some((head, buf[end + 4..end + 4 + len].to_vec()));
        }
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
        let wp = api.get_opt("reviews-rollout-canary").await.unwrap()?;
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
    /// referenced with `clusterScope: true`.
    async fn fixture_healthy_on_v1(&self, oap: &FakeOap, cluster_scope: bool) {
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
        metric["interval"] = "1s".into();
        metric["provider"]["skywalking"]["address"] = json!(oap.url);
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
                step["pause"]["duration"] = "2s".into();
            }
        }
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

/// What every query to OAP must look like: POST /graphql, the fixture's query with the
/// rollout's argument substituted, `$duration` the last 3 minutes at minute precision.
fn assert_skywalking_queries(requests: &[(String, Value)]) {
    assert!(!requests.is_empty(), "SkyWalking was queried");
    for (line, body) in requests {
        assert!(line.starts_with("POST /graphql "), "{line}");
        let query = body["query"].as_str().unwrap();
        assert!(
            query.contains(&format!(r#"serviceName: "{SERVICE}""#)),
            "argument substituted: {query}"
        );
        assert!(
            query.contains("readMetricsValues") && !query.contains("{{"),
            "{query}"
        );
        let d = &body["variables"]["duration"];
        assert_eq!(d["step"], "MINUTE");
        let parse = |v: &Value| {
            chrono::NaiveDateTime::parse_from_str(v.as_str().unwrap(), "%Y-%m-%d %H%M")
                .unwrap_or_else(|e| panic!("{v}: {e}"))
        };
        assert_eq!(
            parse(&d["end"]) - parse(&d["start"]),
            chrono::Duration::minutes(3),
            "skywalking.interval 3m: {d}"
        );
        let end = parse(&d["end"]).and_utc();
        assert!(
            (chrono::Utc::now() - end).num_seconds().abs() < 120,
            "ends now: {d}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_rollout_promotes_when_skywalking_apdex_stays_above_9900_from_a_cluster_template(
) {
    let oap = FakeOap::start(vec![9950, 9990, 9970]).await;
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
    assert!(apdex
        .measurements
        .iter()
        .all(|m| m.value.as_deref().unwrap().contains("9950")));
    assert_eq!(
        env.plugin_config().await.unwrap().services[0].canary_weight,
        0
    );
    assert_skywalking_queries(&oap.requests.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_rollout_aborts_to_weight_zero_when_skywalking_apdex_drops_below_9900() {
    let oap = FakeOap::start(vec![9950, 9800]).await;
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
    let message = status.message.unwrap();
    assert!(message.contains("analysis background Failed"), "{message}");
    let config = env.plugin_config().await.unwrap();
    assert_eq!(
        config.services[0].canary_weight, 0,
        "all traffic back on stable"
    );
    assert!(config.services[0].header_routes.is_empty());
    assert_skywalking_queries(&oap.requests.lock().unwrap());
    // No measurement once aborted.
    let taken = oap.requests.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        oap.requests.lock().unwrap().len(),
        taken,
        "no queries after the abort"
    );

    // The service is fixed; `kubectl canary retry` starts the same canary again from step 0 with
    // a fresh analysis, which now passes, and the canary is promoted.
    oap.set_apdex(vec![9950, 9990]);
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
