//! What the page shows, as the JSON it receives: the rollouts at a glance, and one rollout in
//! detail. Built from the watched objects and the remembered series. Pure: objects in, views
//! out; the page only lays them out.

use chrono::DateTime;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

use super::history::{SplitSample, WeightPoint};
use crate::analysis::{AnalysisPhase, AnalysisRunStatus, Metric, MetricResult};
use crate::cli::actions::{plan, Action};
use crate::cli::envoy::ObservedSplit;
use crate::cli::status::{describe_step, phase_name, rs_hash, split_line};
use crate::crd::{CanaryRollout, Phase};
use crate::reconcile::PROMOTE_ANNOTATION;
use crate::steps::{format_weight, Promote};

/// Events shown per rollout, newest first.
pub const EVENTS_SHOWN: usize = 20;

/// How a rollout is doing, at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthLevel {
    /// On one version, every pod ready.
    Good,
    /// A canary on its way (or paused on purpose), nothing wrong.
    Progressing,
    /// Something to look at: pods not ready, no status yet.
    Warning,
    /// Aborted, degraded, or an analysis failed.
    Bad,
}

/// A rollout's health: a level and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The level.
    pub level: HealthLevel,
    /// Readiness of each version and the reason for the level.
    pub text: String,
}

/// One row of the list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSummary {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `status.phase`, or `Unknown` before the controller wrote a status.
    pub phase: String,
    /// `status.currentStep`: steps done / steps (as Argo Rollouts and `kubectl canary list`
    /// show it), or `-`.
    pub step: String,
    /// Canary weight, `10%`.
    pub weight: String,
    /// Canary weight in basis points.
    pub weight_bp: u32,
    /// Stable pod-template hash.
    pub stable_hash: Option<String>,
    /// Canary pod-template hash, while a canary runs.
    pub canary_hash: Option<String>,
    /// At a glance.
    pub health: Health,
    /// `status.message`.
    pub message: Option<String>,
}

/// The list page.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListView {
    /// `namespace bookinfo` or `all namespaces`.
    pub scope: String,
    /// The rollouts, by namespace and name.
    pub rollouts: Vec<RolloutSummary>,
    /// What the dashboard cannot see (a watch refused), in sentences.
    pub problems: Vec<String>,
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Completed.
    Done,
    /// Being executed.
    Current,
    /// Still to come (or no canary running).
    Pending,
}

/// One step of the rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    /// Numbered from 1, as `status.currentStep` counts.
    pub number: usize,
    /// `setWeight 10%`, `pause 10m`, ...
    pub text: String,
    /// Where it stands.
    pub state: StepState,
}

/// A version and its ReplicaSet's readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    /// `stable`, `canary` or `old`.
    pub role: &'static str,
    /// Pod-template hash.
    pub hash: String,
    /// The ReplicaSet's name, when it exists.
    pub replica_set: Option<String>,
    /// Desired replicas.
    pub desired: i32,
    /// Ready replicas.
    pub ready: i32,
    /// Available replicas.
    pub available: i32,
}

/// A header route in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderRouteView {
    /// Route name.
    pub name: String,
    /// `x-canary = always`, one per match (all must hold).
    pub matches: Vec<String>,
}

/// A line drawn across a metric's chart: where its condition flips.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Threshold {
    /// `success` or `failure`: which condition.
    pub condition: &'static str,
    /// The comparison with the measured value on the left: `>=`, `<`, ...
    pub op: String,
    /// The bound.
    pub value: f64,
}

/// One measurement on a metric's chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeasurementPoint {
    /// Milliseconds since the Unix epoch, when taken.
    pub t: Option<i64>,
    /// The measured number, when the result is one (or a list of one).
    pub value: Option<f64>,
    /// How it was judged.
    pub phase: AnalysisPhase,
    /// The raw result, or why it errored.
    pub text: String,
}

/// A metric of an analysis run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricView {
    /// Name.
    pub name: String,
    /// Phase.
    pub phase: AnalysisPhase,
    /// Why, when not passing.
    pub message: Option<String>,
    /// Measured but never acted on.
    pub dry_run: bool,
    /// `3/4 ok, 1 failed, ...`.
    pub counts: String,
    /// The success condition, as written.
    pub success_condition: Option<String>,
    /// The failure condition, as written.
    pub failure_condition: Option<String>,
    /// The conditions' bounds, when they compare the result with a number.
    pub thresholds: Vec<Threshold>,
    /// The measurements kept, oldest first.
    pub points: Vec<MeasurementPoint>,
}

