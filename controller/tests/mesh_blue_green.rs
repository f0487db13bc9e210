//! The seed's `reviews` released blue-green through a real Istio mesh: the seed's Rollout with
//! Argo's `blueGreen` strategy, converted by `kubectl canary convert`, run by the controller as
//! a process with its shipped RBAC; istiod pushes what it writes to the caller's (productpage's)
//! sidecar and to the pods' sidecars (tests/mesh). Requests go into the caller's sidecar as
//! productpage's would, while background users (and, for the second release, testers) send
//! requests the whole time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::destination_rule_resource;
use canary_core::config::DEFAULT_DECISION_HEADER;
use canary_mesh::bookinfo::host;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::{json, Value};
use support::http_stub::{HttpStub, Reply};
use support::mesh_env::{served_by, MeshEnv, WAIT};
use support::mesh_seed::{
    assert_all_ok, convert_the_seed_blue_green, seed_deployment, Load, Seen, NS,
};
use support::traffic::subset_hash_of;
use support::versions::Recording;

const ROLLOUT: &str = "reviews-rollout";
const V1_IMAGE: &str = "docker.io/istio/examples-bookinfo-reviews-v1:1.17.0";
const V2_IMAGE: &str = "docker.io/istio/examples-bookinfo-reviews-v2:1.17.0";
const V3_IMAGE: &str = "docker.io/istio/examples-bookinfo-reviews-v3:1.17.0";

/// What testers send to reach green before the switch (`previewHeaderRoute`).
const TESTER: (&str, &str) = ("x-preview", "yes");
/// Argo's `previewService`: the controller points its selector at green.
const PREVIEW_SERVICE: &str = "reviews-preview";
/// The AnalysisTemplate of the post-promotion analysis.
const POST_PROMOTION: &str = "reviews-post-promotion";
/// Argo's `scaleDownDelaySeconds` (and `abortScaleDownDelaySeconds`) here.
const SCALE_DOWN_DELAY: Duration = Duration::from_secs(3);
/// How soon after `kubectl canary abort` every request must be back on blue.
const ABORT_BOUND: Duration = Duration::from_secs(2);

/// The seed's Rollout as a user of Argo's blue-green writes it: green previewed with one pod
/// and a preview Service, promoted by hand, checked by a post-promotion analysis.
fn argo_blue_green() -> Value {
    json!({
        "activeService": "reviews",
        "previewService": PREVIEW_SERVICE,
        "autoPromotionEnabled": false,
        "previewReplicaCount": 1,
        "scaleDownDelaySeconds": SCALE_DOWN_DELAY.as_secs(),
        "abortScaleDownDelaySeconds": SCALE_DOWN_DELAY.as_secs(),
        "postPromotionAnalysis": {"templates": [{"templateName": POST_PROMOTION}]}
    })
}

/// What the user applies: the seed's Deployment at v1 (scaled to 0, as `convert` advises), the
/// preview Service, and the converted seed with 2 replicas and the header route `convert`
/// tells them to add for testers.
fn blue_green_objects(wasm: &std::path::Path) -> Vec<Value> {
    let mut objects = vec![
        seed_deployment("reviews", V1_IMAGE),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": PREVIEW_SERVICE, "labels": {"app": "reviews"}},
            "spec": {"selector": {"app": "reviews"},
                     "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}
        }),
    ];
    for mut object in convert_the_seed_blue_green(wasm, argo_blue_green()) {
        if object["kind"] == "CanaryRollout" {
            assert!(
                object["spec"]["strategy"]["canary"].is_null(),
                "converted to a blue-green rollout only: {:#}",
                object["spec"]["strategy"]
            );
            object["spec"]["replicas"] = json!(2);
            object["spec"]["strategy"]["blueGreen"]["previewHeaderRoute"] = json!({"match": [
                {"headerName": TESTER.0, "headerValue": {"exact": TESTER.1}}]});
        }
        objects.push(object);
    }
    objects
}

/// The post-promotion analysis' provider: a web endpoint answering `{"ok": true}` at once, or,
/// once [`PostPromotionProvider::hold`] is called, slow to answer (it holds every request
/// until the test ends), as an overloaded metrics backend.
struct PostPromotionProvider {
    stub: HttpStub,
    holding: Arc<AtomicBool>,
}

impl PostPromotionProvider {
    async fn start() -> Self {
        let holding = Arc::new(AtomicBool::new(false));
        let held = holding.clone();
        let stub = HttpStub::start(move |_| {
            if held.load(Ordering::SeqCst) {
                Reply::Silence
            } else {
                Reply::ok(&json!({"ok": true}))
            }
        })
        .await;
        Self { stub, holding }
    }

