//! What each user action changes on the `CanaryRollout`: the same fields a user would edit by
//! hand, so `kubectl canary` never has powers `kubectl edit` lacks.

use canary_controller::reconcile::PROMOTE_ANNOTATION;
use canary_controller::steps::Promote;
use serde_json::{json, Value};

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