/// An analysis run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    /// `background` or `step-<index>`.
    pub name: String,
    /// Phase.
    pub phase: AnalysisPhase,
    /// Why, when not passing.
    pub message: Option<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Per metric.
    pub metrics: Vec<MetricView>,
}

/// An Event about the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventView {
    /// Milliseconds since the Unix epoch, when last seen.
    pub t: Option<i64>,
    /// `Normal` or `Warning`.
    pub kind: String,
    /// `StepCompleted`, `Aborted`, ...
    pub reason: String,
    /// What happened.
    pub note: String,
    /// How many times (an Event series counts repeats).
    pub count: i32,
}

/// A status condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConditionView {
    /// Type.
    pub kind: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// A button.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionView {
    /// `promote`, `promote-full`, ... (the URL's last segment).
    pub action: &'static str,
    /// Label.
    pub label: &'static str,
    /// The `kubectl canary` command doing the same.
    pub command: String,
    /// What it will do, asked before it is done.
    pub consequence: &'static str,
    /// Why the rollout's state refuses it now (the CLI's own message); the button is disabled.
    pub refused: Option<String>,
}

/// The split the filter made, for the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservedSplitView {
    /// `Envoy admin http://...` or `Prometheus http://...`.
    pub source: String,
    /// Why the last reading failed.
    pub error: Option<String>,
    /// Counts since the sidecar's counters started (Envoy admin only).
    pub total: Option<String>,
    /// Share to canary over time.
    pub samples: Vec<SplitSample>,
}

/// The rollout page.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutDetail {
    /// The list row.
    pub summary: RolloutSummary,
    /// `spec.paused`.
    pub spec_paused: bool,
    /// `spec.abort`.
    pub spec_abort: bool,
    /// The controller has not seen the latest spec yet.
    pub stale: bool,
    /// A promote the controller has not acted on yet (`step` or `full`).
    pub promote_requested: Option<String>,
    /// When the current step began (RFC 3339).
    pub step_started_at: Option<String>,
    /// The steps.
    pub steps: Vec<StepView>,
    /// The canary weight over time, since the dashboard started.
    pub weights: Vec<WeightPoint>,
    /// The split the filter made, when a source is given.
    pub split: Option<ObservedSplitView>,
    /// Stable, canary and older versions with their ReplicaSets.
    pub versions: Vec<VersionView>,
    /// Header routes in force.
    pub header_routes: Vec<HeaderRouteView>,
    /// Scale-downs waiting for their delay: `<hash> at <time>`.
    pub scale_downs: Vec<String>,
    /// A failed analysis aborted the rollout.
    pub analysis_aborted: bool,
    /// Analysis runs of the current canary.
    pub analysis_runs: Vec<RunView>,
    /// Recent Events, newest first.
    pub events: Vec<EventView>,
    /// Status conditions.
    pub conditions: Vec<ConditionView>,
    /// The buttons; empty when the dashboard is read-only.
    pub actions: Vec<ActionView>,
    /// What the dashboard cannot see, in sentences.
    pub problems: Vec<String>,
}

/// The list row of `rollout`, whose ReplicaSets are `sets`.
pub fn summary(rollout: &CanaryRollout, sets: &[&ReplicaSet]) -> RolloutSummary {
    let status = rollout.status.clone().unwrap_or_default();
    RolloutSummary {
        namespace: rollout.namespace().unwrap_or_default(),
        name: rollout.name_any(),
        phase: if rollout.status.is_some() {
            phase_name(status.phase).to_owned()
        } else {
            "Unknown".into()
        },
        step: status.current_step.clone().unwrap_or_else(|| "-".into()),
        weight: format_weight(status.canary_weight),
        weight_bp: status.canary_weight,
        stable_hash: status.stable_hash.clone(),
        canary_hash: status.canary_hash.clone(),
        health: health(rollout, sets),
        message: status.message,
    }
}