    fn hold(&self) {
        self.holding.store(true, Ordering::SeqCst);
    }

    /// The AnalysisTemplate: one measurement, successful when the answer says ok; a generous
    /// timeout, so a held measurement lasts well past the test's abort.
    fn template(&self) -> Value {
        json!({
            "apiVersion": "wasmcanary.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": POST_PROMOTION},
            "spec": {"metrics": [{
                "name": "ok", "count": 1,
                "successCondition": "result.ok == true",
                "provider": {"web": {"url": format!("{}/ok", self.stub.url), "timeoutSeconds": 30}}
            }]}
        })
    }

    fn requests(&self) -> usize {
        self.stub.requests().len()
    }
}

/// The stable version's hash once the rollout is Healthy with nothing left to scale down.
fn settled_on(r: &CanaryRollout) -> Option<String> {
    let s = r.status.as_ref()?;
    (s.phase == Phase::Healthy && s.scale_downs.is_empty() && s.canary_hash.is_none())
        .then(|| s.stable_hash.clone())
        .flatten()
}

/// The versions a load was served by, in order, each once per uninterrupted run of responses
/// (every response must be tagged): `[(hash, first response, last response, responses)]`.
fn runs(seen: &[Seen]) -> Vec<(String, Instant, Instant, usize)> {
    let mut runs: Vec<(String, Instant, Instant, usize)> = Vec::new();
    for s in seen {
        let hash = s.hash.clone().expect("every response tagged");
        match runs.last_mut() {
            Some(run) if run.0 == hash => {
                run.2 = s.at;
                run.3 += 1;
            }
            _ => runs.push((hash, s.at, s.at, 1)),
        }
    }
    runs
}

fn hashes(runs: &[(String, Instant, Instant, usize)]) -> Vec<&str> {
    runs.iter().map(|r| r.0.as_str()).collect()
}

