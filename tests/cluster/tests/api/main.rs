//! The control plane's tests, in one test binary so they share one control plane
//! ([`canary_cluster::ControlPlane::shared`]) instead of starting one per file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod control_plane;
mod istio_resources;
mod manifests;
mod rbac;
mod support;
