//! The controller against a real API server (etcd + kube-apiserver + kube-controller-manager
//! from tests/cluster). kube-controller-manager turns our ReplicaSets into Pods; there is no
//! kubelet, so these tests play kubelet: a background task marks every Pod of the namespace
//! Running and Ready (tests/cluster `kubelet::run_pod`), which makes the ReplicaSet's pods
//! available exactly as on a real node. Durations are shortened to seconds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use canary_cluster::ControlPlane;
use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::{
    destination_rule_resource, wasm_plugin_resource, PROMOTE_ANNOTATION,
};
use canary_core::PluginConfig;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use support::traffic::{routed_service, subset_hash_of, weight_sequence};
use support::versions::{as_of, Recording, Version};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

struct Env {
    _plane: Arc<ControlPlane>,
    client: Client,
    ns: String,
    controller: Option<JoinHandle<()>>,
    kubelet: JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
        }
        self.kubelet.abort();
    }
}

impl Env {
    async fn new(ns: &str) -> Env {
        let (plane, client) = support::namespace(ns).await;
        support::reviews_destination_rule(&client, ns).await;
        let kubelet = tokio::spawn(play_kubelet(client.clone(), ns.to_owned()));
        let mut env = Env {
            _plane: plane,
            client,
            ns: ns.to_owned(),
            controller: None,
            kubelet,
        };
        env.start_controller();
        env
    }

    fn start_controller(&mut self) {
        let (client, ns) = (self.client.clone(), self.ns.clone());
        self.controller = Some(tokio::spawn(async move {
            canary_controller::reconcile::run(client, Some(ns)).await
        }));
    }

