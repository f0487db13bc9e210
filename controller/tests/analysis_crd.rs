//! The AnalysisTemplate type reads the fixture demo's Argo AnalysisTemplate. (Its committed CRD
//! is checked fresh with the others in crd_fresh.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use canary_controller::analysis::AnalysisTemplate;

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
