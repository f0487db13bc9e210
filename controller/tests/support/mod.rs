//! What the controller's integration tests share: a namespace on the shared real control plane
//! with our CRDs installed, and the platform team's DestinationRule for `reviews`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

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
    let client = plane.client().await.unwrap();
    plane.create_namespace(&client, ns).await.unwrap();
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds");
    for crd in [
        "canaryrollout.yaml",
        "analysistemplate.yaml",
        "clusteranalysistemplate.yaml",
    ] {
        plane.install_crds(&crds.join(crd)).await.unwrap();
    }
    (plane, client)
}

/// DestinationRule `reviews` with empty-of-hash `stable`/`canary` subsets, applied by the
/// platform team's field manager as a user would; the controller fills the hash labels.
pub async fn reviews_destination_rule(client: &Client, ns: &str) {
    let dr: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &destination_rule_resource());
    let rule = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": ns},
        "spec": {"host": "reviews", "subsets": [
            {"name": "stable", "labels": {"app": "reviews"}},
            {"name": "canary", "labels": {"app": "reviews"}}
        ]}
    });
    dr.patch(
        "reviews",
        &PatchParams::apply("platform-team"),
        &Patch::Apply(&rule),
    )
    .await
    .unwrap();
}

pub mod rollout_env;
