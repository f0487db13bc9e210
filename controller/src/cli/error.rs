//! Why a read or an action on a rollout did not happen, in sentences that say what to do next.
//! Shared by `kubectl canary` and the dashboard, so both say the same thing.

use crate::crd::Phase;

/// A failed read or a refused action on a `CanaryRollout`.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The CRD is not installed in the cluster.
    #[error(
        "the CanaryRollout resource type (canaryrollouts.wasmcanary.io) is not installed in this cluster; \
         install the controller with `kubectl apply -k controller/deploy`"
    )]
    NotInstalled,
    /// No rollout of that name.
    #[error(
        "rollout {name} not found in namespace {ns}; list them with `kubectl canary list -n {ns}` \
         (or `kubectl canary list -A` for every namespace)"
    )]
    NotFound {
        /// Rollout name.
        name: String,
        /// Its namespace.
        ns: String,
    },
    /// RBAC refused the call.
    #[error(
        "not allowed: {message}; ask for RBAC on canaryrollouts.wasmcanary.io in namespace {ns}"
    )]
    Forbidden {
        /// The API server's message (names the user and the verb).
        message: String,
        /// The namespace acted in.
        ns: String,
    },
    /// Retry of a rollout that is not aborted.
    #[error("rollout {name} is not aborted (spec.abort is not set and no analysis aborted it): nothing to retry; see `kubectl canary status {name} -n {ns}`")]
    NotAborted {
        /// Rollout name.
        name: String,
        /// Its namespace.
        ns: String,
    },
    /// Promote (or set-weight) without a canary.
    #[error(
        "rollout {name} has no canary running (phase {phase:?}): nothing to {what}; change the pod template \
         to start one, or see `kubectl canary status {name} -n {ns}`"
    )]
    NoCanary {
        /// Rollout name.
        name: String,
        /// Its namespace.
        ns: String,
        /// Its phase.
        phase: Phase,
        /// `promote`, `weigh`.
        what: &'static str,
    },
    /// Promote (or set-weight) of an aborted rollout.
    #[error(
        "rollout {name} is aborted: retry it first with `kubectl canary retry {name} -n {ns}`"
    )]
    Aborted {
        /// Rollout name.
        name: String,
        /// Its namespace.
        ns: String,
    },
    /// Resume of a rollout not paused with `spec.paused`.
    #[error("rollout {name} is not paused with spec.paused; to move past a pause step use `kubectl canary promote {name} -n {ns}`")]
    NotPaused {
        /// Rollout name.
        name: String,
        /// Its namespace.
        ns: String,
    },
    /// Retry after an analysis abort: the controller never saw the abort edge.
    #[error("rollout {name}: the controller did not act on the abort within 60 s; is it running? (spec.abort is now true: run `kubectl canary retry {name} -n {ns}` again once it is)")]
    ControllerSilent {
        /// Rollout name.
        name: String,
        /// Its namespace.
        ns: String,
    },
    /// The new steps could not be written as JSON.
    #[error("writing the steps as JSON: {0}")]
    Steps(#[source] serde_json::Error),
    /// Any other API error.
    #[error("{0}")]
    Kube(#[source] kube::Error),
}

impl RolloutError {
    /// Turns an API error into a sentence that says what to do next; `name` is the rollout
    /// asked for, if any.
    pub fn from_api(e: kube::Error, name: Option<&str>, ns: &str) -> Self {
        if let kube::Error::Api(status) = &e {
            if status.code == 404 {
                // A get names the missing resource type; a list of a group the server does not
                // serve at all gets a plain 404 page.
                if status
                    .message
                    .contains("could not find the requested resource")
                    || status.message == "404 page not found"
                {
                    return Self::NotInstalled;
                }
                if let Some(name) = name {
                    return Self::NotFound {
                        name: name.to_owned(),
                        ns: ns.to_owned(),
                    };
                }
            }
            if status.code == 403 {
                return Self::Forbidden {
                    message: status.message.clone(),
                    ns: ns.to_owned(),
                };
            }
        }
        Self::Kube(e)
    }

    /// The user asked for something the rollout's state does not allow (as opposed to a
    /// failure of the cluster or of the controller).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::NotAborted { .. }
                | Self::NoCanary { .. }
                | Self::Aborted { .. }
                | Self::NotPaused { .. }
        )
    }
}