/// Waits until `load` got `n` responses after `since`.
async fn until_served_after(load: &Load, since: Instant, n: usize, what: &str) {
    let start = Instant::now();
    while load.seen().iter().filter(|s| s.at > since).count() < n {
        assert!(
            start.elapsed() < WAIT,
            "{what}: fewer than {n} responses in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new version through the seed's Deployment; waits until green runs its preview (the
/// header route, users at weight 0) in the caller's sidecar. Returns green's hash.
async fn new_version_in_preview(env: &MeshEnv, image: &str) -> String {
    env.apply(&[seed_deployment("reviews", image)]).await;
    let green = env
        .until(ROLLOUT, "green in preview, waiting for a promote", |r| {
            let s = r.status.as_ref()?;
            (s.phase == Phase::Paused
                && s.current_step_index == Some(1)
                && s.canary_weight == 0
                && s.header_routes.iter().any(|h| h.name == "preview"))
            .then(|| s.canary_hash.clone())
            .flatten()
        })
        .await;
    env.until_caller_runs("reviews", "the preview header route at weight 0", |e| {
        e["canaryWeight"] == 0
            && e["canaryHash"] == green.as_str()
            && e["headerRoutes"][0]["name"] == "preview"
    })
    .await;
    green
}

/// The addresses of the pods of `hash`.
async fn pod_ips(env: &MeshEnv, hash: &str) -> Vec<String> {
    Api::<Pod>::namespaced(env.client.clone(), NS)
        .list(&ListParams::default().labels(&format!("rollouts-pod-template-hash={hash}")))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect()
}

/// The endpoints (`ip:port`) of every cluster of the caller's Envoy.
fn caller_endpoints(env: &MeshEnv) -> String {
    let r = wasm_canary_e2e::http::admin_get(env.mesh.caller.admin, "/clusters").unwrap();
    assert_eq!(r.status, 200, "/clusters: {}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_previews_green_to_testers_only_switches_every_user_on_promote_keeps_blue_its_delay_and_an_abort_after_the_switch_returns_everyone_to_blue_within_2_s(
) {
    let started = Instant::now();
    let env = MeshEnv::start(&["reviews"]).await;
    let provider = PostPromotionProvider::start().await;
    let wasm = wasm_canary_e2e::filter_wasm().unwrap();
    env.apply(&[provider.template()]).await;
    env.apply(&blue_green_objects(&wasm)).await;
    let v1 = env.until(ROLLOUT, "blue (v1) Healthy", settled_on).await;
    env.until_served_by("reviews", &v1).await;
    let mesh_up = started.elapsed();

    // Users, from now to the end: not one request may fail.
    let users = Load::start(&env.mesh, &host("reviews"));

    // Release 1: green (v2) in preview. Testers reach it, users (also those forging the
    // decision header) stay on blue, and the preview Service selects green.
    let v2 = new_version_in_preview(&env, V2_IMAGE).await;
    let n = 200;
    assert_eq!(
        served_by(&env.mesh, "reviews", n, &[TESTER]),
        BTreeMap::from([(v2.clone(), n)]),
        "testers on green in preview"
    );
    assert_eq!(
        served_by(&env.mesh, "reviews", n, &[]),
        BTreeMap::from([(v1.clone(), n)]),
        "users on blue in preview"
    );
    assert_eq!(
        served_by(
            &env.mesh,
            "reviews",
            n,
            &[(DEFAULT_DECISION_HEADER, "canary")]
        ),
        BTreeMap::from([(v1.clone(), n)]),
        "a decision header sent by the client is ignored"
    );
    // The preview Service's selector reaches the caller as endpoints, pushed on their own.
    env.until_served_by(PREVIEW_SERVICE, &v2).await;
    assert_eq!(
        served_by(&env.mesh, PREVIEW_SERVICE, 50, &[]),
        BTreeMap::from([(v2.clone(), 50)]),
        "the preview Service reaches green only"
    );
    assert_eq!(
        pod_ips(&env, &v2).await.len(),
        1,
        "green previewed with previewReplicaCount pods"
    );
    let blue_pods = pod_ips(&env, &v1).await;
    assert_eq!(blue_pods.len(), 2, "blue runs its 2 pods: {blue_pods:?}");

    // The promote: the switch (every caller to green at once), the post-promotion analysis
    // (its provider answers ok), the promotion, blue scaled down after its delay.
    let rules = Recording::<DynamicObject>::start(
        Api::namespaced_with(env.client.clone(), NS, &destination_rule_resource()),
        "",
        "metadata.name=reviews",
    )
    .await;
    let blue_rs = format!("{ROLLOUT}-{v1}");
    let replica_sets = Recording::<ReplicaSet>::start(
        Api::namespaced(env.client.clone(), NS),
        "",
        &format!("metadata.name={blue_rs}"),
    )
    .await;
    let promoted_at = Instant::now();
    env.kubectl_canary(&["promote", ROLLOUT]);
    let settled = env.until(ROLLOUT, "green (v2) promoted", settled_on).await;
    assert_eq!(settled, v2);
    rules.sync().await;
    replica_sets.sync().await;
    let rule_moved = rules
        .versions()
        .into_iter()
        .find(|v| subset_hash_of(&v.object, "stable").as_deref() == Some(v2.as_str()))
        .expect("the DestinationRule's stable subset moved to green");
    let blue_down = replica_sets
        .versions()
        .into_iter()
        .find(|v| v.object.spec.replicas == Some(0))
        .expect("blue scaled down");
    let kept = blue_down.seen_at - rule_moved.seen_at;
    assert!(
        kept >= SCALE_DOWN_DELAY - Duration::from_millis(500),
        "blue kept its pods {kept:?} after the promotion; scaleDownDelaySeconds is {SCALE_DOWN_DELAY:?}"
    );
    assert!(
        replica_sets
            .versions()
            .iter()
            .filter(|v| v.resource_version < rule_moved.resource_version)
            .all(|v| v.object.spec.replicas == Some(2)),
        "blue fully up until the promotion"
    );
    // Blue's pods go; the caller's sidecar has no endpoint of theirs left.
    let start = Instant::now();
    loop {
        let endpoints = caller_endpoints(&env);
        let left: Vec<&String> = blue_pods
            .iter()
            .filter(|ip| endpoints.contains(&format!("::{ip}:")))
            .collect();
        if left.is_empty() && pod_ips(&env, &v1).await.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "blue's pods {left:?} still in the caller's endpoints"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let blue_gone = Instant::now();
    until_served_after(&users, blue_gone, 100, "users after blue's pods went").await;
    let release_1 = runs(&users.seen());
    assert_eq!(
        hashes(&release_1),
        [v1.as_str(), v2.as_str()],
        "users: blue until the switch, then green only: {release_1:?}"
    );
    let switched_after = release_1[1].1 - promoted_at;
    assert!(
        release_1[1].1 < blue_down.seen_at,
        "every user on green before blue's pods were scaled down"
    );

    // Release 2: green (v3) with the same rollout; testers too from now on. After the switch
    // the post-promotion analysis waits on its provider, which is slow to answer: the abort
    // comes while that measurement is under way.
    let testers = Load::start_with_headers(&env.mesh, &host("reviews"), &[TESTER]);
    provider.hold();
    let v3 = new_version_in_preview(&env, V3_IMAGE).await;
    let measured_before = provider.requests();
    let promoted_again_at = Instant::now();
    env.kubectl_canary(&["promote", ROLLOUT]);
    env.until(ROLLOUT, "the switch to v3", |r| {
        let s = r.status.as_ref()?;
        (s.current_step_index == Some(3) && s.canary_weight == 10_000).then_some(())
    })
    .await;
    env.until_caller_runs_weight("reviews", 10_000).await;
    let start = Instant::now();
    while provider.requests() == measured_before {
        assert!(
            start.elapsed() < WAIT,
            "the post-promotion analysis never measured"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The config dump shows what Envoy's main thread accepted; its worker applies it a moment
    // later, and a request sent before may still be in flight. The switch is in force for the
    // users' connection (one keep-alive connection, on one worker; one request at a time) from
    // their first response by v3: from then on, every response is v3's.
    let start = Instant::now();
    let switched = loop {
        let first_v3 = users
            .seen()
            .iter()
            .find(|s| s.at > promoted_again_at && s.hash.as_deref() == Some(v3.as_str()))
            .map(|s| s.at);
        if let Some(at) = first_v3 {
            break at;
        }
        assert!(
            start.elapsed() < WAIT,
            "no user reached v3 though the caller runs weight 100%"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    until_served_after(&users, switched, 100, "users after the switch to v3").await;
    let after_switch: Vec<Seen> = users
        .seen()
        .into_iter()
        .filter(|s| s.at > switched)
        .collect();
    assert!(
        after_switch
            .iter()
            .all(|s| s.hash.as_deref() == Some(v3.as_str())),
        "every user on v3 after their first response by v3: {:?}",
        after_switch.iter().fold(BTreeMap::new(), |mut n, s| {
            *n.entry(s.hash.clone()).or_insert(0) += 1;
            n
        })
    );

    let aborted_at = Instant::now();
    env.kubectl_canary(&["abort", ROLLOUT]);
    env.until_caller_runs("reviews", "weight 0 without header routes", |e| {
        e["canaryWeight"] == 0 && e["headerRoutes"].is_null()
    })
    .await;
    let to_caller = aborted_at.elapsed();
    for (load, what) in [(&users, "users"), (&testers, "testers")] {
        until_served_after(load, aborted_at + ABORT_BOUND, 100, what).await;
    }
    let aborted = env
        .until(ROLLOUT, "the aborted v3 scaled down", |r| {
            let s = r.status.as_ref()?;
            (s.aborted && s.scale_downs.is_empty()).then(|| s.clone())
        })
        .await;
    assert_eq!(aborted.stable_hash.as_deref(), Some(v2.as_str()));
    let users_seen = users.finish();
    let testers_seen = testers.finish();
    assert_all_ok(&users_seen, "users through both releases and the abort");
    assert_all_ok(
        &testers_seen,
        "testers through the second release and the abort",
    );

    let user_runs = runs(&users_seen);
    assert_eq!(
        hashes(&user_runs),
        [v1.as_str(), v2.as_str(), v3.as_str(), v2.as_str()],
        "users: v1, switched to v2, switched to v3, back on v2 (one cut each): {user_runs:?}"
    );
    let tester_runs = runs(&testers_seen);
    assert_eq!(
        hashes(&tester_runs),
        [v2.as_str(), v3.as_str(), v2.as_str()],
        "testers: v2, v3 from its preview, back on v2: {tester_runs:?}"
    );
    assert!(user_runs[2].1 > promoted_again_at);
    let users_back = user_runs[2].2 - aborted_at;
    let testers_back = tester_runs[1].2 - aborted_at;
    for (back, what) in [(users_back, "users"), (testers_back, "testers")] {
        assert!(
            back <= ABORT_BOUND,
            "{what}' last request on v3 came {back:?} after the abort"
        );
    }
    let rule =
        Api::<DynamicObject>::namespaced_with(env.client.clone(), NS, &destination_rule_resource())
            .get("reviews")
            .await
            .unwrap();
    assert_eq!(
        subset_hash_of(&rule, "stable").as_deref(),
        Some(v2.as_str()),
        "the DestinationRule never left v2"
    );
    eprintln!(
        "mesh up and v1 Healthy in {mesh_up:?}; promote -> first user on v2 {switched_after:?}; \
         blue kept {kept:?} after the promotion; abort -> caller runs weight 0 in {to_caller:?}, \
         last user on v3 {users_back:?}, last tester on v3 {testers_back:?}; \
         users {} requests {:?}, testers {} requests {:?}; total {:?}",
        users_seen.len(),
        user_runs.iter().map(|r| r.3).collect::<Vec<_>>(),
        testers_seen.len(),
        tester_runs.iter().map(|r| r.3).collect::<Vec<_>>(),
        started.elapsed()
    );
}
