//! `make demo-mesh`: the seed's rollout of `reviews` live in a real Istio mesh, step by step.
//!
//! Starts everything on loopback (the API server, istiod built from Istio's source, the
//! caller's and every pod's Envoy sidecar, the controller as a process with its shipped RBAC),
//! applies the seed converted by `kubectl canary convert` with a header route for testers in
//! front of its steps, and walks the rollout as an operator would: at each pause it sends
//! requests through the caller's (productpage's) sidecar and shows the split they got and the
//! hashes that served them, then `kubectl canary promote`s, until the new version is stable.
//! Users' requests flow in the background throughout.
//!
//! Not a test: an ignored one that `make demo-mesh` runs with `--nocapture`. It fails when a
//! step's split is outside the exact binomial range of its weight or a user request fails.
//! Ctrl-C or SIGTERM stop it, and with it every process it started.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use canary_controller::crd::{CanaryRollout, Phase};
use canary_core::config::DEFAULT_DECISION_HEADER;
use canary_mesh::bookinfo::host;
use serde_json::{json, Value};
use support::mesh_env::{MeshEnv, VERSION_TAG};
use support::mesh_seed::{convert_the_seed, seed_deployment, Load, Seen};
use wasm_canary_e2e::display::{group, percent, Display, RowState, StepCounts, StepRow};
use wasm_canary_e2e::{binomial_bounds, FALSE_ALARM_PER_CHECK};

const ROLLOUT: &str = "reviews-rollout";
const V1_IMAGE: &str = "docker.io/istio/examples-bookinfo-reviews-v1:1.17.0";
const V2_IMAGE: &str = "docker.io/istio/examples-bookinfo-reviews-v2:1.17.0";
/// Requests sent through the caller at each step, on top of the background users.
const REQUESTS_PER_STEP: u64 = 2_000;
/// The testers' header route put in front of the seed's steps.
const TESTER: (&str, &str) = ("x-tester", "reviews");

#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a demo: make demo-mesh"]
async fn demo_mesh() {
    let out = Display::detect();
    let started = Instant::now();
    let interrupted = Arc::new(AtomicBool::new(false));
    let signalled = Arc::new(tokio::sync::Notify::new());
    // A task of its own: the demo's request loops block their thread, and the flag must be set
    // while they run (they check it after every request).
    let listener = {
        let (interrupted, signalled) = (interrupted.clone(), signalled.clone());
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            interrupted.store(true, Ordering::SeqCst);
            signalled.notify_one();
        })
    };
    // `run` owns every process: when it returns, or is dropped here on a signal, they are all
    // killed and reaped.
    let result = tokio::select! {
        r = run(&out, &interrupted) => r,
        () = signalled.notified() => Err(Interrupted.into()),
    };
    listener.abort();
    let stopped = out.dim(&format!(
        "Stopped the load, the controller, every sidecar and app, istiod and the API server. \
         Total {:.1} s.",
        started.elapsed().as_secs_f64()
    ));
    match result {
        Ok(()) => out.line(&stopped),
        Err(e) if e.is::<Interrupted>() || interrupted.load(Ordering::SeqCst) => {
            out.blank();
            out.line(&format!("{} {stopped}", out.red("Interrupted.")));
            // A panic, not `exit`: the runtime then shuts down and waits for its blocking
            // tasks, so a sidecar that was starting is stopped too.
            panic!("interrupted");
        }
        Err(e) => {
            out.blank();
            out.line(&stopped);
            panic!("{} {e:#}", out.red("demo failed:"));
        }
    }
}

