//! Two rollouts of two services that one caller calls, progressing at once in a real Istio
//! mesh: the seed's `reviews` (its Argo Rollout converted by `kubectl canary convert`) and
//! Bookinfo's `ratings` (a CanaryRollout written directly, on the seed's Deployment
//! `ratings-v1`), each with its own DestinationRule, VirtualService and pods, run by the
//! controller as a process with its shipped RBAC. istiod pushes what the controller writes to
//! the caller's (productpage's) sidecar, which runs ONE wasm-canary client filter for both;
//! requests go into that sidecar as productpage's would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use canary_controller::crd::{CanaryRollout, Phase};
use canary_core::config::DEFAULT_DECISION_HEADER;
use canary_mesh::bookinfo::{host, BOOKINFO_PORT};
use serde_json::{json, Value};
use support::mesh_env::{on_canary, served_by, serving_hash, MeshEnv};
use support::mesh_seed::{
    assert_all_ok, convert_the_seed, seed_deployment, sha256_hex, Load, Seen, NS,
};
use wasm_canary_e2e::assert_binomial;

const REVIEWS: &str = "reviews-rollout";
const RATINGS: &str = "ratings-rollout";
const REVIEWS_V1: &str = "docker.io/istio/examples-bookinfo-reviews-v1:1.17.0";
const REVIEWS_V2: &str = "docker.io/istio/examples-bookinfo-reviews-v2:1.17.0";
const RATINGS_V1: &str = "docker.io/istio/examples-bookinfo-ratings-v1:1.17.0";
const RATINGS_V2: &str = "docker.io/istio/examples-bookinfo-ratings-v2:1.17.0";

/// The header each rollout's testers send: `x-tester: <service>` reaches that service's
/// canary (its `setHeaderRoute`), and only that service's.
const TESTER: &str = "x-tester";

/// A header route for `service`'s testers first (weight 0: only they reach the canary), then
/// the weights, each held until promoted.
fn steps(service: &str, weights: &[u32]) -> Value {
    let mut steps = vec![
        json!({"setHeaderRoute": {"name": format!("{service}-testers"), "match": [
            {"headerName": TESTER, "headerValue": {"exact": service}}]}}),
        json!({"pause": {}}),
    ];
    for w in weights {
        steps.push(json!({"setWeight": w}));
        steps.push(json!({"pause": {}}));
    }
    Value::from(steps)
}

/// The seed, converted, with one pod per version (analysis is the SkyWalking issue's) and
/// `steps` instead of its own.
fn reviews_objects(wasm: &Path, steps: Value) -> Vec<Value> {
    let mut objects = vec![seed_deployment("reviews", REVIEWS_V1)];
    for mut object in convert_the_seed(wasm) {
        if object["kind"] == "CanaryRollout" {
            object["spec"]["replicas"] = json!(1);
            let canary = &mut object["spec"]["strategy"]["canary"];
            canary.as_object_mut().unwrap().remove("analysis");
            canary["steps"] = steps.clone();
            canary["scaleDownDelaySeconds"] = json!(3);
            canary["abortScaleDownDelaySeconds"] = json!(3);
        }
        objects.push(object);
    }
    objects
}

