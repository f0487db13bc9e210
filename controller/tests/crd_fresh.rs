//! The committed CRD YAML under controller/crds/ is what the Rust types generate. These tests
//! only read: regenerate with `make crd` (`crdgen --out-dir controller/crds`) and commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use canary_controller::crd_yaml::crd_files;
use kube::CustomResourceExt;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds")
}

#[test]
fn every_committed_crd_is_what_the_rust_types_generate() {
    let stale: Vec<String> = crd_files()
        .iter()
        .filter(|f| {
            let committed = std::fs::read_to_string(crds_dir().join(f.file)).unwrap_or_default();
            committed != f.yaml().unwrap()
        })
        .map(|f| f.file.to_owned())
        .collect();
    assert!(
        stale.is_empty(),
        "stale in {}: {stale:?}; run `make crd` and commit the result",
        crds_dir().display()
    );
}

#[test]
fn the_crd_folder_and_its_kustomization_hold_exactly_the_generated_crds() {
    let generated: BTreeSet<String> = crd_files().iter().map(|f| f.file.to_owned()).collect();
    let in_folder: BTreeSet<String> = std::fs::read_dir(crds_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(
        in_folder, generated,
        "a CRD file nobody generates or checks"
    );
    let kustomization: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(crds_dir().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed, generated,
        "`kubectl apply -k controller/crds` installs every CRD"
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
