//! The rollout's step logic, pure: (spec, status, observed world, now) -> [`Plan`].
//!
//! The Kubernetes layer ([`crate::reconcile`]) reads the world, calls [`plan`], and writes the
//! plan back in a fixed order: traffic first (DestinationRule subsets, then the WasmPlugin's
//! pluginConfig), ReplicaSet sizes next, status last. Safety rules enforced here:
//! - traffic (weight or header routes) reaches the canary only when enough canary pods are
//!   available for it;
//! - on abort, weight 0 and no header routes are planned at once, the canary scale-down only
//!   after `abortScaleDownDelaySeconds`;
//! - timers live in the status (`stepStartedAt`, `scaleDowns`, analysis measurements), so a
//!   restarted controller resumes exactly where it stopped;
//! - analysis decides from recorded measurements only: the plan lists the measurements due
//!   ([`Plan::measure`]), the I/O layer takes them and plans again with them in
//!   [`Observed::measurements`]. A Failed or Error analysis aborts (the abort path above), an
//!   Inconclusive one pauses until promoted.
//!
//! The analysis half of the planner lives in `analysis_runs`; durations in [`crate::duration`].

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::analysis::run::validate_metric;
use crate::analysis::template::{resolve, ResolvedAnalysis, RolloutFields, SecretKeyRef};
use crate::analysis::{
    AnalysisPhase, AnalysisRunStatus, AnalysisTemplateSpec, Metric, RolloutAnalysis,
    TakenMeasurement,
};
use crate::crd::{
    CanaryRolloutSpec, CanaryRolloutStatus, CanaryStep, Phase, ScheduledScaleDown, SetHeaderRoute,
};
use canary_core::config::BASIS_POINTS;

/// Default delay before an old ReplicaSet is scaled down (Argo's default is 30 s too).
pub const DEFAULT_SCALE_DOWN_DELAY_SECONDS: i32 = 30;

/// A ReplicaSet of this rollout as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedReplicaSet {
    /// Its `rollouts-pod-template-hash`.
    pub hash: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// A user's request to move past pauses (annotation `wasmcanary.io/promote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promote {
    /// Finish the current pause step.
    Step,
    /// Skip all remaining steps and promote.
    Full,
}

impl Promote {
    /// The request an annotation value makes: `full` or `full:<id>` promotes fully, anything
    /// else (`step`, `step:<id>`) ends one pause.
    pub fn from_annotation(value: &str) -> Self {
        match value.split_once(':').map_or(value, |(kind, _)| kind) {
            "full" => Self::Full,
            _ => Self::Step,
        }
    }

    /// The annotation value of a new request, made unique by `id` (`kubectl canary` uses the
    /// time in nanoseconds): two requests in a row are two requests, and one request seen
    /// again after a restart is recognised (`status.promoteHandled`).
    pub fn annotation_value(self, id: &str) -> String {
        match self {
            Self::Step => format!("step:{id}"),
            Self::Full => format!("full:{id}"),
        }
    }
}

pub use crate::duration::{format_duration, parse_duration, parse_go_duration};

mod analysis_runs;

/// Name of the background analysis run.
pub const BACKGROUND_RUN: &str = "background";

/// Name of the analysis run of step `index`.
pub fn step_run_name(index: usize) -> String {
    format!("step-{index}")
}

/// What the controller sees.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Hash of the pod template in the spec (or the referenced Deployment).
    pub template_hash: String,
    /// The rollout's ReplicaSets.
    pub replica_sets: Vec<ObservedReplicaSet>,
    /// A pending promote request.
    pub promote: Option<Promote>,
    /// The promote annotation's value as written (None: no annotation). A value equal to
    /// `status.promoteHandled` was acted on already.
    pub promote_request: Option<String>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The current time.
    pub now: DateTime<Utc>,
    /// The AnalysisTemplates the rollout references, by name (absent: not found).
    pub analysis_templates: BTreeMap<String, AnalysisTemplateSpec>,
    /// The rollout's own fields, for arguments with `valueFrom.fieldRef`.
    pub rollout_fields: RolloutFields,
    /// Measurements taken for this plan (those the previous plan with the same status asked for).
    pub measurements: Vec<TakenMeasurement>,
}

impl Observed {
    fn available(&self, hash: &str) -> i32 {
        self.replica_sets
            .iter()
            .find(|r| r.hash == hash)
            .map_or(0, |r| r.available)
    }
    fn replicas(&self, hash: &str) -> i32 {
        self.replica_sets
            .iter()
            .find(|r| r.hash == hash)
            .map_or(0, |r| r.replicas)
    }
}

/// Where traffic should go.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    /// The stable subset's hash.
    pub stable_hash: String,
    /// The canary subset's hash (the stable hash when no canary runs, so the subset is never
    /// empty of meaning).
    pub canary_hash: String,
    /// Canary weight in basis points.
    pub canary_weight: u32,
    /// Header routes forcing canary.
    pub header_routes: Vec<SetHeaderRoute>,
}

/// A Kubernetes Event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// CamelCase reason (`CanaryStarted`, `StepCompleted`, `Promoted`, `Aborted`, ...).
    pub reason: &'static str,
    /// The Event's action: the reason, plus what it is about when the same reason recurs for
    /// different things (`StepCompleted/step-3`, `AnalysisStarted/background`). Kubernetes'
    /// Event recorder merges Events with the same reason and action into one series that keeps
    /// the first message: distinct actions keep one Event, and its message, per step and run.
    pub action: String,
    /// Sentence for humans.
    pub message: String,
}

impl Transition {
    /// A transition whose action is its reason.
    pub fn new(reason: &'static str, message: String) -> Self {
        Self {
            reason,
            action: reason.to_owned(),
            message,
        }
    }
}

/// A measurement to take now.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureRequest {
    /// Analysis run name.
    pub run: String,
    /// The metric, arguments substituted except `secrets`.
    pub metric: Metric,
    /// Arguments to read from Secrets just before measuring.
    pub secrets: BTreeMap<String, SecretKeyRef>,
}

