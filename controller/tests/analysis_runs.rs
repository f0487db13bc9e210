//! The analysis run state machine and its effect on the rollout, pure: (spec, status, recorded
//! measurements) -> plan. Inconclusive pauses, errors past consecutiveErrorLimit abort, an
//! analysis step completes when its run succeeds, timers come from the status.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use canary_controller::analysis::run::assess_metric;
use canary_controller::analysis::{
    AnalysisPhase, AnalysisTemplateSpec, Measurement, MetricResult, TakenMeasurement,
};
use canary_controller::crd::{CanaryRollout, CanaryRolloutStatus, Phase};
use canary_controller::steps::{plan, Observed, ObservedReplicaSet, Plan, Promote};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;

const STABLE: &str = "stablehash";
const CANARY: &str = "canaryhash";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
}

fn template(metric: serde_json::Value) -> BTreeMap<String, AnalysisTemplateSpec> {
    let spec = serde_json::from_value(json!({"metrics": [metric]})).unwrap();
    BTreeMap::from([("check".to_owned(), spec)])
}

fn web_metric(extra: serde_json::Value) -> serde_json::Value {
    let mut m = json!({"name": "ok", "successCondition": "result == true",
                       "provider": {"web": {"url": "http://127.0.0.1:1/health"}}});
    m.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    m
}

/// setWeight 50, then an analysis step, then 100.
fn rollout() -> CanaryRollout {
    serde_json::from_value(json!({
        "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
        "metadata": {"name": "reviews", "namespace": "bookinfo"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "reviews"}},
            "template": {"metadata": {"labels": {"app": "reviews"}}, "spec": {"containers": [{"name": "r", "image": "r:2"}]}},
            "strategy": {"canary": {
                "steps": [{"setWeight": 50}, {"analysis": {"templates": [{"templateName": "check"}]}}, {"setWeight": 100}],
                "trafficRouting": {"wasm": {"service": "reviews", "wasmPlugin": {"url": "oci://x"}, "destinationRule": {"name": "reviews"}}}}}}
    }))
    .unwrap()
}

struct Sim {
    rollout: CanaryRollout,
    templates: BTreeMap<String, AnalysisTemplateSpec>,
    status: CanaryRolloutStatus,
    now: DateTime<Utc>,
    promote: Option<Promote>,
}

impl Sim {
    fn new(metric: serde_json::Value) -> Sim {
        Sim {
            rollout: rollout(),
            templates: template(metric),
            status: CanaryRolloutStatus {
                stable_hash: Some(STABLE.into()),
                ..Default::default()
            },
            now: t0(),
            promote: None,
        }
    }

    /// A second metric in the template, a copy of the first named `name`.
    fn add_metric(&mut self, name: &str) {
        let check = self.templates.get_mut("check").unwrap();
        let mut m = check.metrics[0].clone();
        m.name = name.into();
        check.metrics.push(m);
    }

    /// Sets `field` of the analysis step (step 1) to `value`.
    fn set_step_analysis(&mut self, field: &str, value: serde_json::Value) {
        let steps = &mut self.rollout.spec.strategy.canary.as_mut().unwrap().steps;
        let mut step = serde_json::to_value(&steps[1]).unwrap();
        step["analysis"][field] = value;
        steps[1] = serde_json::from_value(step).unwrap();
    }

    /// One reconcile: plan; take what is due with `phase`; plan again with it.
    fn reconcile(&mut self, phase: AnalysisPhase) -> Plan {
        self.reconcile_with(|_| phase)
    }

    /// The same, each metric measuring the phase `phase_of(metric name)` gives.
    fn reconcile_with(&mut self, phase_of: impl Fn(&str) -> AnalysisPhase) -> Plan {
        let sets = vec![
            ObservedReplicaSet {
                hash: STABLE.into(),
                replicas: 2,
                available: 2,
            },
            ObservedReplicaSet {
                hash: CANARY.into(),
                replicas: 2,
                available: 2,
            },
        ];
        let mut obs = Observed {
            template_hash: CANARY.into(),
            replica_sets: sets,
            promote: self.promote.take(),
            now: self.now,
            analysis_templates: self.templates.clone(),
            ..Observed::default()
        };
        let mut p = plan(&self.rollout.spec, &self.status, &obs);
        if !p.measure.is_empty() {
            obs.measurements = p
                .measure
                .iter()
                .map(|m| (m, phase_of(&m.metric.name)))
                .map(|(m, phase)| TakenMeasurement {
                    run: m.run.clone(),
                    metric: m.metric.name.clone(),
                    measurement: Measurement {
                        phase,
                        message: (phase == AnalysisPhase::Error)
                            .then(|| "connection refused".into()),
                        started_at: self.now.to_rfc3339(),
                        ..Measurement::default()
                    },
                })
                .collect();
            p = plan(&self.rollout.spec, &self.status, &obs);
        }
        self.status = p.status.clone();
        p
    }
}

