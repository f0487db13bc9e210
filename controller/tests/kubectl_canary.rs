//! `kubectl canary` against a real API server: the fixture demo converted, applied (schemas
//! checked by the server, strict field validation), run by the controller, and steered with
//! the plugin's commands as a user would, reading what it prints. This test plays kubelet.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use canary_cluster::ControlPlane;
use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::{destination_rule_resource, wasm_plugin_resource};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::Client;
use serde::Deserialize;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "bookinfo";
const NAME: &str = "reviews-rollout";

fn fixture(path: &str) -> PathBuf {
    let root = std::env::var("WASM_CANARY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            // The fixtures sit next to the checkout (../shared), as on the CI machine.
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tse-gitops-demo")
        });
    root.join(path)
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

struct Plugin {
    kubeconfig: PathBuf,
}

impl Plugin {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kubectl-canary"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .unwrap()
    }
    /// Runs a command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let (stdout, stderr) = (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        );
        assert!(
            out.status.success(),
            "kubectl canary {args:?} failed: {stderr}"
        );
        stdout
    }
    /// Runs a command that must fail; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "kubectl canary {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}

use canary_cluster::kubelet::play_kubelet;

async fn until<T>(
    api: &Api<CanaryRollout>,
    what: &str,
    mut check: impl FnMut(&CanaryRollout) -> Option<T>,
) -> T {
    let start = tokio::time::Instant::now();
    loop {
        let r = api.get(NAME).await.unwrap();
        if let Some(t) = check(&r) {
            return t;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; status: {:#?}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn resource_of(o: &Value) -> ApiResource {
    let (group, version) = o["apiVersion"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap_or(("", "v1"));
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        group,
        version,
        o["kind"].as_str().unwrap(),
    ))
}

async fn apply_strict(client: &Client, o: &Value) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource_of(o));
    let mut pp = PatchParams::apply("platform-team").force();
    pp.field_validation = Some(kube::api::ValidationDirective::Strict);
    api.patch(
        o["metadata"]["name"].as_str().unwrap(),
        &pp,
        &Patch::Apply(o),
    )
    .await
    .unwrap_or_else(|e| panic!("the API server accepts the converted {}: {e}", o["kind"]));
}