/// What the controller should make true.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The new status.
    pub status: CanaryRolloutStatus,
    /// Where traffic goes; `None` leaves traffic as it is (spec invalid).
    pub traffic: Option<Traffic>,
    /// Desired `spec.replicas` per ReplicaSet hash (a hash not observed yet is created).
    pub replicas: BTreeMap<String, i32>,
    /// Which hash is the canary (for pod metadata), if any.
    pub canary: Option<String>,
    /// Transitions to record as Events.
    pub transitions: Vec<Transition>,
    /// Reconcile again after this long (pause timers, scale-down delays).
    pub requeue_after: Option<Duration>,
    /// The promote request was acted on and should be removed.
    pub promote_consumed: bool,
    /// Measurements due now: take them and plan again with them in [`Observed::measurements`].
    pub measure: Vec<MeasureRequest>,
}

/// How soon a traffic write the API server refused is tried again.
pub const RETRY_REFUSED_WRITE: Duration = Duration::from_secs(5);

impl Plan {
    /// The plan's traffic could not be (fully) written: nothing else of it happens (no
    /// ReplicaSet resized, no Event, the promote request kept), and the status is the previous
    /// one, `Degraded`, with `message` and a `False` [`crate::conditions::TRAFFIC_APPLIED`]
    /// condition, so the next reconcile plans the same step again. `filter_written`: the
    /// WasmPlugin already carries the plan's weight and header routes (a lowering is written
    /// there first), so the status says so.
    pub fn traffic_not_applied(
        self,
        previous: &CanaryRolloutStatus,
        reason: crate::conditions::TrafficReason,
        message: String,
        filter_written: bool,
        now: DateTime<Utc>,
    ) -> Plan {
        let mut status = previous.clone();
        status.observed_generation = self.status.observed_generation;
        if filter_written {
            status.canary_weight = self.status.canary_weight;
            status.header_routes = self.status.header_routes.clone();
            status.weight = self.status.weight.clone();
        }
        status.phase = Phase::Degraded;
        status.message = Some(message.clone());
        crate::conditions::set_phase_conditions(&mut status, now);
        crate::conditions::set_traffic_condition(&mut status, reason, message, now);
        Plan {
            status,
            traffic: self.traffic,
            replicas: BTreeMap::new(),
            canary: self.canary,
            transitions: Vec::new(),
            requeue_after: Some(RETRY_REFUSED_WRITE),
            promote_consumed: false,
            measure: Vec::new(),
        }
    }
}

/// Canary pods needed for a weight: ceil(replicas x weight), and at least one while header
/// routes send testers there.
pub fn canary_replicas(replicas: i32, weight_bp: u32, header_routes: bool) -> i32 {
    let by_weight = (u64::from(replicas.max(0).unsigned_abs()) * u64::from(weight_bp))
        .div_ceil(u64::from(BASIS_POINTS));
    let n = i32::try_from(by_weight).unwrap_or(i32::MAX);
    if header_routes {
        n.max(1)
    } else {
        n
    }
}

/// Weight of a `setWeight` percentage in basis points.
pub fn weight_basis_points(percent: f64) -> Result<u32, String> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("setWeight {percent} is outside 0..100"));
    }
    let bp = (percent * 100.0).round();
    if (bp - percent * 100.0).abs() > 1e-6 {
        return Err(format!("setWeight {percent} is finer than 0.01%"));
    }
    Ok(bp as u32)
}

/// Checks what the schema cannot. Returns the message for `status.message`.
pub fn validate(spec: &CanaryRolloutSpec) -> Result<(), String> {
    match (&spec.template, &spec.workload_ref) {
        (Some(_), Some(_)) => {
            return Err("set either spec.template or spec.workloadRef, not both".into())
        }
        (None, None) => return Err("spec.template or spec.workloadRef is required".into()),
        _ => {}
    }
    if let Some(w) = &spec.workload_ref {
        if w.kind != "Deployment" || w.api_version != "apps/v1" {
            return Err(format!(
                "spec.workloadRef must be an apps/v1 Deployment, not {}/{}",
                w.api_version, w.kind
            ));
        }
    }
    validate_strategy(spec)?;
    let (canary, kinds) = spec.strategy.compiled();
    if let Some(a) = &canary.analysis {
        if a.templates.is_empty() {
            return Err(
                "spec.strategy.canary.analysis.templates must name at least one AnalysisTemplate"
                    .into(),
            );
        }
        if let Some(s) = a.starting_step {
            if s < 0 || s as usize > canary.steps.len() {
                return Err(format!(
                    "spec.strategy.canary.analysis.startingStep {s} is outside 0..={}",
                    canary.steps.len()
                ));
            }
        }
    }
    for (i, step) in canary.steps.iter().enumerate() {
        let at = crate::crd::RolloutStrategy::step_path(&kinds, i);
        // Where a header route's fields are: `steps[i].setHeaderRoute`, or the blue-green field.
        let route_at = match kinds.get(i) {
            Some(_) => at.clone(),
            None => format!("{at}.setHeaderRoute"),
        };
        let set = [
            step.set_weight.is_some(),
            step.pause.is_some(),
            step.set_header_route.is_some(),
            step.analysis.is_some(),
        ];
        if set.iter().filter(|x| **x).count() != 1 {
            return Err(format!(
                "{at} must set exactly one of setWeight, pause, setHeaderRoute, analysis"
            ));
        }
        if let Some(a) = &step.analysis {
            if a.templates.is_empty() {
                return Err(format!(
                    "{at}.analysis.templates must name at least one AnalysisTemplate"
                ));
            }
            if a.starting_step.is_some() {
                return Err(format!(
                    "{at}.analysis.startingStep is only for strategy.canary.analysis"
                ));
            }
        }
        if let Some(w) = step.set_weight {
            weight_basis_points(w).map_err(|e| format!("{at}.{e}"))?;
        }
        if let Some(d) = step.pause.as_ref().and_then(|p| p.duration.as_ref()) {
            parse_duration(d).map_err(|e| format!("{at}.pause: {e}"))?;
        }
        if let Some(r) = &step.set_header_route {
            for (j, m) in r.matches.iter().enumerate() {
                let v = &m.header_value;
                let n = [v.exact.is_some(), v.prefix.is_some(), v.regex.is_some()]
                    .iter()
                    .filter(|x| **x)
                    .count();
                if n != 1 {
                    return Err(format!("{route_at}.match[{j}].headerValue needs exactly one of exact, prefix, regex"));
                }
                if let Some(re) = &v.regex {
                    canary_core::regex::Regex::new(re)
                        .map_err(|e| format!("{route_at}.match[{j}].headerValue.regex: {e}"))?;
                }
            }
        }
    }
    Ok(())
}

