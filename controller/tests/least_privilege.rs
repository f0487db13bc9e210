//! The shipped ClusterRole (controller/deploy/rbac.yaml) is enough to run a rollout and no
//! more: the controller runs with a ServiceAccount's token bound to exactly that role, on a
//! real API server with RBAC, through setWeight -> pause -> promote; things outside the role
//! are refused. This test plays kubelet (tests/cluster `kubelet::run_pod`) with the admin client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::{
    destination_rule_resource, wasm_plugin_resource, PROMOTE_ANNOTATION,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "least-privilege";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every object in controller/deploy/*.yaml.
fn shipped_objects() -> Vec<Value> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push(v);
            }
        }
    }
    out
}

fn shipped(kind: &str) -> Value {
    shipped_objects()
        .into_iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("controller/deploy has a {kind}"))
}

fn is_forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(ref s)) if s.code == 403)
}

use canary_cluster::kubelet::play_kubelet;

async fn until<T>(
    api: &Api<CanaryRollout>,
    what: &str,
    mut check: impl FnMut(&CanaryRollout) -> Option<T>,
) -> T {
    let start = tokio::time::Instant::now();
    loop {
        let r = api.get("reviews").await.unwrap();
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

fn rollout(image: &str) -> Value {
    json!({
        "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
        "metadata": {"name": "reviews", "namespace": NS},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "reviews"}},
            "template": {"metadata": {"labels": {"app": "reviews"}},
                         "spec": {"containers": [{"name": "reviews", "image": image}]}},
            "strategy": {"canary": {
                "steps": [{"setWeight": 50}, {"pause": {}}],
                "scaleDownDelaySeconds": 1,
                "trafficRouting": {"wasm": {
                    "service": "reviews",
                    "wasmPlugin": {"url": "oci://registry.example.com/wasm-canary/filter:0.1.0"},
                    "destinationRule": {"name": "reviews"}
                }}
            }}
        }
    })
}

#[test]
fn the_shipped_binding_grants_the_shipped_cluster_role_to_the_shipped_service_account() {
    let role = shipped("ClusterRole");
    let binding = shipped("ClusterRoleBinding");
    let sa = shipped("ServiceAccount");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        sa["metadata"]["namespace"]
    );
    let deployment = shipped("Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
    // No wildcards anywhere in the role.
    for rule in role["rules"].as_array().unwrap() {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[field].as_array().unwrap().iter().any(|v| v == "*"),
                "wildcard in {rule}"
            );
        }
    }
}

#[test]
fn the_shipped_deployment_runs_hardened_with_probes_and_resources() {
    let d = shipped("Deployment");
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    // The typed Deployment parses it (no misspelt fields slip through as unknown).
    let typed: Deployment = serde_json::from_value(d.clone()).unwrap();
    assert_eq!(typed.spec.template.spec.unwrap().containers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_runs_a_rollout_with_only_the_shipped_cluster_role_and_is_refused_anything_else(
) {
    let (plane, admin) = support::namespace(NS).await;

    // The shipped ClusterRole, as is; a ServiceAccount in the test namespace bound to it.
    let role: ClusterRole = serde_json::from_value(shipped("ClusterRole")).unwrap();
    let role_name = role.metadata.name.clone().unwrap();
    let pp = PatchParams::apply("least-privilege-test").force();
    Api::<ClusterRole>::all(admin.clone())
        .patch(&role_name, &pp, &Patch::Apply(&role))
        .await
        .unwrap();
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "controller", "namespace": NS}});
    Api::<ServiceAccount>::namespaced(admin.clone(), NS)
        .patch("controller", &pp, &Patch::Apply(&sa))
        .await
        .unwrap();
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "least-privilege-test"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": "controller", "namespace": NS}]
    });
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch("least-privilege-test", &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
    let sa_client = plane
        .client_for_service_account(NS, "controller")
        .await
        .unwrap();
    // RBAC reaches the authorizer through an informer: wait until the role is in force.
    let sa_rollouts: Api<CanaryRollout> = Api::namespaced(sa_client.clone(), NS);
    let start = tokio::time::Instant::now();
    while sa_rollouts.list(&ListParams::default()).await.is_err() {
        assert!(start.elapsed() < WAIT, "the binding never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    support::reviews_destination_rule(&admin, NS).await;

    let kubelet = tokio::spawn(play_kubelet(admin.clone(), NS.to_owned()));
    let controller = tokio::spawn(canary_controller::reconcile::run(
        sa_client.clone(),
        Some(NS.to_owned()),
    ));

    let rollouts: Api<CanaryRollout> = Api::namespaced(admin.clone(), NS);
    rollouts
        .patch(
            "reviews",
            &PatchParams::apply("platform-team").force(),
            &Patch::Apply(&rollout("reviews:v1")),
        )
        .await
        .unwrap();
    let v1 = until(&rollouts, "v1 stable", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Healthy)
            .then(|| s.stable_hash.clone())
            .flatten()
    })
    .await;
    rollouts
        .patch(
            "reviews",
            &PatchParams::apply("platform-team").force(),
            &Patch::Apply(&rollout("reviews:v2")),
        )
        .await
        .unwrap();
    until(&rollouts, "the pause at 50%", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Paused && s.canary_weight == 5_000).then_some(())
    })
    .await;
    rollouts
        .patch(
            "reviews",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {PROMOTE_ANNOTATION: "step"}}})),
        )
        .await
        .unwrap();
    let v2 = until(&rollouts, "promotion", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Healthy
            && s.stable_hash.as_deref() != Some(v1.as_str())
            && s.scale_downs.is_empty())
        .then(|| s.stable_hash.clone())
        .flatten()
    })
    .await;
    assert!(
        !rollouts
            .get("reviews")
            .await
            .unwrap()
            .annotations_contains(PROMOTE_ANNOTATION),
        "the controller cleared the promote annotation (patch on canaryrollouts)"
    );
    let wp: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &wasm_plugin_resource());
    let plugin = wp.get("wasm-canary").await.unwrap();
    assert_eq!(
        support::traffic::first_entry(&plugin.data["spec"]["pluginConfig"])["stableHash"],
        json!(v2)
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), NS);
    let reasons: BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.contains("Promoted"),
        "Events were recorded with the role: {reasons:?}"
    );

    // Outside the role: refused.
    let deployments: Api<Deployment> = Api::namespaced(sa_client.clone(), NS);
    assert!(
        is_forbidden(
            deployments
                .delete("anything", &DeleteParams::default())
                .await
        ),
        "deleting a Deployment"
    );
    let secrets: Api<Secret> = Api::namespaced(sa_client.clone(), NS);
    assert!(
        is_forbidden(secrets.list(&ListParams::default()).await),
        "reading Secrets"
    );
    let pods: Api<Pod> = Api::namespaced(sa_client.clone(), NS);
    assert!(
        is_forbidden(pods.delete("anything", &DeleteParams::default()).await),
        "deleting Pods"
    );
    assert!(
        is_forbidden(
            sa_rollouts
                .delete("reviews", &DeleteParams::default())
                .await
        ),
        "deleting a CanaryRollout"
    );
    let sa_dr: Api<DynamicObject> =
        Api::namespaced_with(sa_client.clone(), NS, &destination_rule_resource());
    assert!(
        is_forbidden(sa_dr.delete("reviews", &DeleteParams::default()).await),
        "deleting the DestinationRule"
    );
    let sa_roles: Api<ClusterRole> = Api::all(sa_client.clone());
    assert!(
        is_forbidden(sa_roles.patch(&role_name, &pp, &Patch::Apply(&role)).await),
        "escalating its own role"
    );

    controller.abort();
    kubelet.abort();
}

trait AnnotationsContain {
    fn annotations_contains(&self, key: &str) -> bool;
}

impl AnnotationsContain for CanaryRollout {
    fn annotations_contains(&self, key: &str) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(key))
    }
}
