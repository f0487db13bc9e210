//! The wasm-canary controller: runs `CanaryRollout`s by moving traffic through the filter.
//!
//! - [`crd`]: the resource; [`crd_yaml`]: its committed YAML; [`hash`]: the pod-template hash;
//! - [`duration`]: durations as users write them (a leaf);
//! - [`steps`]: the step logic, pure; [`traffic`]: the filter config and subsets it implies;
//! - [`conditions`]: the status conditions;
//! - [`reconcile`]: the Kubernetes I/O around them; [`traffic_writes`]: the Istio writes;
//! - [`telemetry`]: metrics and probes; [`api_requests`]: every API request counted;
//! - [`cli`]: what `kubectl canary` does; [`dashboard`]: `kubectl canary dashboard`, a live web page.

// serde_json::Value indexing: reads return Null, never panic; writes only index objects built here.
#![allow(clippy::indexing_slicing)]

pub mod analysis;
pub mod api_requests;
pub mod caches;
pub mod cli;
pub mod conditions;
pub mod crd;
pub mod crd_yaml;
pub mod dashboard;
pub mod duration;
pub mod hash;
pub mod leader;
pub mod reconcile;
pub mod steps;
pub mod strategy;
pub mod telemetry;
pub mod traffic;
pub mod traffic_writes;

/// The one field manager every write of the controller uses.
pub const FIELD_MANAGER: &str = "wasm-canary-controller";

/// Everything that can fail in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The object is missing something the controller needs.
    #[error("{0}")]
    Invalid(String),
    /// A JSON (de)serialization failed.
    #[error("{context}: {source}")]
    Json {
        /// Of what.
        context: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::Invalid(_) => "invalid",
            Self::Json { .. } => "json",
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps a kube error with what was being done.
pub fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}