/// A fake Envoy admin endpoint serving the filter's counters once per connection.
fn fake_envoy_admin(stats: Value) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(8) {
            let Ok(mut conn) = conn else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = stats.to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_converted_demo_runs_and_is_steered_with_kubectl_canary() {
    let plane = ControlPlane::shared()
        .await
        .expect("control plane (run `make cluster-build` first)");
    let admin = plane.client().await.unwrap();
    plane.create_namespace(&admin, NS).await.unwrap();
    plane
        .install_crds(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds/canaryrollout.yaml"))
        .await
        .unwrap();
    let plugin = Plugin {
        kubeconfig: plane.kubeconfig_path().to_owned(),
    };

    // Before anything exists: errors say what to do next.
    let err = plugin.fails(&["status", NAME, "-n", NS]);
    assert!(
        err.contains(&format!("rollout {NAME} not found in namespace {NS}"))
            && err.contains(&format!("kubectl canary list -n {NS}")),
        "{err}"
    );
    assert!(plugin.ok(&["list", "-n", NS]).contains("No CanaryRollouts"));

    // The Bookinfo reviews Deployment (the workloadRef), then the converted objects.
    let bookinfo = std::fs::read_to_string(fixture("application/bookinfo.yaml")).unwrap();
    let mut deployment = yaml_docs(&bookinfo)
        .into_iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "reviews")
        .unwrap();
    deployment["metadata"]["namespace"] = json!(NS);
    // Its pods run as this ServiceAccount: without it the ReplicaSets cannot create pods.
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "bookinfo-reviews", "namespace": NS}});
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), NS)
        .patch(
            "bookinfo-reviews",
            &PatchParams::apply("platform-team"),
            &Patch::Apply(&account),
        )
        .await
        .unwrap();
    Api::<Deployment>::namespaced(admin.clone(), NS)
        .patch(
            "reviews",
            &PatchParams::apply("platform-team"),
            &Patch::Apply(&deployment),
        )
        .await
        .unwrap();
    let converted = plugin.ok(&[
        "convert",
        "-n",
        NS,
        "--drop-analysis",
        "--client-selector",
        "app=productpage",
        "-f",
        fixture("argo/rollout/rollout.yaml").to_str().unwrap(),
        "-f",
        fixture("argo/tse/conf.yaml").to_str().unwrap(),
    ]);
    for o in yaml_docs(&converted) {
        apply_strict(&admin, &o).await;
    }

    let kubelet = tokio::spawn(play_kubelet(admin.clone(), NS.to_owned()));
    let controller_client = plane.client().await.unwrap();
    let controller = tokio::spawn(canary_controller::reconcile::run(
        controller_client,
        Some(NS.to_owned()),
    ));
    let rollouts: Api<CanaryRollout> = Api::namespaced(admin.clone(), NS);
    let v1 = until(&rollouts, "the first version stable", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Healthy)
            .then(|| s.stable_hash.clone())
            .flatten()
    })
    .await;
    let list = plugin.ok(&["list", "-n", NS]);
    assert!(
        list.contains("NAME") && list.contains(NAME) && list.contains("Healthy"),
        "{list}"
    );
    let all = plugin.ok(&["list", "-A"]);
    assert!(
        all.lines().next().unwrap().starts_with("NAMESPACE"),
        "{all}"
    );

    // A new image in the Deployment starts the canary: 10%, then the 10m pause.
    Api::<Deployment>::namespaced(admin.clone(), NS)
        .patch(
            "reviews",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "reviews", "image": "docker.io/istio/examples-bookinfo-reviews-v2:1.16.4"}]}}}})),
        )
        .await
        .unwrap();
    let v2 = until(&rollouts, "the pause after 10%", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Paused && s.canary_weight == 1_000)
            .then(|| s.canary_hash.clone())
            .flatten()
    })
    .await;
    let service = "bookinfo_reviews";
    let admin_url = fake_envoy_admin(json!({"stats": [
        {"name": format!("wasmcustom.wasmcanary.decision.{service}.stable.weight"), "value": 900},
        {"name": format!("wasmcustom.wasmcanary.decision.{service}.canary.weight"), "value": 95},
        {"name": format!("wasmcustom.wasmcanary.decision.{service}.canary.header_route"), "value": 5},
        {"name": "wasmcustom.wasmcanary.config_accepted", "value": 3}
    ]}));
    let status = plugin.ok(&["status", NAME, "-n", NS, "--envoy-admin", &admin_url]);
    for expected in [
        "Phase:      Paused".to_owned(),
        "10% to canary".to_owned(),
        format!("Stable:    {v1}  {NAME}-{v1}  5/5 ready"),
        format!("Canary:    {v2}  {NAME}-{v2}  1/1 ready"),
        "->  2  pause 10m".to_owned(),
        "canary 100/1000 (10.00%) - header_route 5, sticky 0, weight 995".to_owned(),
    ] {
        assert!(
            status.contains(&expected),
            "status shows {expected:?}:\n{status}"
        );
    }
    assert!(
        status.contains("1  setWeight 10%") && status.contains("done"),
        "{status}"
    );

    // set-weight inserts `setWeight 15` + an indefinite pause after the current pause and ends
    // it: the weight moves to 15% and holds; promoting continues with the original steps.
    let out = plugin.ok(&["set-weight", NAME, "15", "-n", NS]);
    assert!(out.contains("steps 3 and 4 inserted"), "{out}");
    until(&rollouts, "15% and holding", |r| {
        let s = r.status.as_ref()?;
        (s.canary_weight == 1_500 && s.phase == Phase::Paused).then_some(())
    })
    .await;
    let steps = rollouts
        .get(NAME)
        .await
        .unwrap()
        .spec
        .strategy
        .canary
        .unwrap()
        .steps;
    assert_eq!(steps.len(), 12);
    assert_eq!(steps[2].set_weight, Some(15.0));
    assert!(steps[3]
        .pause
        .as_ref()
        .is_some_and(|p| p.duration.is_none()));
    let err = plugin.fails(&["set-weight", NAME, "150", "-n", NS]);
    assert!(err.contains("outside 0..100"), "{err}");

    // pause / resume hold and release the rollout through spec.paused.
    plugin.ok(&["pause", NAME, "-n", NS]);
    assert!(rollouts.get(NAME).await.unwrap().spec.paused);
    plugin.ok(&["resume", NAME, "-n", NS]);
    assert!(!rollouts.get(NAME).await.unwrap().spec.paused);

    // promote ends the pause: 20%. Sent at once, while the controller may still be removing
    // set-weight's own promote request: each request carries its id, the removal is
    // conditional on it, so this one is kept and acted on (it used to be erased).
    plugin.ok(&["promote", NAME, "-n", NS]);
    until(&rollouts, "20%", |r| {
        (r.status.as_ref()?.canary_weight == 2_000).then_some(())
    })
    .await;

    // abort: all traffic back to stable; retry: from step 0 again.
    plugin.ok(&["abort", NAME, "-n", NS]);
    until(&rollouts, "the abort", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Aborted && s.canary_weight == 0).then_some(())
    })
    .await;
    let err = plugin.fails(&["promote", NAME, "-n", NS]);
    assert!(err.contains("kubectl canary retry"), "{err}");
    plugin.ok(&["retry", NAME, "-n", NS]);
    until(&rollouts, "the retry back at 10%", |r| {
        let s = r.status.as_ref()?;
        (!s.aborted && s.canary_weight == 1_000).then_some(())
    })
    .await;

    // --watch without a terminal: the full status once, then one line per change.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_kubectl-canary"))
        .args(["status", NAME, "-n", NS, "--watch", "--interval", "0.3"])
        .env("KUBECONFIG", plane.kubeconfig_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    // promote --full: every remaining step skipped.
    plugin.ok(&["promote", "--full", NAME, "-n", NS]);
    until(&rollouts, "the full promotion", |r| {
        let s = r.status.as_ref()?;
        (s.phase == Phase::Healthy && s.stable_hash.as_deref() == Some(v2.as_str())).then_some(())
    })
    .await;
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
            if seen
                .iter()
                .any(|l| l.contains("phase=Healthy") && l.contains(&format!("stable={v2}")))
            {
                break;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        seen.iter().any(|l| l.starts_with("Rollout:")),
        "full status first: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("phase=Healthy") && l.contains(&format!("stable={v2}"))),
        "the watch printed the promotion as a line: {seen:#?}"
    );

    // --watch on a terminal (a pty from util-linux `script`): the whole status redrawn in place
    // (cursor home, clear) at every refresh, instead of appended lines.
    let mut tty_watch = Command::new("script")
        .args([
            "-qfec",
            &format!(
                "{} status {NAME} -n {NS} --watch --interval 0.3",
                env!("CARGO_BIN_EXE_kubectl-canary")
            ),
            "/dev/null",
        ])
        .env("KUBECONFIG", plane.kubeconfig_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("util-linux `script` (Debian: bsdutils, essential)");
    let mut tty_out = tty_watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut tty_out, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    const CLEAR: &str = "\x1b[H\x1b[J";
    let mut screen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline && screen.matches(CLEAR).count() < 3 {
        if let Ok(bytes) = rx.recv_timeout(Duration::from_millis(200)) {
            screen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    let _ = tty_watch.kill();
    let _ = tty_watch.wait();
    let frames: Vec<&str> = screen.split(CLEAR).skip(1).collect();
    assert!(
        frames.len() >= 3,
        "at least three redraws in place on a terminal: {screen:?}"
    );
    for frame in &frames[..2] {
        assert!(
            frame.contains("Rollout:") && frame.contains("(refreshing every 0.3s"),
            "each redraw is the whole status: {frame:?}"
        );
        assert!(
            !frame.contains("phase=Healthy"),
            "no appended summary lines on a terminal: {frame:?}"
        );
    }

    // The controller's own objects, for the record: the client WasmPlugin and the subsets.
    let wp: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &wasm_plugin_resource());
    let productpage = canary_controller::traffic::lone_plugin_name(&Some(
        [("app".to_owned(), "productpage".to_owned())].into(),
    ));
    let client_plugin = wp.get(&productpage).await.unwrap();
    assert_eq!(
        client_plugin.data["spec"]["selector"]["matchLabels"]["app"],
        "productpage"
    );
    let dr: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), NS, &destination_rule_resource());
    let rule = dr.get("reviews").await.unwrap();
    assert_eq!(
        rule.data["spec"]["subsets"][0]["labels"]["rollouts-pod-template-hash"],
        json!(v2)
    );

    controller.abort();
    kubelet.abort();
}