/// How `rollout` is doing: the worst of its phase, its analysis and its versions' readiness.
pub fn health(rollout: &CanaryRollout, sets: &[&ReplicaSet]) -> Health {
    let Some(status) = &rollout.status else {
        return Health {
            level: HealthLevel::Warning,
            text: "no status yet: is the controller running?".into(),
        };
    };
    let mut parts = Vec::new();
    let mut unready = false;
    for (role, hash) in [
        ("stable", &status.stable_hash),
        ("canary", &status.canary_hash),
    ] {
        let Some(hash) = hash else { continue };
        match sets.iter().find(|rs| &rs_hash(rs) == hash) {
            Some(rs) => {
                let (desired, ready, _) = replicas(rs);
                unready |= ready < desired;
                parts.push(format!("{role} {ready}/{desired} ready"));
            }
            None => parts.push(format!("{role}: no ReplicaSet")),
        }
    }
    let failed_analysis = status
        .analysis_runs
        .iter()
        .find(|r| matches!(r.phase, AnalysisPhase::Failed | AnalysisPhase::Error));
    let (level, why) = match status.phase {
        Phase::Degraded => (HealthLevel::Bad, Some("degraded".to_owned())),
        Phase::Aborted if status.analysis_aborted => {
            (HealthLevel::Bad, Some("aborted by analysis".to_owned()))
        }
        Phase::Aborted => (HealthLevel::Bad, Some("aborted".to_owned())),
        _ if failed_analysis.is_some() => (
            HealthLevel::Bad,
            failed_analysis.map(|r| format!("analysis {} {:?}", r.name, r.phase)),
        ),
        _ if unready => (HealthLevel::Warning, None),
        Phase::Healthy => (HealthLevel::Good, None),
        Phase::Paused => (HealthLevel::Progressing, Some("paused".to_owned())),
        Phase::Progressing => (HealthLevel::Progressing, None),
    };
    parts.extend(why);
    Health {
        level,
        text: parts.join(" · "),
    }
}

/// The list page: every rollout by namespace and name, each with its ReplicaSets from `sets`.
pub fn list(
    scope: &str,
    rollouts: &[&CanaryRollout],
    sets: &[&ReplicaSet],
    problems: Vec<String>,
) -> ListView {
    let mut rows: Vec<RolloutSummary> = rollouts
        .iter()
        .map(|r| summary(r, &sets_of(r, sets)))
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    ListView {
        scope: scope.to_owned(),
        rollouts: rows,
        problems,
    }
}

/// The ReplicaSets among `sets` that belong to `rollout` (label `wasmcanary.io/rollout`).
pub fn sets_of<'a>(rollout: &CanaryRollout, sets: &[&'a ReplicaSet]) -> Vec<&'a ReplicaSet> {
    let (name, ns) = (rollout.name_any(), rollout.namespace());
    let mut mine: Vec<&ReplicaSet> = sets
        .iter()
        .copied()
        .filter(|rs| {
            rs.namespace() == ns && rs.labels().get(crate::reconcile::ROLLOUT_LABEL) == Some(&name)
        })
        .collect();
    mine.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
    });
    mine
}

/// What the detail page needs besides the rollout.
#[derive(Debug, Clone, Default)]
pub struct Observations<'a> {
    /// The rollout's ReplicaSets.
    pub sets: Vec<&'a ReplicaSet>,
    /// Events in the rollout's namespace (others are skipped).
    pub events: Vec<&'a Event>,
    /// Weight over time.
    pub weights: Vec<WeightPoint>,
    /// The observed split, when a source is given.
    pub split: Option<ObservedSplitView>,
    /// Whether buttons are shown.
    pub read_only: bool,
    /// What the dashboard cannot see.
    pub problems: Vec<String>,
}

