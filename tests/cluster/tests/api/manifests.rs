//! The WasmPlugin manifests the project ships, against Istio's real CRD schemas and
//! CEL rules.

use std::path::PathBuf;

use crate::support::{refusal, wasm_plugin, within};
use canary_cluster::binaries::workspace_root;
use canary_cluster::ControlPlane;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{pinned_kind, Scope};
use kube::Api;
use serde_json::{json, Value};

/// The namespace the manifests are written for.
const NAMESPACE: &str = "bookinfo";

/// Every YAML document in `wasm-plugin/*.yaml`, with the file it came from.
fn shipped_manifests() -> Vec<(PathBuf, Value)> {
    let dir = workspace_root().join("wasm-plugin");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", file.display()));
        documents.extend(
            parsed
                .into_iter()
                .filter(|d| !d.is_null())
                .map(|d| (file.clone(), d)),
        );
    }
    documents
}

#[tokio::test]
async fn every_manifest_in_wasm_plugin_applies_cleanly_with_server_side_apply() {
    let manifests = shipped_manifests();
    assert!(
        !manifests.is_empty(),
        "no YAML documents in wasm-plugin/*.yaml"
    );

    let plane = ControlPlane::shared().await.expect("control plane");
    let client = plane.client().await.expect("admin client");
    plane
        .create_namespace(&client, NAMESPACE)
        .await
        .expect("namespace");
    // Strict: a field the schema does not know is an error, not a warning.
    let apply = PatchParams::apply("wasm-canary-manifests").validation_strict();

    for (file, document) in manifests {
        let field = |pointer: &str| {
            document
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let (api_version, kind, name) = (
            field("/apiVersion"),
            field("/kind"),
            field("/metadata/name"),
        );
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, capabilities) = within("discovery", pinned_kind(&client, &gvk))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {kind} {api_version} is not served: {e}",
                    file.display()
                )
            });
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => {
                let namespace = document
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(NAMESPACE);
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let applied = within("apply", api.patch(name, &apply, &Patch::Apply(&document))).await;
        if let Err(error) = applied {
            panic!("{}: {kind} {name} was refused: {error}", file.display());
        }
    }
}

/// Applies a WasmPlugin `spec` in `bookinfo` and returns the server's refusal message.
async fn refusal_of_wasm_plugin(name: &str, spec: Value) -> String {
    let plane = ControlPlane::shared().await.expect("control plane");
    let client = plane.client().await.expect("admin client");
    plane
        .create_namespace(&client, NAMESPACE)
        .await
        .expect("namespace");
    let resource = wasm_plugin();
    let api: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &resource);
    let plugin = DynamicObject::new(name, &resource).data(json!({ "spec": spec }));
    let apply = PatchParams::apply("wasm-canary-test").validation_strict();
    let status = refusal(within("apply", api.patch(name, &apply, &Patch::Apply(&plugin))).await);
    assert_eq!(status.code, 422, "{status:?}");
    assert_eq!(status.reason, "Invalid", "{status:?}");
    status.message
}

#[tokio::test]
async fn a_wasm_plugin_with_both_selector_and_target_refs_is_refused_by_istios_cel_rule() {
    let message = refusal_of_wasm_plugin(
        "both-selector-and-target-refs",
        json!({
            "url": "oci://registry.example/wasm-canary:0.1.0",
            "selector": {"matchLabels": {"app": "reviews"}},
            "targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}],
        }),
    )
    .await;
    assert!(
        message.contains("only one of targetRefs or selector can be set"),
        "{message}"
    );
}

#[tokio::test]
async fn a_wasm_plugin_without_a_url_is_refused_by_istios_schema() {
    let message = refusal_of_wasm_plugin(
        "no-url",
        json!({"selector": {"matchLabels": {"app": "reviews"}}, "phase": "AUTHN"}),
    )
    .await;
    assert!(message.contains("spec.url: Required value"), "{message}");
}

#[tokio::test]
async fn a_wasm_plugin_with_an_unknown_phase_is_refused_by_istios_schema() {
    let message = refusal_of_wasm_plugin(
        "unknown-phase",
        json!({"url": "oci://registry.example/wasm-canary:0.1.0", "phase": "SOMETIMES"}),
    )
    .await;
    assert!(
        message.contains("spec.phase: Unsupported value: \"SOMETIMES\""),
        "{message}"
    );
}