/// The converted seed with one header route for testers in front of its steps, each pause
/// held until promoted (the demo promotes once a step's split is measured), 2 replicas and no
/// analysis (SkyWalking's issue).
fn the_seed(wasm: &std::path::Path) -> (Vec<Value>, Vec<Value>) {
    let mut objects = vec![seed_deployment("reviews", V1_IMAGE)];
    let mut steps = Vec::new();
    for mut object in convert_the_seed(wasm) {
        if object["kind"] == "CanaryRollout" {
            object["spec"]["replicas"] = json!(2);
            let canary = &mut object["spec"]["strategy"]["canary"];
            canary.as_object_mut().unwrap().remove("analysis");
            steps = vec![
                json!({"setHeaderRoute": {"name": "testers", "match": [
                    {"headerName": TESTER.0, "headerValue": {"exact": TESTER.1}}]}}),
                json!({"pause": {}}),
            ];
            for step in canary["steps"].as_array().unwrap() {
                steps.push(if step.get("pause").is_some() {
                    json!({"pause": {}})
                } else {
                    step.clone()
                });
            }
            canary["steps"] = Value::from(steps.clone());
            canary["scaleDownDelaySeconds"] = json!(3);
        }
        objects.push(object);
    }
    (objects, steps)
}

/// What a step showed, for the summary.
struct StepResult {
    label: String,
    weight_bp: u32,
    counts: StepCounts,
    /// From `kubectl canary promote` to the caller's sidecar running the step.
    to_sidecar: Option<Duration>,
}

