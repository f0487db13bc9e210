//! Running the controller in production: two replicas with leader election (only the leader
//! acts; the other takes over when it dies and the rollout continues), and the metrics and
//! health endpoints. Against a real API server; the tests play kubelet.
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

use canary_cluster::{kubelet, ControlPlane};
use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::leader::{run_as_leader, LeaseConfig};
use canary_controller::reconcile::{run_with, wasm_plugin_resource, Context};
use canary_controller::telemetry::{serve_on, Metrics};
use canary_controller::FIELD_MANAGER;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;
use support::traffic::weight_sequence;
use support::versions::Recording;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

async fn setup(ns: &str) -> (Arc<ControlPlane>, Client, JoinHandle<()>) {
    let (plane, client) = support::namespace(ns).await;
    support::reviews_destination_rule(&client, ns).await;
    let (c, n) = (client.clone(), ns.to_owned());
    // Plays kubelet: every Pod of the namespace becomes Running and Ready.
    let kubelet = tokio::spawn(kubelet::play_kubelet(c, n));
    (plane, client, kubelet)
}

fn rollout(ns: &str, image: &str) -> serde_json::Value {
    json!({"apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout", "metadata": {"name": "reviews", "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "reviews"}},
            "template": {"metadata": {"labels": {"app": "reviews"}}, "spec": {"containers": [{"name": "reviews", "image": image}]}},
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}],
                "trafficRouting": {"wasm": {"service": "reviews", "wasmPlugin": {"url": "oci://registry.example.com/f:1"}, "destinationRule": {"name": "reviews"}}}}}}})
}

