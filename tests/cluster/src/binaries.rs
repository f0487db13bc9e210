//! Where the control-plane binaries are.
//!
//! - kube-apiserver and kube-controller-manager: `$WASM_CANARY_KUBE_BIN_DIR`, else
//!   `<workspace>/build/kube/<pin>/`, which `make cluster-build` fills.
//! - etcd: `$WASM_CANARY_ETCD`, else `etcd` on `PATH` (Debian package `etcd-server`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Overrides the folder holding kube-apiserver and kube-controller-manager.
pub const KUBE_BIN_DIR_ENV: &str = "WASM_CANARY_KUBE_BIN_DIR";
/// Overrides the path of the etcd binary.
pub const ETCD_ENV: &str = "WASM_CANARY_ETCD";

/// The pin lives in one place, the Go module that builds the binaries.
const KUBE_GO_MOD: &str = include_str!("../kube/go.mod");

/// The `k8s.io/kubernetes` version `tests/cluster/kube/go.mod` pins, e.g. `v1.37.2`.
pub fn kube_version() -> Result<&'static str> {
    // `k8s.io/kubernetes vX.Y.Z`, inside a require block or after `require`.
    KUBE_GO_MOD
        .lines()
        .find_map(|line| {
            let mut words = line
                .split_whitespace()
                .skip_while(|word| *word == "require");
            match (words.next(), words.next()) {
                (Some("k8s.io/kubernetes"), Some(version)) if version.starts_with('v') => {
                    Some(version)
                }
                _ => None,
            }
        })
        .ok_or(Error::VersionPin)
}

/// The workspace root: this crate lives in `<root>/tests/cluster`.
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Paths of the three programs a control plane runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager.
    pub kube_controller_manager: PathBuf,
}

impl Binaries {
    /// Finds the binaries, or says which one is missing and how to get it.
    pub fn locate() -> Result<Self> {
        let kube_dir = match std::env::var_os(KUBE_BIN_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => workspace_root().join("build/kube").join(kube_version()?),
        };
        let kube_binary = |binary: &'static str| {
            let path = kube_dir.join(binary);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::KubeBinaryMissing {
                    binary,
                    path,
                    env_var: KUBE_BIN_DIR_ENV,
                })
            }
        };
        Ok(Self {
            etcd: locate_etcd()?,
            kube_apiserver: kube_binary("kube-apiserver")?,
            kube_controller_manager: kube_binary("kube-controller-manager")?,
        })
    }
}

fn locate_etcd() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ETCD_ENV).map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::EtcdMissing {
                looked_in: path.display().to_string(),
                env_var: ETCD_ENV,
            })
        };
    }
    let search_path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search_path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::EtcdMissing {
            looked_in: format!("PATH={}", search_path.to_string_lossy()),
            env_var: ETCD_ENV,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_kube_version_is_read_from_the_go_module_pin() {
        let version = kube_version().unwrap();
        assert!(version.starts_with("v1."), "{version}");
    }
}