/// Exactly one strategy, and what the schema cannot say of it.
fn validate_strategy(spec: &CanaryRolloutSpec) -> Result<(), String> {
    let strategy = &spec.strategy;
    let bg = match (&strategy.canary, &strategy.blue_green) {
        (Some(_), Some(_)) => {
            return Err("set spec.strategy.canary or spec.strategy.blueGreen, not both".into())
        }
        (None, None) => return Err("spec.strategy needs canary or blueGreen".into()),
        (Some(canary), None) => {
            if canary.traffic_routing.wasm.service.is_empty() {
                return Err("spec.strategy.canary.trafficRouting.wasm.service is required".into());
            }
            return Ok(());
        }
        (None, Some(bg)) => bg,
    };
    let at = "spec.strategy.blueGreen";
    if bg.active_service.is_empty() {
        return Err(format!("{at}.activeService is required"));
    }
    let service = &bg.traffic_routing.wasm.service;
    if !service.is_empty() && service != &bg.active_service {
        return Err(format!(
            "{at}.trafficRouting.wasm.service ({service}) must be activeService ({}) or left out",
            bg.active_service
        ));
    }
    if let Some(preview) = &bg.preview_service {
        if preview.is_empty() || preview == &bg.active_service {
            return Err(format!(
                "{at}.previewService must name another Service than activeService"
            ));
        }
    }
    if bg.auto_promotion_enabled == Some(false) && bg.auto_promotion_seconds.is_some() {
        return Err(format!(
            "{at}.autoPromotionSeconds needs autoPromotionEnabled (it is false: the switch waits for a promote)"
        ));
    }
    if bg.auto_promotion_seconds.is_some_and(|s| s < 0) {
        return Err(format!("{at}.autoPromotionSeconds must be 0 or more"));
    }
    let replicas = spec.replicas.unwrap_or(1);
    if let Some(n) = bg.preview_replica_count {
        if n < 1 || n > replicas.max(1) {
            return Err(format!(
                "{at}.previewReplicaCount {n} is outside 1..={}",
                replicas.max(1)
            ));
        }
    }
    if bg
        .preview_header_route
        .as_ref()
        .is_some_and(|r| r.matches.is_empty())
    {
        return Err(format!(
            "{at}.previewHeaderRoute.match needs at least one header condition"
        ));
    }
    for (field, analysis) in [
        ("prePromotionAnalysis", &bg.pre_promotion_analysis),
        ("postPromotionAnalysis", &bg.post_promotion_analysis),
    ] {
        if let Some(a) = analysis {
            if a.templates.is_empty() {
                return Err(format!(
                    "{at}.{field}.templates must name at least one AnalysisTemplate"
                ));
            }
            if a.starting_step.is_some() {
                return Err(format!(
                    "{at}.{field}.startingStep is only for strategy.canary.analysis"
                ));
            }
        }
    }
    Ok(())
}

/// Checks the rollout's analysis against its templates: every template found, every argument
/// given, every metric valid (conditions compile), step metrics finite.
pub fn validate_analysis(
    spec: &CanaryRolloutSpec,
    templates: &BTreeMap<String, AnalysisTemplateSpec>,
    fields: &RolloutFields,
) -> Result<(), String> {
    validate_analysis_not_started(spec, templates, fields, &[])
}

/// [`validate_analysis`] except the analyses already `started`, by step index (`None`: the
/// background analysis): a started run measures the metrics it recorded when it started, so
/// its template being deleted or broken since must neither stop it nor freeze the rollout.
pub fn validate_analysis_not_started(
    spec: &CanaryRolloutSpec,
    templates: &BTreeMap<String, AnalysisTemplateSpec>,
    fields: &RolloutFields,
    started: &[Option<i32>],
) -> Result<(), String> {
    let (canary, kinds) = spec.strategy.compiled();
    let check = |where_: String, a: &RolloutAnalysis, finite: bool| -> Result<(), String> {
        let resolved = resolve(a, templates, "stable", "canary", fields)
            .map_err(|e| format!("{where_}: {e}"))?;
        for m in &resolved.metrics {
            validate_metric(m).map_err(|e| format!("{where_}: {e}"))?;
            if finite && crate::analysis::run::effective_count(m).is_none() {
                return Err(format!(
                    "{where_}: metric {} has an interval and no count: it would never complete a step (give it a count)",
                    m.name
                ));
            }
        }
        Ok(())
    };
    if let Some(a) = canary
        .analysis
        .as_ref()
        .filter(|_| !started.contains(&None))
    {
        check("spec.strategy.canary.analysis".into(), a, false)?;
    }
    for (i, step) in canary.steps.iter().enumerate() {
        let index = i32::try_from(i).ok();
        if let Some(a) = step.analysis.as_ref().filter(|_| !started.contains(&index)) {
            let at = match kinds.get(i) {
                Some(bg) => bg.path().to_owned(),
                None => format!("steps[{i}].analysis"),
            };
            check(at, a, true)?;
        }
    }
    Ok(())
}

