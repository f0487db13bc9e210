//! One filter per sidecar: every rollout with callers in a namespace writes its own entry into
//! the one client WasmPlugin there, on the real API server. Each rollout changes only its part:
//! its steps, aborts and deletion leave the others' entries byte for byte; a second rollout of a
//! service, or one naming another filter url, is refused without touching the first; callers in
//! another namespace get the entry there; the per-rollout WasmPlugin of older versions goes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::time::Duration;

use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::{destination_rule_resource, wasm_plugin_resource};
use canary_core::PluginConfig;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use support::rollout_env::WAIT;

/// The shared client WasmPlugin's name when the callers are every workload of a namespace.
const PLUGIN: &str = "wasm-canary";
const URL: &str = "oci://registry.example.com/wasm-canary/filter:0.1.0";

/// A rollout of `service` (its own DestinationRule of that name), paused at `weight` percent
/// with a header route once its canary starts, with `callers`.
fn rollout(ns: &str, name: &str, service: &str, weight: f64, callers: Value) -> Value {
    json!({
        "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": service}},
            "template": {"metadata": {"labels": {"app": service}},
                         "spec": {"containers": [{"name": service, "image": format!("{service}:v1")}]}},
            "strategy": {"canary": {
                "steps": [
                    {"setWeight": weight},
                    {"setHeaderRoute": {"name": format!("{service}-testers"), "match": [
                        {"headerName": "x-tester", "headerValue": {"exact": service}}]}},
                    {"pause": {}}
                ],
                "scaleDownDelaySeconds": 2,
                "abortScaleDownDelaySeconds": 2,
                "trafficRouting": {"wasm": {
                    "service": service,
                    "wasmPlugin": {"url": URL},
                    "callers": callers,
                    "destinationRule": {"name": service}
                }}
            }}
        }
    })
}