/// The rollout page.
pub fn detail(rollout: &CanaryRollout, seen: Observations<'_>) -> RolloutDetail {
    let status = rollout.status.clone().unwrap_or_default();
    let strategy = rollout.spec.strategy.effective();
    let steps = &strategy.steps;
    let current = status
        .current_step_index
        .and_then(|i| usize::try_from(i).ok());
    let running = status.canary_hash.is_some();
    let steps = steps
        .iter()
        .enumerate()
        .map(|(i, step)| StepView {
            number: i + 1,
            text: describe_step(step),
            state: match current {
                Some(c) if running && i < c => StepState::Done,
                Some(c) if running && i == c => StepState::Current,
                _ => StepState::Pending,
            },
        })
        .collect();
    let mut versions = Vec::new();
    for (role, hash) in [
        ("stable", &status.stable_hash),
        ("canary", &status.canary_hash),
    ] {
        if let Some(hash) = hash {
            let rs = seen.sets.iter().find(|rs| &rs_hash(rs) == hash);
            versions.push(version(role, hash, rs.copied()));
        }
    }
    for rs in &seen.sets {
        let hash = Some(rs_hash(rs));
        if hash != status.stable_hash && hash != status.canary_hash {
            versions.push(version("old", &rs_hash(rs), Some(rs)));
        }
    }
    let actions = if seen.read_only {
        Vec::new()
    } else {
        action_views(rollout)
    };
    RolloutDetail {
        summary: summary(rollout, &seen.sets),
        spec_paused: rollout.spec.paused,
        spec_abort: rollout.spec.abort,
        stale: status.observed_generation.is_some()
            && status.observed_generation != rollout.metadata.generation,
        promote_requested: rollout
            .annotations()
            .get(PROMOTE_ANNOTATION)
            .filter(|request| status.promote_handled.as_ref() != Some(request))
            .map(|request| match Promote::from_annotation(request) {
                Promote::Step => "step".to_owned(),
                Promote::Full => "full".to_owned(),
            }),
        step_started_at: status.step_started_at.clone(),
        steps,
        weights: seen.weights,
        split: seen.split,
        versions,
        header_routes: status
            .header_routes
            .iter()
            .map(|r| HeaderRouteView {
                name: r.name.clone(),
                matches: r
                    .matches
                    .iter()
                    .map(|m| {
                        let v = &m.header_value;
                        let (op, value) = match (&v.exact, &v.prefix, &v.regex) {
                            (Some(e), _, _) => ("=", e.as_str()),
                            (None, Some(p), _) => ("starts with", p.as_str()),
                            (None, None, Some(r)) => ("matches", r.as_str()),
                            _ => ("?", ""),
                        };
                        format!("{} {op} {value}", m.header_name)
                    })
                    .collect(),
            })
            .collect(),
        scale_downs: status
            .scale_downs
            .iter()
            .map(|s| format!("{} at {}", s.hash, s.at))
            .collect(),
        analysis_aborted: status.analysis_aborted,
        analysis_runs: status.analysis_runs.iter().map(run_view).collect(),
        events: events_of(rollout, &seen.events),
        conditions: status
            .conditions
            .iter()
            .map(|c| ConditionView {
                kind: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect(),
        actions,
        problems: seen.problems,
    }
}

/// Every action with, when the rollout's state refuses it, the CLI's reason.
pub fn action_views(rollout: &CanaryRollout) -> Vec<ActionView> {
    let (name, ns) = (rollout.name_any(), rollout.namespace().unwrap_or_default());
    Action::ALL
        .into_iter()
        .map(|a| ActionView {
            action: a.as_str(),
            label: a.label(),
            command: a.command(&name, &ns),
            consequence: a.consequence(),
            refused: plan(a, rollout).err().map(|e| e.to_string()),
        })
        .collect()
}

/// The observed split for the page, from what was read.
pub fn split_view(
    source: String,
    total: Option<&ObservedSplit>,
    samples: Vec<SplitSample>,
    error: Option<String>,
) -> ObservedSplitView {
    ObservedSplitView {
        source,
        error,
        total: total.map(split_line),
        samples,
    }
}

fn replicas(rs: &ReplicaSet) -> (i32, i32, i32) {
    let st = rs.status.as_ref();
    (
        rs.spec.replicas.unwrap_or(0),
        st.and_then(|s| s.ready_replicas).unwrap_or(0),
        st.and_then(|s| s.available_replicas).unwrap_or(0),
    )
}

fn version(role: &'static str, hash: &str, rs: Option<&ReplicaSet>) -> VersionView {
    let (desired, ready, available) = rs.map(replicas).unwrap_or_default();
    VersionView {
        role,
        hash: hash.to_owned(),
        replica_set: rs.map(ResourceExt::name_any),
        desired,
        ready,
        available,
    }
}

fn run_view(run: &AnalysisRunStatus) -> RunView {
    RunView {
        name: run.name.clone(),
        phase: run.phase,
        message: run.message.clone(),
        started_at: run.started_at.clone(),
        metrics: run
            .metrics
            .iter()
            .map(|m| metric_view(m, run.spec.iter().find(|s| s.name == m.name)))
            .collect(),
    }
}

fn metric_view(m: &MetricResult, spec: Option<&Metric>) -> MetricView {
    let success = spec.and_then(|s| s.success_condition.clone());
    let failure = spec.and_then(|s| s.failure_condition.clone());
    let mut thresholds: Vec<Threshold> = Vec::new();
    for (condition, text) in [("success", &success), ("failure", &failure)] {
        for (op, value) in text.as_deref().map(condition_bounds).unwrap_or_default() {
            thresholds.push(Threshold {
                condition,
                op,
                value,
            });
        }
    }
    MetricView {
        name: m.name.clone(),
        phase: m.phase,
        message: m.message.clone(),
        dry_run: m.dry_run,
        counts: format!(
            "{}/{} ok, {} failed, {} inconclusive, {} error",
            m.successful, m.count, m.failed, m.inconclusive, m.error
        ),
        success_condition: success,
        failure_condition: failure,
        thresholds,
        points: m
            .measurements
            .iter()
            .map(|x| MeasurementPoint {
                t: millis(&x.started_at),
                value: x.value.as_deref().and_then(numeric_value),
                phase: x.phase,
                text: x
                    .value
                    .clone()
                    .or_else(|| x.message.clone())
                    .unwrap_or_default(),
            })
            .collect(),
    }
}

fn events_of(rollout: &CanaryRollout, events: &[&Event]) -> Vec<EventView> {
    let (name, ns) = (rollout.name_any(), rollout.namespace());
    let mut mine: Vec<EventView> = events
        .iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("CanaryRollout")
                    && r.name.as_deref() == Some(name.as_str())
                    && (r.namespace.is_none() || r.namespace == ns)
            }) && e.namespace() == ns
        })
        .map(|e| EventView {
            t: event_time(e),
            kind: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            note: e.note.clone().unwrap_or_default(),
            count: e.series.as_ref().map_or(1, |s| s.count.max(1)),
        })
        .collect();
    mine.sort_by_key(|e| std::cmp::Reverse(e.t));
    mine.truncate(EVENTS_SHOWN);
    mine
}

