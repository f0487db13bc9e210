//! A namespace with the platform team's DestinationRule, a kubelet played for its Pods and the
//! controller running in-process: what a test of a rollout on the real API server needs, and
//! the reads and writes a user makes on it (the rollout named `reviews`).

use std::sync::Arc;
use std::time::Duration;

use canary_cluster::kubelet::play_kubelet;
use canary_cluster::ControlPlane;
use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::{
    destination_rule_resource, wasm_plugin_resource, PROMOTE_ANNOTATION,
};
use canary_core::PluginConfig;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// How long a wait for something the controller does may take on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// One test's namespace, kubelet and controller; both tasks stop when it is dropped.
pub struct RolloutEnv {
    /// The shared control plane, kept alive for the test.
    pub plane: Arc<ControlPlane>,
    /// Admin client.
    pub client: Client,
    /// The test's namespace.
    pub ns: String,
    controller: Option<JoinHandle<()>>,
    kubelet: JoinHandle<()>,
}

impl Drop for RolloutEnv {
    fn drop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
        }
        self.kubelet.abort();
    }
}

impl RolloutEnv {
    /// Namespace `ns` with the DestinationRule `reviews`, a played kubelet, and the controller.
    pub async fn new(ns: &str) -> RolloutEnv {
        let mut env = Self::without_controller(ns).await;
        env.start_controller();
        env
    }

    /// [`RolloutEnv::new`] without the controller (a test starts its own).
    pub async fn without_controller(ns: &str) -> RolloutEnv {
        let (plane, client) = super::namespace(ns).await;
        Self::on(plane, client, ns).await
    }

    /// [`RolloutEnv::without_controller`] on a given control plane.
    pub async fn without_controller_on(plane: Arc<ControlPlane>, ns: &str) -> RolloutEnv {
        let (plane, client) = super::namespace_on(plane, ns).await;
        Self::on(plane, client, ns).await
    }

    async fn on(plane: Arc<ControlPlane>, client: Client, ns: &str) -> RolloutEnv {
        super::reviews_destination_rule(&client, ns).await;
        let kubelet = tokio::spawn(play_kubelet(client.clone(), ns.to_owned()));
        RolloutEnv {
            plane,
            client,
            ns: ns.to_owned(),
            controller: None,
            kubelet,
        }
    }

    /// Runs the controller (this namespace only) in a task of the test.
    pub fn start_controller(&mut self) {
        self.start_controller_with(self.client.clone());
    }

    /// Runs the controller in a task of the test, talking to the API server through `client`
    /// (one that injects faults, say).
    pub fn start_controller_with(&mut self, client: Client) {
        let ns = self.ns.clone();
        self.controller = Some(tokio::spawn(async move {
            canary_controller::reconcile::run(client, Some(ns)).await
        }));
    }

    /// Stops playing kubelet: from now on Pods stay as they are unless the test changes them.
    pub fn stop_kubelet(&self) {
        self.kubelet.abort();
    }

    /// The CanaryRollouts of the namespace.
    pub fn rollouts(&self) -> Api<CanaryRollout> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The rollout `reviews`.
    pub async fn rollout(&self) -> CanaryRollout {
        self.rollouts().get("reviews").await.unwrap()
    }

