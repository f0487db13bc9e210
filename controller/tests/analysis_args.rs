//! Analysis arguments on a real API server, measured by a web provider on a local server that
//! records what it receives: a `valueFrom.secretKeyRef` argument reaches the provider and its
//! value is nowhere a user without `get secrets` can read (the rollout, Events, the
//! controller's logs, `/metrics`, `kubectl canary status`); `podTemplateHashValue` and
//! `fieldRef` arguments are the rollout's actual hashes and annotation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use canary_cluster::kubelet::play_kubelet;
use canary_cluster::ControlPlane;
use canary_controller::analysis::{AnalysisPhase, AnalysisTemplate};
use canary_controller::crd::{CanaryRollout, Phase};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ApiResource, ListParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use support::http_stub::{HttpStub, Reply};
use support::owned_process::{free_loopback_addr, OwnedProcess};
use support::rollout_wait::rollout_until;
use support::secret_leaks::{echo_credentials, token_leak, TOKEN};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(90);
const ROLLOUT: &str = "reviews";
const TEMPLATE: &str = "checks";

/// A namespace with the platform's DestinationRule and a kubelet stand-in; the controller is
/// the test's to start.
struct Cluster {
    plane: Arc<ControlPlane>,
    client: Client,
    ns: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    async fn new(ns: &str) -> Cluster {
        let (plane, client) = support::namespace(ns).await;
        support::reviews_destination_rule(&client, ns).await;
        let kubelet = tokio::spawn(play_kubelet(client.clone(), ns.to_owned()));
        Cluster {
            plane,
            client,
            ns: ns.to_owned(),
            tasks: vec![kubelet],
        }
    }

    fn run_controller_in_process(&mut self) {
        let (client, ns) = (self.client.clone(), self.ns.clone());
        self.tasks.push(tokio::spawn(async move {
            canary_controller::reconcile::run(client, Some(ns)).await
        }));
    }

    async fn apply(&self, resource: &ApiResource, name: &str, v: &Value) {
        support::apply_as_platform_team(&self.client, &self.ns, resource, name, v).await;
    }

    async fn apply_template(&self, args: Value, metrics: Value) {
        let template = json!({
            "apiVersion": "wasmcanary.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": TEMPLATE, "namespace": self.ns},
            "spec": {"args": args, "metrics": metrics}
        });
        self.apply(
            &ApiResource::erase::<AnalysisTemplate>(&()),
            TEMPLATE,
            &template,
        )
        .await;
    }

    /// Rollout `reviews` running `image`: setWeight 20, then an analysis step of the template
    /// with `args`, then 100%. `annotations` go on the rollout itself.
    async fn apply_rollout(&self, image: &str, args: Value, annotations: Value) {
        let mut rollout =
            support::rollout_with_analysis_step(&self.ns, image, 1, 20, TEMPLATE, args);
        rollout["metadata"]["annotations"] = annotations;
        self.apply(&ApiResource::erase::<CanaryRollout>(&()), ROLLOUT, &rollout)
            .await;
    }

    async fn until(
        &self,
        what: &str,
        done: impl Fn(&CanaryRollout) -> bool,
        stop: impl Fn(&CanaryRollout) -> bool,
    ) -> CanaryRollout {
        rollout_until(&self.client, &self.ns, ROLLOUT, what, WAIT, done, stop).await
    }

    /// Rolls out `image` as the first version (no canary: it becomes stable at once); its hash.
    async fn first_version(&self, image: &str, args: Value, annotations: Value) -> String {
        self.apply_rollout(image, args, annotations).await;
        let r = self
            .until(
                "the first version to be stable",
                |r| phase(r) == Some(Phase::Healthy),
                |_| false,
            )
            .await;
        r.status.unwrap().stable_hash.unwrap()
    }
}

fn phase(r: &CanaryRollout) -> Option<Phase> {
    r.status.as_ref().map(|s| s.phase)
}

/// Healthy on a version other than `stable`: the canary was promoted.
fn promoted_from(r: &CanaryRollout, stable: &str) -> bool {
    r.status
        .as_ref()
        .is_some_and(|s| s.phase == Phase::Healthy && s.stable_hash.as_deref() != Some(stable))
}

/// The controller binary as deployed (JSON logs), with debug logging on (what an operator
/// turns on to investigate), watching one namespace. Its stdout and stderr go to one file;
/// killed on drop, also when the test fails.
struct ControllerProcess {
    process: OwnedProcess,
    metrics: SocketAddr,
}

