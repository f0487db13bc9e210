//! What each user action changes on the `CanaryRollout`: the same fields a user would edit by
//! hand, so `kubectl canary` never has powers `kubectl edit` lacks. [`act`] is the one path
//! `kubectl canary promote/abort/retry/pause/resume` and the dashboard's buttons take.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

use super::error::RolloutError;
use crate::crd::CanaryRollout;
use crate::reconcile::PROMOTE_ANNOTATION;
use crate::steps::Promote;

/// How long a retry after an analysis abort waits for the controller to see the abort.
const CONTROLLER_SEES_ABORT: Duration = Duration::from_secs(60);

/// The merge patch that asks for a promote: a new request each time (`step:<nanoseconds>`), so
/// a second promote right after the first is a second request, not a repeat of it.
pub fn promote_patch(kind: Promote) -> Value {
    let id = chrono::Utc::now()
        .timestamp_nanos_opt()
        .unwrap_or_default()
        .to_string();
    json!({"metadata": {"annotations": {PROMOTE_ANNOTATION: kind.annotation_value(&id)}}})
}

/// A change a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Finish the current pause step (annotation `wasmcanary.io/promote: step:<id>`).
    Promote,
    /// Skip every remaining step (annotation `wasmcanary.io/promote: full:<id>`).
    PromoteFull,
    /// All traffic back to stable (`spec.abort: true`).
    Abort,
    /// Start the aborted canary again from step 0 (`spec.abort: false`).
    Retry,
    /// Hold at the current step (`spec.paused: true`).
    Pause,
    /// Continue (`spec.paused: false`).
    Resume,
}

impl Action {
    /// Every action, in the order a user meets them.
    pub const ALL: [Action; 6] = [
        Self::Promote,
        Self::PromoteFull,
        Self::Abort,
        Self::Retry,
        Self::Pause,
        Self::Resume,
    ];

    /// The name in URLs and on the page: `promote`, `promote-full`, `abort`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::PromoteFull => "promote-full",
            Self::Abort => "abort",
            Self::Retry => "retry",
            Self::Pause => "pause",
            Self::Resume => "resume",
        }
    }

    /// The action named `name` ([`Action::as_str`]).
    pub fn from_name(name: &str) -> Option<Action> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The `kubectl canary` command doing the same, for the dashboard's confirmations.
    pub fn command(self, name: &str, ns: &str) -> String {
        let verb = match self {
            Self::PromoteFull => "promote --full",
            other => other.as_str(),
        };
        format!("kubectl canary {verb} {name} -n {ns}")
    }

    /// The JSON merge patch that performs the action.
    pub fn merge_patch(self) -> Value {
        match self {
            Self::Promote => promote_patch(Promote::Step),
            Self::PromoteFull => promote_patch(Promote::Full),
            Self::Abort => json!({"spec": {"abort": true}}),
            // `abort` and `paused` are omitted when false; null removes them.
            Self::Retry => json!({"spec": {"abort": null}}),
            Self::Pause => json!({"spec": {"paused": true}}),
            Self::Resume => json!({"spec": {"paused": null}}),
        }
    }

    /// What happened, for the user.
    pub fn done_message(self, name: &str) -> String {
        match self {
            Self::Promote => format!("rollout {name}: promote requested; the controller finishes the current pause step (it removes the {PROMOTE_ANNOTATION} annotation when done)"),
            Self::PromoteFull => format!("rollout {name}: full promotion requested; the canary becomes stable once all its pods are available, skipping the remaining steps"),
            Self::Abort => format!("rollout {name}: aborted; all traffic goes back to stable now, the canary scales down after abortScaleDownDelaySeconds. Retry with `kubectl canary retry {name}`"),
            Self::Retry => format!("rollout {name}: retrying the canary from step 0"),
            Self::Pause => format!("rollout {name}: paused at its current step (traffic stays as it is). Continue with `kubectl canary resume {name}`"),
            Self::Resume => format!("rollout {name}: resumed"),
        }
    }
}

/// Performs `action` on rollout `name` in `ns` after checking that the rollout's state allows
/// it; returns what happened, for the user. A retry after an analysis abort (which leaves
/// `spec.abort` unset) makes the abort edge the controller retries on: it sets `spec.abort`,
/// waits until the controller has seen it (at most 60 s), then clears it.
pub async fn act(
    client: &Client,
    ns: &str,
    name: &str,
    action: Action,
) -> Result<String, RolloutError> {
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    let explain = |e| RolloutError::from_api(e, Some(name), ns);
    let rollout = api.get(name).await.map_err(explain)?;
    let status = rollout.status.clone().unwrap_or_default();
    let (name_owned, ns_owned) = (name.to_owned(), ns.to_owned());
    match action {
        Action::Retry if !rollout.spec.abort && status.analysis_aborted => {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(Action::Abort.merge_patch()),
            )
            .await
            .map_err(explain)?;
            let target = api.get(name).await.map_err(explain)?.metadata.generation;
            let deadline = tokio::time::Instant::now() + CONTROLLER_SEES_ABORT;
            loop {
                let r = api.get(name).await.map_err(explain)?;
                if r.status.as_ref().and_then(|s| s.observed_generation) >= target {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(RolloutError::ControllerSilent {
                        name: name_owned,
                        ns: ns_owned,
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Action::Retry if !rollout.spec.abort => {
            return Err(RolloutError::NotAborted {
                name: name_owned,
                ns: ns_owned,
            })
        }
        Action::Promote | Action::PromoteFull if status.canary_hash.is_none() => {
            return Err(RolloutError::NoCanary {
                name: name_owned,
                ns: ns_owned,
                phase: status.phase,
                what: "promote",
            })
        }
        Action::Promote | Action::PromoteFull if rollout.spec.abort => {
            return Err(RolloutError::Aborted {
                name: name_owned,
                ns: ns_owned,
            })
        }
        Action::Resume if !rollout.spec.paused => {
            return Err(RolloutError::NotPaused {
                name: name_owned,
                ns: ns_owned,
            })
        }
        _ => {}
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(action.merge_patch()),
    )
    .await
    .map_err(explain)?;
    Ok(action.done_message(name))
}
