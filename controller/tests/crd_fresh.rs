//! The committed CRD YAML is what the Rust types generate (run `make crd` after changing them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::CustomResourceExt;

#[test]
fn the_committed_crd_is_fresh() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/canaryrollout.yaml");
    let committed = std::fs::read_to_string(&path).unwrap();
    let generated = serde_yaml::to_string(&canary_controller::crd::CanaryRollout::crd()).unwrap();
    assert!(
        committed == generated,
        "{} is stale: run `make crd` and commit the result",
        path.display()
    );
}

#[test]
fn the_crd_has_a_status_subresource_and_printer_columns() {
    let crd = canary_controller::crd::CanaryRollout::crd();
    let v = &crd.spec.versions[0];
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<&str> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Phase", "Step", "Weight", "Stable", "Canary", "Analysis", "Message", "Age"]
    );
}