/// Times in the status keep milliseconds (as `metav1.MicroTime` keeps sub-seconds): a step's
/// start rounded to the second would end a `500ms` pause early, or skip it.
fn rfc3339(t: DateTime<Utc>) -> String {
    use chrono::SubsecRound;
    // Whole seconds print as before (`12:00:45Z`), others with their milliseconds.
    t.trunc_subsecs(3)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn seconds(n: Option<i32>) -> chrono::Duration {
    chrono::Duration::seconds(i64::from(
        n.unwrap_or(DEFAULT_SCALE_DOWN_DELAY_SECONDS).max(0),
    ))
}

/// Computes the next desired state.
pub fn plan(spec: &CanaryRolloutSpec, current: &CanaryRolloutStatus, obs: &Observed) -> Plan {
    // A request equal to the one last acted on is that one, seen again because the controller
    // stopped before removing the annotation: it is not acted on twice, only removed again.
    let repeated = obs.promote_request.is_some() && obs.promote_request == current.promote_handled;
    let (strategy, blue_green_steps) = spec.strategy.compiled();
    let mut p = Planner {
        spec,
        strategy,
        blue_green_steps,
        obs,
        promote: if repeated { None } else { obs.promote },
        status: current.clone(),
        transitions: Vec::new(),
        requeue: None,
        promote_consumed: false,
        created_runs: Vec::new(),
    };
    p.status.observed_generation = obs.generation;
    // Runs of this canary that recorded their metrics when they started go on from those.
    let started: Vec<Option<i32>> = current
        .analysis_runs
        .iter()
        .filter(|r| r.canary_hash == obs.template_hash && !r.spec.is_empty())
        .map(|r| r.step_index)
        .collect();
    if let Err(message) = validate(spec).and_then(|()| {
        validate_analysis_not_started(spec, &obs.analysis_templates, &obs.rollout_fields, &started)
    }) {
        return p.invalid(message).record_promote(obs, repeated);
    }
    p.run().record_promote(obs, repeated)
}

impl Plan {
    /// Keeps in status which promote request was acted on, so it is acted on once.
    fn record_promote(mut self, obs: &Observed, repeated: bool) -> Plan {
        if repeated {
            self.promote_consumed = true;
        } else if self.promote_consumed {
            self.status.promote_handled = obs.promote_request.clone();
        }
        if obs.promote_request.is_none() {
            self.status.promote_handled = None;
        }
        self
    }
}

impl Planner<'_> {
    /// The spec cannot be executed. Nothing moves, except that an abort still takes traffic off
    /// a running canary: abort needs no step, no template and no analysis, so it always wins.
    fn invalid(mut self, message: String) -> Plan {
        let running = self
            .status
            .stable_hash
            .clone()
            .zip(self.status.canary_hash.clone());
        let (Some((stable, canary)), true) = (running, self.spec.abort || self.status.aborted)
        else {
            self.status.phase = Phase::Degraded;
            self.status.message = Some(message);
            return self.finish(None, BTreeMap::new(), None);
        };
        self.status.canary_weight = 0;
        self.status.header_routes.clear();
        self.status.phase = Phase::Aborted;
        self.status.message = Some(format!(
            "aborted: traffic on stable; the spec cannot be executed ({message}): fix it to retry or scale down"
        ));
        let traffic = Traffic {
            stable_hash: stable,
            canary_hash: canary.clone(),
            canary_weight: 0,
            header_routes: Vec::new(),
        };
        self.status.weight = Some(format_weight(0));
        crate::conditions::set_phase_conditions(&mut self.status, self.obs.now);
        // No ReplicaSet is resized and no scale-down scheduled or dropped: the abort's
        // scale-down is planned once the spec can be executed again.
        Plan {
            status: self.status,
            traffic: Some(traffic),
            replicas: BTreeMap::new(),
            canary: Some(canary),
            transitions: self.transitions,
            requeue_after: None,
            promote_consumed: false,
            measure: Vec::new(),
        }
    }
}

struct Planner<'a> {
    spec: &'a CanaryRolloutSpec,
    /// What the steps run: the canary strategy, or the steps of the blue-green one.
    strategy: std::borrow::Cow<'a, crate::crd::CanaryStrategy>,
    /// For a blue-green rollout, what each step is.
    blue_green_steps: Vec<crate::strategy::BlueGreenStep>,
    obs: &'a Observed,
    /// The promote request not yet acted on, if any.
    promote: Option<Promote>,
    status: CanaryRolloutStatus,
    transitions: Vec<Transition>,
    requeue: Option<Duration>,
    promote_consumed: bool,
    /// Runs started by this plan: their first measurement is taken on the next reconcile.
    created_runs: Vec<String>,
}