async fn run(out: &Display, interrupted: &AtomicBool) -> anyhow::Result<()> {
    out.line(
        &out.bold(
            "wasm-canary mesh demo: the seed's rollout of `reviews` in a real Istio mesh, live",
        ),
    );
    let wasm = wasm_canary_e2e::filter_wasm()?;
    out.line(&out.dim(&format!(
        "istiod built from istio.io/istio {} · Envoy sidecars · filter {} ({} KiB)",
        canary_mesh::istio_version(),
        wasm.display(),
        std::fs::metadata(&wasm).map_or(0, |m| m.len().div_ceil(1024)),
    )));

    let t = Instant::now();
    let env = MeshEnv::start(&["reviews"]).await;
    let (objects, steps) = the_seed(&wasm);
    env.apply(&objects).await;
    let v1 = env
        .until(ROLLOUT, "the first version Healthy", |r| {
            let s = r.status.as_ref()?;
            (s.phase == Phase::Healthy)
                .then(|| s.stable_hash.clone())
                .flatten()
        })
        .await;
    env.until_served_by("reviews", &v1).await;
    out.section(&format!(
        "Mesh up in {:.1} s, all on loopback",
        t.elapsed().as_secs_f64()
    ));
    out.line(&format!(
        "  API server (etcd, kube-apiserver, kube-controller-manager) · istiod rev tsb (plaintext xDS {})",
        env.istiod.grpc
    ));
    out.line("  wasm-canary controller: a process with its shipped ServiceAccount and RBAC");
    out.line(&format!(
        "  productpage-0 sidecar {} ─▶ reviews:9080, client filter by ECDS",
        env.mesh.caller_addr
    ));
    out.line(&format!(
        "               └─▶ {} {}: 2 pods, each behind its own sidecar",
        out.stable("stable"),
        out.stable(&v1)
    ));
    out.line(&out.dim(&format!(
        "  tag: {VERSION_TAG}, set on every response by the\n       \
         server-side filter from the serving pod's label"
    )));

    let load = Load::start(&env.mesh, &host("reviews"));
    out.section(&format!(
        "Rollout {ROLLOUT} (kubectl canary convert of the seed's Argo Rollout): {} steps, \
         {} requests measured at each pause",
        steps.len(),
        group(REQUESTS_PER_STEP)
    ));
    out.line(&out.dim(&format!(
        "  a header route for testers ({}: {}) in front of the seed's setWeight 10, 20, 40, 60, 80",
        TESTER.0, TESTER.1
    )));
    out.event(&format!(
        "new version: Deployment reviews image → {}",
        V2_IMAGE.rsplit('/').next().unwrap_or(V2_IMAGE)
    ));
    env.apply(&[seed_deployment("reviews", V2_IMAGE)]).await;
    let v2 = env
        .until(ROLLOUT, "a canary", |r| {
            r.status.as_ref()?.canary_hash.clone()
        })
        .await;
    out.detail(&format!(
        "canary {}: its pods start behind their own sidecars",
        out.canary(&v2)
    ));
    out.row_header();

    let total = steps.len();
    let mut results = Vec::new();
    let mut promoted_at: Option<Instant> = None;
    for (pause, _) in steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.get("pause").is_some())
    {
        check(interrupted)?;
        let weight = env
            .until(ROLLOUT, &format!("the pause at step {}", pause + 1), |r| {
                paused_at(r, pause)
            })
            .await;
        env_runs(&env, weight, &v2).await;
        let to_sidecar = promoted_at.map(|t| t.elapsed());
        let before = &steps[pause - 1];
        let label = pause.to_string();
        let pods = pods_of(&env, &v2).await;
        out.event(&format!(
            "step {pause}/{total} {} ({pods} canary pod{}) {}",
            describe(before),
            if pods == 1 { "" } else { "s" },
            to_sidecar.map_or_else(
                || "→ running in the caller's sidecar".to_owned(),
                |d| format!(
                    "→ running in the caller's sidecar {:.2} s after the promote",
                    d.as_secs_f64()
                )
            )
        ));
        if before.get("setHeaderRoute").is_some() {
            show_header_route(out, &env, &v1, &v2)?;
        }
        let counts = measure(out, &env, &load, &label, weight, &v1, &v2, interrupted)?;
        results.push(StepResult {
            label,
            weight_bp: weight,
            counts,
            to_sidecar,
        });
        out.event(&format!("kubectl canary promote {ROLLOUT}"));
        promoted_at = Some(Instant::now());
        env.kubectl_canary(&["promote", ROLLOUT]);
    }

    // The last pause promoted: the canary is the new stable; the old pods go after 3 s.
    check(interrupted)?;
    env.until(ROLLOUT, "the canary promoted", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Healthy && s.stable_hash.as_deref() == Some(v2.as_str())).then_some(())
    })
    .await;
    env.until_caller_runs("reviews", "the promoted version as stable", |e| {
        e["stableHash"] == v2.as_str() && e["canaryWeight"] == 0
    })
    .await;
    let to_sidecar = promoted_at.map(|t| t.elapsed());
    out.event(&format!(
        "promoted: {} is stable {}",
        out.canary(&v2),
        to_sidecar.map_or(String::new(), |d| format!(
            "in the caller's sidecar {:.2} s after the promote",
            d.as_secs_f64()
        ))
    ));
    let counts = measure(out, &env, &load, "done", 10_000, &v1, &v2, interrupted)?;
    results.push(StepResult {
        label: "done".to_owned(),
        weight_bp: 10_000,
        counts,
        to_sidecar,
    });
    env.until(ROLLOUT, "the old pods scaled down", |r| {
        r.status.as_ref()?.scale_downs.is_empty().then_some(())
    })
    .await;
    out.detail(&format!(
        "{} {} scaled down after scaleDownDelaySeconds",
        out.stable("old stable"),
        out.stable(&v1)
    ));
    let seen = load.finish();
    summary(out, &results, &seen, &v1, &v2);
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    if let Some(first) = failed.first() {
        bail!(
            "{} of {} background user requests failed; first: {first:?}",
            failed.len(),
            seen.len()
        );
    }
    Ok(())
}

fn check(interrupted: &AtomicBool) -> anyhow::Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// The canary weight while the rollout waits at `pause` (a step index).
fn paused_at(r: &CanaryRollout, pause: usize) -> Option<u32> {
    let s = r.status.as_ref()?;
    (s.phase == Phase::Paused && s.current_step_index == i32::try_from(pause).ok())
        .then_some(s.canary_weight)
}

/// Waits until the caller's sidecar runs `weight` for canary `v2`, with the testers' route.
async fn env_runs(env: &MeshEnv, weight: u32, v2: &str) {
    env.until_caller_runs("reviews", &format!("canaryWeight {weight}"), |e| {
        e["canaryWeight"] == weight && e["canaryHash"] == v2 && !e["headerRoutes"].is_null()
    })
    .await;
}

