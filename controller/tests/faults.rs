//! The controller under faults, on a real API server: failed writes (500 and 409 bursts), a
//! kube-apiserver and an etcd killed and restarted mid-rollout, and the controller itself
//! SIGKILLed at random points twenty times (and through a blue-green release). After each, the rollout resumes where it stood: every
//! step's weight reaches the filter once, in order, none is skipped or run twice, and after an
//! abort the canary is never exposed again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use canary_cluster::ControlPlane;
use canary_controller::crd::Phase;
use canary_controller::reconcile::PROMOTE_ANNOTATION;
use http::Method;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, DynamicObject};
use kube::ResourceExt;
use serde_json::{json, Value};
use support::api_faults::{self, is_write, Faults};
use support::owned_process::{controller_command, OwnedProcess};
use support::rollout_env::{blue_green_rollout, rollout, RolloutEnv, WAIT};
use support::traffic::{routed_service, subset_hash_of, weight_sequence};
use support::versions::{as_of, Recording};

/// Records every version of the client WasmPlugin the rollout `reviews` writes.
async fn record_filter(env: &RolloutEnv) -> Recording<DynamicObject> {
    Recording::start(
        env.wasm_plugins(),
        "",
        &format!("metadata.name={}", support::productpage_plugin()),
    )
    .await
}

