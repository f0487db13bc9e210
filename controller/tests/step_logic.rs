//! The rollout step logic as tables: (spec, status, observed) -> traffic, replicas, status.
//! Pure: no API server. The fixture demo's Argo Rollout is the spec under test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use canary_controller::analysis::{
    AnalysisPhase, AnalysisTemplate, AnalysisTemplateSpec, Measurement, TakenMeasurement,
};

use canary_controller::crd::{CanaryRollout, CanaryRolloutStatus, Phase};
use canary_controller::steps::{
    canary_replicas, plan, weight_basis_points, Observed, ObservedReplicaSet, Plan, Promote,
};
use chrono::{DateTime, Duration, TimeZone, Utc};

const STABLE: &str = "stablehash";
const CANARY: &str = "canaryhash";

/// The fixture's Argo Rollout, carried over: apiVersion/kind changed, trafficRouting.istio
/// replaced by trafficRouting.wasm. Nothing else is edited.
fn fixture_rollout(keep_analysis: bool) -> CanaryRollout {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/tse-gitops-demo/argo/rollout/rollout.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    v["apiVersion"] = "wasmcanary.io/v1alpha1".into();
    v["kind"] = "CanaryRollout".into();
    let canary = &mut v["spec"]["strategy"]["canary"];
    let istio = canary["trafficRouting"]["istio"].take();
    canary["trafficRouting"] = serde_json::json!({"wasm": {
        "service": istio["virtualService"]["name"],
        "wasmPlugin": {"url": "oci://registry.example.com/wasm-canary/filter:0.1.0", "selector": {"app": "productpage"}},
        "destinationRule": {"name": istio["destinationRule"]["name"],
            "stableSubsetName": istio["destinationRule"]["stableSubsetName"],
            "canarySubsetName": istio["destinationRule"]["canarySubsetName"]},
        "sticky": {"header": "x-user-id"}
    }});
    if !keep_analysis {
        canary.as_object_mut().unwrap().remove("analysis");
    }
    v["metadata"]["namespace"] = "bookinfo".into();
    serde_json::from_value(v).unwrap()
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
}

fn rs(hash: &str, replicas: i32, available: i32) -> ObservedReplicaSet {
    ObservedReplicaSet {
        hash: hash.into(),
        replicas,
        available,
    }
}

fn observed(hash: &str, sets: Vec<ObservedReplicaSet>, now: DateTime<Utc>) -> Observed {
    Observed {
        template_hash: hash.into(),
        replica_sets: sets,
        promote: None,
        generation: Some(1),
        now,
        ..Observed::default()
    }
}

fn stable_status() -> CanaryRolloutStatus {
    CanaryRolloutStatus {
        stable_hash: Some(STABLE.into()),
        phase: Phase::Healthy,
        ..Default::default()
    }
}

/// Runs plan repeatedly as the controller would, feeding the planned replicas back as
/// available pods (the tests play kubelet), until it stops changing.
fn settle(
    rollout: &CanaryRollout,
    mut status: CanaryRolloutStatus,
    now: DateTime<Utc>,
) -> (CanaryRolloutStatus, Plan) {
    let mut sets: Vec<ObservedReplicaSet> = Vec::new();
    for _ in 0..20 {
        let p = plan(&rollout.spec, &status, &observed(CANARY, sets.clone(), now));
        let next_sets: Vec<ObservedReplicaSet> =
            p.replicas.iter().map(|(h, r)| rs(h, *r, *r)).collect();
        if p.status == status && next_sets == sets {
            return (status, p);
        }
        status = p.status.clone();
        sets = next_sets;
    }
    panic!("plan did not settle");
}

#[test]
fn the_fixture_rollout_carries_over_and_a_first_rollout_goes_straight_to_stable() {
    let r = fixture_rollout(false);
    assert_eq!(r.spec.replicas, Some(5));
    assert_eq!(r.spec.strategy.canary.as_ref().unwrap().steps.len(), 10);
    let p = plan(
        &r.spec,
        &CanaryRolloutStatus::default(),
        &observed(STABLE, vec![], t0()),
    );
    assert_eq!(p.status.stable_hash.as_deref(), Some(STABLE));
    assert_eq!(p.status.canary_hash, None);
    assert_eq!(p.replicas.get(STABLE), Some(&5));
    let traffic = p.traffic.unwrap();
    assert_eq!(
        (traffic.canary_weight, traffic.stable_hash.as_str()),
        (0, STABLE)
    );
    assert_eq!(p.status.phase, Phase::Progressing, "pods not available yet");
    assert_eq!(p.transitions[0].reason, "Initialized");
}