/// How many pods of `hash` exist (a step that needs another canary pod waits for it to be
/// Ready in the mesh before it moves traffic).
async fn pods_of(env: &MeshEnv, hash: &str) -> usize {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(env.client.clone(), support::mesh_seed::NS);
    let selector = format!("rollouts-pod-template-hash={hash}");
    pods.list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_or(0, |l| l.items.len())
}

/// A step as the rollout spec says it.
fn describe(step: &Value) -> String {
    if let Some(w) = step["setWeight"].as_f64() {
        format!("setWeight {w}")
    } else if let Some(name) = step["setHeaderRoute"]["name"].as_str() {
        format!("setHeaderRoute {name}")
    } else {
        step.to_string()
    }
}

/// At weight 0: testers reach the canary, users do not, nor does a user who sends the decision
/// header the VirtualService routes on.
fn show_header_route(out: &Display, env: &MeshEnv, v1: &str, v2: &str) -> anyhow::Result<()> {
    let mut http = env.mesh.http();
    let mut probe = |headers: &[(&str, &str)]| -> anyhow::Result<BTreeMap<String, u64>> {
        let mut by = BTreeMap::new();
        for _ in 0..20 {
            let r = http.get(&host("reviews"), "/", headers)?;
            let tag = match r.header(VERSION_TAG) {
                Some(t) if r.status == 200 => t.to_owned(),
                other => format!("{} {}", r.status, other.unwrap_or("untagged")),
            };
            *by.entry(tag).or_insert(0) += 1;
        }
        Ok(by)
    };
    let rows = [
        (
            format!("test request  {}: {}", TESTER.0, TESTER.1),
            probe(&[TESTER])?,
            v2,
        ),
        ("user request  no header".to_owned(), probe(&[])?, v1),
        (
            format!("user request  {DEFAULT_DECISION_HEADER}: canary (forged)"),
            probe(&[(DEFAULT_DECISION_HEADER, "canary")])?,
            v1,
        ),
    ];
    for (what, by, want) in rows {
        let shown: Vec<String> = by
            .iter()
            .map(|(hash, n)| format!("{} on {n}/20", served_by(out, hash, v1, v2)))
            .collect();
        out.detail(&format!("{what:<44} → {}", shown.join(", ")));
        if by.get(want) != Some(&20) {
            bail!("{what}: expected all 20 on {want}, got {by:?}");
        }
    }
    Ok(())
}

fn served_by(out: &Display, hash: &str, v1: &str, v2: &str) -> String {
    if hash == v1 {
        format!("{} {}", out.stable("stable"), out.stable(hash))
    } else if hash == v2 {
        format!("{} {}", out.canary("canary"), out.canary(hash))
    } else {
        out.red(hash)
    }
}

