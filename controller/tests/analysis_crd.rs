//! The committed AnalysisTemplate CRD is what the Rust types generate. `make crd` rewrites it
//! (this test with WASM_CANARY_WRITE_CRDS=1).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use canary_controller::analysis::{AnalysisTemplate, ClusterAnalysisTemplate};
use kube::CustomResourceExt;

#[test]
fn the_committed_analysistemplate_crd_is_fresh() {
    check_fresh("analysistemplate.yaml", &AnalysisTemplate::crd());
}

#[test]
fn the_committed_clusteranalysistemplate_crd_is_fresh() {
    check_fresh(
        "clusteranalysistemplate.yaml",
        &ClusterAnalysisTemplate::crd(),
    );
}

fn check_fresh(
    file: &str,
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crds")
        .join(file);
    let generated = serde_yaml::to_string(crd).unwrap();
    if std::env::var_os("WASM_CANARY_WRITE_CRDS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run `make crd` and commit the result",
        path.display()
    );
}

#[test]
fn the_fixture_analysistemplate_carries_over_by_changing_its_api_version_only() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/tse-gitops-demo/argo/rollout/analysis.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    v["apiVersion"] = "wasmcanary.io/v1alpha1".into();
    let t: AnalysisTemplate = serde_json::from_value(v.clone()).unwrap();
    let m = &t.spec.metrics[0];
    assert_eq!(m.failure_limit, Some(3));
    assert_eq!(m.interval.as_deref(), Some("5m"));
    let sw = m.provider.skywalking.as_ref().unwrap();
    assert_eq!(sw.interval.as_deref(), Some("3m"));
    assert!(sw.query.contains("{{ args.service-name }}"));
    // Nothing is lost: what we serialize is what the fixture says.
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(back["spec"], v["spec"]);
}