/// When an Event was last seen: its series' last observation, else its time, else its
/// object's creation.
fn event_time(e: &Event) -> Option<i64> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0.as_millisecond())
        .or_else(|| e.event_time.as_ref().map(|t| t.0.as_millisecond()))
        .or_else(|| {
            e.deprecated_last_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond())
        })
        .or_else(|| {
            e.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond())
        })
}

fn millis(rfc3339: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The number a measurement's result holds: a number, a numeric string, or a list of one
/// of those (a Prometheus vector of one sample). Anything else has no place on a y axis.
pub fn numeric_value(raw: &str) -> Option<f64> {
    fn number(v: &Value) -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            Value::Array(a) if a.len() == 1 => a.first().and_then(number),
            _ => None,
        }
        .filter(|f| f.is_finite())
    }
    number(&serde_json::from_str(raw).ok()?)
}

/// The bounds a condition puts on the result, for conditions made of comparisons of the
/// result (`result`, `result[0]`, optionally in `asFloat(...)`/`asInt(...)`) with a number,
/// joined by `&&`, `||`, `and`, `or`: `result[0] >= 0.95` gives `(">=", 0.95)`. The
/// comparison is returned with the result on the left. A clause of any other shape adds
/// nothing: the chart then shows the measurements and the condition's text only.
pub fn condition_bounds(condition: &str) -> Vec<(String, f64)> {
    let mut bounds = Vec::new();
    let clauses = condition
        .split("&&")
        .flat_map(|c| c.split("||"))
        .flat_map(|c| c.split(" and "))
        .flat_map(|c| c.split(" or "));
    for clause in clauses {
        let clause = clause.trim().trim_start_matches('(').trim_end_matches(')');
        let Some((lhs, op, rhs)) = comparison(clause) else {
            continue;
        };
        let (lhs, rhs) = (lhs.trim(), rhs.trim());
        if is_result(lhs) {
            if let Ok(v) = rhs.parse::<f64>() {
                bounds.push((op.to_owned(), v));
            }
        } else if is_result(rhs) {
            if let Ok(v) = lhs.parse::<f64>() {
                bounds.push((mirrored(op).to_owned(), v));
            }
        }
    }
    bounds
}

fn comparison(clause: &str) -> Option<(&str, &'static str, &str)> {
    for op in [">=", "<=", "==", "!=", ">", "<"] {
        if let Some((l, r)) = clause.split_once(op) {
            return Some((l, op, r));
        }
    }
    None
}