/// Sends [`REQUESTS_PER_STEP`] requests through the caller, redrawing the step's row; judges
/// the split against `weight` (exact binomial) and counts the background users' failures in
/// the same time.
#[allow(clippy::too_many_arguments)]
fn measure(
    out: &Display,
    env: &MeshEnv,
    load: &Load,
    label: &str,
    weight: u32,
    v1: &str,
    v2: &str,
    interrupted: &AtomicBool,
) -> anyhow::Result<StepCounts> {
    let row = |counts: StepCounts, elapsed: Duration, state: RowState| {
        out.step_row(&StepRow {
            label,
            weight_bp: weight,
            counts,
            elapsed,
            state,
        })
    };
    let background = |since: Instant| {
        load.seen()
            .iter()
            .filter(|s| s.at >= since && s.status != 200)
            .count() as u64
    };
    let mut line = out.live_line();
    let mut http = env.mesh.http();
    let start = Instant::now();
    let mut counts = StepCounts::default();
    let mut first_failure = None;
    let mut last_draw = Instant::now();
    for _ in 0..REQUESTS_PER_STEP {
        let r = http.get(&host("reviews"), "/", &[]);
        counts.requests += 1;
        match r {
            Ok(r) if r.status == 200 && r.header(VERSION_TAG) == Some(v2) => counts.canary += 1,
            Ok(r) if r.status == 200 && r.header(VERSION_TAG) == Some(v1) => {}
            other => {
                counts.failures += 1;
                first_failure.get_or_insert(format!("{other:?}"));
            }
        }
        // Ctrl-C reaches the sidecars at the same moment: requests failing then are the
        // shutdown, not the rollout.
        if interrupted.load(Ordering::SeqCst) {
            line.finish(&row(counts, start.elapsed(), RowState::Interrupted));
            return Err(Interrupted.into());
        }
        if last_draw.elapsed() >= line.tick() {
            last_draw = Instant::now();
            line.update(&row(
                counts,
                start.elapsed(),
                RowState::Running(start.elapsed()),
            ));
        }
    }
    let elapsed = start.elapsed();
    let mut shown = counts;
    shown.failures += background(start);
    let (lo, hi) = binomial_bounds(counts.requests, f64::from(weight) / 10_000.0);
    let fits = (lo..=hi).contains(&counts.canary);
    let state = if fits && shown.failures == 0 {
        RowState::Passed
    } else {
        RowState::Failed
    };
    line.finish(&row(shown, elapsed, state));
    out.detail(&format!(
        "{} {} · {} {} · accepted {}..={} of {} at {}",
        out.stable(v1),
        group(counts.requests - counts.canary - counts.failures),
        out.canary(v2),
        group(counts.canary),
        group(lo),
        group(hi),
        group(counts.requests),
        percent(weight),
    ));
    if let Some(first) = first_failure {
        bail!(
            "{} request(s) failed at {}; first: {first}",
            counts.failures,
            percent(weight)
        );
    }
    if !fits {
        bail!(
            "at {} canary served {} of {} requests, outside [{lo}, {hi}] (exact binomial, \
             false alarms {FALSE_ALARM_PER_CHECK:e})",
            percent(weight),
            counts.canary,
            counts.requests
        );
    }
    if shown.failures > 0 {
        let first = load.seen().into_iter().find(|s| s.status != 200);
        bail!(
            "background user requests failed at {}: {first:?}",
            percent(weight)
        );
    }
    Ok(shown)
}

fn summary(out: &Display, results: &[StepResult], seen: &[Seen], v1: &str, v2: &str) {
    out.section("Summary");
    out.line(&out.dim(
        "  step  target  observed   canary / requests   accepted range  non-2xx  promote → sidecar",
    ));
    for r in results {
        let c = r.counts;
        let (lo, hi) = binomial_bounds(c.requests, f64::from(r.weight_bp) / 10_000.0);
        let n = c.requests.max(1) as f64;
        out.line(&format!(
            "  {:>5}  {:>6}  {:>8}  {:>7} / {:>8}   {:<14}  {:>7}  {:<9}  {}",
            r.label,
            percent(r.weight_bp),
            format!("{:.2}%", 100.0 * c.canary as f64 / n),
            group(c.canary),
            group(c.requests),
            format!("{:.1}–{:.1}%", 100.0 * lo as f64 / n, 100.0 * hi as f64 / n),
            group(c.failures),
            r.to_sidecar.map_or("initial".to_owned(), |d| format!(
                "{:.2} s",
                d.as_secs_f64()
            )),
            out.green("✓"),
        ));
    }
    let on = |hash: &str| {
        seen.iter()
            .filter(|s| s.hash.as_deref() == Some(hash))
            .count() as u64
    };
    let failed = seen.iter().filter(|s| s.status != 200).count() as u64;
    out.blank();
    out.line(&format!(
        "{} canary {} promoted to stable by the controller in a real mesh, {} steps measured",
        out.green("✓"),
        out.canary(v2),
        results.len().saturating_sub(1)
    ));
    out.line(&format!(
        "  background users: {} requests ({} on {}, {} on {}), {} non-2xx",
        group(seen.len() as u64),
        group(on(v1)),
        out.stable(v1),
        group(on(v2)),
        out.canary(v2),
        group(failed)
    ));
}