#[test]
fn an_analysis_step_completes_when_its_run_succeeds_and_the_rollout_promotes() {
    let mut sim = Sim::new(web_metric(json!({})));
    let p = sim.reconcile(AnalysisPhase::Successful);
    assert_eq!(p.status.current_step_index, Some(1), "at the analysis step");
    assert_eq!(p.status.canary_weight, 5000);
    assert_eq!(p.status.analysis_runs[0].name, "step-1");
    let p = sim.reconcile(AnalysisPhase::Successful);
    assert_eq!(p.status.phase, Phase::Healthy, "{:?}", p.status.message);
    assert_eq!(p.status.stable_hash.as_deref(), Some(CANARY));
    assert_eq!(p.status.analysis_runs[0].phase, AnalysisPhase::Successful);
    assert!(p
        .transitions
        .iter()
        .any(|t| t.reason == "AnalysisCompleted"));
}

#[test]
fn an_inconclusive_step_analysis_pauses_until_promoted() {
    let mut sim = Sim::new(web_metric(
        json!({"successCondition": "result == 1", "failureCondition": "result == 2"}),
    ));
    sim.reconcile(AnalysisPhase::Successful);
    let p = sim.reconcile(AnalysisPhase::Inconclusive);
    assert_eq!(p.status.phase, Phase::Paused);
    assert!(p
        .status
        .message
        .as_deref()
        .unwrap()
        .contains("inconclusive"));
    assert_eq!(p.status.canary_weight, 5000, "traffic stays where it is");
    sim.now += Duration::minutes(10);
    assert_eq!(
        sim.reconcile(AnalysisPhase::Successful).status.phase,
        Phase::Paused
    );
    sim.promote = Some(Promote::Step);
    let p = sim.reconcile(AnalysisPhase::Successful);
    assert!(p.promote_consumed);
    assert_eq!(p.status.phase, Phase::Healthy);
}

#[test]
fn errors_abort_only_past_the_consecutive_error_limit_and_a_success_resets_the_streak() {
    let mut sim = Sim::new(web_metric(
        json!({"interval": "10s", "count": 3, "consecutiveErrorLimit": 2}),
    ));
    sim.reconcile(AnalysisPhase::Successful); // the run starts
    for phase in [
        AnalysisPhase::Error,
        AnalysisPhase::Error,
        AnalysisPhase::Successful,
        AnalysisPhase::Error,
        AnalysisPhase::Error,
    ] {
        let p = sim.reconcile(phase);
        assert_ne!(p.status.phase, Phase::Aborted, "after {phase:?}");
        assert_eq!(
            p.requeue_after,
            Some(std::time::Duration::from_secs(10)),
            "next measurement in interval"
        );
        sim.now += Duration::seconds(10);
    }
    let p = sim.reconcile(AnalysisPhase::Error);
    assert_eq!(p.status.phase, Phase::Aborted);
    assert_eq!(p.traffic.unwrap().canary_weight, 0);
    let m = &p.status.analysis_runs[0].metrics[0];
    assert_eq!(
        (m.error, m.consecutive_errors, m.count),
        (5, 3, 1),
        "{m:#?}"
    );
    assert!(p.status.message.unwrap().contains("connection refused"));
}

#[test]
fn no_measurement_is_taken_before_initial_delay_or_before_the_interval_passes() {
    let mut sim = Sim::new(web_metric(
        json!({"interval": "30s", "count": 2, "initialDelay": "20s"}),
    ));
    sim.reconcile(AnalysisPhase::Successful);
    let p = sim.reconcile(AnalysisPhase::Successful);
    assert_eq!(p.status.analysis_runs[0].metrics[0].count, 0);
    assert_eq!(p.requeue_after, Some(std::time::Duration::from_secs(20)));
    sim.now += Duration::seconds(20);
    assert_eq!(
        sim.reconcile(AnalysisPhase::Successful)
            .status
            .analysis_runs[0]
            .metrics[0]
            .count,
        1
    );
    sim.now += Duration::seconds(29);
    assert_eq!(
        sim.reconcile(AnalysisPhase::Successful)
            .status
            .analysis_runs[0]
            .metrics[0]
            .count,
        1
    );
    sim.now += Duration::seconds(1);
    assert_eq!(
        sim.reconcile(AnalysisPhase::Successful).status.phase,
        Phase::Healthy
    );
}