async fn until(
    api: &Api<CanaryRollout>,
    what: &str,
    check: impl Fn(&CanaryRollout) -> bool,
) -> CanaryRollout {
    let start = tokio::time::Instant::now();
    loop {
        let r = api.get("reviews").await.unwrap();
        if check(&r) {
            return r;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}: {:#?}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The platform team applies the rollout with image `image`.
async fn apply_rollout(api: &Api<CanaryRollout>, ns: &str, image: &str) {
    api.patch(
        "reviews",
        &PatchParams::apply("platform-team"),
        &Patch::Apply(rollout(ns, image)),
    )
    .await
    .unwrap();
}

fn weight(r: &CanaryRollout) -> u32 {
    r.status.as_ref().map_or(0, |s| s.canary_weight)
}

const LEASE: &str = "wasm-canary-controller";

/// Which replica runs the controller, moment by moment, as the replicas themselves report it:
/// a term starts when a replica's controller starts and ends when it is dropped. Both replicas
/// run in this process, so "at most one acts at any moment" is checked exactly.
#[derive(Default, Clone)]
struct Terms {
    acting: Option<&'static str>,
    /// Every term, in order.
    held: Vec<&'static str>,
    /// Terms that began while another was running.
    overlaps: Vec<String>,
}

/// One running term; ends when dropped.
struct Term {
    terms: Arc<Mutex<Terms>>,
    name: &'static str,
}

impl Term {
    fn begin(terms: &Arc<Mutex<Terms>>, name: &'static str) -> Term {
        let mut t = terms.lock().unwrap();
        if let Some(other) = t.acting {
            let overlap = format!("{name} started acting while {other} was acting");
            t.overlaps.push(overlap);
        }
        t.acting = Some(name);
        t.held.push(name);
        Term {
            terms: terms.clone(),
            name,
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let mut t = self.terms.lock().unwrap();
        if t.acting == Some(self.name) {
            t.acting = None;
        }
    }
}

struct Replica {
    name: &'static str,
    metrics: Arc<Metrics>,
    task: JoinHandle<()>,
}

/// A controller replica with leader election. A 6 s lease renewed every second: the leader
/// steps down only after 5 s without a successful renewal, which a loaded machine does not
/// cause; if it ever did, the replica campaigns again (as the Deployment restarts a replica
/// that lost its lease) and the assertions below still hold, since they are about who acts,
/// not about how many hand-overs happen.
fn start_replica(
    client: &Client,
    ns: &str,
    name: &'static str,
    terms: &Arc<Mutex<Terms>>,
) -> Replica {
    let metrics = Arc::new(Metrics::default());
    let mut cfg = LeaseConfig::new(ns, LEASE, name);
    cfg.duration = Duration::from_secs(6);
    cfg.renew_every = Duration::from_secs(1);
    let (c, m, n, terms) = (
        client.clone(),
        metrics.clone(),
        ns.to_owned(),
        terms.clone(),
    );
    let task = tokio::spawn(async move {
        loop {
            let ctx = Arc::new(Context::with_metrics(c.clone(), m.clone()));
            let (terms, n) = (terms.clone(), n.clone());
            let work = async move {
                let _term = Term::begin(&terms, name);
                run_with(ctx, Some(n)).await;
            };
            let _ = run_as_leader(c.clone(), cfg.clone(), &m, work).await;
        }
    });
    Replica {
        name,
        metrics,
        task,
    }
}

async fn lease(client: &Client, ns: &str) -> Option<LeaseSpec> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    leases.get_opt(LEASE).await.unwrap()?.spec
}

async fn holder(client: &Client, ns: &str) -> Option<String> {
    lease(client, ns).await?.holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_only_the_leader_acts_and_the_other_takes_over_when_it_dies() {
    let ns = "leader-election";
    let (_plane, client, kubelet) = setup(ns).await;
    let terms = Arc::new(Mutex::new(Terms::default()));
    let a = start_replica(&client, ns, "replica-a", &terms);
    // The second replica starts once the first leads, as in a rolling Deployment (so its
    // attempts do not run in lockstep with the leader's renewals).
    let started = tokio::time::Instant::now();
    while holder(&client, ns).await.is_none() {
        assert!(started.elapsed() < WAIT, "nobody took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = start_replica(&client, ns, "replica-b", &terms);
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    apply_rollout(&api, ns, "reviews:v1").await;
    until(&api, "the first version stable", |r| {
        r.status.as_ref().is_some_and(|s| s.phase == Phase::Healthy)
    })
    .await;
    let rollouts = Recording::start(api.clone(), "", "metadata.name=reviews").await;
    let plugins = Recording::start(
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &wasm_plugin_resource()),
        "",
        "metadata.name=wasm-canary",
    )
    .await;
    apply_rollout(&api, ns, "reviews:v2").await;
    until(&api, "20%", |r| weight(r) == 2_000).await;

    let leader_name = holder(&client, ns).await.expect("a lease holder");
    let (leader, follower) = if leader_name == a.name {
        (a, b)
    } else {
        (b, a)
    };
    let overlaps = terms.lock().unwrap().overlaps.clone();
    assert!(
        overlaps.is_empty(),
        "two replicas acted at once: {overlaps:?}"
    );
    assert_eq!(
        terms.lock().unwrap().acting,
        Some(leader.name),
        "the lease holder is the replica that acts"
    );
    assert!(leader.metrics.reconciles.get() > 0, "the leader reconciles");
    for r in [&leader, &follower] {
        if !terms.lock().unwrap().held.contains(&r.name) {
            assert_eq!(
                (r.metrics.reconciles.get(), r.metrics.leader.get()),
                (0, 0),
                "{} never led, so it never reconciled",
                r.name
            );
        }
    }

    // The leader dies without releasing the lease (as on a node failure).
    leader.task.abort();
    let _ = leader.task.await;
    api.patch(
        "reviews",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"wasmcanary.io/promote": "step"}}})),
    )
    .await
    .unwrap();
    let r = until(&api, "the follower to take over and continue to 50%", |r| {
        weight(r) == 5_000
    })
    .await;
    assert_eq!(
        r.status.unwrap().current_step_index,
        Some(3),
        "continued from where the dead leader stopped"
    );
    assert_eq!(holder(&client, ns).await.as_deref(), Some(follower.name));
    assert!(follower.metrics.reconciles.get() > 0);

    let t = terms.lock().unwrap().clone();
    assert!(
        t.overlaps.is_empty(),
        "two replicas acted at once: {:?}",
        t.overlaps
    );
    assert_eq!(t.acting, Some(follower.name));
    // Every change of the acting replica was a hand-over of the lease, and only those.
    let mut changes = t.held.clone();
    changes.dedup();
    let transitions = lease(&client, ns).await.unwrap().lease_transitions;
    assert_eq!(
        transitions,
        Some(i32::try_from(changes.len()).unwrap() - 1),
        "terms {:?}",
        t.held
    );
    // What users saw across the hand-over, from every stored version: the step only moved
    // forward, and the filter got 20% then 50% (no step repeated, none skipped).
    rollouts.sync().await;
    plugins.sync().await;
    let steps: Vec<i32> = rollouts
        .versions()
        .iter()
        .filter_map(|v| v.object.status.as_ref()?.current_step_index)
        .collect();
    assert!(
        steps.windows(2).all(|w| w[0] <= w[1]) && steps.contains(&1) && steps.last() == Some(&3),
        "step index over every rollout version: {steps:?}"
    );
    assert_eq!(weight_sequence(&plugins.versions()), [0, 2_000, 5_000]);
    follower.task.abort();
    kubelet.abort();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_reconciles_phase_and_weight_per_rollout_and_health_endpoints_answer() {
    let ns = "metrics";
    let (_plane, client, kubelet) = setup(ns).await;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_on(listener, metrics.clone()));
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(
        http_get(addr, "/readyz").await.0,
        503,
        "not ready before the controller runs"
    );

    let ctx = Arc::new(Context::with_metrics(client.clone(), metrics.clone()));
    let controller = tokio::spawn(run_with(ctx, Some(ns.to_owned())));
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    apply_rollout(&api, ns, "reviews:v1").await;
    until(&api, "stable", |r| {
        r.status.as_ref().is_some_and(|s| s.phase == Phase::Healthy)
    })
    .await;
    apply_rollout(&api, ns, "reviews:v2").await;
    until(&api, "20%", |r| {
        weight(r) == 2_000 && r.status.as_ref().is_some_and(|s| s.phase == Phase::Paused)
    })
    .await;

    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"wasm_canary_rollout_canary_weight_basis_points{namespace="metrics",rollout="reviews"} 2000"#,
        r#"wasm_canary_rollout_phase{namespace="metrics",rollout="reviews",phase="Paused"} 1"#,
        r#"wasm_canary_rollout_phase{namespace="metrics",rollout="reviews",phase="Healthy"} 0"#,
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }
    let reconciles: u64 = body
        .lines()
        .find(|l| l.starts_with("wasm_canary_reconciles_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("reconciles counter");
    assert!(reconciles >= 2, "{reconciles}");
    assert!(body.contains("wasm_canary_rollout_step_duration_seconds_count{namespace=\"metrics\",rollout=\"reviews\"}"));
    assert!(body.contains("# EOF"), "OpenMetrics text");
    controller.abort();
    server.abort();
    kubelet.abort();
}

/// The shipped controller binary, run as one replica of the Deployment would be: default
/// lease settings, its identity and Events' reporting instance from POD_NAME. Killed (SIGKILL)
/// when dropped, on failure too.
struct ControllerProcess {
    name: &'static str,
    child: std::process::Child,
}

impl ControllerProcess {
    fn start(kubeconfig: &std::path::Path, ns: &str, name: &'static str) -> ControllerProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_wasm-canary-controller"))
            .args(["--namespace", ns, "--lease-namespace", ns])
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "text"])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the wasm-canary-controller binary");
        ControllerProcess { name, child }
    }

    /// Dies at once, releasing nothing (as on a node failure).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The controller's Events in the namespace by name: (reason, the replica that recorded it).