/// A kubeconfig holding the shared control plane and a cluster that is gone (nothing listens
/// on its port), the admin and a ServiceAccount without any RBAC as users, and contexts
/// combining them with namespaces. Its current context is the gone cluster's, so a command
/// that ignores `--context` fails. The decoy has the same contexts, all on the gone cluster,
/// so a command that reads it instead of the file it was given fails.
struct TwoClusterKubeconfig {
    path: PathBuf,
    decoy: PathBuf,
    gone_server: String,
}

fn two_cluster_kubeconfig(
    dir: &std::path::Path,
    admin_kubeconfig: &std::path::Path,
    nobody_token: &str,
    namespaces: (&str, &str),
) -> TwoClusterKubeconfig {
    let admin: Value =
        serde_yaml::from_str(&std::fs::read_to_string(admin_kubeconfig).unwrap()).unwrap();
    let real = admin["clusters"][0]["cluster"].clone();
    let mut gone = real.clone();
    // A port that was free a moment ago: connections to it are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone_server = format!("https://127.0.0.1:{port}");
    gone["server"] = json!(gone_server);
    let (with_rollout, without) = namespaces;
    let context = |name: &str, cluster: &str, user: &str, ns: &str| json!({"name": name, "context": {"cluster": cluster, "user": user, "namespace": ns}});
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "real", "cluster": real}, {"name": "gone", "cluster": gone}],
        "users": [
            {"name": "admin", "user": admin["users"][0]["user"].clone()},
            {"name": "nobody", "user": {"token": nobody_token}}
        ],
        "contexts": [
            context("real-admin", "real", "admin", with_rollout),
            context("real-admin-empty", "real", "admin", without),
            context("real-nobody", "real", "nobody", with_rollout),
            context("gone-admin", "gone", "admin", with_rollout)
        ],
        "current-context": "gone-admin",
    });
    let path = dir.join("two-clusters.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    let mut decoy_config = kubeconfig;
    for c in decoy_config["contexts"].as_array_mut().unwrap() {
        c["context"]["cluster"] = json!("gone");
    }
    let decoy = dir.join("decoy.kubeconfig");
    std::fs::write(&decoy, serde_yaml::to_string(&decoy_config).unwrap()).unwrap();
    TwoClusterKubeconfig {
        path,
        decoy,
        gone_server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_and_context_flags_pick_the_cluster_user_and_namespace() {
    let plane = ControlPlane::shared()
        .await
        .expect("control plane (run `make cluster-build` first)");
    let admin = plane.client().await.unwrap();
    let (with_rollout, without) = ("kubeconfig-rollout", "kubeconfig-empty");
    for ns in [with_rollout, without] {
        plane.create_namespace(&admin, ns).await.unwrap();
    }
    plane
        .install_crds(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds/canaryrollout.yaml"))
        .await
        .unwrap();
    let rollout = json!({"apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
        "metadata": {"name": "reviews", "namespace": with_rollout},
        "spec": {"selector": {"matchLabels": {"app": "reviews"}},
            "template": {"metadata": {"labels": {"app": "reviews"}}, "spec": {"containers": [{"name": "reviews", "image": "reviews:v1"}]}},
            "strategy": {"canary": {"steps": [{"setWeight": 20}],
                "trafficRouting": {"wasm": {"service": "reviews", "wasmPlugin": {"url": "oci://registry.example.com/f:1"}, "destinationRule": {"name": "reviews"}}}}}}});
    Api::<CanaryRollout>::namespaced(admin.clone(), with_rollout)
        .patch(
            "reviews",
            &PatchParams::apply("platform-team"),
            &Patch::Apply(&rollout),
        )
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), with_rollout);
    accounts
        .patch(
            "nobody",
            &PatchParams::apply("platform-team"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "nobody", "namespace": with_rollout}})),
        )
        .await
        .unwrap();
    let token = accounts
        .create_token_request("nobody", &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .expect("a token for ServiceAccount nobody");
    let dir = tempfile::tempdir().unwrap();
    let config = two_cluster_kubeconfig(
        dir.path(),
        plane.kubeconfig_path(),
        &token,
        (with_rollout, without),
    );
    let file = config.path.to_str().unwrap();
    // $KUBECONFIG names the decoy: `--kubeconfig` wins over it.
    let decoy = Plugin {
        kubeconfig: config.decoy.clone(),
    };

    // The context picks the cluster and user, and the namespace when -n is not given.
    let listed = decoy.ok(&["list", "--kubeconfig", file, "--context", "real-admin"]);
    assert!(
        listed.contains("NAME") && listed.contains("reviews"),
        "{listed}"
    );
    let empty = decoy.ok(&[
        "list",
        "--kubeconfig",
        file,
        "--context",
        "real-admin-empty",
    ]);
    assert!(
        empty.contains(&format!("No CanaryRollouts in namespace {without}")),
        "{empty}"
    );
    let err = decoy.fails(&[
        "status",
        "reviews",
        "--kubeconfig",
        file,
        "--context",
        "real-admin-empty",
    ]);
    assert!(
        err.contains(&format!("rollout reviews not found in namespace {without}")),
        "{err}"
    );
    let overridden = decoy.ok(&[
        "list",
        "--kubeconfig",
        file,
        "--context",
        "real-admin-empty",
        "-n",
        with_rollout,
    ]);
    assert!(
        overridden.contains("reviews"),
        "-n wins over the context: {overridden}"
    );
    let err = decoy.fails(&["list", "--kubeconfig", file, "--context", "real-nobody"]);
    assert!(
        err.contains("not allowed")
            && err.contains(&format!("system:serviceaccount:{with_rollout}:nobody")),
        "the context's user, not the admin, made the call: {err}"
    );

    // --context alone applies to $KUBECONFIG.
    let from_env = Plugin {
        kubeconfig: config.path.clone(),
    };
    assert!(from_env
        .ok(&["list", "--context", "real-admin"])
        .contains("reviews"));

    // Errors say which cluster, context or file is wrong.
    let err = decoy.fails(&["list", "--kubeconfig", file]);
    assert!(
        err.contains(&config.gone_server),
        "names the unreachable server: {err}"
    );
    let err = decoy.fails(&["list", "--kubeconfig", file, "--context", "staging"]);
    assert!(
        err.contains("staging") && !err.contains(&config.gone_server),
        "names the missing context, without falling back to the current one: {err}"
    );
    let missing = dir.path().join("missing.kubeconfig");
    let err = decoy.fails(&["list", "--kubeconfig", missing.to_str().unwrap()]);
    assert!(
        err.contains(&format!("reading kubeconfig {}", missing.display())),
        "{err}"
    );
}

#[test]
fn every_command_has_help() {
    for cmd in [
        "status",
        "list",
        "promote",
        "abort",
        "retry",
        "pause",
        "resume",
        "set-weight",
        "convert",
        "dashboard",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-canary"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success() && text.contains("Usage: kubectl canary"),
            "{cmd}: {text}"
        );
    }
}
