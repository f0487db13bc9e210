//! Installing CustomResourceDefinitions from YAML files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::try_join_all;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};

use crate::binaries::workspace_root;
use crate::error::{Error, Result};
use crate::FIELD_MANAGER;

/// Overrides the path of Istio's CRD file.
pub const ISTIO_CRDS_ENV: &str = "WASM_CANARY_ISTIO_CRDS";

/// How long a CRD may take to become Established.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Istio's generated CRDs: `$WASM_CANARY_ISTIO_CRDS`, else
/// `<workspace>/../shared/fixtures/istio/customresourcedefinitions.gen.yaml` (the `shared`
/// folder next to the clone, as on CI).
pub fn istio_crds_path() -> PathBuf {
    match std::env::var_os(ISTIO_CRDS_ENV) {
        Some(path) => PathBuf::from(path),
        None => {
            workspace_root().join("../shared/fixtures/istio/customresourcedefinitions.gen.yaml")
        }
    }
}

/// Server-side applies every CustomResourceDefinition in the YAML file `path` and waits
/// until all are Established. Returns their names.
///
/// Documents go to the server as written (not through a typed struct), so no field the
/// file sets is lost. Anything but a CRD in the file is an error.
pub async fn install_crds(client: &Client, path: &Path) -> Result<Vec<String>> {
    let invalid = |message: String| Error::Manifest {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(Error::io(format!("reading CRDs from {}", path.display())))?;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let apply = PatchParams::apply(FIELD_MANAGER).force();

    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| invalid(e.to_string()))?;
    let mut names = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let kind = document
            .pointer("/kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let name = document
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        if kind != "CustomResourceDefinition" || name.is_empty() {
            return Err(invalid(format!(
                "document {index} is a {kind:?} named {name:?}, not a named CustomResourceDefinition"
            )));
        }
        crds.patch(&name, &apply, &Patch::Apply(&document))
            .await
            .map_err(Error::api(format!(
                "applying CRD {name} from {}",
                path.display()
            )))?;
        names.push(name);
    }

    try_join_all(names.iter().map(|name| {
        let crds = crds.clone();
        async move {
            let established = await_condition(crds, name, conditions::is_crd_established());
            match tokio::time::timeout(ESTABLISH_TIMEOUT, established).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(Error::NotReady {
                    what: format!("CRD {name}"),
                    timeout: ESTABLISH_TIMEOUT,
                    last_error: Some(error.to_string()),
                }),
                Err(_) => Err(Error::NotReady {
                    what: format!("CRD {name} (Established)"),
                    timeout: ESTABLISH_TIMEOUT,
                    last_error: None,
                }),
            }
        }
    }))
    .await?;
    Ok(names)
}