/// What a team writes to put `ratings` under wasm-canary directly (no Argo Rollout to
/// convert): subsets by pod-template hash, a fixed VirtualService routing on the decision
/// header, the server-side WasmPlugin tagging responses, and the CanaryRollout on the seed's
/// Deployment `ratings-v1`, called by productpage like `reviews` is.
fn ratings_objects(wasm: &Path, steps: Value) -> Vec<Value> {
    let url = format!("file://{}", wasm.display());
    let sha256 = sha256_hex(wasm);
    let rev = json!({"istio.io/rev": "tsb"});
    vec![
        seed_deployment("ratings-v1", RATINGS_V1),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "ratings", "labels": rev},
            "spec": {"host": "ratings", "subsets": [
                {"name": "stable", "labels": {"app": "ratings"}},
                {"name": "canary", "labels": {"app": "ratings"}}
            ]}
        }),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "ratings", "labels": rev},
            "spec": {"hosts": ["ratings"], "http": [
                {"name": "canary",
                 "match": [{"headers": {DEFAULT_DECISION_HEADER: {"exact": "canary"}}}],
                 "route": [{"destination": {"host": "ratings", "subset": "canary"}}]},
                {"name": "stable",
                 "route": [{"destination": {"host": "ratings", "subset": "stable"}}]}
            ]}
        }),
        json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "ratings-canary-server"},
            "spec": {
                "selector": {"matchLabels": {"app": "ratings"}},
                "url": url, "sha256": sha256,
                "pluginName": "wasm-canary", "failStrategy": "FAIL_OPEN",
                "match": [{"mode": "SERVER"}],
                "pluginConfig": {"mode": "server"}
            }
        }),
        json!({
            "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
            "metadata": {"name": RATINGS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "ratings"}},
                "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ratings-v1"},
                "strategy": {"canary": {
                    "steps": steps,
                    "scaleDownDelaySeconds": 3,
                    "abortScaleDownDelaySeconds": 3,
                    "trafficRouting": {"wasm": {
                        "service": "ratings",
                        "destinationRule": {"name": "ratings"},
                        "wasmPlugin": {"url": url, "sha256": sha256,
                                       "selector": {"app": "productpage"}}
                    }}
                }}
            }
        }),
    ]
}

/// The stable version's hash once the rollout is Healthy.
fn healthy_stable_hash(r: &CanaryRollout) -> Option<String> {
    let s = r.status.as_ref()?;
    (s.phase == Phase::Healthy)
        .then(|| s.stable_hash.clone())
        .flatten()
}

/// The rollout pauses at `step` with `weight` (basis points) and its header route set.
fn paused_at(r: &CanaryRollout, step: i32, weight: u32) -> Option<()> {
    let s = r.status.as_ref()?;
    (s.phase == Phase::Paused
        && s.current_step_index == Some(step)
        && s.canary_weight == weight
        && !s.header_routes.is_empty())
    .then_some(())
}

/// What the caller's Envoy runs as wasm filters, from its admin `config_dump`: the ECDS
/// filter configs (name, pluginConfig) and, per listener, the names of its http filters that
/// take their config from ECDS.
struct CallerFilters {
    ecds: Vec<(String, Value)>,
    listeners: BTreeMap<String, Vec<String>>,
}

fn caller_filters(env: &MeshEnv) -> CallerFilters {
    let ecds = canary_mesh::sidecar::running_plugin_configs(&env.mesh.caller).unwrap();
    let r = wasm_canary_e2e::http::admin_get(
        env.mesh.caller.admin,
        "/config_dump?resource=dynamic_listeners",
    )
    .unwrap();
    assert_eq!(r.status, 200, "config_dump: {}", r.body);
    let dump: Value = serde_json::from_str(&r.body).unwrap();
    let mut listeners = BTreeMap::new();
    for l in dump["configs"].as_array().into_iter().flatten() {
        let listener = &l["active_state"]["listener"];
        let name = listener["name"].as_str().unwrap_or_default().to_owned();
        let mut discovered = Vec::new();
        for chain in listener["filter_chains"].as_array().into_iter().flatten() {
            for filter in chain["filters"].as_array().into_iter().flatten() {
                for http in filter["typed_config"]["http_filters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if !http["config_discovery"].is_null() {
                        discovered.push(http["name"].as_str().unwrap_or_default().to_owned());
                    }
                }
            }
        }
        listeners.insert(name, discovered);
    }
    CallerFilters { ecds, listeners }
}