    /// The WasmPlugins of the namespace.
    pub fn wasm_plugins(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &wasm_plugin_resource())
    }

    /// The DestinationRules of the namespace.
    pub fn destination_rules(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &destination_rule_resource())
    }

    /// WasmPlugin `name` as JSON, if it exists.
    pub async fn wasm_plugin(&self, name: &str) -> Option<Value> {
        let wp = self.wasm_plugins().get_opt(name).await.unwrap()?;
        Some(serde_json::to_value(wp).unwrap())
    }

    /// The filter configuration in WasmPlugin `name`, parsed as the filter parses it.
    pub async fn plugin_config(&self, name: &str) -> Option<PluginConfig> {
        let wp = self.wasm_plugin(name).await?;
        Some(
            PluginConfig::from_value(&wp["spec"]["pluginConfig"])
                .expect("the controller writes what the filter parses"),
        )
    }

    /// The canary weight the filter in WasmPlugin `name` applies (basis points).
    pub async fn filter_weight(&self, name: &str) -> Option<u32> {
        Some(
            self.plugin_config(name)
                .await?
                .services
                .first()?
                .canary_weight,
        )
    }

    /// The `rollouts-pod-template-hash` the DestinationRule's `subset` selects.
    pub async fn subset_hash(&self, subset: &str) -> Option<String> {
        let dr = self.destination_rules().get("reviews").await.unwrap();
        let dr = serde_json::to_value(dr).unwrap();
        dr["spec"]["subsets"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == subset)?["labels"]["rollouts-pod-template-hash"]
            .as_str()
            .map(str::to_owned)
    }

    /// Polls (bounded by `deadline`) until `check` on the rollout returns Some.
    pub async fn until_within<T>(
        &self,
        deadline: Duration,
        what: &str,
        mut check: impl FnMut(&CanaryRollout) -> Option<T>,
    ) -> T {
        let start = tokio::time::Instant::now();
        loop {
            let r = self.rollout().await;
            if let Some(t) = check(&r) {
                return t;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}; status: {:#?}",
                r.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`RolloutEnv::until_within`] [`WAIT`].
    pub async fn until<T>(&self, what: &str, check: impl FnMut(&CanaryRollout) -> Option<T>) -> T {
        self.until_within(WAIT, what, check).await
    }

    /// The platform team applies `rollout`.
    pub async fn apply_rollout(&self, rollout: &Value) {
        self.rollouts()
            .patch(
                "reviews",
                &PatchParams::apply("platform-team").force(),
                &Patch::Apply(rollout),
            )
            .await
            .unwrap();
    }

    /// Merge-patches the rollout's spec.
    pub async fn patch_spec(&self, spec: Value) {
        self.rollouts()
            .patch(
                "reviews",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }

    /// A new image in the rollout's template: a canary starts.
    pub async fn set_image(&self, image: &str) {
        self.patch_spec(
            json!({"template": {"spec": {"containers": [{"name": "reviews", "image": image}]}}}),
        )
        .await;
    }

    /// `kubectl canary promote` (`how`: `step` or `full`).
    pub async fn promote(&self, how: &str) {
        let patch = json!({"metadata": {"annotations": {PROMOTE_ANNOTATION: how}}});
        self.rollouts()
            .patch("reviews", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Applies `steps` with image v1 and waits until v1 is the healthy stable; its hash.
    pub async fn healthy_on_first_version(&self, rollout: &Value) -> String {
        self.apply_rollout(rollout).await;
        self.until("the first version to become stable", |r| {
            let s = r.status.as_ref()?;
            (s.phase == Phase::Healthy)
                .then(|| s.stable_hash.clone())
                .flatten()
        })
        .await
    }

    /// Starts canary v2 and waits until it pauses at `weight_bp`; its hash.
    pub async fn canary_paused_at(&self, weight_bp: u32) -> String {
        self.set_image("reviews:v2").await;
        self.until("the canary's pause", |r| {
            let s = r.status.as_ref()?;
            (s.phase == Phase::Paused && s.canary_weight == weight_bp)
                .then(|| s.canary_hash.clone())
                .flatten()
        })
        .await
    }
}

/// Rollout `reviews` (2 replicas, image `image`, steps `steps`) with the controller's
/// WasmPlugin `reviews-canary` and the DestinationRule `reviews`.
pub fn rollout(ns: &str, image: &str, steps: Value) -> Value {
    json!({
        "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
        "metadata": {"name": "reviews", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "reviews"}},
            "template": {"metadata": {"labels": {"app": "reviews"}},
                         "spec": {"containers": [{"name": "reviews", "image": image}]}},
            "strategy": {"canary": {
                "steps": steps,
                "scaleDownDelaySeconds": 2,
                "abortScaleDownDelaySeconds": 2,
                "trafficRouting": {"wasm": {
                    "service": "reviews",
                    "wasmPlugin": {"url": "oci://registry.example.com/wasm-canary/filter:0.1.0", "selector": {"app": "productpage"}},
                    "destinationRule": {"name": "reviews"}
                }}
            }}
        }
    })
}

/// Rollout `reviews`, blue-green: 2 replicas, `image`, the controller's WasmPlugin for callers
/// `app: productpage`, the DestinationRule `reviews`; `blue_green` adds to Argo's fields.
pub fn blue_green_rollout(ns: &str, image: &str, blue_green: Value) -> Value {
    let mut rollout = rollout(ns, image, json!([]));
    let routing = rollout["spec"]["strategy"]["canary"]["trafficRouting"].take();
    let mut strategy = json!({
        "activeService": "reviews",
        "scaleDownDelaySeconds": 2,
        "abortScaleDownDelaySeconds": 2,
        "trafficRouting": routing
    });
    // The service is activeService's: left out, as a user of blueGreen would.
    strategy["trafficRouting"]["wasm"]
        .as_object_mut()
        .unwrap()
        .remove("service");
    strategy
        .as_object_mut()
        .unwrap()
        .extend(blue_green.as_object().unwrap().clone());
    rollout["spec"]["strategy"] = json!({ "blueGreen": strategy });
    rollout
}

/// The platform team server-side applies `object` (named in its metadata) through `api`.
pub async fn platform_applies<K>(api: &Api<K>, object: &Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply("platform-team"),
        &Patch::Apply(object),
    )
    .await
    .unwrap();
}