/// The fixture's SkyWalking AnalysisTemplate, carried over (apiVersion only).
fn fixture_templates() -> BTreeMap<String, AnalysisTemplateSpec> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/tse-gitops-demo/argo/rollout/analysis.yaml");
    let mut v: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["apiVersion"] = "wasmcanary.io/v1alpha1".into();
    let t: AnalysisTemplate = serde_json::from_value(v).unwrap();
    BTreeMap::from([("apdex".to_owned(), t.spec)])
}

fn apdex_measurement(run: &str, phase: AnalysisPhase, at: DateTime<Utc>) -> TakenMeasurement {
    TakenMeasurement {
        run: run.into(),
        metric: "apdex".into(),
        measurement: Measurement {
            phase,
            value: Some(r#"{"service_apdex":{"values":{"values":[{"value":9950}]}}}"#.into()),
            started_at: at.to_rfc3339(),
            ..Measurement::default()
        },
    }
}

#[test]
fn the_fixture_with_its_skywalking_analysis_runs_it_from_step_two_and_aborts_after_four_failures() {
    let r = fixture_rollout(true);
    let with = |sets: Vec<ObservedReplicaSet>, now, measurements: Vec<TakenMeasurement>| Observed {
        analysis_templates: fixture_templates(),
        measurements,
        ..observed(CANARY, sets, now)
    };
    // Without its template the rollout is refused, never run without its analysis.
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, vec![rs(STABLE, 5, 5)], t0()),
    );
    assert_eq!(p.status.phase, Phase::Degraded);
    let message = p.status.message.unwrap();
    assert!(
        message.contains("AnalysisTemplate apdex not found"),
        "{message}"
    );
    assert!(
        p.traffic.is_none() && p.replicas.is_empty(),
        "nothing is changed"
    );

    // Step 1 (setWeight 10) then the 10m pause: analysis starts at step index 2, not before.
    let sets = vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)];
    let p = plan(&r.spec, &stable_status(), &with(sets.clone(), t0(), vec![]));
    assert_eq!(p.status.current_step_index, Some(1));
    assert!(p.status.analysis_runs.is_empty() && p.measure.is_empty());
    let after_pause = t0() + Duration::minutes(10);
    let p = plan(&r.spec, &p.status, &with(sets.clone(), after_pause, vec![]));
    // setWeight 20 (index 2) completes at once (its one canary pod is up): now at the 5m pause.
    assert_eq!(p.status.current_step_index, Some(3));
    let run = &p.status.analysis_runs[0];
    assert_eq!(
        (run.name.as_str(), run.phase),
        ("background", AnalysisPhase::Running)
    );
    assert!(
        p.measure.is_empty(),
        "the first measurement is the next reconcile's"
    );
    assert_eq!(p.requeue_after, Some(std::time::Duration::ZERO));

    // Next reconcile: the apdex metric is due, its query with the argument substituted.
    let mut status = p.status;
    let mut now = after_pause;
    let sets = vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)];
    let p = plan(&r.spec, &status, &with(sets.clone(), now, vec![]));
    assert_eq!(p.measure.len(), 1);
    let sw = p.measure[0].metric.provider.skywalking.as_ref().unwrap();
    assert!(
        sw.query
            .contains(r#"serviceName: "canary|reviews|bookinfo|cluster-1|-""#),
        "{}",
        sw.query
    );
    // A measurement slower than the interval: the plan made after it (with the time it ended)
    // finds the next one due already, and asks for it at once rather than at the resync.
    let taken = vec![apdex_measurement(
        "background",
        AnalysisPhase::Successful,
        now,
    )];
    let late = now + Duration::minutes(6);
    let p = plan(&r.spec, &status, &with(sets.clone(), late, taken));
    assert_eq!(p.measure.len(), 1, "the next measurement is due");
    assert_eq!(p.requeue_after, Some(std::time::Duration::ZERO));
    // failureLimit 3: three failures are tolerated, the fourth aborts.
    for n in 1..=4 {
        let taken = vec![apdex_measurement("background", AnalysisPhase::Failed, now)];
        let p = plan(&r.spec, &status, &with(sets.clone(), now, taken));
        assert!(p.measure.is_empty(), "measured: nothing more due now");
        status = p.status.clone();
        let metric = &status.analysis_runs[0].metrics[0];
        assert_eq!(metric.failed, n);
        if n < 4 {
            assert!(
                matches!(status.phase, Phase::Progressing | Phase::Paused),
                "{:?}",
                status.phase
            );
            assert_eq!(
                p.requeue_after,
                Some(std::time::Duration::from_secs(300)),
                "interval 5m"
            );
            now += Duration::minutes(5);
        } else {
            assert_eq!(status.phase, Phase::Aborted);
            assert_eq!(p.traffic.as_ref().unwrap().canary_weight, 0);
            assert!(status.analysis_aborted);
            assert_eq!(status.analysis_runs[0].phase, AnalysisPhase::Failed);
            assert!(p.transitions.iter().any(|t| t.reason == "Aborted"));
            let msg = status.message.clone().unwrap();
            assert!(msg.contains("analysis background Failed"), "{msg}");
            assert_eq!(
                p.replicas.get(CANARY),
                Some(&1),
                "canary kept until abortScaleDownDelay"
            );
        }
    }
    // It stays aborted (spec.abort is false): no measurement, no retry by itself.
    let later = now + Duration::minutes(10);
    let p = plan(&r.spec, &status, &with(sets.clone(), later, vec![]));
    assert_eq!(p.status.phase, Phase::Aborted);
    assert!(p.measure.is_empty());
    assert_eq!(
        p.replicas.get(CANARY),
        Some(&0),
        "scaled down after the delay"
    );
}

