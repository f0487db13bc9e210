//! `make oci` output is an OCI image layout Istio can pull: Wasm "compat" variant, one tar+gzip
//! layer holding exactly `plugin.wasm`, digests that match their blobs, reproducible builds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use wasm_canary_e2e::{filter_wasm, workspace_root};

fn build_image(out: &Path) -> Value {
    let status = Command::new("python3")
        .arg(workspace_root().join("filter/oci_image.py"))
        .args([
            "--wasm",
            filter_wasm().unwrap().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--tag",
            "test",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).unwrap()).unwrap()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn blob(dir: &Path, digest: &str) -> std::path::PathBuf {
    dir.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

#[test]
fn the_image_layout_is_istios_compat_variant_with_only_plugin_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_image(dir.path());
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "test"
    );
    let manifest_path = blob(dir.path(), m["digest"].as_str().unwrap());
    assert_eq!(
        format!("sha256:{}", sha256(&manifest_path)),
        m["digest"],
        "manifest digest matches its blob"
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"],
        "compat"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "exactly one layer");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer = blob(dir.path(), layers[0]["digest"].as_str().unwrap());
    assert_eq!(format!("sha256:{}", sha256(&layer)), layers[0]["digest"]);
    assert_eq!(
        std::fs::metadata(&layer).unwrap().len(),
        layers[0]["size"].as_u64().unwrap()
    );

    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&layer)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(listing.stdout).unwrap().trim(),
        "plugin.wasm"
    );
    let unpacked = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .unwrap()
        .success());
    assert_eq!(
        sha256(&unpacked.path().join("plugin.wasm")),
        sha256(&filter_wasm().unwrap()),
        "the layer holds the built filter"
    );
}

#[test]
fn the_same_filter_gives_the_same_image_digest() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert_eq!(
        build_image(a.path())["manifests"][0]["digest"],
        build_image(b.path())["manifests"][0]["digest"]
    );
}

#[test]
fn skopeo_reads_the_layout_as_a_wasm_image() {
    let dir = tempfile::tempdir().unwrap();
    build_image(dir.path());
    let out = Command::new("skopeo")
        .args(["inspect", &format!("oci:{}:test", dir.path().display())])
        .output()
        .expect("skopeo (installed by make setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Architecture"], "wasm");
    assert_eq!(info["Layers"].as_array().unwrap().len(), 1);
}