/// The rollout stopped before any traffic moved; its message.
fn refused(p: Plan) -> String {
    assert_eq!(p.status.phase, Phase::Degraded);
    assert!(p.traffic.is_none());
    p.status.message.unwrap()
}

#[test]
fn a_condition_that_does_not_compile_refuses_the_rollout_before_any_traffic_moves() {
    let mut sim = Sim::new(web_metric(json!({"successCondition": "result >"})));
    let m = refused(sim.reconcile(AnalysisPhase::Successful));
    assert!(
        m.contains("steps[1].analysis") && m.contains("does not compile"),
        "{m}"
    );
}

#[test]
fn a_step_analysis_must_finish_and_arguments_must_have_values() {
    let mut sim = Sim::new(web_metric(json!({"interval": "1m"})));
    let m = sim
        .reconcile(AnalysisPhase::Successful)
        .status
        .message
        .unwrap();
    assert!(m.contains("never complete a step"), "{m}");
    let mut sim = Sim::new(web_metric(json!({})));
    sim.templates.get_mut("check").unwrap().args =
        vec![serde_json::from_value(json!({"name": "svc"})).unwrap()];
    let m = sim
        .reconcile(AnalysisPhase::Successful)
        .status
        .message
        .unwrap();
    assert!(m.contains("argument svc has no value"), "{m}");
}

#[test]
fn limits_follow_argo_rules_including_minus_one_for_never() {
    let metric = |v: serde_json::Value| serde_json::from_value(web_metric(v)).unwrap();
    let result = |failed, inconclusive, consecutive_errors, count| MetricResult {
        failed,
        inconclusive,
        consecutive_errors,
        count,
        ..MetricResult::default()
    };
    use AnalysisPhase::*;
    let table = [
        (json!({"interval": "1s"}), result(1, 0, 0, 1), Failed),
        (
            json!({"interval": "1s", "failureLimit": 2}),
            result(2, 0, 0, 2),
            Running,
        ),
        (
            json!({"interval": "1s", "failureLimit": -1}),
            result(9, 0, 0, 9),
            Running,
        ),
        (json!({"interval": "1s"}), result(0, 1, 0, 1), Inconclusive),
        (
            json!({"interval": "1s", "inconclusiveLimit": 1}),
            result(0, 1, 0, 1),
            Running,
        ),
        (json!({"interval": "1s"}), result(0, 0, 4, 0), Running),
        (json!({"interval": "1s"}), result(0, 0, 5, 0), Error),
        (
            json!({"interval": "1s", "count": 3}),
            result(0, 0, 0, 3),
            Successful,
        ),
        (json!({}), result(0, 0, 0, 1), Successful),
    ];
    for (m, r, want) in table {
        assert_eq!(assess_metric(&metric(m.clone()), &r), want, "{m} {r:?}");
    }
}

#[test]
fn a_running_analysis_keeps_the_template_it_started_with_when_the_template_is_edited() {
    // count 3, interval 1m: the run needs three measurements.
    let mut sim = Sim::new(web_metric(json!({"count": 3, "interval": "1m"})));
    let p = sim.reconcile(AnalysisPhase::Successful);
    assert_eq!(
        p.status.analysis_runs[0].spec[0].name, "ok",
        "the run records its resolved metrics"
    );
    // Someone edits the template mid-run: another URL.
    let mut edited = web_metric(json!({"count": 3, "interval": "1m"}));
    edited["provider"]["web"]["url"] = json!("http://127.0.0.1:1/other");
    sim.templates = template(edited);
    sim.now += Duration::minutes(1);
    let mut obs = Observed {
        template_hash: CANARY.into(),
        replica_sets: vec![
            ObservedReplicaSet {
                hash: STABLE.into(),
                replicas: 2,
                available: 2,
            },
            ObservedReplicaSet {
                hash: CANARY.into(),
                replicas: 2,
                available: 2,
            },
        ],
        now: sim.now,
        analysis_templates: sim.templates.clone(),
        ..Observed::default()
    };
    obs.promote = None;
    let due = plan(&sim.rollout.spec, &sim.status, &obs).measure;
    assert_eq!(due.len(), 1, "the next measurement is due");
    let url = serde_json::to_value(&due[0].metric).unwrap()["provider"]["web"]["url"].clone();
    assert_eq!(
        url,
        json!("http://127.0.0.1:1/health"),
        "measured as the run started, as Argo's AnalysisRun does"
    );
}