#[test]
fn a_template_change_starts_a_canary_at_step_zero_and_waits_for_canary_pods_before_any_traffic() {
    let r = fixture_rollout(false);
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, vec![rs(STABLE, 5, 5)], t0()),
    );
    assert_eq!(p.status.canary_hash.as_deref(), Some(CANARY));
    assert_eq!(p.transitions[0].reason, "CanaryStarted");
    assert_eq!(
        p.traffic.as_ref().unwrap().canary_weight,
        0,
        "no traffic before canary pods are available"
    );
    assert_eq!(
        p.replicas.get(CANARY),
        Some(&1),
        "setWeight 10 of 5 replicas: ceil(0.5) = 1 canary pod"
    );
    assert_eq!(p.replicas.get(STABLE), Some(&5), "stable stays full");
    assert!(p
        .status
        .message
        .as_deref()
        .unwrap()
        .contains("waiting for canary pods (0/1"));

    // The pod becomes available: weight 10% and the 10-minute pause begins.
    let p2 = plan(
        &r.spec,
        &p.status,
        &observed(
            CANARY,
            vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)],
            t0() + Duration::seconds(5),
        ),
    );
    assert_eq!(p2.traffic.as_ref().unwrap().canary_weight, 1_000);
    assert_eq!(p2.status.phase, Phase::Paused);
    assert_eq!(p2.status.current_step_index, Some(1));
    assert_eq!(p2.requeue_after, Some(std::time::Duration::from_secs(600)));
}

#[test]
fn a_timed_pause_resumes_on_time_from_the_status_even_after_a_restart() {
    let r = fixture_rollout(false);
    let sets = vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)];
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, sets.clone(), t0()),
    );
    // A fresh planner (a restarted controller) sees only the status.
    let before = plan(
        &r.spec,
        &p.status,
        &observed(CANARY, sets.clone(), t0() + Duration::seconds(599)),
    );
    assert_eq!(before.status.current_step_index, Some(1));
    assert_eq!(
        before.requeue_after,
        Some(std::time::Duration::from_secs(1))
    );
    let after = plan(
        &r.spec,
        &before.status,
        &observed(CANARY, sets, t0() + Duration::seconds(600)),
    );
    // setWeight 20 needs ceil(5 x 20%) = 1 canary pod, which is there: it completes at once and
    // the next pause (5m) begins.
    assert_eq!(
        after.status.current_step_index,
        Some(3),
        "pause over, setWeight 20 done, in the 5m pause"
    );
    assert_eq!(after.replicas.get(CANARY), Some(&1), "20% of 5 = 1 pod");
    assert_eq!(
        after.requeue_after,
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(after.traffic.unwrap().canary_weight, 2_000);
}