async fn event_reporters(client: &Client, ns: &str) -> BTreeMap<String, (String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some(FIELD_MANAGER))
        .map(|e| {
            (
                e.metadata.name.unwrap_or_default(),
                (
                    e.reason.unwrap_or_default(),
                    e.reporting_instance.unwrap_or_default(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_shipped_lease_settings_a_follower_takes_over_within_the_lease_when_the_leader_dies(
) {
    let ns = "default-lease";
    let (plane, client, kubelet) = setup(ns).await;
    let mut a = ControllerProcess::start(plane.kubeconfig_path(), ns, "replica-a");
    let mut b = ControllerProcess::start(plane.kubeconfig_path(), ns, "replica-b");
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    apply_rollout(&api, ns, "reviews:v1").await;
    until(&api, "the first version stable", |r| {
        r.status.as_ref().is_some_and(|s| s.phase == Phase::Healthy)
    })
    .await;
    let held = lease(&client, ns).await.expect("the leader Lease");
    let lease_seconds = held.lease_duration_seconds.expect("a lease duration");
    assert_eq!(lease_seconds, 15, "the lease the README documents");
    let leader_name = held.holder_identity.clone().expect("a holder");
    let (leader, follower) = if leader_name == a.name {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    let before = event_reporters(&client, ns).await;
    assert!(
        !before.is_empty() && before.values().all(|(_, by)| by == leader.name),
        "only the leader acted: {before:?}"
    );

    leader.kill();
    let killed = tokio::time::Instant::now();
    let last_renewal = lease(&client, ns).await.unwrap().renew_time.unwrap().0;
    // A change only a running leader acts on.
    apply_rollout(&api, ns, "reviews:v2").await;
    until(&api, "the follower to start the canary", |r| {
        weight(r) == 2_000
    })
    .await;
    let took = killed.elapsed();

    let taken = lease(&client, ns).await.unwrap();
    assert_eq!(taken.holder_identity.as_deref(), Some(follower.name));
    let lease = Duration::from_secs(u64::try_from(lease_seconds).unwrap());
    let acquired = taken.acquire_time.unwrap().0;
    assert!(
        acquired >= last_renewal + lease,
        "the follower took the lease at {acquired} while the dead leader's was valid (renewed {last_renewal})"
    );
    // The follower retries every lease/5 (main.rs) and takes the lease once it has not been
    // renewed for the lease duration; the rest is slack for a loaded machine, not a latency
    // claim.
    let bound = lease + lease / 5 + Duration::from_secs(5);
    assert!(
        took <= bound,
        "the follower acted {took:?} after the leader died; documented: within the {lease:?} lease (bound {bound:?})"
    );
    let after = event_reporters(&client, ns).await;
    let new: Vec<_> = after
        .iter()
        .filter(|(name, _)| !before.contains_key(*name))
        .map(|(_, e)| e)
        .collect();
    assert!(
        new.iter().any(|(reason, _)| reason == "CanaryStarted")
            && new.iter().all(|(_, by)| by == follower.name),
        "after the leader died only the follower acted: {new:?}"
    );
    eprintln!("takeover after the leader died: {took:?} (lease {lease:?})");
    drop(a);
    drop(b);
    kubelet.abort();
}