/// The hashes the load saw, with counts.
fn hashes_seen(seen: &[Seen]) -> BTreeMap<String, usize> {
    let mut by_hash = BTreeMap::new();
    for s in seen {
        *by_hash
            .entry(s.hash.clone().unwrap_or_else(|| "(untagged)".to_owned()))
            .or_insert(0) += 1;
    }
    by_hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_rollouts_called_by_one_caller_split_at_their_own_weights_through_one_filter_and_one_aborts_while_the_other_promotes(
) {
    let started = Instant::now();
    let env = MeshEnv::start(&["reviews", "ratings"]).await;
    let wasm = wasm_canary_e2e::filter_wasm().unwrap();
    env.apply(&reviews_objects(&wasm, steps("reviews", &[20, 40])))
        .await;
    env.apply(&ratings_objects(&wasm, steps("ratings", &[60])))
        .await;
    let reviews_v1 = env
        .until(
            REVIEWS,
            "reviews' first version Healthy",
            healthy_stable_hash,
        )
        .await;
    let ratings_v1 = env
        .until(
            RATINGS,
            "ratings' first version Healthy",
            healthy_stable_hash,
        )
        .await;
    env.until_served_by("reviews", &reviews_v1).await;
    env.until_served_by("ratings", &ratings_v1).await;
    let mesh_up = started.elapsed();

    // Users of both services from now to the end: not one request may fail.
    let reviews_load = Load::start(&env.mesh, &host("reviews"));
    let ratings_load = Load::start(&env.mesh, &host("ratings"));

    // New versions of both, at once.
    env.apply(&[
        seed_deployment("reviews", REVIEWS_V2),
        seed_deployment("ratings-v1", RATINGS_V2),
    ])
    .await;
    env.until(REVIEWS, "reviews paused on its header route", |r| {
        paused_at(r, 1, 0)
    })
    .await;
    env.until(RATINGS, "ratings paused on its header route", |r| {
        paused_at(r, 1, 0)
    })
    .await;
    let reviews_v2 = env
        .until(REVIEWS, "reviews' canary", |r| {
            r.status.as_ref()?.canary_hash.clone()
        })
        .await;
    let ratings_v2 = env
        .until(RATINGS, "ratings' canary", |r| {
            r.status.as_ref()?.canary_hash.clone()
        })
        .await;
    for (service, canary) in [("reviews", &reviews_v2), ("ratings", &ratings_v2)] {
        env.until_caller_runs(service, "its header route at weight 0", |e| {
            e["canaryWeight"] == 0
                && e["canaryHash"] == canary.as_str()
                && e["headerRoutes"][0]["name"] == format!("{service}-testers")
        })
        .await;
    }

    // Weight 0: each rollout's testers reach its own canary, and only its own; users, also
    // those sending the decision header themselves, stay on stable.
    let n = 200;
    for (service, other, stable, canary) in [
        ("reviews", "ratings", &reviews_v1, &reviews_v2),
        ("ratings", "reviews", &ratings_v1, &ratings_v2),
    ] {
        assert_eq!(
            served_by(&env.mesh, service, 50, &[(TESTER, service)]),
            BTreeMap::from([(canary.clone(), 50)]),
            "{service}'s testers reach {service}'s canary at weight 0"
        );
        assert_eq!(
            served_by(&env.mesh, service, 50, &[(TESTER, other)]),
            BTreeMap::from([(stable.clone(), 50)]),
            "{other}'s testers do not reach {service}'s canary"
        );
        assert_eq!(
            served_by(&env.mesh, service, n, &[]),
            BTreeMap::from([(stable.clone(), n)]),
            "{service}'s users stay on stable at weight 0"
        );
        assert_eq!(
            served_by(
                &env.mesh,
                service,
                n,
                &[(DEFAULT_DECISION_HEADER, "canary")]
            ),
            BTreeMap::from([(stable.clone(), n)]),
            "a decision header sent by the client is ignored ({service})"
        );
    }

    // Both go on: reviews to 20%, ratings to 60%, at the same moment.
    env.kubectl_canary(&["promote", REVIEWS]);
    env.kubectl_canary(&["promote", RATINGS]);
    env.until(REVIEWS, "reviews paused at 20%", |r| paused_at(r, 3, 2_000))
        .await;
    env.until(RATINGS, "ratings paused at 60%", |r| paused_at(r, 3, 6_000))
        .await;
    env.until_caller_runs_weight("reviews", 2_000).await;
    env.until_caller_runs_weight("ratings", 6_000).await;

    // One filter in the caller for both: one ECDS filter config holding both services' entries
    // at their own weights, and each listener runs at most one ECDS (wasm) filter: it.
    let filters = caller_filters(&env);
    // istiod names it `[extensions.istio.io/trafficextension/]<ns>.<WasmPlugin>~istio-translated-wasmplugin`.
    let plugin_suffix = format!(
        "{NS}.{}~istio-translated-wasmplugin",
        support::productpage_plugin()
    );
    assert_eq!(
        filters.ecds.len(),
        1,
        "the caller runs one wasm filter config: {:?}",
        filters.ecds
    );
    let plugin = filters.ecds[0].0.clone();
    assert!(
        plugin.ends_with(&plugin_suffix),
        "{plugin} is productpage's client WasmPlugin ({plugin_suffix})"
    );
    let config = &filters.ecds[0].1;
    assert_eq!(config["mode"], "client");
    let mut keys: Vec<&String> = config["services"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["bookinfo/ratings", "bookinfo/reviews"]);
    assert_eq!(
        config["services"]["bookinfo/reviews"]["canaryWeight"],
        2_000
    );
    assert_eq!(
        config["services"]["bookinfo/ratings"]["canaryWeight"],
        6_000
    );
    let outbound = format!("{}_{BOOKINFO_PORT}", env.mesh.caller_pod.ip);
    assert_eq!(
        filters.listeners.get(&outbound),
        Some(&vec![plugin.clone()]),
        "the caller's outbound listener for both services runs the one filter; listeners: {:#?}",
        filters.listeners
    );
    for (listener, discovered) in &filters.listeners {
        assert!(
            discovered.iter().all(|d| *d == plugin),
            "listener {listener} runs another ECDS filter: {discovered:?}"
        );
    }

    // Each service's own split, requests to the two interleaved on one connection.
    let n = 2_000u64;
    let mut http = env.mesh.http();
    let (mut reviews, mut ratings) = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..n {
        *reviews
            .entry(serving_hash(&mut http, "reviews", &[]))
            .or_insert(0u64) += 1;
        *ratings
            .entry(serving_hash(&mut http, "ratings", &[]))
            .or_insert(0u64) += 1;
    }
    let reviews_split = on_canary(&reviews, &reviews_v1, &reviews_v2, "reviews at 20%");
    let ratings_split = on_canary(&ratings, &ratings_v1, &ratings_v2, "ratings at 60%");
    assert_binomial(
        reviews_split,
        n,
        0.2,
        "reviews at 20% beside ratings at 60%",
    );
    assert_binomial(
        ratings_split,
        n,
        0.6,
        "ratings at 60% beside reviews at 20%",
    );
    // The testers still reach their canary; a client-sent decision header still decides
    // nothing (the split stays the weight's).
    for (service, canary) in [("reviews", &reviews_v2), ("ratings", &ratings_v2)] {
        assert_eq!(
            served_by(&env.mesh, service, 50, &[(TESTER, service)]),
            BTreeMap::from([(canary.clone(), 50)]),
            "{service}'s testers at its weight"
        );
    }
    let forged_n = 1_000u64;
    let forged = served_by(
        &env.mesh,
        "reviews",
        forged_n,
        &[(DEFAULT_DECISION_HEADER, "canary")],
    );
    assert_binomial(
        on_canary(&forged, &reviews_v1, &reviews_v2, "reviews, forged header"),
        forged_n,
        0.2,
        "reviews at 20% with a client-sent decision header",
    );

    // reviews is aborted while ratings holds 60%: reviews all stable, ratings' split unchanged.
    env.kubectl_canary(&["abort", REVIEWS]);
    env.until_caller_runs("reviews", "weight 0 without header routes", |e| {
        e["canaryWeight"] == 0 && e["headerRoutes"].is_null()
    })
    .await;
    assert_eq!(
        env.caller_entry("ratings").unwrap()["canaryWeight"],
        6_000,
        "ratings' entry is untouched by reviews' abort"
    );
    env.until(REVIEWS, "the aborted canary scaled down", |r| {
        let s = r.status.as_ref()?;
        (s.aborted && s.scale_downs.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        served_by(&env.mesh, "reviews", 500, &[]),
        BTreeMap::from([(reviews_v1.clone(), 500)]),
        "every reviews request on stable after the abort"
    );
    assert_eq!(
        served_by(&env.mesh, "reviews", 50, &[(TESTER, "reviews")]),
        BTreeMap::from([(reviews_v1.clone(), 50)]),
        "the aborted rollout's header route is gone"
    );
    let ratings_after = served_by(&env.mesh, "ratings", n, &[]);
    assert_binomial(
        on_canary(&ratings_after, &ratings_v1, &ratings_v2, "ratings"),
        n,
        0.6,
        "ratings at 60% after reviews' abort",
    );
    env.until(RATINGS, "ratings still paused at 60%, not aborted", |r| {
        paused_at(r, 3, 6_000).filter(|()| !r.status.as_ref().is_some_and(|s| s.aborted))
    })
    .await;

    // ratings promotes (its last step): its canary becomes stable; reviews stays aborted.
    env.kubectl_canary(&["promote", RATINGS]);
    env.until(RATINGS, "ratings promoted, its old pods gone", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Healthy
            && s.stable_hash.as_deref() == Some(ratings_v2.as_str())
            && s.scale_downs.is_empty())
        .then_some(())
    })
    .await;
    env.until_caller_runs("ratings", "the promoted version as stable", |e| {
        e["canaryWeight"] == 0 && e["stableHash"] == ratings_v2.as_str()
    })
    .await;
    assert_eq!(
        served_by(&env.mesh, "ratings", 300, &[]),
        BTreeMap::from([(ratings_v2.clone(), 300)]),
        "every ratings request on the promoted version"
    );
    assert_eq!(
        served_by(&env.mesh, "reviews", 300, &[]),
        BTreeMap::from([(reviews_v1.clone(), 300)]),
        "reviews stays on its stable version"
    );
    let reviews_rollout = env.until(REVIEWS, "reviews", |r| r.status.clone()).await;
    assert!(reviews_rollout.aborted, "reviews stays aborted");

    // The users of both saw both versions of their service, and never a failed request.
    let reviews_seen = reviews_load.finish();
    let ratings_seen = ratings_load.finish();
    assert_all_ok(&reviews_seen, "reviews' users through both rollouts");
    assert_all_ok(&ratings_seen, "ratings' users through both rollouts");
    let reviews_hashes = hashes_seen(&reviews_seen);
    let ratings_hashes = hashes_seen(&ratings_seen);
    assert_eq!(
        reviews_hashes.keys().collect::<Vec<_>>(),
        {
            let mut k = vec![&reviews_v1, &reviews_v2];
            k.sort();
            k
        },
        "reviews' users were served by its two versions only, every response tagged"
    );
    assert_eq!(
        ratings_hashes.keys().collect::<Vec<_>>(),
        {
            let mut k = vec![&ratings_v1, &ratings_v2];
            k.sort();
            k
        },
        "ratings' users were served by its two versions only, every response tagged"
    );
    eprintln!(
        "mesh up and both v1 Healthy in {mesh_up:?}; at 20%/60%: reviews {reviews_split}/{n}, \
         ratings {ratings_split}/{n} on canary; background load: reviews {reviews_hashes:?}, \
         ratings {ratings_hashes:?}; total {:?}",
        started.elapsed()
    );
}