/// Argo's dry run: a metric named in `dryRun` is measured and recorded, its failure reported in
/// the run's message, but it neither aborts nor pauses the rollout.
#[test]
fn a_dry_run_metric_is_recorded_but_its_failure_does_not_stop_the_rollout() {
    let mut sim = Sim::new(web_metric(json!({})));
    sim.add_metric("new-latency");
    sim.templates.get_mut("check").unwrap().dry_run =
        vec![serde_json::from_value(json!({"metricName": "new-latency"})).unwrap()];
    let phase_of = |m: &str| {
        if m == "new-latency" {
            AnalysisPhase::Failed
        } else {
            AnalysisPhase::Successful
        }
    };
    sim.reconcile_with(phase_of);
    let p = sim.reconcile_with(phase_of);
    assert_eq!(p.status.phase, Phase::Healthy, "{:?}", p.status.message);
    assert_eq!(p.status.stable_hash.as_deref(), Some(CANARY));
    let run = &p.status.analysis_runs[0];
    assert_eq!(run.phase, AnalysisPhase::Successful);
    let dry = run
        .metrics
        .iter()
        .find(|m| m.name == "new-latency")
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.phase, dry.failed), (AnalysisPhase::Failed, 1));
    let message = run.message.as_deref().unwrap();
    assert!(
        message.contains("dry run, not acted on: new-latency Failed"),
        "{message}"
    );

    // Without the dry run the same measurements abort.
    let mut sim = Sim::new(web_metric(json!({})));
    sim.add_metric("new-latency");
    sim.reconcile_with(phase_of);
    let p = sim.reconcile_with(phase_of);
    assert_eq!(p.status.phase, Phase::Aborted, "{:?}", p.status.message);
}

/// `dryRun` on the rollout's analysis, as a regular expression over whole names; a pattern that
/// selects no metric is refused before any traffic moves (a typo must not make a metric act).
#[test]
fn a_rollout_level_dry_run_takes_a_regex_and_refuses_one_that_matches_nothing() {
    let mut sim = Sim::new(web_metric(json!({})));
    sim.set_step_analysis("dryRun", json!([{"metricName": ".*"}]));
    sim.reconcile(AnalysisPhase::Failed);
    let p = sim.reconcile(AnalysisPhase::Failed);
    assert_eq!(
        p.status.phase,
        Phase::Healthy,
        "every metric dry: the run completes Successful whatever it found ({:?})",
        p.status.message
    );
    assert!(p.status.analysis_runs[0].metrics[0].dry_run);

    let mut sim = Sim::new(web_metric(json!({})));
    sim.set_step_analysis("dryRun", json!([{"metricName": "latncy"}]));
    let m = refused(sim.reconcile(AnalysisPhase::Successful));
    assert!(
        m.contains("dryRun[0].metricName") && m.contains("matches no metric"),
        "{m}"
    );
}

/// `clusterScope: true` reads a ClusterAnalysisTemplate, never the namespace's template of the
/// same name, and says which kind is missing.
#[test]
fn a_cluster_scoped_reference_uses_only_the_cluster_template() {
    let mut sim = Sim::new(web_metric(json!({})));
    sim.set_step_analysis(
        "templates",
        json!([{"templateName": "check", "clusterScope": true}]),
    );
    let m = refused(sim.reconcile(AnalysisPhase::Successful));
    assert!(m.contains("ClusterAnalysisTemplate check not found"), "{m}");

    let spec = sim.templates.remove("check").unwrap();
    sim.templates
        .insert("ClusterAnalysisTemplate/check".into(), spec);
    sim.reconcile(AnalysisPhase::Successful);
    let p = sim.reconcile(AnalysisPhase::Successful);
    assert_eq!(p.status.phase, Phase::Healthy, "{:?}", p.status.message);
}

