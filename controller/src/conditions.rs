//! The rollout's status conditions: one per phase (`Progressing`, `Paused`, `Healthy`,
//! `Aborted`, `Degraded`, exactly one of them `True`), and [`TRAFFIC_APPLIED`], which says
//! whether the traffic plan reached the WasmPlugin and the DestinationRule. Pure; a leaf.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{CanaryRolloutStatus, Phase};

/// Condition type: the last traffic plan is in the WasmPlugin and the DestinationRule (`True`),
/// or a write could not be made and why (`False`).
pub const TRAFFIC_APPLIED: &str = "TrafficApplied";

/// The reason of the [`TRAFFIC_APPLIED`] condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficReason {
    /// Both objects carry the plan (written now or already in place).
    Applied,
    /// The API server refused a write (RBAC, an admission policy, validation).
    WriteRefused,
    /// Something only the user can fix: the DestinationRule or a subset is missing, or the
    /// named WasmPlugin is controlled by another object.
    Misconfigured,
}

impl TrafficReason {
    /// The CamelCase reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "Applied",
            Self::WriteRefused => "WriteRefused",
            Self::Misconfigured => "Misconfigured",
        }
    }
}

const PHASES: [(&str, Phase); 5] = [
    ("Progressing", Phase::Progressing),
    ("Paused", Phase::Paused),
    ("Healthy", Phase::Healthy),
    ("Aborted", Phase::Aborted),
    ("Degraded", Phase::Degraded),
];

/// Sets `condition`, keeping its `lastTransitionTime` when its status did not change.
fn set(status: &mut CanaryRolloutStatus, mut condition: Condition) {
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == condition.type_)
    {
        Some(c) => {
            if c.status == condition.status {
                condition.last_transition_time = c.last_transition_time.clone();
            }
            *c = condition;
        }
        None => status.conditions.push(condition),
    }
}

/// One condition per phase, `True` for the current one; the other conditions are kept.
pub fn set_phase_conditions(status: &mut CanaryRolloutStatus, now: DateTime<Utc>) {
    for (kind, phase) in PHASES {
        let condition = Condition {
            type_: kind.to_owned(),
            status: if status.phase == phase {
                "True"
            } else {
                "False"
            }
            .to_owned(),
            reason: format!("{:?}", status.phase),
            message: status.message.clone().unwrap_or_default(),
            last_transition_time: Time(seconds(now)),
            observed_generation: status.observed_generation,
        };
        set(status, condition);
    }
}

/// Sets [`TRAFFIC_APPLIED`]: `True` for [`TrafficReason::Applied`], `False` otherwise.
pub fn set_traffic_condition(
    status: &mut CanaryRolloutStatus,
    reason: TrafficReason,
    message: String,
    now: DateTime<Utc>,
) {
    let condition = Condition {
        type_: TRAFFIC_APPLIED.to_owned(),
        status: if reason == TrafficReason::Applied {
            "True"
        } else {
            "False"
        }
        .to_owned(),
        reason: reason.as_str().to_owned(),
        message,
        last_transition_time: Time(seconds(now)),
        observed_generation: status.observed_generation,
    };
    set(status, condition);
}

/// A condition's time (`metav1.Time` has whole seconds).
fn seconds(now: DateTime<Utc>) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(now.timestamp())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_traffic_write_is_a_false_condition_and_survives_phase_updates() {
        let now = Utc::now();
        let mut status = CanaryRolloutStatus {
            phase: Phase::Paused,
            ..CanaryRolloutStatus::default()
        };
        set_phase_conditions(&mut status, now);
        set_traffic_condition(
            &mut status,
            TrafficReason::WriteRefused,
            "denied".into(),
            now,
        );
        status.phase = Phase::Degraded;
        set_phase_conditions(&mut status, now);
        let traffic = status
            .conditions
            .iter()
            .find(|c| c.type_ == TRAFFIC_APPLIED)
            .expect("kept by set_phase_conditions");
        assert_eq!(
            (traffic.status.as_str(), traffic.reason.as_str()),
            ("False", "WriteRefused")
        );
        let true_ones: Vec<&str> = status
            .conditions
            .iter()
            .filter(|c| c.status == "True")
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(true_ones, ["Degraded"]);
    }
}