    async fn kill_controller(&mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
            let _ = c.await;
        }
    }

    fn rollouts(&self) -> Api<CanaryRollout> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn rollout(&self) -> CanaryRollout {
        self.rollouts().get("reviews").await.unwrap()
    }

    async fn plugin_config(&self) -> Option<PluginConfig> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &wasm_plugin_resource());
        let wp = api.get_opt(&support::productpage_plugin()).await.unwrap()?;
        Some(
            PluginConfig::from_value(&wp.data["spec"]["pluginConfig"])
                .expect("the controller writes what the filter parses"),
        )
    }

    async fn wasm_plugin(&self) -> Value {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &wasm_plugin_resource());
        serde_json::to_value(api.get(&support::productpage_plugin()).await.unwrap()).unwrap()
    }

    async fn destination_rule(&self) -> Value {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &destination_rule_resource());
        serde_json::to_value(api.get("reviews").await.unwrap()).unwrap()
    }

    async fn subset_hash(&self, subset: &str) -> Option<String> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &destination_rule_resource());
        subset_hash_of(&api.get("reviews").await.unwrap(), subset)
    }

    /// Records every version of the controller's WasmPlugin from now on.
    async fn record_wasm_plugin(&self) -> Recording<DynamicObject> {
        let api = Api::namespaced_with(self.client.clone(), &self.ns, &wasm_plugin_resource());
        let name = support::productpage_plugin();
        Recording::start(api, "", &format!("metadata.name={name}")).await
    }

    /// Records every version of the DestinationRule from now on.
    async fn record_destination_rule(&self) -> Recording<DynamicObject> {
        let api = Api::namespaced_with(self.client.clone(), &self.ns, &destination_rule_resource());
        Recording::start(api, "", "metadata.name=reviews").await
    }

    /// Records every version of every ReplicaSet of the namespace from now on.
    async fn record_replica_sets(&self) -> Recording<ReplicaSet> {
        Recording::start(Api::namespaced(self.client.clone(), &self.ns), "", "").await
    }

    /// Records every version of the rollout from now on.
    async fn record_rollout(&self) -> Recording<CanaryRollout> {
        Recording::start(self.rollouts(), "", "metadata.name=reviews").await
    }

    async fn replicas(&self, hash: &str) -> Option<i32> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns);
        api.get_opt(&format!("reviews-{hash}"))
            .await
            .unwrap()
            .map(|rs| rs.spec.replicas.unwrap_or(0))
    }

    /// Polls (bounded by WAIT) until `check` on the rollout returns Some.
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
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn apply_rollout(&self, rollout: &Value) {
        self.rollouts()
            .patch(
                "reviews",
                &PatchParams::apply("platform-team").force(),
                &Patch::Apply(rollout),
            )
            .await
            .unwrap();
    }

    async fn set_image(&self, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "reviews", "image": image}]}}}});
        self.rollouts()
            .patch("reviews", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Sets the promote annotation; returns the rollout as stored.
    async fn promote(&self, how: &str) -> CanaryRollout {
        let patch = json!({"metadata": {"annotations": {PROMOTE_ANNOTATION: how}}});
        self.rollouts()
            .patch("reviews", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap()
    }
}

use canary_cluster::kubelet::play_kubelet;

fn rollout(ns: &str, image: &str, steps: Value) -> Value {
    json!({
        "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
        "metadata": {"name": "reviews", "namespace": ns},
        "spec": {
            "replicas": 5,
            "selector": {"matchLabels": {"app": "reviews"}},
            "template": {"metadata": {"labels": {"app": "reviews"}},
                         "spec": {"containers": [{"name": "reviews", "image": image}]}},
            "strategy": {"canary": {
                "steps": steps,
                "scaleDownDelaySeconds": 2,
                "abortScaleDownDelaySeconds": 2,
                "canaryMetadata": {"labels": {"version": "canary"}},
                "stableMetadata": {"labels": {"version": "stable"}},
                "trafficRouting": {"wasm": {
                    "service": "reviews",
                    "wasmPlugin": {"url": "oci://registry.example.com/wasm-canary/filter:0.1.0", "selector": {"app": "productpage"}},
                    "destinationRule": {"name": "reviews"},
                    "sticky": {"header": "x-user-id"}
                }}
            }}
        }
    })
}

/// The fixture demo's steps (../shared/fixtures/tse-gitops-demo/argo/rollout/rollout.yaml) with
/// the pauses shortened from minutes to a second.
fn demo_steps() -> Value {
    json!([
        {"setWeight": 10}, {"pause": {"duration": "1s"}},
        {"setWeight": 20}, {"pause": {"duration": "1s"}},
        {"setWeight": 40}, {"pause": {"duration": "1s"}},
        {"setWeight": 60}, {"pause": {"duration": "1s"}},
        {"setWeight": 80}, {"pause": {"duration": 1}}
    ])
}

async fn healthy_on_first_version(env: &Env, steps: Value) -> String {
    env.apply_rollout(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    env.until("the first version to become stable", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Healthy)
            .then(|| s.stable_hash.clone())
            .flatten()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_progression_moves_the_weight_step_by_step_then_promotes_and_scales_down_the_old_stable(
) {
    let env = Env::new("progression").await;
    let v1 = healthy_on_first_version(&env, demo_steps()).await;
    assert_eq!(
        env.subset_hash("stable").await.as_deref(),
        Some(v1.as_str())
    );
    assert_eq!(env.replicas(&v1).await, Some(5));

    let plugins = env.record_wasm_plugin().await;
    let rules = env.record_destination_rule().await;
    let replica_sets = env.record_replica_sets().await;
    env.set_image("reviews:v2").await;
    let v2 = env
        .until("a canary", |r| r.status.as_ref()?.canary_hash.clone())
        .await;
    assert_ne!(v1, v2);
    env.until("the promotion", |r| {
        (r.status.as_ref()?.stable_hash.as_deref() == Some(v2.as_str())).then_some(())
    })
    .await;
    for recording in [&plugins, &rules] {
        recording.sync().await;
    }
    replica_sets.sync().await;
    // Every version of the WasmPlugin the API server stored, in order: each weight the filter
    // was given, and what the DestinationRule and the canary ReplicaSet were when it was written.
    let plugin_versions = plugins.versions();
    let (rule_versions, rs_versions) = (rules.versions(), replica_sets.versions());
    let canary_rs = format!("reviews-{v2}");
    for version in &plugin_versions {
        let svc = routed_service(&version.object);
        if svc.canary_weight == 0 {
            continue;
        }
        let written = version.resource_version;
        assert_eq!(svc.canary_hash.as_deref(), Some(v2.as_str()));
        let rule = as_of(&rule_versions, "reviews", written).expect("the DestinationRule");
        assert_eq!(
            subset_hash_of(&rule.object, "canary").as_deref(),
            Some(v2.as_str()),
            "weight {} written while the canary subset selected other pods",
            svc.canary_weight
        );
        let available = as_of(&rs_versions, &canary_rs, written)
            .and_then(|rs| rs.object.status.as_ref()?.available_replicas)
            .unwrap_or(0);
        assert!(
            i64::from(available) * 10_000 >= 5 * i64::from(svc.canary_weight),
            "weight {} written with only {available} canary pods available",
            svc.canary_weight
        );
    }
    assert_eq!(
        weight_sequence(&plugin_versions),
        [0, 1_000, 2_000, 4_000, 6_000, 8_000, 0],
        "every step's weight reached the filter, in order, then all traffic went to the promoted pods"
    );
    assert_eq!(
        env.plugin_config().await.unwrap().services[0].canary_weight,
        0,
        "after promotion all traffic is stable"
    );
    assert_eq!(
        env.subset_hash("stable").await.as_deref(),
        Some(v2.as_str()),
        "stable subset now selects the new pods"
    );
    assert_eq!(
        env.replicas(&v1).await,
        Some(5),
        "old stable kept during scaleDownDelaySeconds"
    );
    env.until("the old stable to be scaled down", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.scale_downs.is_empty())
            .then_some(())
    })
    .await;
    assert_eq!(env.replicas(&v1).await, Some(0));
    assert_eq!(env.replicas(&v2).await, Some(5));
    // The promoted pods were created as canary pods; they now carry the stable metadata.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let promoted = pods
        .list(&ListParams::default().labels(&format!("rollouts-pod-template-hash={v2}")))
        .await
        .unwrap()
        .items;
    assert_eq!(promoted.len(), 5);
    for p in &promoted {
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .unwrap()
                .get("version")
                .map(String::as_str),
            Some("stable"),
            "{:?}",
            p.metadata.name
        );
    }

    let ev: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), &env.ns);
    let reasons: BTreeSet<String> = ev
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for reason in ["Initialized", "CanaryStarted", "StepCompleted", "Promoted"] {
        assert!(
            reasons.contains(reason),
            "an Event for {reason}: {reasons:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_route_step_sends_testers_to_canary_at_weight_zero_until_promoted() {
    let env = Env::new("header-route").await;
    let steps = json!([
        {"setHeaderRoute": {"name": "testers", "match": [{"headerName": "x-canary", "headerValue": {"exact": "always"}}]}},
        {"pause": {}},
        {"setWeight": 0.5},
        {"pause": {}}
    ]);
    healthy_on_first_version(&env, steps).await;
    env.set_image("reviews:v2").await;
    env.until("the indefinite pause", |r| {
        (r.status.as_ref()?.phase == Phase::Paused).then_some(())
    })
    .await;
    let config = env.plugin_config().await.unwrap();
    let svc = &config.services[0];
    assert_eq!(svc.canary_weight, 0);
    assert_eq!(
        svc.header_routes.len(),
        1,
        "testers reach canary by header before any user"
    );
    assert_eq!(svc.header_routes[0].name, "testers");
    canary_core::CompiledConfig::compile(&config).expect("the filter accepts it");

    env.promote("step").await;
    env.until("setWeight 0.5", |r| {
        (r.status.as_ref()?.canary_weight == 50).then_some(())
    })
    .await;
    assert_eq!(
        env.plugin_config().await.unwrap().services[0].canary_weight,
        50,
        "0.5% = 50 basis points"
    );
    // The annotation is cleared by a write after the status write: wait for it rather than
    // read it once (a reader between the two writes sees it still set).
    env.until("the promote annotation consumed", |r| {
        (!r.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(PROMOTE_ANNOTATION)))
        .then_some(())
    })
    .await;

    env.promote("full").await;
    let r = env
        .until("full promotion", |r| {
            (r.status.as_ref()?.phase == Phase::Healthy).then(|| r.clone())
        })
        .await;
    assert_eq!(r.status.as_ref().unwrap().canary_hash, None);
    assert!(
        env.plugin_config().await.unwrap().services[0]
            .header_routes
            .is_empty(),
        "header routes removed at promotion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_way_returns_weight_zero_before_any_scale_down_and_retry_starts_over() {
    let env = Env::new("abort").await;
    let steps = json!([{"setWeight": 40}, {"pause": {}}, {"setWeight": 80}]);
    healthy_on_first_version(&env, steps).await;
    env.set_image("reviews:v2").await;
    let v2 = env
        .until("weight 40", |r| {
            let s = r.status.as_ref()?;
            (s.canary_weight == 4_000 && s.phase == Phase::Paused)
                .then(|| s.canary_hash.clone())
                .flatten()
        })
        .await;
    assert_eq!(env.replicas(&v2).await, Some(2));

    let plugins = env.record_wasm_plugin().await;
    let replica_sets = env.record_replica_sets().await;
    env.rollouts()
        .patch(
            "reviews",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"abort": true}})),
        )
        .await
        .unwrap();
    env.until("Aborted", |r| {
        (r.status.as_ref()?.phase == Phase::Aborted).then_some(())
    })
    .await;
    env.until(
        "the canary scaled down after abortScaleDownDelaySeconds",
        |r| r.status.as_ref()?.scale_downs.is_empty().then_some(()),
    )
    .await;
    plugins.sync().await;
    replica_sets.sync().await;
    // The first thing that changes is traffic: the WasmPlugin version that sends no one to the
    // canary is stored before any version of the canary ReplicaSet with fewer pods.
    let traffic_off = plugins
        .versions()
        .into_iter()
        .find(|v| routed_service(&v.object).canary_weight == 0)
        .expect("a WasmPlugin version at weight 0 after the abort");
    assert!(routed_service(&traffic_off.object).header_routes.is_empty());
    let canary_rs = format!("reviews-{v2}");
    let scaled_down = replica_sets
        .versions_of(&canary_rs)
        .into_iter()
        .find(|v| v.object.spec.replicas < Some(2))
        .expect("a scaled-down canary ReplicaSet version");
    assert!(
        traffic_off.resource_version < scaled_down.resource_version,
        "weight 0 must be stored before any canary scale-down: weight 0 at revision {}, scale-down at revision {}",
        traffic_off.resource_version,
        scaled_down.resource_version
    );
    assert_eq!(env.replicas(&v2).await, Some(0));
    assert_eq!(
        env.plugin_config().await.unwrap().services[0].canary_weight,
        0
    );

    env.rollouts()
        .patch(
            "reviews",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"abort": false}})),
        )
        .await
        .unwrap();
    env.until("the retry back at weight 40", |r| {
        let s = r.status.as_ref()?;
        (s.canary_weight == 4_000 && !s.aborted).then_some(())
    })
    .await;
    assert_eq!(env.replicas(&v2).await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_resumes_at_the_same_step_and_nothing_acts_while_it_is_down() {
    let mut env = Env::new("restart").await;
    let steps = json!([
        {"setWeight": 20}, {"pause": {}},
        {"setWeight": 40}, {"pause": {}},
        {"setWeight": 60}, {"pause": {}}
    ]);
    healthy_on_first_version(&env, steps).await;
    env.set_image("reviews:v2").await;
    env.until("the first pause", |r| {
        (r.status.as_ref()?.current_step_index == Some(1)).then_some(())
    })
    .await;
    let rollouts = env.record_rollout().await;
    let plugins = env.record_wasm_plugin().await;
    let step_index = |v: &Version<CanaryRollout>| v.object.status.as_ref()?.current_step_index;
    let promote_pending =
        |v: &Version<CanaryRollout>| v.object.annotations().contains_key(PROMOTE_ANNOTATION);

    // Positive control: the running controller acts on a promote, and how long it takes here
    // and now (a loaded machine is slower) sets how long "nobody acted" must hold below.
    let asked = tokio::time::Instant::now();
    env.promote("step").await;
    rollouts
        .until(
            "the running controller to act on the promote",
            WAIT,
            |versions| {
                let last = versions.last()?;
                (step_index(last) == Some(3) && !promote_pending(last)).then_some(())
            },
        )
        .await;
    let reaction = asked.elapsed();

    env.kill_controller().await;
    let promoted = env.promote("step").await;
    let asked_at: u64 = promoted.resource_version().unwrap().parse().unwrap();
    // Not a wait for readiness: an observation window three times as long as the running
    // controller just needed to act on the same request, so a controller still running
    // would have written within it.
    let window = (reaction * 3).max(Duration::from_secs(2));
    tokio::time::sleep(window).await;
    rollouts.sync().await;
    plugins.sync().await;
    let (rollout_writes, plugin_writes) = (
        rollouts.written_after(asked_at),
        plugins.written_after(asked_at),
    );
    assert!(
        rollout_writes.is_empty() && plugin_writes.is_empty(),
        "nobody acts while the controller is down: within {window:?} (the running controller \
         acted in {reaction:?}) the rollout was written at {rollout_writes:?} and the \
         WasmPlugin at {plugin_writes:?}"
    );
    let waiting = rollouts.versions().last().unwrap().object.clone();
    assert_eq!(waiting.status.as_ref().unwrap().current_step_index, Some(3));
    assert!(
        waiting.annotations().contains_key(PROMOTE_ANNOTATION),
        "promote still pending"
    );

    env.start_controller();
    let s = env
        .until("the next pause", |r| {
            let s = r.status.as_ref()?;
            (s.current_step_index == Some(5)).then(|| s.clone())
        })
        .await;
    assert_eq!(
        s.canary_weight, 6_000,
        "resumed from step 3, not from the start"
    );
    assert_eq!(s.canary_hash, waiting.status.unwrap().canary_hash);
    assert_eq!(
        env.plugin_config().await.unwrap().services[0].canary_weight,
        6_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_change_mid_canary_restarts_it_with_the_new_hash() {
    let env = Env::new("template-change").await;
    healthy_on_first_version(&env, json!([{"setWeight": 20}, {"pause": {}}])).await;
    env.set_image("reviews:v2").await;
    let v2 = env
        .until("canary v2 at 20%", |r| {
            let s = r.status.as_ref()?;
            (s.canary_weight == 2_000)
                .then(|| s.canary_hash.clone())
                .flatten()
        })
        .await;
    let rules = env.record_destination_rule().await;
    let replica_sets = env.record_replica_sets().await;
    env.set_image("reviews:v3").await;
    let v3 = env
        .until("canary v3", |r| {
            r.status.as_ref()?.canary_hash.clone().filter(|h| *h != v2)
        })
        .await;
    env.until("v3 at 20%", |r| {
        (r.status.as_ref()?.canary_weight == 2_000).then_some(())
    })
    .await;
    // The replaced canary drains as an aborted one does: its subset stops selecting it first,
    // its pods go only abortScaleDownDelaySeconds (2 s here) later, so requests that sidecars
    // still running the previous config send to it are served.
    let v2_rs = format!("reviews-{v2}");
    let scaled_down = replica_sets
        .until("v2 scaled down", WAIT, |versions| {
            versions
                .iter()
                .find(|v| v.object.name_any() == v2_rs && v.object.spec.replicas == Some(0))
                .cloned()
        })
        .await;
    rules.sync().await;
    let traffic_off = rules
        .versions()
        .into_iter()
        .find(|v| subset_hash_of(&v.object, "canary").as_deref() != Some(v2.as_str()))
        .expect("a DestinationRule version whose canary subset no longer selects v2");
    assert!(
        traffic_off.resource_version < scaled_down.resource_version,
        "the canary subset leaves v2 (revision {}) before v2 is scaled to zero (revision {})",
        traffic_off.resource_version,
        scaled_down.resource_version
    );
    let drained = scaled_down.seen_at - traffic_off.seen_at;
    assert!(
        drained >= Duration::from_millis(1_500),
        "v2 kept its pods for abortScaleDownDelaySeconds=2 after its traffic left; it lost them after {drained:?}"
    );
    assert_eq!(
        env.subset_hash("canary").await.as_deref(),
        Some(v3.as_str())
    );
    assert_eq!(
        env.plugin_config().await.unwrap().services[0]
            .canary_hash
            .as_deref(),
        Some(v3.as_str())
    );
    assert_eq!(
        env.replicas(&v2).await,
        Some(0),
        "the replaced canary is scaled down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_by_another_manager_are_not_clobbered() {
    let env = Env::new("other-manager").await;
    healthy_on_first_version(
        &env,
        json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]),
    )
    .await;
    env.set_image("reviews:v2").await;
    env.until("20%", |r| {
        (r.status.as_ref()?.canary_weight == 2_000).then_some(())
    })
    .await;

    // The platform team tunes the objects the controller also writes.
    let wp: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &wasm_plugin_resource());
    let wp_edit = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": &support::productpage_plugin()}, "spec": {"priority": 10, "imagePullPolicy": "Always"}});
    wp.patch(
        &support::productpage_plugin(),
        &PatchParams::apply("platform-team"),
        &Patch::Apply(&wp_edit),
    )
    .await
    .unwrap();
    let dr: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &destination_rule_resource());
    let dr_edit = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews"}, "spec": {"host": "reviews", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 100}}}}});
    dr.patch(
        "reviews",
        &PatchParams::apply("platform-team"),
        &Patch::Apply(&dr_edit),
    )
    .await
    .unwrap();

    env.promote("step").await;
    env.until("50%", |r| {
        (r.status.as_ref()?.canary_weight == 5_000).then_some(())
    })
    .await;
    let plugin = env.wasm_plugin().await;
    assert_eq!(
        plugin["spec"]["priority"], 10,
        "another manager's WasmPlugin field kept"
    );
    assert_eq!(plugin["spec"]["imagePullPolicy"], "Always");
    assert_eq!(
        plugin["metadata"]["labels"]["app.kubernetes.io/managed-by"], "wasm-canary-controller",
        "the controller owns the WasmPlugin it created (shared by rollouts: no ownerReference)"
    );
    let rule = env.destination_rule().await;
    assert_eq!(
        rule["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["maxConnections"], 100,
        "DestinationRule policy kept"
    );
    assert_eq!(rule["spec"]["host"], "reviews");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analysis_step_whose_template_is_missing_is_refused_in_status_not_skipped() {
    let env = Env::new("analysis").await;
    let steps = json!([{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "apdex"}]}}, {"setWeight": 100}]);
    env.apply_rollout(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    let message = env
        .until("a Degraded status", |r| {
            let s = r.status.as_ref()?;
            (s.phase == Phase::Degraded)
                .then(|| s.message.clone())
                .flatten()
        })
        .await;
    assert!(
        message.contains("steps[1].analysis: AnalysisTemplate apdex not found"),
        "{message}"
    );
    assert!(
        env.plugin_config().await.is_none(),
        "no traffic configuration written for a refused rollout"
    );
    // What the schema can check, the API server refuses outright.
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &kube::api::ApiResource::erase::<CanaryRollout>(&()),
    );
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout", "metadata": {"name": "bad"},
        "spec": {"selector": {}, "strategy": {"canary": {"steps": [{"setWeight": "ten"}], "trafficRouting": {"wasm": {
            "service": "x", "wasmPlugin": {"url": "oci://x"}, "destinationRule": {"name": "x"}}}}}}
    }))
    .unwrap();
    let err = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("setWeight must be a number");
    assert!(err.to_string().contains("setWeight"), "{err}");
}