/// `measurementRetention` (template, then rollout, which wins) sets how many of a metric's
/// latest measurements the status keeps; the default is 10; limits outside 1..=100 are refused.
#[test]
fn measurement_retention_keeps_the_latest_n_and_is_bounded() {
    use canary_controller::analysis::template::resolve;
    let mut templates = template(web_metric(json!({"count": 20, "interval": "1s"})));
    let check = templates.get_mut("check").unwrap();
    let mut other = check.metrics[0].clone();
    other.name = "other".into();
    check.metrics.push(other);
    check.measurement_retention =
        vec![serde_json::from_value(json!({"metricName": ".*", "limit": 3})).unwrap()];
    let analysis: canary_controller::analysis::RolloutAnalysis = serde_json::from_value(json!({
        "templates": [{"templateName": "check"}],
        "measurementRetention": [{"metricName": "other", "limit": 5}]
    }))
    .unwrap();
    let resolved = resolve(&analysis, &templates, STABLE, CANARY, &Default::default()).unwrap();
    let run = fifteen_successes(&resolved, &["ok", "other"]);
    let kept = |name: &str| -> Vec<String> {
        run.metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .measurements
            .iter()
            .map(|m| m.value.clone().unwrap())
            .collect()
    };
    assert_eq!(kept("ok"), ["12", "13", "14"], "the template's 3");
    assert_eq!(kept("other").len(), 5, "the rollout's 5 wins");
    assert_eq!(run.metrics[0].count, 15, "counts are not trimmed");

    let mut plain = template(web_metric(json!({"count": 20, "interval": "1s"})));
    let resolved = resolve(
        &analysis_of("check"),
        &plain,
        STABLE,
        CANARY,
        &Default::default(),
    )
    .unwrap();
    let run = fifteen_successes(&resolved, &["ok"]);
    assert_eq!(run.metrics[0].measurements.len(), 10, "the default");

    for limit in [0, 101] {
        plain.get_mut("check").unwrap().measurement_retention =
            vec![serde_json::from_value(json!({"metricName": "ok", "limit": limit})).unwrap()];
        let err = resolve(
            &analysis_of("check"),
            &plain,
            STABLE,
            CANARY,
            &Default::default(),
        )
        .unwrap_err();
        assert!(
            err.contains("measurementRetention[0].limit") && err.contains("1..=100"),
            "{err}"
        );
    }
}

/// A run of `resolved` with 15 successful measurements of each of `metrics`, valued 0..15.
fn fifteen_successes(
    resolved: &canary_controller::analysis::template::ResolvedAnalysis,
    metrics: &[&str],
) -> canary_controller::analysis::AnalysisRunStatus {
    let mut run = canary_controller::analysis::AnalysisRunStatus::start(
        "background",
        CANARY,
        None,
        resolved,
        t0(),
    );
    for i in 0..15 {
        for name in metrics {
            run.record(
                &resolved.metrics,
                name,
                Measurement {
                    phase: AnalysisPhase::Successful,
                    value: Some(i.to_string()),
                    started_at: (t0() + Duration::seconds(i)).to_rfc3339(),
                    ..Measurement::default()
                },
            );
        }
    }
    run
}

fn analysis_of(template: &str) -> canary_controller::analysis::RolloutAnalysis {
    serde_json::from_value(json!({"templates": [{"templateName": template}]})).unwrap()
}

/// `valueFrom.fieldRef` reads the rollout's own metadata, in the downward API's syntax.
#[test]
fn arguments_can_come_from_the_rollouts_own_fields() {
    use canary_controller::analysis::template::{resolve, RolloutFields};
    let mut templates = template(web_metric(json!({})));
    let check = templates.get_mut("check").unwrap();
    check.args = vec![
        serde_json::from_value(json!({"name": "app"})).unwrap(),
        serde_json::from_value(json!({"name": "ns"})).unwrap(),
    ];
    check.metrics[0].provider.web.as_mut().unwrap().url =
        "http://127.0.0.1:1/health/{{ args.ns }}/{{ args.app }}".into();
    let fields = RolloutFields {
        name: "reviews".into(),
        namespace: "bookinfo".into(),
        labels: BTreeMap::from([("app".into(), "reviews-v".into())]),
        ..RolloutFields::default()
    };
    let analysis = |app_path: &str| -> canary_controller::analysis::RolloutAnalysis {
        serde_json::from_value(json!({
            "templates": [{"templateName": "check"}],
            "args": [
                {"name": "app", "valueFrom": {"fieldRef": {"fieldPath": app_path}}},
                {"name": "ns", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
            ]
        }))
        .unwrap()
    };
    let resolved = resolve(
        &analysis("metadata.labels['app']"),
        &templates,
        STABLE,
        CANARY,
        &fields,
    )
    .unwrap();
    assert_eq!(
        resolved.metrics[0].provider.web.as_ref().unwrap().url,
        "http://127.0.0.1:1/health/bookinfo/reviews-v"
    );
    let err = resolve(
        &analysis("metadata.labels['team']"),
        &templates,
        STABLE,
        CANARY,
        &fields,
    )
    .unwrap_err();
    assert!(
        err.contains("args app: valueFrom.fieldRef") && err.contains("no label \"team\""),
        "{err}"
    );
    let err = resolve(
        &analysis("spec.replicas"),
        &templates,
        STABLE,
        CANARY,
        &fields,
    )
    .unwrap_err();
    assert!(err.contains("is not supported"), "{err}");
}
