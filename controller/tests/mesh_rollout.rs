//! The controller driving a real Istio mesh: istiod reads what the controller writes
//! (WasmPlugin pluginConfig, DestinationRule subsets) from the real API server and pushes it to
//! Envoy sidecars; the rollout is the seed demo's Argo Rollout converted by `kubectl canary
//! convert`; the controller runs as a process with only its shipped RBAC; the pods the
//! ReplicaSets create run as apps behind their own sidecars (tests/mesh `MeshKubelet`).
//! Traffic is sent into the caller's (productpage's) sidecar, as productpage would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::{Duration, Instant};

mod support;

use canary_cluster::ControlPlane;
use canary_controller::crd::{CanaryRollout, Phase};
use canary_mesh::kubelet::MeshKubelet;
use canary_mesh::sidecar::running_plugin_configs;
use canary_mesh::{objects, Bookinfo, Istiod};
use kube::api::Api;
use serde_json::{json, Value};
use support::mesh_seed::{
    assert_all_ok, convert_the_seed, seed_app, seed_deployment, start_controller, Load, Seen, NS,
};
use support::owned_process::OwnedProcess;
use support::rollout_wait::rollout_until;
use wasm_canary_e2e::assert_binomial;
use wasm_canary_e2e::http::Response;

const ROLLOUT: &str = "reviews-rollout";
const WAIT: Duration = Duration::from_secs(120);

/// Waits (a watch, not polling) until `check` gives a value for the rollout.
async fn until<T>(
    client: &kube::Client,
    what: &str,
    check: impl Fn(&CanaryRollout) -> Option<T>,
) -> T {
    let r = rollout_until(
        client,
        NS,
        ROLLOUT,
        what,
        WAIT,
        |r| check(r).is_some(),
        |_| false,
    )
    .await;
    check(&r).expect("the awaited state")
}

/// The canary weight (basis points) the caller's sidecar runs now for `reviews`.
fn weight_in_caller(mesh: &Bookinfo) -> Option<u64> {
    running_plugin_configs(&mesh.caller)
        .ok()?
        .into_iter()
        .find_map(|(_, c)| support::traffic::first_entry(&c)["canaryWeight"].as_u64())
}