impl Planner<'_> {
    fn replicas(&self) -> i32 {
        self.spec.replicas.unwrap_or(1).max(0)
    }

    /// Blue-green: the green pods to run from the start (`previewReplicaCount`, default all).
    fn preview_floor(&self) -> Option<i32> {
        let bg = self.spec.strategy.blue_green_only()?;
        let r = self.replicas();
        Some(bg.preview_replica_count.unwrap_or(r).clamp(0, r))
    }

    fn note(&mut self, reason: &'static str, message: String) {
        self.transitions.push(Transition::new(reason, message));
    }

    /// [`Self::note`] for a reason that recurs for different steps or runs (`about`).
    fn note_about(&mut self, reason: &'static str, about: &str, message: String) {
        self.transitions.push(Transition {
            reason,
            action: format!("{reason}/{about}"),
            message,
        });
    }

    fn requeue_in(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn run(mut self) -> Plan {
        let r = self.replicas();
        let desired = self.obs.template_hash.clone();
        let now = self.obs.now;
        let Some(stable) = self.status.stable_hash.clone() else {
            // First rollout: straight to stable, nothing to compare against.
            self.status.stable_hash = Some(desired.clone());
            self.note(
                "Initialized",
                format!("first version {desired} becomes stable with {r} replicas"),
            );
            return self.steady(desired);
        };
        if desired == stable {
            if let Some(canary) = self.status.canary_hash.take() {
                // The template went back to stable mid-canary: drop the canary at once.
                // Traffic leaves the canary in this reconcile; its pods drain for
                // abortScaleDownDelaySeconds (as after an abort) so that sidecars still running
                // the previous config finish their requests on them.
                let delay = seconds(self.strategy.abort_scale_down_delay_seconds);
                self.note(
                    "CanaryCancelled",
                    format!(
                        "template is back to stable {stable}; canary {canary} gets no traffic and is scaled down in {}s",
                        delay.num_seconds()
                    ),
                );
                self.schedule_scale_down(&canary, now + delay);
                self.status.aborted = false;
                self.status.analysis_aborted = false;
                self.status.analysis_runs.clear();
                self.status.header_routes.clear();
            }
            return self.steady(stable);
        }
        if self.status.canary_hash.as_deref() != Some(desired.as_str()) {
            if let Some(old) = self.status.canary_hash.replace(desired.clone()) {
                // The old canary drains like an aborted one: no traffic from this reconcile on,
                // scaled down only after abortScaleDownDelaySeconds.
                let delay = seconds(self.strategy.abort_scale_down_delay_seconds);
                self.note(
                    "CanaryRestarted",
                    format!(
                        "template changed during the canary: {old} replaced by {desired}, back to step 0; {old} gets no traffic and is scaled down in {}s",
                        delay.num_seconds()
                    ),
                );
                self.schedule_scale_down(&old, now + delay);
            } else {
                self.note(
                    "CanaryStarted",
                    format!("new template {desired}: canary starts next to stable {stable}"),
                );
            }
            self.status.current_step_index = Some(0);
            self.status.canary_weight = 0;
            self.status.header_routes.clear();
            self.status.aborted = false;
            self.status.analysis_aborted = false;
            self.status.analysis_runs.clear();
            self.status.step_started_at = Some(rfc3339(now));
        }
        let canary = desired;
        if self.spec.abort {
            // The user owns the abort now; setting spec.abort back to false retries.
            self.status.analysis_aborted = false;
            if !self.status.aborted {
                self.status.aborted = true;
                let delay = seconds(self.strategy.abort_scale_down_delay_seconds);
                self.schedule_scale_down(&canary, now + delay);
                self.note(
                    "Aborted",
                    format!(
                        "all traffic back to stable {stable}; canary {canary} scaled down in {}s",
                        delay.num_seconds()
                    ),
                );
            }
            self.status.canary_weight = 0;
            self.status.header_routes.clear();
            self.status.phase = Phase::Aborted;
            self.status.message =
                Some("aborted: traffic on stable; set spec.abort=false to retry".into());
            return self.canary_plan(stable, canary, 0);
        }
        if self.status.aborted && self.status.analysis_aborted {
            self.status.canary_weight = 0;
            self.status.header_routes.clear();
            self.status.phase = Phase::Aborted;
            let why = self
                .status
                .analysis_runs
                .iter()
                .find(|r| matches!(r.phase, AnalysisPhase::Failed | AnalysisPhase::Error))
                .map(|r| {
                    format!(
                        "analysis {} {:?}: {}",
                        r.name,
                        r.phase,
                        r.message.as_deref().unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "analysis failed".into());
            self.status.message = Some(format!(
                "aborted by {why}; traffic on stable. Retry: spec.abort true then false (kubectl canary abort, then retry)"
            ));
            return self.canary_plan(stable, canary, 0);
        }
        if self.status.aborted {
            self.status.aborted = false;
            self.status.analysis_runs.clear();
            self.status.scale_downs.retain(|s| s.hash != canary);
            self.status.current_step_index = Some(0);
            self.status.canary_weight = 0;
            self.status.header_routes.clear();
            self.status.step_started_at = Some(rfc3339(now));
            self.note("Retried", format!("retrying canary {canary} from step 0"));
        }
        self.record_measurements(&stable, &canary);
        if let Some(run) = self
            .status
            .analysis_runs
            .iter()
            .find(|r| matches!(r.phase, AnalysisPhase::Failed | AnalysisPhase::Error))
            .cloned()
        {
            return self.abort_by_analysis(stable, canary, &run);
        }
        if let Some(i) = self
            .status
            .analysis_runs
            .iter()
            .position(|r| r.step_index.is_none() && r.phase == AnalysisPhase::Inconclusive)
        {
            if self.promote == Some(Promote::Step) {
                self.promote_consumed = true;
                self.status.analysis_runs.remove(i);
                self.note(
                    "AnalysisRestarted",
                    "background analysis was inconclusive; promoted: it starts again".into(),
                );
            } else {
                self.status.phase = Phase::Paused;
                self.status.message = Some(format!(
                    "paused: background analysis inconclusive ({}); promote to continue (annotation wasmcanary.io/promote=step), abort to roll back",
                    self.status.analysis_runs[i].message.as_deref().unwrap_or_default()
                ));
                let keep = self.obs.replicas(&canary);
                return self.canary_plan(stable, canary, keep);
            }
        }
        if self.spec.paused {
            self.status.phase = Phase::Paused;
            self.status.message = Some("paused by spec.paused".into());
            let keep = self.obs.replicas(&canary);
            return self.canary_plan(stable, canary, keep);
        }
        self.advance(stable, canary)
    }

    /// Executes steps from the current index as far as they complete now.
    fn advance(mut self, stable: String, canary: String) -> Plan {
        let steps = self.strategy.steps.clone();
        let total = steps.len();
        let now = self.obs.now;
        let r = self.replicas();
        if self.promote == Some(Promote::Full) {
            self.promote_consumed = true;
            if self.status.current_step_index.unwrap_or(0) < total as i32 {
                self.note(
                    "PromotedFull",
                    "promote --full: remaining steps skipped".into(),
                );
            }
            self.status.current_step_index = Some(total as i32);
        }
        loop {
            let index = usize::try_from(self.status.current_step_index.unwrap_or(0))
                .unwrap_or(0)
                .min(total);
            self.status.current_step = Some(format!("{index}/{total}"));
            self.ensure_background_run(index, &stable, &canary);
            let Some(step) = steps.get(index) else {
                return self.promote(stable, canary);
            };
            if let Some(floor) = self.preview_floor() {
                // Blue-green: green runs its preview pods before anything else happens (Argo
                // waits for the preview ReplicaSet, then analyses and counts
                // autoPromotionSeconds from there).
                let available = self.obs.available(&canary);
                if available < floor {
                    self.status.phase = Phase::Progressing;
                    self.status.message = Some(format!(
                        "waiting for green {canary} ({available}/{floor} preview pods available)"
                    ));
                    let need = floor.max(canary_replicas(r, self.target_weight(step), false));
                    return self.canary_plan(stable, canary, need);
                }
            }
            match self.execute(index, step, &canary) {
                StepOutcome::Done(message) => {
                    self.note_about(
                        "StepCompleted",
                        &format!("step-{}", index + 1),
                        format!("step {}/{total}: {message}", index + 1),
                    );
                    self.status.current_step_index = Some(index as i32 + 1);
                    self.status.step_started_at = Some(rfc3339(now));
                    if self.blue_green_steps.get(index)
                        == Some(&crate::strategy::BlueGreenStep::Switch)
                    {
                        // The switch is the filter's: every caller at 100% first, written in
                        // this reconcile; what follows (the post-promotion analysis, or the
                        // promotion, which moves the DestinationRule) starts in the next one.
                        self.status.phase = Phase::Progressing;
                        self.status.message = Some(format!(
                            "switched: every caller sends to green {canary}; blue {stable} stays up"
                        ));
                        self.requeue_in(Duration::from_millis(100));
                        return self.canary_plan(stable, canary, r);
                    }
                }
                StepOutcome::Wait { phase, message } => {
                    self.status.phase = phase;
                    self.status.message = Some(message);
                    let need = canary_replicas(
                        r,
                        self.target_weight(step),
                        !self.status.header_routes.is_empty() || step.set_header_route.is_some(),
                    )
                    .max(self.preview_floor().unwrap_or(0));
                    return self.canary_plan(stable, canary, need);
                }
            }
        }
    }

    /// The weight the canary must be sized for while at `step`.
    fn target_weight(&self, step: &CanaryStep) -> u32 {
        step.set_weight
            .and_then(|w| weight_basis_points(w).ok())
            .unwrap_or(self.status.canary_weight)
            .max(self.status.canary_weight)
    }

    fn execute(&mut self, index: usize, step: &CanaryStep, canary: &str) -> StepOutcome {
        if step.analysis.is_some() {
            return self.execute_analysis(index, canary);
        }
        let r = self.replicas();
        let available = self.obs.available(canary);
        if let Some(w) = step.set_weight {
            let bp = weight_basis_points(w).unwrap_or(0);
            let need = canary_replicas(r, bp, !self.status.header_routes.is_empty());
            if available < need {
                return StepOutcome::Wait {
                    phase: Phase::Progressing,
                    message: format!(
                        "setWeight {w}%: waiting for canary pods ({available}/{need} available)"
                    ),
                };
            }
            self.status.canary_weight = bp;
            return StepOutcome::Done(format!("weight {w}%"));
        }
        if let Some(pause) = &step.pause {
            // One promote request ends one pause, not every pause it meets on the way.
            if self.promote == Some(Promote::Step) && !self.promote_consumed {
                self.promote_consumed = true;
                return StepOutcome::Done("pause ended by promote".into());
            }
            let Some(d) = pause.duration.as_ref().and_then(|d| parse_duration(d).ok()) else {
                return StepOutcome::Wait {
                    phase: Phase::Paused,
                    message: format!(
                        "paused at step {} until promoted (annotation wasmcanary.io/promote=step)",
                        index + 1
                    ),
                };
            };
            let started = self
                .status
                .step_started_at
                .as_deref()
                .and_then(parse_time)
                .unwrap_or(self.obs.now);
            let ends = started + chrono::Duration::from_std(d).unwrap_or_default();
            if self.obs.now >= ends {
                return StepOutcome::Done(format!("paused {}", format_duration(d)));
            }
            let left = (ends - self.obs.now).to_std().unwrap_or_default();
            self.requeue_in(left);
            // The end, not the time left: the message stays the same from one reconcile to
            // the next, so the status is not rewritten (nor the rollout's watch woken) for it.
            return StepOutcome::Wait {
                phase: Phase::Paused,
                message: format!(
                    "paused at step {} for {} (until {})",
                    index + 1,
                    format_duration(d),
                    rfc3339(ends)
                ),
            };
        }
        if let Some(route) = &step.set_header_route {
            if !route.matches.is_empty() && available < 1 {
                return StepOutcome::Wait {
                    phase: Phase::Progressing,
                    message: format!("setHeaderRoute {}: waiting for a canary pod", route.name),
                };
            }
            self.status.header_routes.retain(|h| h.name != route.name);
            if route.matches.is_empty() {
                return StepOutcome::Done(format!("header route {} removed", route.name));
            }
            self.status.header_routes.push(route.clone());
            return StepOutcome::Done(format!("header route {} set", route.name));
        }
        // validate() guarantees one field is set.
        StepOutcome::Wait {
            phase: Phase::Degraded,
            message: format!("steps[{index}] cannot be executed"),
        }
    }

    fn promote(mut self, stable: String, canary: String) -> Plan {
        let r = self.replicas();
        let available = self.obs.available(&canary);
        if available < r {
            self.status.phase = Phase::Progressing;
            self.status.message = Some(format!(
                "promoting: waiting for canary pods ({available}/{r} available)"
            ));
            return self.canary_plan(stable, canary, r);
        }
        let now = self.obs.now;
        let delay = seconds(self.strategy.scale_down_delay_seconds);
        self.schedule_scale_down(&stable, now + delay);
        self.note(
            "Promoted",
            format!(
                "{canary} is the new stable; previous stable {stable} scaled down in {}s",
                delay.num_seconds()
            ),
        );
        for run in &mut self.status.analysis_runs {
            run.terminate();
        }
        self.status.stable_hash = Some(canary.clone());
        self.status.canary_hash = None;
        self.status.header_routes.clear();
        self.status.current_step_index = None;
        self.status.current_step = None;
        self.status.step_started_at = None;
        self.steady(canary)
    }

    /// Only `stable` serves; every other ReplicaSet goes to zero (after its delay if any).
    fn steady(mut self, stable: String) -> Plan {
        let r = self.replicas();
        self.status.canary_weight = 0;
        let available = self.obs.available(&stable);
        if available >= r {
            self.status.phase = Phase::Healthy;
            self.status.message = Some(format!(
                "{stable} serves all traffic ({available}/{r} available)"
            ));
        } else {
            self.status.phase = Phase::Progressing;
            self.status.message = Some(format!(
                "waiting for stable pods ({available}/{r} available)"
            ));
        }
        let mut replicas = BTreeMap::new();
        replicas.insert(stable.clone(), r);
        let traffic = Traffic {
            stable_hash: stable.clone(),
            canary_hash: stable,
            canary_weight: 0,
            header_routes: Vec::new(),
        };
        self.finish(Some(traffic), replicas, None)
    }

    fn canary_plan(mut self, stable: String, canary: String, canary_replicas: i32) -> Plan {
        let r = self.replicas();
        let mut replicas = BTreeMap::new();
        replicas.insert(stable.clone(), r);
        replicas.insert(
            canary.clone(),
            canary_replicas.max(self.obs.available(&canary).min(canary_replicas.max(0))),
        );
        let (canary_weight, header_routes) = self.exposed(&canary);
        let traffic = Traffic {
            stable_hash: stable,
            canary_hash: canary.clone(),
            canary_weight,
            header_routes,
        };
        self.finish(Some(traffic), replicas, Some(canary))
    }

    /// The weight and header routes the canary's available (Ready) pods can carry: the weight
    /// in force capped at `available / replicas`, header routes only while a pod is Ready. Pods
    /// that stop being Ready after their step (during a pause) lower the exposure at once; the
    /// status keeps the step's weight, so it comes back when they are Ready again, and says why
    /// in the meantime.
    fn exposed(&mut self, canary: &str) -> (u32, Vec<SetHeaderRoute>) {
        let weight = self.status.canary_weight;
        let routes = self.status.header_routes.clone();
        let available = self.obs.available(canary).max(0);
        let carried = match self.replicas() {
            0 => 0,
            r => u32::try_from(i64::from(available) * i64::from(BASIS_POINTS) / i64::from(r))
                .unwrap_or(u32::MAX),
        };
        let exposed = weight.min(carried);
        let routes_dropped = available == 0 && !routes.is_empty();
        if exposed == weight && !routes_dropped {
            return (weight, routes);
        }
        self.status.phase = Phase::Progressing;
        self.status.message = Some(format!(
            "canary {canary} has {available} Ready pod(s): exposed weight lowered from {} to {}{} until its pods are Ready again",
            format_weight(weight),
            format_weight(exposed),
            if routes_dropped { ", header routes removed" } else { "" }
        ));
        (exposed, if routes_dropped { Vec::new() } else { routes })
    }

    fn schedule_scale_down(&mut self, hash: &str, at: DateTime<Utc>) {
        self.status.scale_downs.retain(|s| s.hash != hash);
        self.status.scale_downs.push(ScheduledScaleDown {
            hash: hash.to_owned(),
            at: rfc3339(at),
        });
    }

    fn finish(
        mut self,
        traffic: Option<Traffic>,
        mut replicas: BTreeMap<String, i32>,
        canary: Option<String>,
    ) -> Plan {
        let now = self.obs.now;
        if traffic.is_some() {
            // Pending scale-downs keep their pods until due; past due, and for any other
            // ReplicaSet of this rollout, zero. A scheduled hash that is active again (retry,
            // template reverted) is not scaled down.
            let mut pending = Vec::new();
            for s in std::mem::take(&mut self.status.scale_downs) {
                let due = parse_time(&s.at).is_none_or(|at| at <= now);
                let active = replicas.contains_key(&s.hash)
                    && !(self.status.aborted && Some(&s.hash) == canary.as_ref());
                if active {
                    continue;
                }
                if due {
                    replicas.insert(s.hash.clone(), 0);
                } else {
                    replicas.insert(s.hash.clone(), self.obs.replicas(&s.hash));
                    if let Some(at) = parse_time(&s.at) {
                        self.requeue_in((at - now).to_std().unwrap_or_default());
                    }
                    pending.push(s);
                }
            }
            self.status.scale_downs = pending;
            for rs in &self.obs.replica_sets {
                replicas.entry(rs.hash.clone()).or_insert(0);
            }
        } else {
            replicas.clear();
        }
        let measure = if traffic.is_some() {
            self.due_measurements()
        } else {
            Vec::new()
        };
        self.status.weight = Some(format_weight(self.status.canary_weight));
        crate::conditions::set_phase_conditions(&mut self.status, now);
        Plan {
            status: self.status,
            traffic,
            replicas,
            canary,
            transitions: self.transitions,
            requeue_after: self.requeue,
            promote_consumed: self.promote_consumed,
            measure,
        }
    }
}

enum StepOutcome {
    Done(String),
    Wait { phase: Phase, message: String },
}

/// `1050` -> `10.5%`.
pub fn format_weight(bp: u32) -> String {
    let whole = bp / 100;
    let frac = bp % 100;
    if frac == 0 {
        format!("{whole}%")
    } else if frac % 10 == 0 {
        format!("{whole}.{}%", frac / 10)
    } else {
        format!("{whole}.{frac:02}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CanaryStrategy, RolloutStrategy};

    fn paused_canary() -> CanaryRolloutStatus {
        CanaryRolloutStatus {
            phase: Phase::Paused,
            stable_hash: Some("v1".into()),
            canary_hash: Some("v2".into()),
            canary_weight: 5_000,
            current_step_index: Some(1),
            ..CanaryRolloutStatus::default()
        }
    }

    #[test]
    fn a_500ms_pause_counts_from_the_millisecond_its_step_started() {
        let spec: CanaryRolloutSpec = serde_json::from_value(serde_json::json!({
            "selector": {}, "template": {},
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": "500ms"}}, {"setWeight": 40}, {"pause": {}}],
                "trafficRouting": {"wasm": {"service": "reviews", "wasmPlugin": {"url": "oci://x"}, "destinationRule": {"name": "reviews"}}}}}
        }))
        .expect("spec");
        let status = CanaryRolloutStatus {
            stable_hash: Some("v1".into()),
            canary_hash: Some("v2".into()),
            current_step_index: Some(0),
            ..CanaryRolloutStatus::default()
        };
        // Late in a second: rounded down, the pause would already be over.
        let t0 = "2026-11-29T12:00:00.900Z"
            .parse::<DateTime<Utc>>()
            .expect("time");
        let at = |now: DateTime<Utc>| Observed {
            template_hash: "v2".into(),
            replica_sets: vec![
                ObservedReplicaSet {
                    hash: "v1".into(),
                    replicas: 1,
                    available: 1,
                },
                ObservedReplicaSet {
                    hash: "v2".into(),
                    replicas: 1,
                    available: 1,
                },
            ],
            now,
            ..Observed::default()
        };
        let paused = plan(&spec, &status, &at(t0));
        assert_eq!(
            paused.status.phase,
            Phase::Paused,
            "{:?}",
            paused.status.message
        );
        assert_eq!(paused.status.current_step_index, Some(1));
        assert_eq!(
            paused.status.step_started_at.as_deref(),
            Some("2026-11-29T12:00:00.900Z")
        );
        assert_eq!(paused.requeue_after, Some(Duration::from_millis(500)));
        let ms = chrono::Duration::milliseconds;
        let still = plan(&spec, &paused.status, &at(t0 + ms(499)));
        assert_eq!(still.status.current_step_index, Some(1), "not shortened");
        let done = plan(&spec, &paused.status, &at(t0 + ms(500)));
        assert_eq!(done.status.current_step_index, Some(3), "not lengthened");
    }

    #[test]
    fn a_pause_exposes_only_the_weight_its_ready_canary_pods_carry() {
        let spec: CanaryRolloutSpec = serde_json::from_value(serde_json::json!({
            "replicas": 5, "selector": {}, "template": {},
            "strategy": {"canary": {"steps": [{"setWeight": 40}, {"pause": {}}],
                "trafficRouting": {"wasm": {"service": "reviews", "wasmPlugin": {"url": "oci://x"}, "destinationRule": {"name": "reviews"}}}}}
        }))
        .expect("spec");
        let status = CanaryRolloutStatus {
            canary_weight: 4_000,
            ..paused_canary()
        };
        let with_ready = |available| Observed {
            template_hash: "v2".into(),
            replica_sets: vec![
                ObservedReplicaSet {
                    hash: "v1".into(),
                    replicas: 5,
                    available: 5,
                },
                ObservedReplicaSet {
                    hash: "v2".into(),
                    replicas: 2,
                    available,
                },
            ],
            now: Utc::now(),
            ..Observed::default()
        };
        let weight = |p: &Plan| p.traffic.as_ref().map(|t| t.canary_weight);
        let all = plan(&spec, &status, &with_ready(2));
        assert_eq!(
            (weight(&all), all.status.phase),
            (Some(4_000), Phase::Paused)
        );
        let one = plan(&spec, &status, &with_ready(1));
        assert_eq!(weight(&one), Some(2_000), "1 of 5 pods carries 20%");
        assert_eq!(one.status.canary_weight, 4_000, "the step's weight is kept");
        assert_eq!(one.status.phase, Phase::Progressing);
        assert_eq!(
            one.replicas.get("v2"),
            Some(&2),
            "the canary keeps its size"
        );
        let none = plan(&spec, &status, &with_ready(0));
        assert_eq!(weight(&none), Some(0));
    }

    #[test]
    fn abort_takes_traffic_off_the_canary_even_when_the_spec_cannot_be_executed() {
        // No template nor workloadRef: validate() refuses the spec.
        let mut spec = CanaryRolloutSpec {
            strategy: RolloutStrategy {
                canary: Some(CanaryStrategy::default()),
                blue_green: None,
            },
            ..CanaryRolloutSpec::default()
        };
        let obs = Observed {
            template_hash: "v2".into(),
            now: Utc::now(),
            ..Observed::default()
        };
        let frozen = plan(&spec, &paused_canary(), &obs);
        assert_eq!(frozen.status.phase, Phase::Degraded);
        assert_eq!(
            frozen.traffic, None,
            "without abort, traffic stays as it is"
        );

        spec.abort = true;
        let aborted = plan(&spec, &paused_canary(), &obs);
        let traffic = aborted.traffic.expect("abort plans traffic");
        assert_eq!((traffic.canary_weight, traffic.header_routes.len()), (0, 0));
        assert_eq!(aborted.status.phase, Phase::Aborted);
        assert_eq!(aborted.status.canary_weight, 0);
        assert!(aborted.replicas.is_empty(), "no ReplicaSet resized");
    }
}
