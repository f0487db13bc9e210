//! What the controller's integration tests share: a namespace on the shared real control plane
//! with our CRDs installed, and the platform team's DestinationRule for `reviews`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod api_faults;
pub mod browser;
pub mod http_stub;
pub mod mesh_env;
pub mod mesh_seed;
pub mod oap;
pub mod owned_process;
pub mod rollout_wait;
pub mod secret_leaks;
pub mod traffic;
pub mod versions;

use std::path::PathBuf;
use std::sync::Arc;

use canary_cluster::ControlPlane;
use canary_controller::reconcile::destination_rule_resource;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::json;

/// The shared control plane (one per test binary), an admin client, and namespace `ns` with
/// the CanaryRollout and AnalysisTemplate CRDs installed.
pub async fn namespace(ns: &str) -> (Arc<ControlPlane>, Client) {
    let plane = ControlPlane::shared()
        .await
        .expect("control plane (run `make cluster-build` first)");
    namespace_on(plane, ns).await
}

/// [`namespace`] on a given control plane (one a test restarts, say).
pub async fn namespace_on(plane: Arc<ControlPlane>, ns: &str) -> (Arc<ControlPlane>, Client) {
    let client = plane.client().await.unwrap();
    plane.create_namespace(&client, ns).await.unwrap();
    install_controller_crds(&plane).await;
    (plane, client)
}

/// Installs the controller's CRDs (every file of `crd_yaml::crd_files`, as committed).
pub async fn install_controller_crds(plane: &ControlPlane) {
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds");
    for crd in canary_controller::crd_yaml::crd_files() {
        plane.install_crds(&crds.join(crd.file)).await.unwrap();
    }
}

/// DestinationRule `reviews` with empty-of-hash `stable`/`canary` subsets, applied by the
/// platform team's field manager as a user would; the controller fills the hash labels.
pub async fn reviews_destination_rule(client: &Client, ns: &str) {
    destination_rule(client, ns, "reviews").await;
}

/// DestinationRule `service` (host `service`) with `stable`/`canary` subsets selecting
/// `app: service`, applied by the platform team's field manager.
pub async fn destination_rule(client: &Client, ns: &str, service: &str) {
    let dr: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &destination_rule_resource());
    let rule = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": service, "namespace": ns},
        "spec": {"host": service, "subsets": [
            {"name": "stable", "labels": {"app": service}},
            {"name": "canary", "labels": {"app": service}}
        ]}
    });
    dr.patch(
        service,
        &PatchParams::apply("platform-team"),
        &Patch::Apply(&rule),
    )
    .await
    .unwrap();
}

/// Applies `v` (server-side, forced) as the platform team would: `kubectl apply`.
pub async fn apply_as_platform_team(
    client: &Client,
    ns: &str,
    resource: &kube::api::ApiResource,
    name: &str,
    v: &serde_json::Value,
) {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, resource)
        .patch(
            name,
            &PatchParams::apply("platform-team").force(),
            &Patch::Apply(v),
        )
        .await
        .unwrap();
}

/// CanaryRollout `reviews` (label `app: reviews`) of one container running `image`, with
/// `replicas`: its canary goes to `weight`%, runs an analysis step of AnalysisTemplate
/// `template` with `args`, then goes to 100%; scale-downs after 1 s. Callers adjust the JSON
/// for anything else (annotations, hosts).
pub fn rollout_with_analysis_step(
    ns: &str,
    image: &str,
    replicas: i32,
    weight: u32,
    template: &str,
    args: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
        "metadata": {"name": "reviews", "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "reviews"}},
            "template": {"metadata": {"labels": {"app": "reviews"}},
                         "spec": {"containers": [{"name": "reviews", "image": image}]}},
            "strategy": {"canary": {
                "steps": [
                    {"setWeight": weight},
                    {"analysis": {"templates": [{"templateName": template}], "args": args}},
                    {"setWeight": 100}
                ],
                "scaleDownDelaySeconds": 1,
                "abortScaleDownDelaySeconds": 1,
                "trafficRouting": {"wasm": {
                    "service": "reviews",
                    "wasmPlugin": {"url": "oci://registry.example.com/wasm-canary/filter:0.1.0"},
                    "destinationRule": {"name": "reviews"}
                }}
            }}
        }
    })
}
pub mod rollout_env;

/// The client WasmPlugin of a rollout whose callers are `app: productpage` (alone in their
/// namespace): `wasm-canary-<hash of the selector>`.
pub fn productpage_plugin() -> String {
    canary_controller::traffic::lone_plugin_name(&Some(
        [("app".to_owned(), "productpage".to_owned())].into(),
    ))
}
