//! The controller holds its ground on the real API server (issue 15): other writers of the
//! objects it owns do not lock it out, what it cannot write is in the rollout's status, and an
//! abort takes traffic off the canary whatever else is wrong. The tests play kubelet.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canary_cluster::kubelet::set_pod_status;
use canary_controller::analysis::AnalysisTemplate;
use canary_controller::conditions::TRAFFIC_APPLIED;
use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::RESYNC;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use support::rollout_env::{platform_applies, rollout, RolloutEnv, WAIT};
use support::versions::Recording;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A write the controller must make on a resync-free path (a promote, an abort) is visible well
/// within this; the old controller never made it.
const PROMPTLY: Duration = Duration::from_secs(20);

fn traffic_condition(r: &CanaryRollout) -> Option<Condition> {
    r.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == TRAFFIC_APPLIED)
        .cloned()
}

/// `kubectl canary abort`, then waits (bounded by [`PROMPTLY`]) for weight 0 in the filter.
async fn abort_and_expect_weight_zero(env: &RolloutEnv, failure: &str) {
    env.patch_spec(json!({"abort": true})).await;
    let start = tokio::time::Instant::now();
    while env.filter_weight(&support::productpage_plugin()).await != Some(0) {
        assert!(
            start.elapsed() < PROMPTLY,
            "{failure}: {:#?}",
            env.rollout().await.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `kubectl edit` does: read, change, PUT the whole object back (an Update by manager
/// `kubectl-edit`, which then owns the fields it changed).
async fn kubectl_edit_weight(env: &RolloutEnv, plugin: &str, weight: u32) {
    let api = env.wasm_plugins();
    let mut wp = api.get(plugin).await.unwrap();
    support::traffic::first_entry_mut(&mut wp.data["spec"]["pluginConfig"])["canaryWeight"] =
        json!(weight);
    let params = PostParams {
        field_manager: Some("kubectl-edit".into()),
        ..PostParams::default()
    };
    api.replace(plugin, &params, &wp).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubectl_edit_of_the_wasm_plugin_is_taken_back_at_the_next_step_and_abort_still_wins() {
    let env = RolloutEnv::new("edited-plugin").await;
    let steps = json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]);
    env.healthy_on_first_version(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    env.canary_paused_at(2_000).await;

    kubectl_edit_weight(&env, &support::productpage_plugin(), 9_000).await;
    env.promote("step").await;
    env.until_within(PROMPTLY, "the next step's weight in status", |r| {
        let s = r.status.as_ref()?;
        (s.canary_weight == 5_000 && s.phase == Phase::Paused).then_some(())
    })
    .await;
    assert_eq!(
        env.filter_weight(&support::productpage_plugin()).await,
        Some(5_000),
        "the step's weight replaced the edited one in the filter"
    );

    kubectl_edit_weight(&env, &support::productpage_plugin(), 9_000).await;
    abort_and_expect_weight_zero(&env, "abort left the canary at the edited weight").await;
    env.until("Aborted", |r| {
        (r.status.as_ref()?.phase == Phase::Aborted).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_takes_traffic_off_the_canary_even_when_the_destination_rule_is_gone() {
    let env = RolloutEnv::new("abort-without-rule").await;
    let steps = json!([{"setWeight": 50}, {"pause": {}}]);
    env.healthy_on_first_version(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    env.canary_paused_at(5_000).await;

    env.destination_rules()
        .delete("reviews", &DeleteParams::default())
        .await
        .unwrap();
    abort_and_expect_weight_zero(&env, "abort did not reach the filter").await;
    let condition = env
        .until("the abort and the missing DestinationRule in status", |r| {
            traffic_condition(r)
                .filter(|c| c.status == "False" && c.message.contains("traffic is off the canary"))
        })
        .await;
    assert_eq!(condition.reason, "Misconfigured");
    assert!(
        condition.message.contains("traffic is off the canary")
            && condition
                .message
                .contains("DestinationRule reviews not found"),
        "{}",
        condition.message
    );
    let status = env.rollout().await.status.unwrap();
    assert_eq!(status.phase, Phase::Degraded);
    assert_eq!(
        status.canary_weight, 0,
        "the status says what the filter does"
    );
}

/// An admission policy of the platform team: canary weights above 20% need approval.
async fn weight_limit_policy(env: &RolloutEnv) {
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": format!("{}-weight-limit", env.ns)},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["extensions.istio.io"], "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE"], "resources": ["wasmplugins"]}]},
            "validations": [{
                "expression": "object.spec.pluginConfig.services.all(k, object.spec.pluginConfig.services[k].canaryWeight <= 2000)",
                "message": "canary weights above 20% need the release board's approval"
            }]
        }
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": format!("{}-weight-limit", env.ns)},
        "spec": {
            "policyName": format!("{}-weight-limit", env.ns),
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}}}
        }
    });
    for (object, plural) in [
        (policy, "validatingadmissionpolicies"),
        (binding, "validatingadmissionpolicybindings"),
    ] {
        let resource = kube::api::ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "admissionregistration.k8s.io/v1".into(),
            kind: object["kind"].as_str().unwrap().into(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = Api::all_with(env.client.clone(), &resource);
        platform_applies(&api, &object).await;
    }
    // The API server loads policies asynchronously: wait until a dry-run write above the limit
    // is refused.
    let start = tokio::time::Instant::now();
    loop {
        let mut wp = env
            .wasm_plugins()
            .get(&support::productpage_plugin())
            .await
            .unwrap();
        support::traffic::first_entry_mut(&mut wp.data["spec"]["pluginConfig"])["canaryWeight"] =
            json!(9_000);
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        if env
            .wasm_plugins()
            .replace(&support::productpage_plugin(), &dry, &wp)
            .await
            .is_err()
        {
            return;
        }
        assert!(start.elapsed() < WAIT, "the admission policy never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn lift_weight_limit_policy(env: &RolloutEnv) {
    let resource = kube::api::ApiResource {
        group: "admissionregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: "ValidatingAdmissionPolicyBinding".into(),
        plural: "validatingadmissionpolicybindings".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(env.client.clone(), &resource);
    api.delete(
        &format!("{}-weight-limit", env.ns),
        &DeleteParams::default(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_api_server_refuses_is_in_status_and_the_step_runs_once_it_is_allowed() {
    let env = RolloutEnv::new("refused-write").await;
    let steps = json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]);
    env.healthy_on_first_version(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    env.canary_paused_at(2_000).await;
    weight_limit_policy(&env).await;

    env.promote("step").await;
    let condition = env
        .until_within(PROMPTLY, "the refused write in status", |r| {
            traffic_condition(r).filter(|c| c.status == "False")
        })
        .await;
    assert_eq!(condition.reason, "WriteRefused");
    assert!(
        condition.message.contains("cannot write WasmPlugin")
            && condition.message.contains("release board's approval"),
        "{}",
        condition.message
    );
    let r = env.rollout().await;
    let status = r.status.unwrap();
    assert_eq!(status.phase, Phase::Degraded);
    assert_eq!(status.message.as_deref(), Some(condition.message.as_str()));
    assert_eq!(
        (status.canary_weight, status.current_step_index),
        (2_000, Some(1)),
        "the status stays at the step the filter is at"
    );
    assert_eq!(
        env.filter_weight(&support::productpage_plugin()).await,
        Some(2_000)
    );

    lift_weight_limit_policy(&env).await;
    env.until("the step once the write is allowed", |r| {
        let s = r.status.as_ref()?;
        (s.canary_weight == 5_000 && s.phase == Phase::Paused).then_some(())
    })
    .await;
    assert_eq!(
        env.filter_weight(&support::productpage_plugin()).await,
        Some(5_000)
    );
    assert_eq!(
        traffic_condition(&env.rollout().await).map(|c| c.status),
        Some("True".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_plugin_the_user_applied_is_adopted_for_its_plugin_config_only() {
    let env = RolloutEnv::new("adopted-plugin").await;
    let platform_url = "oci://registry.example.com/platform/wasm-canary:2.0.0";
    let users = json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "reviews-filter", "namespace": env.ns},
        "spec": {
            "url": platform_url, "pluginName": "wasm-canary", "priority": 5,
            "selector": {"matchLabels": {"app": "productpage"}},
            "pluginConfig": {"services": []}
        }
    });
    platform_applies(&env.wasm_plugins(), &users).await;
    let mut spec = rollout(
        &env.ns,
        "reviews:v1",
        json!([{"setWeight": 20}, {"pause": {}}]),
    );
    spec["spec"]["strategy"]["canary"]["trafficRouting"]["wasm"]["wasmPlugin"]["name"] =
        json!("reviews-filter");
    let v1 = env.healthy_on_first_version(&spec).await;

    let plugin = env.wasm_plugin("reviews-filter").await.unwrap();
    let config = env.plugin_config("reviews-filter").await.unwrap();
    assert_eq!(config.services[0].stable_hash.as_deref(), Some(v1.as_str()));
    assert_eq!(plugin["spec"]["url"], platform_url, "the user's url kept");
    assert_eq!(plugin["spec"]["priority"], 5);
    assert!(
        plugin["metadata"]["ownerReferences"].is_null(),
        "the rollout does not own (nor garbage-collect) a plugin it did not create: {}",
        plugin["metadata"]
    );
    let condition = traffic_condition(&env.rollout().await).unwrap();
    assert_eq!(condition.status, "True");
    assert!(
        condition.message.contains("adopted"),
        "{}",
        condition.message
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let adopted = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("WasmPluginAdopted"));
    assert!(adopted, "the adoption is recorded as an Event");

    env.canary_paused_at(2_000).await;
    assert_eq!(env.filter_weight("reviews-filter").await, Some(2_000));
    let plugin: Value = env.wasm_plugin("reviews-filter").await.unwrap();
    assert_eq!(plugin["spec"]["url"], platform_url);
}

/// Drift must be undone within this, far below the resync that used to be the only way back.
const RESTORED_WITHIN: Duration = Duration::from_secs(10);

async fn until_restored<T: PartialEq + std::fmt::Debug>(
    what: &str,
    want: T,
    mut read: impl AsyncFnMut() -> T,
) {
    assert!(
        RESYNC >= 3 * RESTORED_WITHIN,
        "a resync ({RESYNC:?}) would restore it within the bound too: the test could not fail"
    );
    let start = tokio::time::Instant::now();
    loop {
        let got = read().await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < RESTORED_WITHIN,
            "{what} not restored within {RESTORED_WITHIN:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_wasm_plugin_and_stripped_subset_hashes_are_restored_within_seconds() {
    let env = RolloutEnv::new("drift").await;
    let steps = json!([{"setWeight": 20}, {"pause": {}}]);
    let v1 = env
        .healthy_on_first_version(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    let v2 = env.canary_paused_at(2_000).await;

    env.wasm_plugins()
        .delete(&support::productpage_plugin(), &DeleteParams::default())
        .await
        .unwrap();
    until_restored("the deleted WasmPlugin", Some(2_000), async || {
        env.filter_weight(&support::productpage_plugin()).await
    })
    .await;

    // Another manager takes the subsets (an atomic list) with force and drops the hash labels:
    // both subsets would select every pod.
    let stripped = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews"}, "spec": {"host": "reviews", "subsets": [
            {"name": "stable", "labels": {"app": "reviews"}},
            {"name": "canary", "labels": {"app": "reviews"}}]}});
    env.destination_rules()
        .patch(
            "reviews",
            &PatchParams::apply("gitops-sync").force(),
            &Patch::Apply(&stripped),
        )
        .await
        .unwrap();
    until_restored(
        "the subsets' hash labels",
        (Some(v1.clone()), Some(v2.clone())),
        async || {
            (
                env.subset_hash("stable").await,
                env.subset_hash("canary").await,
            )
        },
    )
    .await;

    // Watching its own writes does not make the controller write again and again: with
    // nothing changing, neither object changes over a few seconds.
    let versions = async || {
        let wp = env
            .wasm_plugins()
            .get(&support::productpage_plugin())
            .await
            .unwrap();
        let dr = env.destination_rules().get("reviews").await.unwrap();
        (wp.metadata.resource_version, dr.metadata.resource_version)
    };
    let before = versions().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(versions().await, before, "writes without a change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_analysis_template_once_created_is_picked_up_within_seconds() {
    let env = RolloutEnv::new("template-created").await;
    let steps =
        json!([{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "apdex"}]}}]);
    env.apply_rollout(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    env.until("the refusal for the missing template", |r| {
        (r.status.as_ref()?.phase == Phase::Degraded).then_some(())
    })
    .await;
    apply_apdex_template(&env).await;
    until_restored(
        "the rollout once its template exists",
        Some(Phase::Healthy),
        async || env.rollout().await.status.map(|s| s.phase),
    )
    .await;
}

/// The controller binary, stopped (killed) when dropped, on failure too.
struct ControllerProcess(std::process::Child);

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_stops_the_controller_cleanly_with_status_0_and_releases_its_lease() {
    let env = RolloutEnv::without_controller("sigterm").await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let log_tail = || {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let mut process = ControllerProcess(
        support::owned_process::controller_command(env.plane.kubeconfig_path(), &env.ns)
            .args(["--lease-namespace", &env.ns, "--identity", "sigterm-test"])
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let holder = || async {
        leases
            .get_opt("wasm-canary-controller")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
    };
    let start = tokio::time::Instant::now();
    while holder().await.as_deref() != Some("sigterm-test") {
        assert!(
            process.0.try_wait().unwrap().is_none(),
            "the controller exited before leading"
        );
        assert!(start.elapsed() < WAIT, "the controller never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pid = process.0.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let start = tokio::time::Instant::now();
    let status = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < WAIT,
            "the controller did not stop on SIGTERM; its log:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "a clean shutdown: {status}; its log:\n{}",
        log_tail()
    );
    assert_eq!(
        holder().await,
        None,
        "the lease is released, so a standby takes over at once"
    );
}

/// Four weights with a `500ms` pause after each of the first three, then a pause until promoted.
fn short_pauses() -> Value {
    json!([
        {"setWeight": 10}, {"pause": {"duration": "500ms"}},
        {"setWeight": 20}, {"pause": {"duration": "500ms"}},
        {"setWeight": 30}, {"pause": {"duration": "500ms"}},
        {"setWeight": 40}, {"pause": {}}
    ])
}

/// Runs v2 through [`short_pauses`] and returns, for every step index the status showed, the
/// `stepStartedAt` it showed with it. Every stored version of the rollout is recorded (a
/// watch), so a step shown for 500 ms is seen however slow the test is.
async fn step_starts_through_short_pauses(env: &RolloutEnv) -> BTreeMap<i32, String> {
    env.healthy_on_first_version(&rollout(&env.ns, "reviews:v1", short_pauses()))
        .await;
    let versions = Recording::start(env.rollouts(), "", "metadata.name=reviews").await;
    env.set_image("reviews:v2").await;
    versions
        .until("the last pause", WAIT, |versions| {
            let mut starts = BTreeMap::new();
            for v in versions {
                let s = v.object.status.clone().unwrap_or_default();
                if let (Some(i), Some(at), true) = (
                    s.current_step_index,
                    s.step_started_at.clone(),
                    s.canary_hash.is_some(),
                ) {
                    starts.entry(i).or_insert(at);
                }
            }
            starts.contains_key(&7).then_some(starts)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500ms_pause_is_neither_skipped_nor_cut_short() {
    let env = RolloutEnv::new("short-pauses").await;
    let starts = step_starts_through_short_pauses(&env).await;
    let time = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    for pause in [1, 3, 5] {
        let began = starts.get(&pause).unwrap_or_else(|| {
            panic!(
                "pause step {} was skipped (never in status): {starts:?}",
                pause + 1
            )
        });
        // The next step seen began when the pause ended (a setWeight completes in the same
        // reconcile as the pause before it).
        let (_, ended) = starts.range(pause + 1..).next().unwrap();
        let held = time(ended) - time(began);
        assert!(
            held >= chrono::Duration::milliseconds(500),
            "pause step {} held {held} < 500ms: {starts:?}",
            pause + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_completed_step_keeps_its_own_event_and_message() {
    let env = RolloutEnv::new("step-events").await;
    step_starts_through_short_pauses(&env).await;
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let want: Vec<String> = (1..=7).map(|i| format!("step {i}/8: ")).collect();
    let start = tokio::time::Instant::now();
    loop {
        let notes: Vec<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("StepCompleted"))
            .filter_map(|e| e.note)
            .collect();
        let missing: Vec<&String> = want
            .iter()
            .filter(|w| !notes.iter().any(|n| n.starts_with(w.as_str())))
            .collect();
        if missing.is_empty() {
            assert_eq!(notes.len(), 7, "one Event per step: {notes:#?}");
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "no StepCompleted Event for {missing:?}; found {notes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Marks every pod of version `hash` Ready or not, as a kubelet whose probes fail or pass.
async fn set_ready(env: &RolloutEnv, hash: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let selector = format!("rollouts-pod-template-hash={hash}");
    for pod in pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
    {
        let ip = pod.status.and_then(|s| s.pod_ip).unwrap();
        let name = pod.metadata.name.unwrap();
        set_pod_status(&env.client, &env.ns, &name, &ip, ready)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_stops_being_ready_during_a_pause_loses_its_traffic_until_ready_again() {
    let env = RolloutEnv::new("readiness-drop").await;
    let steps = json!([{"setWeight": 50}, {"pause": {}}]);
    env.healthy_on_first_version(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    let v2 = env.canary_paused_at(5_000).await;
    env.stop_kubelet();

    set_ready(&env, &v2, false).await;
    until_restored(
        "weight 0 for a canary without Ready pods",
        Some(0),
        async || env.filter_weight(&support::productpage_plugin()).await,
    )
    .await;
    let message = env
        .until("the reason in status", |r| {
            let s = r.status.as_ref()?;
            (s.phase != Phase::Paused)
                .then(|| s.message.clone())
                .flatten()
        })
        .await;
    assert!(
        message.contains("0 Ready pod(s)") && message.contains("lowered from 50% to 0%"),
        "{message}"
    );

    set_ready(&env, &v2, true).await;
    until_restored(
        "the step's weight once Ready again",
        Some(5_000),
        async || env.filter_weight(&support::productpage_plugin()).await,
    )
    .await;
    env.until("the pause again", |r| {
        (r.status.as_ref()?.phase == Phase::Paused).then_some(())
    })
    .await;
}

/// AnalysisTemplate `apdex` (one web measurement) in the test's namespace.
async fn apply_apdex_template(env: &RolloutEnv) {
    let template = json!({"apiVersion": "wasmcanary.io/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "apdex", "namespace": env.ns},
        "spec": {"metrics": [{"name": "apdex", "count": 1, "successCondition": "result > 0.9",
            "provider": {"web": {"url": "http://127.0.0.1:9/apdex", "jsonPath": "{$.apdex}"}}}]}});
    let templates: Api<AnalysisTemplate> = Api::namespaced(env.client.clone(), &env.ns);
    platform_applies(&templates, &template).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_wins_after_the_rollouts_analysis_template_was_deleted() {
    let env = RolloutEnv::new("template-deleted").await;
    apply_apdex_template(&env).await;
    let steps = json!([{"setWeight": 20}, {"pause": {}},
        {"analysis": {"templates": [{"templateName": "apdex"}]}}]);
    env.healthy_on_first_version(&rollout(&env.ns, "reviews:v1", steps))
        .await;
    env.canary_paused_at(2_000).await;

    let templates: Api<AnalysisTemplate> = Api::namespaced(env.client.clone(), &env.ns);
    templates
        .delete("apdex", &DeleteParams::default())
        .await
        .unwrap();
    env.until("the refusal for the deleted template", |r| {
        (r.status.as_ref()?.phase == Phase::Degraded).then_some(())
    })
    .await;
    assert_eq!(
        env.filter_weight(&support::productpage_plugin()).await,
        Some(2_000),
        "an invalid spec alone freezes traffic where it is"
    );

    abort_and_expect_weight_zero(&env, "abort had no effect").await;
    let status = env
        .until("Aborted", |r| {
            r.status.clone().filter(|s| s.phase == Phase::Aborted)
        })
        .await;
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("AnalysisTemplate apdex not found")),
        "{:?}",
        status.message
    );
}

/// A web metric endpoint answering `{"apdex": <value>}`, the value set by the test.
struct ApdexEndpoint {
    url: String,
    value: Arc<Mutex<f64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApdexEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApdexEndpoint {
    async fn start(value: f64) -> ApdexEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/apdex", listener.local_addr().unwrap());
        let value = Arc::new(Mutex::new(value));
        let served = value.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let served = served.clone();
                tokio::spawn(async move {
                    // A GET has no body: the request ends with its head.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = json!({"apdex": *served.lock().unwrap()}).to_string();
                    let response = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        ApdexEndpoint { url, value, task }
    }

    fn set(&self, value: f64) {
        *self.value.lock().unwrap() = value;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_analysis_goes_on_from_its_recorded_metrics_after_its_template_is_deleted() {
    let env = RolloutEnv::new("analysis-goes-on").await;
    let apdex = ApdexEndpoint::start(0.95).await;
    let template = json!({"apiVersion": "wasmcanary.io/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "apdex", "namespace": env.ns},
        "spec": {"metrics": [{"name": "apdex", "interval": "500ms", "successCondition": "result > 0.9",
            "provider": {"web": {"url": apdex.url, "jsonPath": "{$.apdex}"}}}]}});
    let templates: Api<AnalysisTemplate> = Api::namespaced(env.client.clone(), &env.ns);
    platform_applies(&templates, &template).await;
    let mut spec = rollout(
        &env.ns,
        "reviews:v1",
        json!([{"setWeight": 20}, {"pause": {}}]),
    );
    spec["spec"]["strategy"]["canary"]["analysis"] =
        json!({"templates": [{"templateName": "apdex"}]});
    env.healthy_on_first_version(&spec).await;
    env.canary_paused_at(2_000).await;
    let successful = |r: &CanaryRollout| {
        r.status
            .as_ref()?
            .analysis_runs
            .first()?
            .metrics
            .first()
            .map(|m| m.successful)
    };
    env.until("a first successful measurement", |r| {
        successful(r).filter(|n| *n > 0)
    })
    .await;

    templates
        .delete("apdex", &DeleteParams::default())
        .await
        .unwrap();
    let before = successful(&env.rollout().await).unwrap();
    env.until("measurements after the template is gone", |r| {
        successful(r).filter(|n| *n > before)
    })
    .await;
    assert_eq!(env.rollout().await.status.unwrap().phase, Phase::Paused);

    // The canary degrades: the run fails, the rollout aborts, traffic leaves the canary.
    apdex.set(0.5);
    env.until("the abort by the failed analysis", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Aborted && s.analysis_aborted).then_some(())
    })
    .await;
    assert_eq!(
        env.filter_weight(&support::productpage_plugin()).await,
        Some(0)
    );
}