/// Waits until the caller's sidecar runs `weight`; returns how long that took.
fn until_caller_runs(mesh: &Bookinfo, weight: u64) -> Duration {
    let start = Instant::now();
    while weight_in_caller(mesh) != Some(weight) {
        assert!(
            start.elapsed() < WAIT,
            "the caller's sidecar never ran canaryWeight {weight} (runs {:?})",
            weight_in_caller(mesh)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Sends `n` user requests (no test header, no sticky key) through the caller; returns how
/// many the canary served. Every response is a 200 tagged with the hash of the pod that served
/// it (the server-side filter), which is `stable` or `canary`.
fn split(mesh: &Bookinfo, n: u64, stable: &str, canary: &str) -> u64 {
    let mut http = mesh.http();
    let mut on_canary = 0;
    for i in 0..n {
        let r: Response = http.get("reviews:9080", "/", &[]).unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let app = r.header("x-app-version").unwrap();
        assert_eq!(
            r.header("x-rollouts-pod-template-hash"),
            Some(app),
            "tagged with the serving pod's hash"
        );
        if app == canary {
            on_canary += 1;
        } else {
            assert_eq!(app, stable, "served by stable or canary only");
        }
    }
    on_canary
}

/// The seed, converted and applied, with v1 Healthy and serving through the mesh.
struct Seed {
    plane: ControlPlane,
    client: kube::Client,
    istiod: Istiod,
    mesh: Bookinfo,
    _controller: OwnedProcess,
    kubelet: MeshKubelet,
    v1: String,
}

impl Seed {
    async fn start() -> Seed {
        Self::start_with_steps(None).await
    }

    /// The seed with its steps replaced by `steps` (when given).
    async fn start_with_steps(steps: Option<Value>) -> Seed {
        let (plane, client, istiod) = support::mesh_seed::plane_with_seed_istiod().await;
        let mesh = Bookinfo::start(&plane, &client, &istiod, NS, &[])
            .await
            .unwrap();
        let controller = start_controller(&plane, &client).await;
        let kubelet = MeshKubelet::start(
            client.clone(),
            istiod.grpc,
            NS,
            "reviews",
            mesh.subnet.clone(),
        );

        // What the user applies: the converted seed (analysis is the SkyWalking issue's);
        // pauses held until the test promotes, so each weight is measured as long as needed.
        let wasm = wasm_canary_e2e::filter_wasm().unwrap();
        for account in seed_app().iter().filter(|d| d["kind"] == "ServiceAccount") {
            objects::apply(&client, NS, account).await.unwrap();
        }
        objects::apply(&client, NS, &seed_deployment("reviews", V1_IMAGE))
            .await
            .unwrap();
        for mut object in convert_the_seed(&wasm) {
            if object["kind"] == "CanaryRollout" {
                object["spec"]["replicas"] = json!(2);
                let canary = &mut object["spec"]["strategy"]["canary"];
                canary.as_object_mut().unwrap().remove("analysis");
                for step in canary["steps"].as_array_mut().unwrap() {
                    if step.get("pause").is_some() {
                        *step = json!({"pause": {}});
                    }
                }
                if let Some(steps) = &steps {
                    canary["steps"] = steps.clone();
                }
                canary["scaleDownDelaySeconds"] = json!(3);
                canary["abortScaleDownDelaySeconds"] = json!(3);
                canary["trafficRouting"]["wasm"]["sticky"] = json!({"header": "x-user-id"});
            }
            objects::apply(&client, NS, &object).await.unwrap();
        }
        let v1 = until(&client, "the first version Healthy", |r| {
            let s = r.status.as_ref()?;
            (s.phase == Phase::Healthy)
                .then(|| s.stable_hash.clone())
                .flatten()
        })
        .await;
        // All traffic on v1 once its pods are Ready in the mesh.
        let start = Instant::now();
        let mut http = mesh.http();
        loop {
            if let Ok(r) = http.get("reviews:9080", "/", &[]) {
                if r.status == 200 && r.header("x-rollouts-pod-template-hash") == Some(v1.as_str())
                {
                    break;
                }
            }
            assert!(start.elapsed() < WAIT, "v1 never served through the mesh");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Seed {
            plane,
            client,
            istiod,
            mesh,
            _controller: controller,
            kubelet,
            v1,
        }
    }

    /// A new version, as the seed makes one: the Deployment's image changes. Returns its hash.
    async fn new_version(&self) -> String {
        objects::apply(&self.client, NS, &seed_deployment("reviews", V2_IMAGE))
            .await
            .unwrap();
        let v2 = until(&self.client, "a canary", |r| {
            r.status.as_ref()?.canary_hash.clone()
        })
        .await;
        assert_ne!(self.v1, v2);
        v2
    }

    /// Waits until the rollout pauses at `step` with `weight`, then until the caller runs it.
    async fn at_step(&self, step: i32, weight: u64) -> Duration {
        until(
            &self.client,
            &format!("paused after setWeight {weight}"),
            |r| {
                let s = r.status.as_ref()?;
                (s.current_step_index == Some(step) && u64::from(s.canary_weight) == weight)
                    .then_some(())
            },
        )
        .await;
        until_caller_runs(&self.mesh, weight)
    }

    fn kubectl_canary(&self, args: &[&str]) {
        support::mesh_seed::kubectl_canary(&self.plane, args);
    }
}

const V1_IMAGE: &str = "docker.io/istio/examples-bookinfo-reviews-v1:1.17.0";
const V2_IMAGE: &str = "docker.io/istio/examples-bookinfo-reviews-v2:1.17.0";

/// Users with a sticky key, and the version each one got.
fn sticky_users(mesh: &Bookinfo, users: &[String]) -> Vec<String> {
    let mut http = mesh.http();
    users
        .iter()
        .map(|u| {
            let r = http.get("reviews:9080", "/", &[("x-user-id", u)]).unwrap();
            assert_eq!(r.status, 200);
            r.header("x-rollouts-pod-template-hash").unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_rollout_shifts_real_traffic_at_every_step_keeps_sticky_users_and_promotes_without_a_failed_request(
) {
    let seed = Seed::start().await;
    let v2 = seed.new_version().await;
    let load = Load::start(&seed.mesh, "reviews:9080");
    let users: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let mut on_canary_before: Vec<bool> = vec![false; users.len()];

    let n = 2_000u64;
    let mut push_latencies = Vec::new();
    for (step, weight) in [
        (1, 1_000u64),
        (3, 2_000),
        (5, 4_000),
        (7, 6_000),
        (9, 8_000),
    ] {
        push_latencies.push(seed.at_step(step, weight).await);
        let canary = split(&seed.mesh, n, &seed.v1, &v2);
        assert_binomial(
            canary,
            n,
            weight as f64 / 10_000.0,
            &format!("split at {weight} bp"),
        );
        // Sticky users: once on canary, on canary at every later (higher) weight, across
        // istiod's pushes; and about `weight` of them are there.
        let versions = sticky_users(&seed.mesh, &users);
        let on_canary: Vec<bool> = versions.iter().map(|v| *v == v2).collect();
        for (i, (before, now)) in on_canary_before.iter().zip(&on_canary).enumerate() {
            assert!(
                !before || *now,
                "user-{i} left canary when the weight rose to {weight}"
            );
        }
        let count = on_canary.iter().filter(|c| **c).count() as u64;
        assert_binomial(
            count,
            users.len() as u64,
            weight as f64 / 10_000.0,
            &format!("sticky users at {weight} bp"),
        );
        on_canary_before = on_canary;
        seed.kubectl_canary(&["promote", ROLLOUT]);
    }
    until(&seed.client, "v2 promoted and v1 scaled down", |r| {
        let s = r.status.as_ref()?;
        (s.stable_hash.as_deref() == Some(v2.as_str()) && s.scale_downs.is_empty()).then_some(())
    })
    .await;
    until_caller_runs(&seed.mesh, 0);
    let seen = load.finish();
    // Old pods went away only after the sidecars stopped sending to them: not one request
    // failed across the whole rollout and the scale-down.
    assert_all_ok(&seen, "background load through the whole rollout");
    let after = split(&seed.mesh, 200, &v2, &seed.v1);
    assert_eq!(
        after, 0,
        "after promotion every request is served by v2 (the new stable)"
    );
    eprintln!("controller step -> config running in the caller's sidecar: {push_latencies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_returns_all_real_traffic_to_stable_without_a_failed_request() {
    let seed = Seed::start().await;
    let v2 = seed.new_version().await;
    for (step, weight) in [(1, 1_000), (3, 2_000)] {
        seed.at_step(step, weight).await;
        seed.kubectl_canary(&["promote", ROLLOUT]);
    }
    seed.at_step(5, 4_000).await;
    let load = Load::start(&seed.mesh, "reviews:9080");
    // The load sees the canary before the abort.
    let start = Instant::now();
    while !load
        .seen()
        .iter()
        .any(|s| s.hash.as_deref() == Some(v2.as_str()))
    {
        assert!(
            start.elapsed() < WAIT,
            "the load never reached canary at 40%"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let aborted_at = Instant::now();
    seed.kubectl_canary(&["abort", ROLLOUT]);
    // Once the caller runs weight 0 and the canary has been scaled down, nothing reaches it.
    until_caller_runs(&seed.mesh, 0);
    until(&seed.client, "the aborted canary scaled down", |r| {
        let s = r.status.as_ref()?;
        (s.aborted && s.scale_downs.is_empty()).then_some(())
    })
    .await;
    let seen = load.finish();
    assert_all_ok(&seen, "background load across the abort");
    let last_canary = seen
        .iter()
        .filter(|s| s.hash.as_deref() == Some(v2.as_str()))
        .map(|s| s.at)
        .max()
        .unwrap();
    let after_last_canary: Vec<&Seen> = seen.iter().filter(|s| s.at > last_canary).collect();
    assert!(
        after_last_canary.len() >= 100,
        "traffic went on after the abort: {}",
        after_last_canary.len()
    );
    assert!(after_last_canary
        .iter()
        .all(|s| s.hash.as_deref() == Some(seed.v1.as_str())));
    eprintln!(
        "abort -> last canary response {:?}",
        last_canary.saturating_duration_since(aborted_at)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecars_keep_the_last_split_while_istiod_is_down_and_a_users_invalid_config_is_refused_without_a_failed_request(
) {
    let mut seed = Seed::start().await;
    let v2 = seed.new_version().await;
    seed.at_step(1, 1_000).await;
    let load = Load::start(&seed.mesh, "reviews:9080");

    // A user breaks the server-side WasmPlugin's pluginConfig (an unknown field): every
    // reviews sidecar's filter refuses it (Envoy counts the ECDS update rejected) and keeps
    // tagging with the config it had.
    const REJECTED: &str = "reviews-canary-server~istio-translated-wasmplugin.update_rejected";
    let rejected = |seed: &Seed| -> Vec<u64> {
        seed.kubelet
            .sidecar_stats_matching(REJECTED)
            .iter()
            .map(|m| m.values().sum())
            .collect()
    };
    assert_eq!(
        rejected(&seed),
        vec![0; 3],
        "nothing refused yet (2 stable pods, 1 canary)"
    );
    // As `kubectl edit` would: a merge patch by another field manager.
    Api::<kube::api::DynamicObject>::namespaced_with(
        seed.client.clone(),
        NS,
        &canary_controller::reconcile::wasm_plugin_resource(),
    )
    .patch(
        "reviews-canary-server",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"pluginConfig": {"versionHeaders": "typo"}}})),
    )
    .await
    .unwrap();
    let start = Instant::now();
    while rejected(&seed).contains(&0) {
        assert!(
            start.elapsed() < WAIT,
            "every reviews sidecar refuses the config: {:?}",
            rejected(&seed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let canary = split(&seed.mesh, 1_000, &seed.v1, &v2);
    assert_binomial(canary, 1_000, 0.1, "split at 10% after the refused config");

    // istiod goes away; the controller moves to the next step (the WasmPlugin says 20%) but
    // the sidecars keep serving what they have: 10%.
    seed.istiod.kill();
    seed.kubectl_canary(&["promote", ROLLOUT]);
    until(
        &seed.client,
        "setWeight 20 written while istiod is down",
        |r| {
            let s = r.status.as_ref()?;
            (s.current_step_index == Some(3) && s.canary_weight == 2_000).then_some(())
        },
    )
    .await;
    let n = 2_000u64;
    let canary = split(&seed.mesh, n, &seed.v1, &v2);
    assert_binomial(canary, n, 0.1, "split at 10% with istiod down");
    assert_eq!(weight_in_caller(&seed.mesh), Some(1_000));

    // istiod back: the sidecars reconnect and run 20%; the rollout goes on.
    tokio::task::block_in_place(|| seed.istiod.restart()).unwrap();
    until_caller_runs(&seed.mesh, 2_000);
    let canary = split(&seed.mesh, n, &seed.v1, &v2);
    assert_binomial(canary, n, 0.2, "split at 20% after istiod returned");
    seed.kubectl_canary(&["promote", ROLLOUT]);
    seed.at_step(5, 4_000).await;
    let seen = load.finish();
    assert_all_ok(
        &seen,
        "background load across the refused config and istiod's restart",
    );
    assert!(
        seen.iter().all(|s| s.hash.is_some()),
        "every response stayed tagged (the refused config did not replace the good one)"
    );
}

/// `make bench-mesh`: how long a rollout step takes to reach the sidecar that acts on it, over
/// 25 steps: from `kubectl canary promote` (ending a pause) to the controller's WasmPlugin write
/// (seen by polling the API server every 5 ms) to the caller's sidecar running the new weight
/// (its config_dump, polled every 5 ms). Writes `bench/MESH.md`. Not a test: it measures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark: make bench-mesh"]
async fn bench_step_to_sidecar_latency() {
    let weights: Vec<u64> = (1..=25).map(|i| i * 100).collect();
    let mut steps = Vec::new();
    for w in &weights {
        steps.push(json!({"setWeight": w / 100}));
        steps.push(json!({"pause": {}}));
    }
    let seed = Seed::start_with_steps(Some(json!(steps))).await;
    seed.new_version().await;
    let plugins: Api<kube::api::DynamicObject> = Api::namespaced_with(
        seed.client.clone(),
        NS,
        &canary_controller::reconcile::wasm_plugin_resource(),
    );
    let written_weight = || async {
        let list = plugins.list(&Default::default()).await.ok()?;
        list.items.iter().find_map(|p| {
            support::traffic::first_entry(&p.data["spec"]["pluginConfig"])["canaryWeight"].as_u64()
        })
    };
    seed.at_step(1, weights[0]).await;
    let mut to_api = Vec::new();
    let mut to_sidecar = Vec::new();
    for (i, w) in weights.iter().enumerate().skip(1) {
        let start = Instant::now();
        seed.kubectl_canary(&["promote", ROLLOUT]);
        while written_weight().await != Some(*w) {
            assert!(start.elapsed() < WAIT, "weight {w} never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_api.push(start.elapsed());
        while weight_in_caller(&seed.mesh) != Some(*w) {
            assert!(start.elapsed() < WAIT, "weight {w} never ran in the caller");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_sidecar.push(start.elapsed());
        seed.at_step(2 * i as i32 + 1, *w).await;
    }
    let pct = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[idx].as_secs_f64() * 1000.0
    };
    let n = to_sidecar.len();
    let report = format!(
        "# Rollout step -> sidecar, in a real mesh\n\n\
         Written by `make bench-mesh` ({n} steps of one rollout; istiod built from istio.io/istio, \
         Envoy 1.40 sidecars, the controller as a process; see tests/mesh/README.md). Times from \
         `kubectl canary promote` (the process start included) to the controller's WasmPlugin \
         write, and to the caller's sidecar running the new weight; both polled every 5 ms.\n\n\
         | from `kubectl canary promote` to | p50 | p99 | max |\n|---|---|---|---|\n\
         | WasmPlugin written (API server) | {:.0} ms | {:.0} ms | {:.0} ms |\n\
         | caller's sidecar runs it | {:.0} ms | {:.0} ms | {:.0} ms |\n",
        pct(&mut to_api, 0.5),
        pct(&mut to_api, 0.99),
        pct(&mut to_api, 1.0),
        pct(&mut to_sidecar, 0.5),
        pct(&mut to_sidecar, 0.99),
        pct(&mut to_sidecar, 1.0),
    );
    let out = wasm_canary_e2e::workspace_root().join("bench/MESH.md");
    std::fs::write(&out, &report).unwrap();
    eprintln!("{report}\nwritten to {}", out.display());
}