fn mirrored(op: &str) -> &str {
    match op {
        ">=" => "<=",
        "<=" => ">=",
        ">" => "<",
        "<" => ">",
        same => same,
    }
}

fn is_result(expr: &str) -> bool {
    let mut e = expr.trim();
    for wrapper in ["asFloat(", "asInt("] {
        if let Some(inner) = e.strip_prefix(wrapper).and_then(|x| x.strip_suffix(')')) {
            e = inner.trim();
        }
    }
    matches!(e, "result" | "result[0]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::CanaryRolloutStatus;
    use k8s_openapi::api::apps::v1::{ReplicaSetSpec, ReplicaSetStatus};

    fn rollout(status: Option<CanaryRolloutStatus>) -> CanaryRollout {
        let mut r: CanaryRollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
            "metadata": {"name": "reviews", "namespace": "bookinfo", "generation": 3},
            "spec": {
                "selector": {"matchLabels": {"app": "reviews"}},
                "strategy": {"canary": {
                    "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}],
                    "trafficRouting": {"wasm": {
                        "service": "reviews",
                        "wasmPlugin": {"url": "oci://r/f:1"},
                        "destinationRule": {"name": "reviews"}
                    }}
                }}
            }
        }))
        .unwrap();
        r.status = status;
        r
    }

    fn paused_at_ten_percent() -> CanaryRolloutStatus {
        CanaryRolloutStatus {
            phase: Phase::Paused,
            current_step_index: Some(1),
            current_step: Some("2/3".into()),
            canary_weight: 1_000,
            stable_hash: Some("aaa".into()),
            canary_hash: Some("bbb".into()),
            observed_generation: Some(3),
            ..CanaryRolloutStatus::default()
        }
    }

    fn replica_set(hash: &str, desired: i32, ready: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("reviews-{hash}")),
                namespace: Some("bookinfo".into()),
                labels: Some(
                    [
                        ("rollouts-pod-template-hash".to_owned(), hash.to_owned()),
                        (
                            crate::reconcile::ROLLOUT_LABEL.to_owned(),
                            "reviews".to_owned(),
                        ),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(desired),
                ..Default::default()
            },
            status: Some(ReplicaSetStatus {
                ready_replicas: Some(ready),
                available_replicas: Some(ready),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_list_row_shows_phase_step_weight_and_readiness() {
        let sets = [replica_set("aaa", 5, 5), replica_set("bbb", 1, 1)];
        let refs: Vec<&ReplicaSet> = sets.iter().collect();
        let row = summary(&rollout(Some(paused_at_ten_percent())), &refs);
        assert_eq!(
            (row.phase.as_str(), row.step.as_str(), row.weight.as_str()),
            ("Paused", "2/3", "10%")
        );
        assert_eq!(row.health.level, HealthLevel::Progressing);
        assert_eq!(
            row.health.text,
            "stable 5/5 ready · canary 1/1 ready · paused"
        );
    }

    #[test]
    fn health_is_the_worst_of_phase_analysis_and_readiness() {
        let ready = [replica_set("aaa", 5, 5), replica_set("bbb", 1, 1)];
        let unready = [replica_set("aaa", 5, 5), replica_set("bbb", 1, 0)];
        let healthy = CanaryRolloutStatus {
            phase: Phase::Healthy,
            canary_hash: None,
            ..paused_at_ten_percent()
        };
        let aborted = CanaryRolloutStatus {
            phase: Phase::Aborted,
            ..paused_at_ten_percent()
        };
        let failed_analysis = CanaryRolloutStatus {
            phase: Phase::Progressing,
            analysis_runs: vec![AnalysisRunStatus {
                name: "background".into(),
                phase: AnalysisPhase::Failed,
                ..AnalysisRunStatus::default()
            }],
            ..paused_at_ten_percent()
        };
        // (status, replica sets, level)
        let table: Vec<(Option<CanaryRolloutStatus>, &[ReplicaSet], HealthLevel)> = vec![
            (None, &ready, HealthLevel::Warning),
            (Some(healthy), &ready, HealthLevel::Good),
            (
                Some(paused_at_ten_percent()),
                &ready,
                HealthLevel::Progressing,
            ),
            (
                Some(paused_at_ten_percent()),
                &unready,
                HealthLevel::Warning,
            ),
            (Some(aborted), &ready, HealthLevel::Bad),
            (Some(failed_analysis), &ready, HealthLevel::Bad),
        ];
        for (status, sets, level) in table {
            let refs: Vec<&ReplicaSet> = sets.iter().collect();
            let h = health(&rollout(status.clone()), &refs);
            assert_eq!(h.level, level, "{status:?}: {}", h.text);
        }
    }

    #[test]
    fn the_detail_marks_the_current_step_and_disables_refused_actions() {
        let sets = [
            replica_set("old", 0, 0),
            replica_set("aaa", 5, 5),
            replica_set("bbb", 1, 1),
        ];
        let d = detail(
            &rollout(Some(paused_at_ten_percent())),
            Observations {
                sets: sets.iter().collect(),
                ..Observations::default()
            },
        );
        let states: Vec<StepState> = d.steps.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [StepState::Done, StepState::Current, StepState::Pending]
        );
        assert_eq!(d.steps[1].text, "pause (until promoted)");
        let roles: Vec<&str> = d.versions.iter().map(|v| v.role).collect();
        assert_eq!(roles, ["stable", "canary", "old"]);
        let refused = |a: &str| {
            d.actions
                .iter()
                .find(|v| v.action == a)
                .unwrap()
                .refused
                .clone()
        };
        assert_eq!(refused("promote"), None);
        assert_eq!(refused("abort"), None);
        assert!(refused("retry").unwrap().contains("nothing to retry"));
        assert!(refused("resume")
            .unwrap()
            .contains("not paused with spec.paused"));
        let promote = d
            .actions
            .iter()
            .find(|v| v.action == "promote-full")
            .unwrap();
        assert_eq!(
            promote.command,
            "kubectl canary promote --full reviews -n bookinfo"
        );
    }

    #[test]
    fn a_promote_shows_as_waiting_until_the_controller_has_handled_it() {
        let mut r = rollout(Some(paused_at_ten_percent()));
        r.metadata.annotations =
            Some([(PROMOTE_ANNOTATION.to_owned(), "full:1733561000".to_owned())].into());
        let waiting = detail(&r, Observations::default());
        assert_eq!(waiting.promote_requested.as_deref(), Some("full"));
        r.status.as_mut().unwrap().promote_handled = Some("full:1733561000".into());
        let handled = detail(&r, Observations::default());
        assert_eq!(handled.promote_requested, None);
    }

    #[test]
    fn a_read_only_detail_has_no_buttons() {
        let d = detail(
            &rollout(Some(paused_at_ten_percent())),
            Observations {
                read_only: true,
                ..Observations::default()
            },
        );
        assert!(d.actions.is_empty());
    }

    #[test]
    fn measurements_become_numbers_when_they_hold_one() {
        let table = [
            ("0.97", Some(0.97)),
            ("[0.97]", Some(0.97)),
            ("[\"0.5\"]", Some(0.5)),
            ("\"12\"", Some(12.0)),
            ("[1, 2]", None),
            ("[]", None),
            ("\"NaN\"", None),
            ("{\"a\": 1}", None),
            ("not json", None),
        ];
        for (raw, number) in table {
            assert_eq!(numeric_value(raw), number, "{raw}");
        }
    }

    #[test]
    fn conditions_comparing_the_result_with_a_number_give_chart_bounds() {
        let table: &[(&str, &[(&str, f64)])] = &[
            ("result[0] >= 0.95", &[(">=", 0.95)]),
            ("result > 5", &[(">", 5.0)]),
            ("asFloat(result[0]) < 0.01", &[("<", 0.01)]),
            ("0.95 <= result[0]", &[(">=", 0.95)]),
            (
                "result[0] >= 0.9 && result[0] < 2",
                &[(">=", 0.9), ("<", 2.0)],
            ),
            (
                "(result[0] > 1) or (result[0] == 0)",
                &[(">", 1.0), ("==", 0.0)],
            ),
            ("len(result) == 0", &[]),
            (
                "all(result.service_apdex.values.values, {asFloat(.value) >= 9900})",
                &[],
            ),
            ("result[0] >= args.limit", &[]),
        ];
        for (condition, bounds) in table {
            let expected: Vec<(String, f64)> =
                bounds.iter().map(|(o, v)| ((*o).to_owned(), *v)).collect();
            assert_eq!(condition_bounds(condition), expected, "{condition}");
        }
    }
}