impl ControllerProcess {
    fn start(kubeconfig: &std::path::Path, ns: &str) -> ControllerProcess {
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("controller.log")).unwrap();
        let metrics = free_loopback_addr();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasm-canary-controller"));
        command
            .args([
                "--namespace",
                ns,
                "--no-leader-election",
                "--log-format",
                "json",
            ])
            .arg(format!("--metrics-addr={metrics}"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        ControllerProcess {
            process: OwnedProcess::spawn(&mut command, dir).unwrap(),
            metrics,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.process.dir().join("controller.log")).unwrap()
    }

    async fn metrics(&self) -> String {
        let addr = self.metrics;
        tokio::task::spawn_blocking(move || wasm_canary_e2e::http::admin_get(addr, "/metrics"))
            .await
            .unwrap()
            .unwrap()
            .body
    }
}

/// Every Event of the namespace, both APIs (events.k8s.io/v1, which the controller writes,
/// and core/v1, which `kubectl get events` reads), as JSON.
async fn events(client: &Client, ns: &str) -> String {
    let new: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default();
    format!(
        "{}\n{}",
        serde_json::to_string(&new.list(&lp).await.unwrap().items).unwrap(),
        serde_json::to_string(&core.list(&lp).await.unwrap().items).unwrap()
    )
}

/// A web metric with the token in its Authorization header; a provider that echoes the
/// caller back (as an identity endpoint does) in its JSON answer; and a Prometheus query
/// naming the token as a tenant, answered with an error that quotes the query (as Prometheus'
/// `bad_data` does) and aborts the rollout, so the message reaches the status and an Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_argument_reaches_the_provider_and_is_nowhere_a_user_without_secret_access_reads()
{
    let cluster = Cluster::new("analysis-secret-arg").await;
    let provider = HttpStub::start(echo_credentials).await;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("analysis-credentials".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "token".to_owned(),
            ByteString(TOKEN.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(cluster.client.clone(), &cluster.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    cluster
        .apply_template(
            json!([{"name": "token", "valueFrom": {"secretKeyRef": {"name": "analysis-credentials", "key": "token"}}}]),
            json!([
                {"name": "authorized", "successCondition": "result.healthy == true",
                 "provider": {"web": {"url": format!("{}/whoami", provider.url), "jsonPath": "{$.check}",
                     "headers": [{"key": "Authorization", "value": "Bearer {{ args.token }}"}]}}},
                {"name": "tenant-errors", "successCondition": "result[0] < 1", "consecutiveErrorLimit": 0,
                 "provider": {"prometheus": {"address": provider.url,
                     "query": "sum(rate(errors{tenant=\"{{ args.token }}\"}[1m]))"}}}
            ]),
        )
        .await;
    let controller = ControllerProcess::start(cluster.plane.kubeconfig_path(), &cluster.ns);

    let v1 = cluster
        .first_version("reviews:v1", json!([]), json!({}))
        .await;
    cluster
        .apply_rollout("reviews:v2", json!([]), json!({}))
        .await;
    let rollout = cluster
        .until(
            "the analysis to abort the canary",
            |r| phase(r) == Some(Phase::Aborted),
            |r| promoted_from(r, &v1),
        )
        .await;

    // The provider got the token itself, in both places.
    let requests = provider.requests();
    let whoami = requests.iter().find(|r| r.path() == "/whoami").unwrap();
    assert_eq!(
        whoami.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let query = requests
        .iter()
        .find_map(|r| (r.path() == "/api/v1/query").then(|| r.query_param("query")))
        .flatten()
        .unwrap();
    assert_eq!(
        query,
        format!("sum(rate(errors{{tenant=\"{TOKEN}\"}}[1m]))")
    );

    // Everything a user without `get secrets` reads: no spelling of the token anywhere.
    // The controller writes its Events after the status that the wait above read: wait for
    // the Event quoting the failed metric's redacted error instead of reading the list once.
    let start = std::time::Instant::now();
    let events = loop {
        let events = events(&cluster.client, &cluster.ns).await;
        if events.contains("tenant-errors") && events.contains("*****")
            || start.elapsed() > std::time::Duration::from_secs(60)
        {
            break events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let (kubeconfig, ns) = (
        cluster.plane.kubeconfig_path().to_owned(),
        cluster.ns.clone(),
    );
    let kubectl_status = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kubectl-canary"))
            .args(["status", ROLLOUT, "-n", &ns])
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(kubectl_status.status.success(), "{kubectl_status:?}");
    let kubectl_status = format!(
        "{}{}",
        String::from_utf8_lossy(&kubectl_status.stdout),
        String::from_utf8_lossy(&kubectl_status.stderr)
    );
    let metrics = controller.metrics().await;
    let logs = controller.output();
    let rollout_json = serde_json::to_string(&rollout).unwrap();
    let places = [
        ("the CanaryRollout", &rollout_json),
        ("the namespace's Events", &events),
        ("the controller's log", &logs),
        ("/metrics", &metrics),
        ("kubectl canary status", &kubectl_status),
    ];
    let leaks: Vec<String> = places
        .iter()
        .filter_map(|(place, text)| token_leak(place, text))
        .collect();
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));

    // ...and not because the echoes never came back: they are there, redacted.
    let status = rollout.status.clone().unwrap();
    let run = &status.analysis_runs[0];
    assert_eq!(run.phase, AnalysisPhase::Error, "{run:#?}");
    let metric = |name: &str| run.metrics.iter().find(|m| m.name == name).unwrap();
    let authorized = metric("authorized").measurements[0].value.clone().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&authorized).unwrap(),
        json!({"healthy": true, "caller": "Bearer *****"})
    );
    let error = metric("tenant-errors").message.clone().unwrap();
    assert!(
        error.contains("HTTP 400") && error.contains("*****"),
        "{error}"
    );
    assert!(
        events.contains("tenant-errors") && events.contains("*****"),
        "the abort's Event quotes the redacted error: {events}"
    );
    assert!(
        logs.contains("\"measurement\"") && logs.contains("*****"),
        "the controller logged the measurements, redacted: {logs}"
    );
    assert!(kubectl_status.contains("tenant-errors"), "{kubectl_status}");
    assert!(metrics.contains("wasm_canary"), "{metrics}");
}

/// `podTemplateHashValue: Stable|Latest` and `fieldRef` on an annotation, substituted into the
/// provider's URL: what the provider receives is the stable and canary ReplicaSets' real
/// `rollouts-pod-template-hash` and the rollout's annotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_and_annotation_arguments_are_the_rollouts_actual_hashes_and_annotation() {
    let mut cluster = Cluster::new("analysis-hash-args").await;
    let provider = HttpStub::start(|_| Reply::ok(&json!({"ok": true}))).await;
    cluster
        .apply_template(
            json!([{"name": "stable-hash"}, {"name": "canary-hash"}, {"name": "team"}]),
            json!([{"name": "versions", "successCondition": "result.ok",
                "provider": {"web": {"url": format!(
                    "{}/verify?stable={{{{ args.stable-hash }}}}&canary={{{{ args.canary-hash }}}}&team={{{{ args.team }}}}",
                    provider.url)}}}]),
        )
        .await;
    let args = json!([
        {"name": "stable-hash", "valueFrom": {"podTemplateHashValue": "Stable"}},
        {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
        {"name": "team", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['example.com/owner-team']"}}}
    ]);
    let annotations = json!({"example.com/owner-team": "payments-7"});
    cluster.run_controller_in_process();

    let v1 = cluster
        .first_version("reviews:v1", args.clone(), annotations.clone())
        .await;
    cluster.apply_rollout("reviews:v2", args, annotations).await;
    let promoted = cluster
        .until(
            "the canary to pass its analysis and be promoted",
            |r| promoted_from(r, &v1),
            |r| matches!(phase(r), Some(Phase::Aborted | Phase::Degraded)),
        )
        .await;
    let v2 = promoted.status.unwrap().stable_hash.unwrap();
    assert_ne!(v1, v2);

    // The ReplicaSets running each image carry these hashes.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    for (hash, image) in [(&v1, "reviews:v1"), (&v2, "reviews:v2")] {
        let rs = replica_sets
            .get(&format!("{ROLLOUT}-{hash}"))
            .await
            .unwrap();
        let template = rs.spec.template;
        assert_eq!(
            template.unwrap().spec.unwrap().containers[0]
                .image
                .as_deref(),
            Some(image)
        );
        assert_eq!(
            rs.metadata.labels.unwrap()["rollouts-pod-template-hash"],
            *hash
        );
    }
    let requests = provider.requests();
    assert!(!requests.is_empty(), "the analysis step measured");
    for r in &requests {
        assert_eq!(r.path(), "/verify");
        assert_eq!(
            (
                r.query_param("stable"),
                r.query_param("canary"),
                r.query_param("team")
            ),
            (
                Some(v1.clone()),
                Some(v2.clone()),
                Some("payments-7".to_owned())
            ),
            "{r:?}"
        );
    }
}
