//! What each user action changes on the `CanaryRollout`: the same fields a user would edit by
//! hand, so `kubectl canary` never has powers `kubectl edit` lacks. [`act`] is the one path
//! `kubectl canary promote/abort/retry/pause/resume` and the dashboard's buttons take.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// The button's label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Promote => "Promote",
            Self::PromoteFull => "Promote fully",
            Self::Abort => "Abort",
            Self::Retry => "Retry",
            Self::Pause => "Pause",
            Self::Resume => "Resume",
        }
    }

    /// What the action will do, asked before it is done.
    pub fn consequence(self) -> &'static str {
        match self {
            Self::Promote => "Finish the current pause step; the rollout moves on to its next step.",
            Self::PromoteFull => "Skip every remaining step: the canary becomes stable once all its pods are available.",
            Self::Abort => "Send all traffic back to stable now; the canary scales down after abortScaleDownDelaySeconds.",
            Self::Retry => "Start the aborted canary again from step 1.",
            Self::Pause => "Hold the rollout at its current step (spec.paused: true); traffic stays as it is.",
            Self::Resume => "Continue the paused rollout (spec.paused: false).",
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

/// How an allowed action is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// One merge patch ([`Action::merge_patch`]).
    Patch,
    /// A retry after an analysis abort, which leaves `spec.abort` unset: the controller retries
    /// on the abort -> no-abort edge, so set `spec.abort`, wait until the controller has seen
    /// it, then clear it.
    AbortEdgeFirst,
}

/// Whether `action` may be done on `rollout` as it is, and how: the checks `kubectl canary`
/// and the dashboard's buttons share.
pub fn plan(action: Action, rollout: &CanaryRollout) -> Result<Plan, RolloutError> {
    let name = rollout.name_any();
    let ns = rollout.namespace().unwrap_or_default();
    let status = rollout.status.clone().unwrap_or_default();
    match action {
        Action::Retry if !rollout.spec.abort && status.analysis_aborted => Ok(Plan::AbortEdgeFirst),
        Action::Retry if !rollout.spec.abort => Err(RolloutError::NotAborted { name, ns }),
        Action::Promote | Action::PromoteFull if status.canary_hash.is_none() => {
            Err(RolloutError::NoCanary {
                name,
                ns,
                phase: status.phase,
                what: "promote",
            })
        }
        Action::Promote | Action::PromoteFull if rollout.spec.abort => {
            Err(RolloutError::Aborted { name, ns })
        }
        Action::Resume if !rollout.spec.paused => Err(RolloutError::NotPaused { name, ns }),
        _ => Ok(Plan::Patch),
    }
}

/// Performs `action` on rollout `name` in `ns` if [`plan`] allows it; returns what happened,
/// for the user. A retry after an analysis abort waits (at most 60 s) for the controller to
/// see the abort it sets first.
pub async fn act(
    client: &Client,
    ns: &str,
    name: &str,
    action: Action,
) -> Result<String, RolloutError> {
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    let explain = |e| RolloutError::from_api(e, Some(name), ns);
    let rollout = api.get(name).await.map_err(explain)?;
    if plan(action, &rollout)? == Plan::AbortEdgeFirst {
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
                    name: name.to_owned(),
                    ns: ns.to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_is_found_by_the_name_in_its_url_and_no_other_name_is() {
        for a in Action::ALL {
            assert_eq!(Action::from_name(a.as_str()), Some(a));
        }
        for unknown in ["", "delete", "Promote", "promote --full"] {
            assert_eq!(Action::from_name(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn the_command_named_for_an_action_is_the_cli_command() {
        assert_eq!(
            Action::PromoteFull.command("reviews", "bookinfo"),
            "kubectl canary promote --full reviews -n bookinfo"
        );
        assert_eq!(
            Action::Resume.command("reviews", "bookinfo"),
            "kubectl canary resume reviews -n bookinfo"
        );
    }
}