#[test]
fn canary_replicas_follow_the_weight_rounded_up() {
    for (replicas, bp, routes, expected) in [
        (5, 1_000, false, 1),
        (5, 2_000, false, 1),
        (5, 4_000, false, 2),
        (5, 6_000, false, 3),
        (5, 8_000, false, 4),
        (5, 10_000, false, 5),
        (10, 50, false, 1),
        (10, 0, false, 0),
        (10, 0, true, 1),
        (3, 3_334, false, 2),
    ] {
        assert_eq!(
            canary_replicas(replicas, bp, routes),
            expected,
            "{replicas} replicas at {bp} bp"
        );
    }
    assert_eq!(weight_basis_points(0.5), Ok(50));
    assert_eq!(weight_basis_points(12.34), Ok(1_234));
    assert!(weight_basis_points(0.001).is_err());
    assert!(weight_basis_points(101.0).is_err());
}

#[test]
fn the_whole_fixture_progression_ends_promoted_with_the_old_stable_scaled_down_after_the_delay() {
    let r = fixture_rollout(false);
    let mut status = stable_status();
    let mut now = t0();
    let mut weights = Vec::new();
    let mut sets = vec![rs(STABLE, 5, 5)];
    for _ in 0..40 {
        let p = plan(&r.spec, &status, &observed(CANARY, sets.clone(), now));
        let w = p.traffic.as_ref().unwrap().canary_weight;
        if weights.last() != Some(&w) {
            weights.push(w);
        }
        // Traffic never exceeds what the available canary pods can take.
        let avail = sets
            .iter()
            .find(|s| s.hash == CANARY)
            .map_or(0, |s| s.available);
        if p.status.stable_hash.as_deref() == Some(STABLE) {
            assert!(
                avail >= canary_replicas(5, w, false),
                "weight {w} with {avail} canary pods"
            );
        }
        sets = p.replicas.iter().map(|(h, n)| rs(h, *n, *n)).collect();
        status = p.status.clone();
        now += p
            .requeue_after
            .map_or(Duration::seconds(1), |d| Duration::from_std(d).unwrap());
        if status.stable_hash.as_deref() == Some(CANARY) && status.scale_downs.is_empty() {
            break;
        }
    }
    assert_eq!(weights, vec![0, 1_000, 2_000, 4_000, 6_000, 8_000, 0]);
    assert_eq!(status.stable_hash.as_deref(), Some(CANARY), "promoted");
    assert_eq!(status.canary_hash, None);
    assert_eq!(status.phase, Phase::Healthy);
    assert_eq!(
        sets.iter().find(|s| s.hash == STABLE).unwrap().replicas,
        0,
        "old stable scaled down after its delay"
    );
    assert_eq!(sets.iter().find(|s| s.hash == CANARY).unwrap().replicas, 5);
}

#[test]
fn promotion_waits_for_the_canary_at_full_size_and_keeps_the_old_stable_for_the_delay() {
    let mut r = fixture_rollout(false);
    r.spec.strategy.canary.as_mut().unwrap().steps.truncate(1); // setWeight 10, then promote
    r.spec
        .strategy
        .canary
        .as_mut()
        .unwrap()
        .scale_down_delay_seconds = Some(45);
    let (status, p) = settle(&r, stable_status(), t0());
    assert_eq!(status.stable_hash.as_deref(), Some(CANARY));
    assert_eq!(
        p.replicas.get(STABLE),
        Some(&5),
        "old stable kept during the 45 s delay"
    );
    assert_eq!(status.scale_downs[0].hash, STABLE);
    assert_eq!(status.scale_downs[0].at, "2026-11-29T12:00:45Z");
    assert!(p.transitions.is_empty() || p.transitions.iter().all(|t| t.reason != "Aborted"));
    let later = plan(
        &r.spec,
        &status,
        &observed(
            CANARY,
            vec![rs(STABLE, 5, 5), rs(CANARY, 5, 5)],
            t0() + Duration::seconds(45),
        ),
    );
    assert_eq!(later.replicas.get(STABLE), Some(&0));
    assert!(later.status.scale_downs.is_empty());
}

