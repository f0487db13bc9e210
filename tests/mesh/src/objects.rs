//! Applying Kubernetes objects the way a user does (`kubectl apply --server-side`): any kind,
//! resolved through API discovery, one field manager.

use anyhow::Context;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use serde_json::Value;

/// The field manager of objects the mesh harness applies for the test's "user".
pub const FIELD_MANAGER: &str = "wasm-canary-mesh-user";

/// Server-side applies `object` (with `apiVersion`, `kind`, `metadata.name`) into `namespace`
/// when it is namespaced (its own `metadata.namespace` wins).
pub async fn apply(client: &Client, namespace: &str, object: &Value) -> anyhow::Result<()> {
    let api_version = object["apiVersion"].as_str().context("apiVersion")?;
    let kind = object["kind"].as_str().context("kind")?;
    let name = object["metadata"]["name"]
        .as_str()
        .context("metadata.name")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {api_version} {kind}"))?;
    let api: Api<DynamicObject> = match capabilities.scope {
        kube::discovery::Scope::Namespaced => {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or(namespace);
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut object = object.clone();
    if capabilities.scope == kube::discovery::Scope::Namespaced
        && object["metadata"]["namespace"].is_null()
    {
        object["metadata"]["namespace"] = Value::from(namespace);
    }
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// Applies every document of a YAML stream (as `kubectl apply -f file.yaml`).
pub async fn apply_yaml(client: &Client, namespace: &str, yaml: &str) -> anyhow::Result<()> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| anyhow::anyhow!("parsing YAML: {e}"))?;
    for document in documents.iter().filter(|d| !d.is_null()) {
        apply(client, namespace, document).await?;
    }
    Ok(())
}
