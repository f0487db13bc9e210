//! One error type for starting, using and stopping the control plane.

use std::path::PathBuf;
use std::time::Duration;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with what a developer needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes binary built by `make cluster-build` is missing.
    #[error(
        "{binary} not found at {}: run `make cluster-build` (or set {env_var} to the folder that holds it)",
        path.display()
    )]
    KubeBinaryMissing {
        /// The binary's file name.
        binary: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The variable that overrides the folder.
        env_var: &'static str,
    },

    /// etcd is neither at the override path nor on `PATH`.
    #[error("etcd not found ({looked_in}): run `make cluster-build` (it installs the Debian package etcd-server) or set {env_var}")]
    EtcdMissing {
        /// Where it was looked for.
        looked_in: String,
        /// The variable that overrides the path.
        env_var: &'static str,
    },

    /// `tests/cluster/kube/go.mod` does not pin `k8s.io/kubernetes` the way this crate reads it.
    #[error("no `k8s.io/kubernetes vX.Y.Z` requirement in tests/cluster/kube/go.mod")]
    VersionPin,

    /// A file-system or process operation failed.
    #[error("{action}")]
    Io {
        /// What was being done, with the path or program.
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An `openssl` command failed.
    #[error("openssl {step} failed ({status}): {stderr}")]
    Openssl {
        /// Which certificate or key was being made.
        step: String,
        /// The exit status.
        status: String,
        /// What openssl printed.
        stderr: String,
    },

    /// A control-plane process exited while it should have been running.
    #[error("{process} exited ({status}); the end of {}:\n{tail}", log.display())]
    ProcessExited {
        /// etcd, kube-apiserver or kube-controller-manager.
        process: &'static str,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// Something did not become ready in time.
    #[error("{what} not ready after {timeout:?}{}", last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    NotReady {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
        /// The last error seen while polling, if any.
        last_error: Option<String>,
    },

    /// A kubeconfig could not be written, read or turned into a client configuration.
    #[error("kubeconfig {}: {message}", path.display())]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What failed.
        message: String,
    },

    /// A Kubernetes API call failed.
    #[error("{action}")]
    Api {
        /// The call, with the object it was about.
        action: String,
        /// The error kube-rs returned.
        #[source]
        source: kube::Error,
    },

    /// A YAML file could not be read as Kubernetes objects.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }

    pub(crate) fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Api { action, source }
    }
}