#[test]
fn an_indefinite_pause_waits_for_promote_and_promote_full_skips_the_rest() {
    let mut r = fixture_rollout(false);
    r.spec.strategy.canary.as_mut().unwrap().steps[1]
        .pause
        .as_mut()
        .unwrap()
        .duration = None;
    let sets = vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)];
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, sets.clone(), t0()),
    );
    let waiting = plan(
        &r.spec,
        &p.status,
        &observed(CANARY, sets.clone(), t0() + Duration::days(3)),
    );
    assert_eq!(
        (waiting.status.phase, waiting.status.current_step_index),
        (Phase::Paused, Some(1))
    );
    assert!(waiting
        .status
        .message
        .as_deref()
        .unwrap()
        .contains("until promoted"));

    let mut promote = observed(CANARY, sets.clone(), t0() + Duration::days(3));
    promote.promote = Some(Promote::Step);
    let stepped = plan(&r.spec, &p.status, &promote);
    assert!(stepped.promote_consumed);
    assert_eq!(
        stepped.traffic.unwrap().canary_weight,
        2_000,
        "moved on to setWeight 20"
    );

    promote.promote = Some(Promote::Full);
    let full = plan(&r.spec, &p.status, &promote);
    assert!(full.promote_consumed);
    assert_eq!(
        full.replicas.get(CANARY),
        Some(&5),
        "promotion scales the canary to full first"
    );
    assert_eq!(
        full.status.stable_hash.as_deref(),
        Some(STABLE),
        "and waits for it before switching stable"
    );
}

#[test]
fn a_promote_seen_again_after_the_controller_stopped_before_removing_it_ends_only_one_pause() {
    let mut r = fixture_rollout(false);
    for i in [1, 3] {
        r.spec.strategy.canary.as_mut().unwrap().steps[i]
            .pause
            .as_mut()
            .unwrap()
            .duration = None;
    }
    let sets = vec![rs(STABLE, 5, 5), rs(CANARY, 5, 5)];
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, sets.clone(), t0()),
    );
    let promote = |request: &str| Observed {
        promote: Some(Promote::from_annotation(request)),
        promote_request: Some(request.into()),
        ..observed(CANARY, sets.clone(), t0() + Duration::minutes(1))
    };

    let stepped = plan(&r.spec, &p.status, &promote("step:1"));
    assert!(stepped.promote_consumed);
    assert_eq!(
        stepped.status.current_step_index,
        Some(3),
        "paused at the next pause"
    );
    assert_eq!(stepped.status.promote_handled.as_deref(), Some("step:1"));

    // The status was written, then the controller died before removing the annotation.
    let again = plan(&r.spec, &stepped.status, &promote("step:1"));
    assert_eq!(
        again.status.current_step_index,
        Some(3),
        "the same request does not end this pause too"
    );
    assert!(again.promote_consumed, "it is removed again");
    assert!(again.transitions.is_empty(), "{:?}", again.transitions);

    // A new request written before the old one was removed is a request of its own.
    let next = plan(&r.spec, &stepped.status, &promote("step:2"));
    assert!(
        next.status.current_step_index > Some(3),
        "the second request ends the second pause"
    );
    assert_eq!(next.status.promote_handled.as_deref(), Some("step:2"));

    // Once the annotation is gone, a plain `step` written by hand again is new again.
    let removed = plan(
        &r.spec,
        &stepped.status,
        &observed(CANARY, sets.clone(), t0() + Duration::minutes(2)),
    );
    assert_eq!(removed.status.promote_handled, None);
    assert_eq!(Promote::from_annotation("full:17"), Promote::Full);
    assert_eq!(Promote::from_annotation("full"), Promote::Full);
    assert_eq!(Promote::from_annotation("step"), Promote::Step);
}

#[test]
fn a_header_route_step_routes_testers_only_once_a_canary_pod_is_available() {
    let mut r = fixture_rollout(false);
    let header_step: canary_controller::crd::CanaryStep = serde_json::from_value(serde_json::json!(
        {"setHeaderRoute": {"name": "testers", "match": [{"headerName": "x-canary", "headerValue": {"exact": "always"}}]}}
    ))
    .unwrap();
    r.spec
        .strategy
        .canary
        .as_mut()
        .unwrap()
        .steps
        .insert(0, header_step);
    r.spec.strategy.canary.as_mut().unwrap().steps.insert(
        1,
        serde_json::from_value(serde_json::json!({"pause": {}})).unwrap(),
    );
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, vec![rs(STABLE, 5, 5)], t0()),
    );
    assert!(
        p.traffic.as_ref().unwrap().header_routes.is_empty(),
        "no canary pod yet"
    );
    assert_eq!(
        p.replicas.get(CANARY),
        Some(&1),
        "one pod for the testers at weight 0"
    );
    let p2 = plan(
        &r.spec,
        &p.status,
        &observed(CANARY, vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)], t0()),
    );
    let traffic = p2.traffic.unwrap();
    assert_eq!(traffic.header_routes.len(), 1);
    assert_eq!(
        traffic.canary_weight, 0,
        "header routes reach canary at weight 0"
    );
    assert_eq!(p2.status.phase, Phase::Paused);
}

