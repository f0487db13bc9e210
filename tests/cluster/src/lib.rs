//! A real Kubernetes control plane for tests.
//!
//! [`ControlPlane::start`] runs etcd, kube-apiserver and kube-controller-manager as child
//! processes on free loopback ports, with certificates made by `openssl` in a temporary
//! folder, RBAC authorization and Istio's CRDs installed. Dropping it kills every process,
//! also when a test panics. There is no kubelet: Pods stay `Pending` until a test writes
//! their status itself ([`kubelet::run_pod`], `tests/cluster/README.md`).
//!
//! The binaries come from `make cluster-build`; [`binaries`] says where they are looked for.

pub mod binaries;
pub mod control_plane;
pub mod crds;
pub mod error;
mod kubeconfig;
pub mod kubelet;
mod pki;
pub mod ports;
mod process;

pub use binaries::{kube_version, Binaries};
pub use control_plane::{ControlPlane, StartupTimings};
pub use crds::{install_crds, istio_crds_path};
pub use error::{Error, Result};

/// The field manager this crate writes with (CRDs, namespaces).
pub const FIELD_MANAGER: &str = "wasm-canary-cluster";