/// The promote annotation is removed by a PATCH of the rollout itself (not its status).
fn removes_promote(method: &Method, path: &str) -> bool {
    method == Method::PATCH && path.contains("/canaryrollouts/reviews?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_whose_annotation_could_not_be_removed_ends_one_pause_not_two() {
    let mut env = RolloutEnv::without_controller("fault-promote").await;
    let faults = Faults::new(7);
    env.start_controller_with(api_faults::client(env.client.clone(), faults.clone()));
    let steps = json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 40}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]);
    env.healthy_on_first_version(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    env.canary_paused_at(2_000).await;
    let filter = record_filter(&env).await;

    // The status moving to the next pause is written; removing the request fails three times,
    // as it would for a controller killed between the two writes.
    faults.fail_next(3, 500, removes_promote);
    env.promote("step").await;
    env.until(
        "the promote annotation removed (or a second pause ended)",
        |r| {
            let past = r.status.as_ref()?.current_step_index > Some(3);
            (past || !r.annotations().contains_key(PROMOTE_ANNOTATION)).then_some(())
        },
    )
    .await;
    assert_eq!(faults.injected().len(), 3, "{:?}", faults.injected());
    let s = env.rollout().await.status.unwrap();
    assert_eq!(
        (s.phase, s.current_step_index, s.canary_weight),
        (Phase::Paused, Some(3), 4_000),
        "one promote ended one pause: {s:#?}"
    );
    filter.sync().await;
    assert_eq!(weight_sequence(&filter.versions()), [2_000, 4_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_500_and_409_on_a_third_of_the_writes_skip_no_step_and_expose_no_aborted_canary()
{
    let mut env = RolloutEnv::without_controller("fault-bursts").await;
    let faults = Faults::new(20261207);
    faults.fail_randomly(333, &[500, 409], |m, _| is_write(m));
    env.start_controller_with(api_faults::client(env.client.clone(), faults.clone()));
    let steps = json!([
        {"setWeight": 10}, {"pause": {"duration": "500ms"}},
        {"setWeight": 30}, {"pause": {"duration": "500ms"}},
        {"setWeight": 60}, {"pause": {}}
    ]);
    env.healthy_on_first_version(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    let filter = record_filter(&env).await;
    let v2 = env.canary_paused_at(6_000).await;
    env.patch_spec(json!({"abort": true})).await;
    env.until("aborted, the canary scaled down", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Aborted && s.scale_downs.is_empty()).then_some(())
    })
    .await;
    let injected = faults.injected();
    faults.clear();
    filter.sync().await;
    assert!(
        injected.len() >= 10,
        "a burst: only {} writes failed",
        injected.len()
    );
    assert!(injected.iter().any(|i| i.starts_with("409")));
    assert!(injected.iter().any(|i| i.starts_with("500")));
    assert_eq!(
        weight_sequence(&filter.versions()),
        [0, 1_000, 3_000, 6_000, 0],
        "every step once, in order, then the abort ({} writes failed)",
        injected.len()
    );
    let rs: kube::Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    assert_eq!(
        rs.get(&format!("reviews-{v2}"))
            .await
            .unwrap()
            .spec
            .replicas,
        Some(0)
    );
}

/// Starts a rollout whose pauses last 3 s, restarts `component` in the first pause, and checks
/// the rollout goes on from where it stood.
async fn restart_mid_rollout(component: &str, ns: &str) {
    // Watches served from etcd's history resume across the restart (see start_with_apiserver_flags).
    let plane = Arc::new(
        ControlPlane::start_with_apiserver_flags(&["--watch-cache=false"])
            .await
            .expect("control plane (run `make cluster-build` first)"),
    );
    let mut env = RolloutEnv::without_controller_on(plane.clone(), ns).await;
    env.start_controller();
    let steps = json!([
        {"setWeight": 10}, {"pause": {"duration": "3s"}},
        {"setWeight": 30}, {"pause": {"duration": "3s"}},
        {"setWeight": 60}, {"pause": {}}
    ]);
    env.healthy_on_first_version(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    let filter = record_filter(&env).await;
    env.set_image("reviews:v2").await;
    filter
        .until("weight 10% in the filter", WAIT, |versions| {
            (weight_sequence(versions).last() == Some(&1_000)).then_some(())
        })
        .await;
    let down = plane.restart(component).await.unwrap();
    eprintln!("{component} restarted: API unavailable for {down:?}");
    env.until("the last pause, at 60%", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Paused && s.canary_weight == 6_000).then_some(())
    })
    .await;
    filter.sync().await;
    assert_eq!(
        weight_sequence(&filter.versions()),
        [0, 1_000, 3_000, 6_000],
        "the rollout went on after the {component} restart, no step skipped or repeated"
    );
    let s = env.rollout().await.status.unwrap();
    assert_eq!(s.current_step_index, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_apiserver_restarted_mid_rollout_resumes_it_at_the_same_step() {
    restart_mid_rollout("kube-apiserver", "fault-apiserver").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restarted_mid_rollout_resumes_it_at_the_same_step() {
    restart_mid_rollout("etcd", "fault-etcd").await;
}

/// A repeatable sequence of delays (xorshift64).
struct Delays(u64);

impl Delays {
    fn next(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        max.mul_f64((self.0 % 1000) as f64 / 1000.0)
    }
}

/// The controller binary, as a Deployment runs it (no leader election: one replica at a time).
fn start_controller_process(env: &RolloutEnv) -> OwnedProcess {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
    OwnedProcess::spawn(
        controller_command(env.plane.kubeconfig_path(), &env.ns)
            .arg("--no-leader-election")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
        dir,
    )
    .unwrap()
}

/// [`start_controller_process`], returning once the process has connected to the API server
/// (its log says so), so a life measured from then is spent on the rollout, not on start-up
/// (which a loaded machine stretches).
async fn start_connected_controller(env: &RolloutEnv) -> OwnedProcess {
    let controller = start_controller_process(env);
    let log = controller.dir().join("controller.log");
    let start = tokio::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("connected to the API server") {
            return controller;
        }
        assert!(
            start.elapsed() < WAIT,
            "the controller did not connect in {WAIT:?}; its log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_sigkilled_twenty_times_at_random_points_skips_no_step_and_keeps_an_abort() {
    let env = RolloutEnv::without_controller("fault-sigkill").await;
    let weights = [5, 10, 20, 30, 40, 50, 60, 70, 80, 90];
    let mut steps: Vec<Value> = Vec::new();
    for w in weights {
        steps.push(json!({"setWeight": w}));
        steps.push(json!({"pause": {"duration": "1s"}}));
    }
    steps.push(json!({"pause": {}}));
    {
        let _controller = start_controller_process(&env);
        env.healthy_on_first_version(&rollout(&env.ns, "reviews:v1", Value::Array(steps)))
            .await;
    }
    let filter = record_filter(&env).await;
    env.set_image("reviews:v2").await;

    let mut delays = Delays(0x5eed_2026);
    let mut aborted_after = None;
    let mut kill = 0;
    while kill < 20 || aborted_after.is_none() {
        kill += 1;
        assert!(
            kill <= 40,
            "the filter saw fewer than 2 steps' weights in 40 lives"
        );
        let controller = start_connected_controller(&env).await;
        tokio::time::sleep(delays.next(Duration::from_millis(1_500))).await;
        // SIGKILL: no chance to finish a write or a reconcile.
        drop(controller);
        if kill >= 8 && aborted_after.is_none() {
            // The user aborts while the controller is down, once it has run two steps at
            // least (on a slow machine that can take more than 7 lives).
            filter.sync().await;
            let seen = weight_sequence(&filter.versions()).len();
            if seen >= 3 {
                aborted_after = Some(seen);
                env.patch_spec(json!({"abort": true})).await;
            }
        }
    }
    let _controller = start_controller_process(&env);
    env.until("aborted, the canary scaled down", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Aborted && s.scale_downs.is_empty()).then_some(())
    })
    .await;
    filter.sync().await;
    let seen = weight_sequence(&filter.versions());
    let aborted_after = aborted_after.unwrap();
    eprintln!("filter weights {seen:?}, the first {aborted_after} before the abort");
    let (before, after) = seen.split_at(aborted_after.min(seen.len()));
    let expected: Vec<u32> = std::iter::once(0)
        .chain(weights.iter().map(|w| w * 100))
        .collect();
    assert!(
        before.len() >= 3 && expected.starts_with(before),
        "before the abort the filter saw each step's weight once, in order: {seen:?}"
    );
    assert_eq!(
        after.iter().copied().filter(|w| *w > 0).collect::<Vec<_>>(),
        Vec::<u32>::new(),
        "after the abort the canary is never exposed again: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&0));
}

/// A blue-green release under the same kills: the controller binary SIGKILLed at random points
/// from the new version until its promotion. Every caller still moves from blue to green in ONE switch
/// (weight 0, 100%, then 0 with green as stable: never back and forth), the switch comes only
/// once green has all its pods, blue keeps all of its pods until the DestinationRule has moved,
/// and the release ends promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_sigkilled_through_a_blue_green_release_switches_once_and_promotes() {
    let env = RolloutEnv::without_controller("fault-sigkill-bg").await;
    let blue = {
        let _controller = start_controller_process(&env);
        env.healthy_on_first_version(&blue_green_rollout(
            &env.ns,
            "reviews:v1",
            json!({
                "previewHeaderRoute": {"match": [{"headerName": "x-preview", "headerValue": {"exact": "yes"}}]},
                "autoPromotionSeconds": 2
            }),
        ))
        .await
    };
    let filter = record_filter(&env).await;
    let replica_sets =
        Recording::<ReplicaSet>::start(Api::namespaced(env.client.clone(), &env.ns), "", "").await;
    let rules = Recording::<DynamicObject>::start(env.destination_rules(), "", "").await;
    env.set_image("reviews:v2").await;

    // Kill it again and again until the release is promoted and blue scaled down: lives of
    // 0-0.8 s, so kills land in the preview, the auto-promotion wait (2 s, which a restart must
    // not start over), the switch, the promotion and blue's scale-down delay (2 s, likewise).
    let mut delays = Delays(0xb16e_2026);
    let promoted = |s: &canary_controller::crd::CanaryRolloutStatus| {
        (s.phase == Phase::Healthy
            && s.stable_hash.as_deref() != Some(blue.as_str())
            && s.scale_downs.is_empty())
        .then(|| s.stable_hash.clone())
        .flatten()
    };
    let mut kills = 0;
    let mut green = None;
    while green.is_none() {
        assert!(
            kills < 40,
            "not promoted and scaled down after {kills} kills"
        );
        let controller = start_connected_controller(&env).await;
        tokio::time::sleep(delays.next(Duration::from_millis(800))).await;
        drop(controller);
        kills += 1;
        let s = env.rollout().await.status.unwrap_or_default();
        eprintln!(
            "kill {kills}: {:?} at step {:?}, weight {}, scale-downs pending {}",
            s.phase,
            s.current_step_index,
            s.canary_weight,
            s.scale_downs.len()
        );
        green = promoted(&s);
    }
    let green = green.unwrap();
    assert!(kills >= 5, "only {kills} kills through the release");
    let blue_rs = format!("reviews-{blue}");
    filter.sync().await;
    replica_sets.sync().await;
    rules.sync().await;
    let plugins = filter.versions();
    let seen = weight_sequence(&plugins);
    assert_eq!(seen, [0, 10_000, 0], "one switch, never back and forth");
    let switch = plugins
        .iter()
        .find(|v| routed_service(&v.object).canary_weight == 10_000)
        .unwrap();
    assert_eq!(
        routed_service(&switch.object).canary_hash.as_deref(),
        Some(green.as_str()),
        "the switch sends every caller to green"
    );
    let sets = replica_sets.versions();
    let green_at_switch = as_of(&sets, &format!("reviews-{green}"), switch.resource_version)
        .expect("green's ReplicaSet before the switch");
    assert_eq!(
        green_at_switch
            .object
            .status
            .as_ref()
            .and_then(|s| s.available_replicas),
        Some(2),
        "the switch waits for all of green's pods"
    );
    let rule_switch = rules
        .versions()
        .into_iter()
        .find(|v| subset_hash_of(&v.object, "stable").as_deref() == Some(green.as_str()))
        .expect("a DestinationRule version with green as stable");
    assert!(
        sets.iter()
            .filter(|v| v.object.name_any() == blue_rs
                && v.resource_version < rule_switch.resource_version)
            .all(|v| v.object.spec.replicas == Some(2)),
        "blue kept all its pods until the DestinationRule moved"
    );
}