#[test]
fn abort_returns_all_traffic_to_stable_at_once_and_scales_the_canary_down_only_after_the_delay() {
    let mut r = fixture_rollout(false);
    r.spec
        .strategy
        .canary
        .as_mut()
        .unwrap()
        .abort_scale_down_delay_seconds = Some(20);
    let sets = vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)];
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, sets.clone(), t0()),
    );
    assert_eq!(p.traffic.as_ref().unwrap().canary_weight, 1_000);
    r.spec.abort = true;
    let aborted = plan(
        &r.spec,
        &p.status,
        &observed(CANARY, sets.clone(), t0() + Duration::seconds(1)),
    );
    let traffic = aborted.traffic.as_ref().unwrap();
    assert_eq!((traffic.canary_weight, traffic.header_routes.len()), (0, 0));
    assert_eq!(aborted.status.phase, Phase::Aborted);
    assert_eq!(
        aborted.replicas.get(CANARY),
        Some(&1),
        "canary pods kept during the abort delay"
    );
    assert_eq!(aborted.transitions[0].reason, "Aborted");
    let later = plan(
        &r.spec,
        &aborted.status,
        &observed(CANARY, sets.clone(), t0() + Duration::seconds(21)),
    );
    assert_eq!(later.replicas.get(CANARY), Some(&0));
    assert_eq!(later.traffic.unwrap().canary_weight, 0);

    // Retry: abort off -> back to step 0.
    r.spec.abort = false;
    let retried = plan(
        &r.spec,
        &later.status,
        &observed(
            CANARY,
            vec![rs(STABLE, 5, 5), rs(CANARY, 0, 0)],
            t0() + Duration::seconds(30),
        ),
    );
    assert_eq!(retried.transitions[0].reason, "Retried");
    assert_eq!(retried.status.current_step_index, Some(0));
    assert_eq!(retried.replicas.get(CANARY), Some(&1));
    assert_eq!(
        retried.traffic.unwrap().canary_weight,
        0,
        "weight returns only when pods are back"
    );
}

#[test]
fn a_template_change_during_the_canary_restarts_it_with_the_new_hash() {
    let r = fixture_rollout(false);
    let sets = vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)];
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, sets.clone(), t0()),
    );
    assert_eq!(p.traffic.as_ref().unwrap().canary_weight, 1_000);
    let restarted = plan(
        &r.spec,
        &p.status,
        &observed("newerhash", sets, t0() + Duration::seconds(60)),
    );
    assert_eq!(restarted.status.canary_hash.as_deref(), Some("newerhash"));
    assert_eq!(restarted.status.current_step_index, Some(0));
    assert_eq!(restarted.traffic.as_ref().unwrap().canary_weight, 0);
    assert_eq!(
        restarted.replicas.get(CANARY),
        Some(&1),
        "the replaced canary keeps its pods while requests in flight drain"
    );
    assert_eq!(restarted.transitions[0].reason, "CanaryRestarted");
    let drained_at = t0() + Duration::seconds(60 + 30);
    let scheduled: Vec<(&str, DateTime<Utc>)> = restarted
        .status
        .scale_downs
        .iter()
        .map(|s| {
            (
                s.hash.as_str(),
                DateTime::parse_from_rfc3339(&s.at).unwrap().to_utc(),
            )
        })
        .collect();
    assert_eq!(
        scheduled,
        vec![(CANARY, drained_at)],
        "scaled down after abortScaleDownDelaySeconds (default 30)"
    );
    let later = plan(
        &r.spec,
        &restarted.status,
        &observed(
            "newerhash",
            vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)],
            drained_at,
        ),
    );
    assert_eq!(later.replicas.get(CANARY), Some(&0), "then it goes away");
}