struct Env {
    client: Client,
    ns: String,
    _plane: std::sync::Arc<canary_cluster::ControlPlane>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Env {
    /// Namespaces `ns` (rollouts) and `others` (more callers), kubelets, the controller
    /// watching every namespace.
    async fn new(ns: &str, others: &[&str]) -> Env {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
        let (plane, client) = support::namespace(ns).await;
        for other in others {
            support::namespace(other).await;
        }
        let mut tasks = vec![tokio::spawn(canary_cluster::kubelet::play_kubelet(
            client.clone(),
            ns.to_owned(),
        ))];
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            canary_controller::reconcile::run(c, None).await
        }));
        Env {
            client,
            ns: ns.to_owned(),
            _plane: plane,
            tasks,
        }
    }

    fn rollouts(&self) -> Api<CanaryRollout> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn plugins(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &wasm_plugin_resource())
    }

    async fn destination_rule(&self, service: &str) {
        support::destination_rule(&self.client, &self.ns, service).await;
    }

    async fn apply(&self, rollout: &Value) {
        let name = rollout["metadata"]["name"].as_str().unwrap();
        self.rollouts()
            .patch(
                name,
                &PatchParams::apply("platform-team").force(),
                &Patch::Apply(rollout),
            )
            .await
            .unwrap();
    }

    /// Polls `name` until `check` holds (bounded by [`WAIT`]).
    async fn until<T>(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&CanaryRollout) -> Option<T>,
    ) -> T {
        let start = tokio::time::Instant::now();
        loop {
            let r = self.rollouts().get(name).await.unwrap();
            if let Some(t) = check(&r) {
                return t;
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {name}: {what}; status: {:#?}",
                r.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The status message of rollout `name` once it is refused (`Degraded`).
    async fn refused(&self, name: &str) -> String {
        self.until(name, "refused", |r| {
            let s = r.status.as_ref()?;
            (s.phase == Phase::Degraded)
                .then(|| s.message.clone())
                .flatten()
        })
        .await
    }

    /// Applies the rollout on v1, waits until healthy, moves it to v2 and waits for its pause.
    async fn paused_canary(&self, rollout: &Value) {
        let name = rollout["metadata"]["name"].as_str().unwrap();
        let service = rollout["spec"]["strategy"]["canary"]["trafficRouting"]["wasm"]["service"]
            .as_str()
            .unwrap();
        self.destination_rule(service).await;
        self.apply(rollout).await;
        self.until(name, "healthy on v1", |r| {
            (r.status.as_ref()?.phase == Phase::Healthy).then_some(())
        })
        .await;
        self.rollouts()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": service, "image": format!("{service}:v2")}]}}}})),
            )
            .await
            .unwrap();
        self.until(name, "paused on the canary", |r| {
            let s = r.status.as_ref()?;
            (s.phase == Phase::Paused && !s.header_routes.is_empty()).then_some(())
        })
        .await;
    }

    /// The client WasmPlugin `ns/name` once `check` holds on it.
    async fn plugin_until(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = tokio::time::Instant::now();
        loop {
            let plugin = self
                .plugins(ns)
                .get_opt(name)
                .await
                .unwrap()
                .map(|p| serde_json::to_value(p).unwrap());
            if let Some(p) = plugin.as_ref().filter(|p| check(p)) {
                return p.clone();
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for the WasmPlugin in {ns}: {what}; it is {plugin:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn plugin_gone(&self, ns: &str, name: &str) {
        let start = tokio::time::Instant::now();
        while self.plugins(ns).get_opt(name).await.unwrap().is_some() {
            assert!(
                start.elapsed() < WAIT,
                "the WasmPlugin in {ns} should be deleted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn entries(plugin: &Value) -> serde_json::Map<String, Value> {
    plugin["spec"]["pluginConfig"]["services"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn weight_of(plugin: &Value, key: &str) -> Option<u64> {
    plugin["spec"]["pluginConfig"]["services"][key]["canaryWeight"].as_u64()
}

/// The field managers owning something under the entry `key`.
fn owners_of_entry(plugin: &Value, key: &str) -> Vec<String> {
    plugin["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["fieldsV1"]["f:spec"]["f:pluginConfig"]["f:services"]
                .get(format!("f:{key}"))
                .is_some()
        })
        .map(|m| m["manager"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_sharing_callers_share_one_wasm_plugin_and_each_changes_only_its_own_entry() {
    let ns = "composed-share";
    let env = Env::new(ns, &[]).await;
    let callers = |labels: Value| json!([{"namespace": ns, "selector": labels}]);
    let specs = [
        rollout(
            ns,
            "reviews",
            "reviews",
            10.0,
            callers(json!({"app": "productpage", "tier": "web"})),
        ),
        rollout(
            ns,
            "ratings",
            "ratings",
            30.0,
            callers(json!({"app": "productpage"})),
        ),
        rollout(
            ns,
            "details",
            "details",
            0.5,
            callers(json!({"app": "batch"})),
        ),
    ];
    for spec in &specs {
        env.paused_canary(spec).await;
    }
    let keys = [
        format!("{ns}/reviews"),
        format!("{ns}/ratings"),
        format!("{ns}/details"),
    ];
    // Callers `app: productpage` (some also `tier: web`) share one WasmPlugin selecting
    // `app: productpage`: one filter per sidecar. `app: batch` pods are never productpage
    // pods: they get their own, and a step of `details` is pushed to them alone.
    let shared = support::productpage_plugin();
    let batch = canary_controller::traffic::lone_plugin_name(&Some(
        [("app".into(), "batch".into())].into(),
    ));
    let plugin = env
        .plugin_until(ns, &shared, "two entries", |p| entries(p).len() == 2)
        .await;
    let own = env
        .plugin_until(ns, &batch, "details' entry", |p| entries(p).len() == 1)
        .await;
    // reviews, applied first, was alone with its callers and had a WasmPlugin of its own
    // selector; once ratings' callers joined the group it moved, and the old one went.
    let alone = canary_controller::traffic::lone_plugin_name(&Some(
        [
            ("app".into(), "productpage".into()),
            ("tier".into(), "web".into()),
        ]
        .into(),
    ));
    env.plugin_gone(ns, &alone).await;
    let mut names: Vec<String> = env
        .plugins(ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    let mut expected = vec![shared.clone(), batch.clone()];
    expected.sort();
    assert_eq!(
        names, expected,
        "one client WasmPlugin per group of callers"
    );
    assert_eq!(
        plugin["spec"]["selector"]["matchLabels"],
        json!({"app": "productpage"})
    );
    assert_eq!(
        own["spec"]["selector"]["matchLabels"],
        json!({"app": "batch"})
    );
    for p in [&plugin, &own] {
        PluginConfig::from_value(&p["spec"]["pluginConfig"]).expect("the filter parses it");
    }
    assert_eq!(weight_of(&plugin, &keys[0]), Some(1_000));
    assert_eq!(weight_of(&plugin, &keys[1]), Some(3_000));
    assert_eq!(weight_of(&own, &keys[2]), Some(50), "a sub-percent weight");
    for (key, name) in keys[..2].iter().zip(["reviews", "ratings"]) {
        assert_eq!(
            plugin["spec"]["pluginConfig"]["services"][key]["headerRoutes"][0]["name"],
            format!("{name}-testers")
        );
        assert_eq!(
            owners_of_entry(&plugin, key),
            [format!("wasm-canary/{ns}/{name}")],
            "each entry is written by its own rollout's field manager only"
        );
    }

    // An abort of one rollout takes its canary off; the other entry stays byte for byte.
    env.rollouts()
        .patch(
            "ratings",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"abort": true}})),
        )
        .await
        .unwrap();
    let after = env
        .plugin_until(ns, &shared, "ratings aborted", |p| {
            weight_of(p, &keys[1]) == Some(0)
        })
        .await;
    assert!(after["spec"]["pluginConfig"]["services"][&keys[1]]["headerRoutes"].is_null());
    assert_eq!(
        after["spec"]["pluginConfig"]["services"][&keys[0]],
        plugin["spec"]["pluginConfig"]["services"][&keys[0]],
        "reviews is untouched by another rollout's abort"
    );
    let own_after = serde_json::to_value(env.plugins(ns).get(&batch).await.unwrap()).unwrap();
    assert_eq!(
        own_after["metadata"]["resourceVersion"], own["metadata"]["resourceVersion"],
        "not even written"
    );

    // Deleting a rollout removes only its entry; the last one takes the WasmPlugin with it.
    env.rollouts()
        .delete("reviews", &DeleteParams::default())
        .await
        .unwrap();
    let after = env
        .plugin_until(ns, &shared, "reviews' entry gone", |p| {
            entries(p).len() == 1
        })
        .await;
    assert_eq!(
        after["spec"]["pluginConfig"]["services"][&keys[1]]["canaryWeight"], 0,
        "ratings' entry stays"
    );
    env.rollouts()
        .delete("ratings", &DeleteParams::default())
        .await
        .unwrap();
    env.plugin_gone(ns, &shared).await;
    assert!(
        env.plugins(ns).get_opt(&batch).await.unwrap().is_some(),
        "details still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rollout_of_a_service_is_refused_and_the_first_is_untouched() {
    let ns = "composed-claim";
    let env = Env::new(ns, &[]).await;
    let first = rollout(ns, "reviews", "reviews", 20.0, json!([]));
    env.paused_canary(&first).await;
    let plugin_before = env
        .plugin_until(ns, PLUGIN, "the entry", |p| entries(p).len() == 1)
        .await;
    let dr: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), ns, &destination_rule_resource());
    let dr_before = dr.get("reviews").await.unwrap();

    let mut second = rollout(ns, "reviews-again", "reviews", 80.0, json!([]));
    second["spec"]["template"]["spec"]["containers"][0]["image"] = json!("reviews:v3");
    env.apply(&second).await;
    let message = env.refused("reviews-again").await;
    assert!(
        message.contains("service reviews is already under rollout composed-claim/reviews"),
        "{message}"
    );
    let replica_sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), ns);
    let theirs = replica_sets
        .list(&ListParams::default().labels("wasmcanary.io/rollout=reviews-again"))
        .await
        .unwrap();
    assert!(theirs.items.is_empty(), "a refused rollout starts no pods");
    // Its refusal is in status; the first rollout's objects were not written.
    let plugin_after = env.plugins(ns).get(PLUGIN).await.unwrap();
    assert_eq!(
        plugin_after.resource_version(),
        plugin_before["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_owned)
    );
    assert_eq!(
        dr.get("reviews").await.unwrap().resource_version(),
        dr_before.resource_version()
    );
    let first_now = env.rollouts().get("reviews").await.unwrap();
    assert_eq!(first_now.status.unwrap().phase, Phase::Paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_in_another_namespace_get_the_entry_there_and_lose_it_when_no_longer_named() {
    let ns = "composed-callers";
    let frontend = "composed-frontend";
    let env = Env::new(ns, &[frontend]).await;
    let spec = rollout(
        ns,
        "reviews",
        "reviews",
        25.0,
        json!([{"namespace": ns}, {"namespace": frontend, "selector": {"app": "web"}}]),
    );
    env.paused_canary(&spec).await;
    let key = format!("{ns}/reviews");
    let web =
        canary_controller::traffic::lone_plugin_name(&Some([("app".into(), "web".into())].into()));
    let there = env
        .plugin_until(frontend, &web, "the entry", |p| {
            weight_of(p, &key) == Some(2_500)
        })
        .await;
    assert_eq!(
        there["spec"]["selector"]["matchLabels"],
        json!({"app": "web"})
    );
    let here = env
        .plugin_until(ns, PLUGIN, "the entry", |p| {
            weight_of(p, &key) == Some(2_500)
        })
        .await;
    assert!(
        here["spec"]["selector"].is_null(),
        "every workload of {ns} calls it"
    );
    let status = env.rollouts().get("reviews").await.unwrap().status.unwrap();
    assert_eq!(
        status.wasm_plugins,
        Some(vec![format!("{ns}/{PLUGIN}"), format!("{frontend}/{web}")]),
        "sorted by namespace/name"
    );

    // The frontend no longer calls it: its WasmPlugin (holding nothing else) goes.
    // (a merge patch: the spec above still has the v1 template this test moved from)
    env.rollouts()
        .patch(
            "reviews",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"strategy": {"canary": {"trafficRouting": {"wasm": {
                "callers": [{"namespace": ns}]}}}}}}),
            ),
        )
        .await
        .unwrap();
    env.plugin_gone(frontend, &web).await;
    assert_eq!(
        weight_of(
            &env.plugins(ns)
                .get(PLUGIN)
                .await
                .map(|p| serde_json::to_value(p).unwrap())
                .unwrap(),
            &key
        ),
        Some(2_500)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_naming_another_filter_url_than_the_shared_wasm_plugin_is_refused() {
    let ns = "composed-url";
    let env = Env::new(ns, &[]).await;
    env.paused_canary(&rollout(ns, "reviews", "reviews", 10.0, json!([])))
        .await;
    let before = env
        .plugin_until(ns, PLUGIN, "the entry", |p| entries(p).len() == 1)
        .await;

    let mut other = rollout(ns, "ratings", "ratings", 50.0, json!([]));
    other["spec"]["strategy"]["canary"]["trafficRouting"]["wasm"]["wasmPlugin"]["url"] =
        json!("oci://registry.example.com/wasm-canary/filter:0.2.0");
    env.destination_rule("ratings").await;
    env.apply(&other).await;
    let message = env.refused("ratings").await;
    assert!(
        message.contains(&format!(
            "WasmPlugin {ns}/{PLUGIN} is shared with wasm-canary/{ns}/reviews"
        )),
        "{message}"
    );
    assert!(message.contains(".spec.url"), "{message}");
    let after = serde_json::to_value(env.plugins(ns).get(PLUGIN).await.unwrap()).unwrap();
    assert_eq!(
        after["spec"], before["spec"],
        "the shared WasmPlugin is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_rollout_wasm_plugin_of_an_older_version_is_removed_on_upgrade() {
    let ns = "composed-upgrade";
    let (plane, client) = support::namespace(ns).await;
    support::reviews_destination_rule(&client, ns).await;
    let rollouts: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    // What an older version left: the rollout, and its own WasmPlugin controlled by it.
    let spec = rollout(ns, "reviews", "reviews", 10.0, json!([]));
    let created = rollouts
        .create(
            &PostParams::default(),
            &serde_json::from_value(spec).unwrap(),
        )
        .await
        .unwrap();
    let plugins: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &wasm_plugin_resource());
    let old = json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "reviews-canary", "namespace": ns, "ownerReferences": [{
            "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout", "name": "reviews",
            "uid": created.uid().unwrap(), "controller": true}]},
        "spec": {"url": URL, "match": [{"mode": "CLIENT"}],
                 "pluginConfig": {"services": [{"name": format!("{ns}/reviews"), "hosts": ["reviews"]}]}}
    });
    plugins
        .patch(
            "reviews-canary",
            &PatchParams::apply("wasm-canary-controller"),
            &Patch::Apply(&old),
        )
        .await
        .unwrap();

    let kubelet = tokio::spawn(canary_cluster::kubelet::play_kubelet(
        client.clone(),
        ns.to_owned(),
    ));
    let c = client.clone();
    let controller = tokio::spawn(async move { canary_controller::reconcile::run(c, None).await });
    let start = tokio::time::Instant::now();
    loop {
        let names: Vec<String> = plugins
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        if names == [PLUGIN] {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the old WasmPlugin should give way to the shared one: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    controller.abort();
    kubelet.abort();
    drop(plane);
}
