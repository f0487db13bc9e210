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

use std::sync::Arc;
use std::time::Duration;

use canary_cluster::{kubelet, ControlPlane};
use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::leader::{run_as_leader, LeaseConfig};
use canary_controller::reconcile::{run_with, Context};
use canary_controller::telemetry::{serve_on, Metrics};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;
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

struct Replica {
    name: &'static str,
    metrics: Arc<Metrics>,
    task: JoinHandle<()>,
}

fn start_replica(client: &Client, ns: &str, name: &'static str) -> Replica {
    let metrics = Arc::new(Metrics::default());
    let mut cfg = LeaseConfig::new(ns, "wasm-canary-controller", name);
    cfg.duration = Duration::from_secs(3);
    cfg.renew_every = Duration::from_millis(500);
    let (c, m, n) = (client.clone(), metrics.clone(), ns.to_owned());
    let task = tokio::spawn(async move {
        let ctx = Arc::new(Context::with_metrics(c.clone(), m.clone()));
        let _ = run_as_leader(c, cfg, &m, run_with(ctx, Some(n))).await;
    });
    Replica {
        name,
        metrics,
        task,
    }
}

async fn holder(client: &Client, ns: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    leases
        .get_opt("wasm-canary-controller")
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_only_the_leader_acts_and_the_other_takes_over_when_it_dies() {
    let ns = "leader-election";
    let (_plane, client, kubelet) = setup(ns).await;
    let a = start_replica(&client, ns, "replica-a");
    let b = start_replica(&client, ns, "replica-b");
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    apply_rollout(&api, ns, "reviews:v1").await;
    until(&api, "the first version stable", |r| {
        r.status.as_ref().is_some_and(|s| s.phase == Phase::Healthy)
    })
    .await;
    apply_rollout(&api, ns, "reviews:v2").await;
    until(&api, "20%", |r| weight(r) == 2_000).await;

    let leader_name = holder(&client, ns).await.expect("a lease holder");
    let (leader, follower) = if leader_name == a.name {
        (a, b)
    } else {
        (b, a)
    };
    assert!(leader.metrics.reconciles.get() > 0, "the leader reconciles");
    assert_eq!(
        follower.metrics.reconciles.get(),
        0,
        "the follower never acts while the leader lives"
    );
    assert_eq!(
        (leader.metrics.leader.get(), follower.metrics.leader.get()),
        (1, 0)
    );

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
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let transitions = leases
        .get("wasm-canary-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions;
    assert_eq!(transitions, Some(1), "exactly one hand-over");
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
