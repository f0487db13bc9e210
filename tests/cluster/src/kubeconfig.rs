//! Kubeconfig files for the admin (tests, humans) and for kube-controller-manager.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use crate::error::{Error, Result};

/// Writes a kubeconfig that authenticates with a client certificate. Paths, not inline
/// data, so a human can `cat` the certificates next to it.
pub(crate) fn write(
    path: &Path,
    server: &str,
    ca_cert: &Path,
    client_cert: &Path,
    client_key: &Path,
) -> Result<()> {
    let name = "wasm-canary-test";
    let document = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": server,
            "certificate-authority": ca_cert,
        }}],
        "users": [{"name": name, "user": {
            "client-certificate": client_cert,
            "client-key": client_key,
        }}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
    });
    let text = serde_saphyr::to_string(&document).map_err(|e| Error::Kubeconfig {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
}

/// The kube-rs client configuration a kubeconfig file describes.
pub(crate) async fn load(path: &Path) -> Result<kube::Config> {
    let invalid = |message: String| Error::Kubeconfig {
        path: PathBuf::from(path),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| invalid(e.to_string()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| invalid(e.to_string()))
}