#[test]
fn reverting_the_template_to_stable_cancels_the_canary() {
    let r = fixture_rollout(false);
    let sets = vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)];
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, sets.clone(), t0()),
    );
    let reverted = plan(
        &r.spec,
        &p.status,
        &observed(STABLE, sets, t0() + Duration::seconds(60)),
    );
    assert_eq!(reverted.status.canary_hash, None);
    assert_eq!(reverted.traffic.unwrap().canary_weight, 0);
    assert_eq!(
        reverted.replicas.get(CANARY),
        Some(&1),
        "no traffic, pods kept while requests drain"
    );
    assert_eq!(reverted.status.scale_downs.len(), 1);
    assert_eq!(reverted.status.phase, Phase::Healthy);
}

#[test]
fn a_paused_rollout_does_not_advance() {
    let mut r = fixture_rollout(false);
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, vec![rs(STABLE, 5, 5)], t0()),
    );
    r.spec.paused = true;
    let paused = plan(
        &r.spec,
        &p.status,
        &observed(CANARY, vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)], t0()),
    );
    assert_eq!(paused.status.phase, Phase::Paused);
    assert_eq!(paused.status.current_step_index, Some(0));
    assert_eq!(paused.traffic.unwrap().canary_weight, 0);
}

#[test]
fn one_promote_ends_one_pause_not_the_next_one_too() {
    let mut r = fixture_rollout(false);
    for step in &mut r.spec.strategy.canary.as_mut().unwrap().steps {
        if let Some(p) = step.pause.as_mut() {
            p.duration = None;
        }
    }
    let sets = vec![rs(STABLE, 5, 5), rs(CANARY, 1, 1)];
    let p = plan(
        &r.spec,
        &stable_status(),
        &observed(CANARY, sets.clone(), t0()),
    );
    assert_eq!(p.status.current_step_index, Some(1));
    let mut promote = observed(CANARY, sets, t0());
    promote.promote = Some(Promote::Step);
    let next = plan(&r.spec, &p.status, &promote);
    assert_eq!(
        next.status.current_step_index,
        Some(3),
        "past the first pause and setWeight 20, stopped at the next pause"
    );
    assert_eq!(next.status.phase, Phase::Paused);
}

/// Durations as Argo Rollouts reads them: integers are seconds, strings follow Go's
/// `time.ParseDuration` (cases from Go's own tests, non-negative ones).
#[test]
fn durations_parse_like_argo_and_go() {
    use canary_controller::duration::parse_duration;
    use std::time::Duration;
    let ok = |v: serde_json::Value, want: Duration| {
        assert_eq!(parse_duration(&v), Ok(want), "{v}");
    };
    let ms = Duration::from_millis;
    let ns = Duration::from_nanos;
    let s = Duration::from_secs;
    ok(serde_json::json!(30), s(30));
    ok(serde_json::json!("30"), s(30));
    ok(serde_json::json!("0"), s(0));
    ok(serde_json::json!("5s"), s(5));
    ok(serde_json::json!("+5s"), s(5));
    ok(serde_json::json!("1478s"), s(1478));
    ok(serde_json::json!("5.6s"), ms(5600));
    ok(serde_json::json!("5.s"), s(5));
    ok(serde_json::json!(".5s"), ms(500));
    ok(serde_json::json!("1.004s"), ms(1004));
    ok(serde_json::json!("100.00100s"), ms(100_001));
    ok(serde_json::json!("10ns"), ns(10));
    ok(serde_json::json!("11us"), ns(11_000));
    ok(serde_json::json!("12µs"), ns(12_000));
    ok(serde_json::json!("13ms"), ms(13));
    ok(serde_json::json!("15m"), s(900));
    ok(serde_json::json!("16h"), s(16 * 3600));
    ok(serde_json::json!("1m30s"), s(90));
    ok(serde_json::json!("3h30m"), s(3 * 3600 + 1800));
    ok(serde_json::json!("10.5s4m"), ms(250_500));
    ok(serde_json::json!("1.5h"), s(5400));
    ok(
        serde_json::json!("1h2m3s4ms5us6ns"),
        s(3723) + ns(4_005_006),
    );
    ok(serde_json::json!("39h9m14.425s"), ms(140_954_425));
    ok(
        serde_json::json!(".3333333333333333333h"),
        ns(1_199_999_999_999),
    );
    for bad in [
        "", "3x", "-5s", "-", "s", ".", "-.", ".s", "+.s", "1h-2m", "3 s", "5d", "1e3s",
    ] {
        let err = parse_duration(&serde_json::json!(bad)).unwrap_err();
        assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
    }
    assert!(parse_duration(&serde_json::json!(-5)).is_err());
    assert!(parse_duration(&serde_json::json!(true)).is_err());
}
