//! Many CanaryRollouts progressing at once against a real API server, the controller binary
//! running as a process: how long a promote takes to reach the WasmPlugin (p50/p99), how many API
//! requests and writes each step costs, and the controller's CPU and memory.
//!
//! `cargo run --release -p wasm-canary-controller --example bench_controller -- --controller
//! target/release/wasm-canary-controller [--rollouts 200] [--groups 20] [--out FILE]`
//! (`make bench-controller` writes bench/CONTROLLER.md).
//!
//! Each rollout has its own service and DestinationRule; rollout i's callers are `app=caller-<i %
//! groups>`, so `groups` composed WasmPlugins hold `rollouts / groups` entries each. All rollouts
//! start a canary and pause at 10%; promotes spread over 10 s move them to 20%, then one burst
//! of promotes sent at once to 50%. This program plays kubelet (every Pod turns Ready).

// A measuring program over inputs it builds itself: a failed step is a failed run, and a panic
// with its message is the right report.
#![allow(
    clippy::indexing_slicing,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic
)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary_cluster::kubelet::run_pod;
use canary_cluster::ControlPlane;
use canary_controller::crd::{CanaryRollout, Phase};
use canary_controller::reconcile::{
    destination_rule_resource, wasm_plugin_resource, PROMOTE_ANNOTATION,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

const NS: &str = "bench";
const DEADLINE: Duration = Duration::from_secs(600);

struct Args {
    controller: PathBuf,
    rollouts: usize,
    groups: usize,
    out: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        controller: PathBuf::from("target/release/wasm-canary-controller"),
        rollouts: 200,
        groups: 20,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--controller" => a.controller = PathBuf::from(value()),
            "--rollouts" => a.rollouts = value().parse().expect("--rollouts N"),
            "--groups" => a.groups = value().parse().expect("--groups N"),
            "--out" => a.out = Some(PathBuf::from(value())),
            "--help" | "-h" => {
                println!("bench_controller [--controller PATH] [--rollouts 200] [--groups 20] [--out FILE]");
                std::process::exit(0);
            }
            other => panic!("unknown flag {other} (--help)"),
        }
    }
    a
}

fn rollout(i: usize, groups: usize, image: &str) -> Value {
    json!({
        "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
        "metadata": {"name": format!("r{i}"), "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": format!("svc-{i}")}},
            "template": {"metadata": {"labels": {"app": format!("svc-{i}")}},
                         "spec": {"containers": [{"name": "app", "image": image}]}},
            "strategy": {"canary": {
                "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}],
                "scaleDownDelaySeconds": 2,
                "abortScaleDownDelaySeconds": 2,
                "trafficRouting": {"wasm": {
                    "service": format!("svc-{i}"),
                    "wasmPlugin": {"url": "oci://registry.example.com/wasm-canary/filter:0.1.0",
                                   "selector": {"app": format!("caller-{}", i % groups)}},
                    "destinationRule": {"name": format!("svc-{i}")}
                }}
            }}
        }
    })
}

/// When each (service, weight) was first seen in a WasmPlugin, from a watch of them all.
#[derive(Default)]
struct FilterWeights {
    first_seen: HashMap<(String, u32), Instant>,
}

fn record_filter_weights(
    client: Client,
) -> (Arc<Mutex<FilterWeights>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(FilterWeights::default()));
    let api: Api<DynamicObject> = Api::namespaced_with(client, NS, &wasm_plugin_resource());
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).boxed());
        while let Ok(Some(event)) = events.try_next().await {
            let now = Instant::now();
            let objects = match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![o],
                _ => continue,
            };
            let mut r = record.lock().unwrap();
            for o in objects {
                let services = o.data["spec"]["pluginConfig"]["services"]
                    .as_object()
                    .cloned();
                for (key, entry) in services.unwrap_or_default() {
                    let weight = entry["canaryWeight"].as_u64().unwrap_or(0) as u32;
                    let service = key.rsplit('/').next().unwrap_or(&key).to_owned();
                    r.first_seen.entry((service, weight)).or_insert(now);
                }
            }
        }
    });
    (seen, task)
}

async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Plays kubelet from a watch (not a list every 100 ms, whose cost on the API server would
/// weigh on what is measured): each new Pod is bound and turned Running and Ready once.
fn watch_kubelet(client: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let mut started = std::collections::HashSet::new();
        let mut events = std::pin::pin!(watcher(pods, watcher::Config::default())
            .default_backoff()
            .applied_objects());
        while let Some(Ok(pod)) = events.next().await {
            let name = pod.name_any();
            if pod.metadata.deletion_timestamp.is_some() || !started.insert(name.clone()) {
                continue;
            }
            let ip = format!("192.0.2.{}", started.len() % 250 + 2);
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    if run_pod(&client, NS, &name, &ip, true).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
    })
}

/// Every rollout, from a watch.
fn watch_rollouts(api: Api<CanaryRollout>) -> (Store<CanaryRollout>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let task = tokio::spawn(
        reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(|_| std::future::ready(())),
    );
    (reader, task)
}

/// Waits until every rollout is paused at `weight_bp` with no promote pending.
async fn all_paused_at(store: &Store<CanaryRollout>, n: usize, weight_bp: u32) {
    until(
        &format!("{n} rollouts paused at {weight_bp} bp"),
        async || {
            let list = store.state();
            let done =
                list.iter()
                    .filter(|r| {
                        r.status.as_ref().is_some_and(|s| {
                            s.phase == Phase::Paused && s.canary_weight == weight_bp
                        }) && !r.annotations().contains_key(PROMOTE_ANNOTATION)
                    })
                    .count();
            (done == n).then_some(())
        },
    )
    .await;
}

/// The controller's counters, from its /metrics.
async fn metrics(addr: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let text = reqwest_lite(addr, "/metrics").await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A plain HTTP/1.1 GET (the controller serves one request per connection).
async fn reqwest_lite(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("controller /metrics");
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn api_requests(m: &BTreeMap<String, f64>) -> BTreeMap<(String, String), f64> {
    m.iter()
        .filter_map(|(k, v)| {
            let labels = k
                .strip_prefix("wasm_canary_api_requests_total{")?
                .strip_suffix('}')?;
            let mut verb = String::new();
            let mut resource = String::new();
            for pair in labels.split(',') {
                let (key, value) = pair.split_once('=')?;
                let value = value.trim_matches('"').to_owned();
                match key {
                    "verb" => verb = value,
                    "resource" => resource = value,
                    _ => {}
                }
            }
            Some(((verb, resource), *v))
        })
        .collect()
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0);
    ticks / hz
}

/// A `/proc/<pid>/status` field in MiB (VmRSS, VmHWM).
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

struct Round {
    target: u32,
    spread: Option<Duration>,
    latencies: Vec<Duration>,
    burst: Duration,
    requests: BTreeMap<(String, String), f64>,
    reconciles: f64,
    cpu: f64,
}

struct Controller {
    child: std::process::Child,
    metrics: std::net::SocketAddr,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_controller(path: &Path, kubeconfig: &Path, log: &Path) -> Controller {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = std::fs::File::create(log).unwrap();
    let child = std::process::Command::new(path)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .args([
            "--namespace",
            NS,
            "--metrics-addr",
            &metrics.to_string(),
            "--no-leader-election",
            "--log-format",
            "json",
        ])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting {} (build it with cargo build --release): {e}",
                path.display()
            )
        });
    Controller { child, metrics }
}

#[tokio::main]
async fn main() {
    let a = args();
    let run_started = Instant::now();
    let plane = ControlPlane::start()
        .await
        .expect("control plane (make cluster-build)");
    let client = plane.client().await.unwrap();
    plane.create_namespace(&client, NS).await.unwrap();
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds");
    for crd in canary_controller::crd_yaml::crd_files() {
        plane.install_crds(&crds.join(crd.file)).await.unwrap();
    }
    let rules: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &destination_rule_resource());
    for i in 0..a.rollouts {
        let dr = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": format!("svc-{i}")},
            "spec": {"host": format!("svc-{i}"), "subsets": [{"name": "stable", "labels": {"app": format!("svc-{i}")}}, {"name": "canary", "labels": {"app": format!("svc-{i}")}}]}});
        rules
            .patch(
                &format!("svc-{i}"),
                &PatchParams::apply("platform-team"),
                &Patch::Apply(&dr),
            )
            .await
            .unwrap();
    }
    let kubelet = watch_kubelet(client.clone());
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("controller.log");
    let controller = start_controller(&a.controller, plane.kubeconfig_path(), &log);
    let pid = controller.child.id();
    let rollouts: Api<CanaryRollout> = Api::namespaced(client.clone(), NS);
    let (rollout_store, rollout_watch) = watch_rollouts(rollouts.clone());

    let applied = Instant::now();
    futures::stream::iter(0..a.rollouts)
        .for_each_concurrent(16, |i| {
            let rollouts = rollouts.clone();
            let body = rollout(i, a.groups, "app:v1");
            async move {
                rollouts
                    .patch(
                        &format!("r{i}"),
                        &PatchParams::apply("platform-team"),
                        &Patch::Apply(&body),
                    )
                    .await
                    .unwrap();
            }
        })
        .await;
    until("every rollout Healthy on v1", async || {
        let n = rollout_store
            .state()
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase == Phase::Healthy))
            .count();
        (n == a.rollouts).then_some(())
    })
    .await;
    let healthy_after = applied.elapsed();

    let (seen, recorder) = record_filter_weights(client.clone());
    let canary_started = Instant::now();
    futures::stream::iter(0..a.rollouts)
        .for_each_concurrent(16, |i| {
            let rollouts = rollouts.clone();
            async move {
                let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:v2"}]}}}});
                rollouts.patch(&format!("r{i}"), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
            }
        })
        .await;
    all_paused_at(&rollout_store, a.rollouts, 1_000).await;
    let canaries_after = canary_started.elapsed();

    let mut rounds = Vec::new();
    // First the promotes spread evenly over 10 s (a steady load), then all at once.
    for (target, spread) in [(2_000u32, Some(Duration::from_secs(10))), (5_000, None)] {
        let before = metrics(controller.metrics).await;
        let cpu_before = cpu_seconds(pid);
        let asked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let burst_start = Instant::now();
        let gap = spread.map_or(Duration::ZERO, |s| s / a.rollouts as u32);
        futures::stream::iter(0..a.rollouts)
            .for_each_concurrent(a.rollouts, |i| {
                let rollouts = rollouts.clone();
                let asked = asked.clone();
                async move {
                    tokio::time::sleep_until((burst_start + gap * i as u32).into()).await;
                    let patch = json!({"metadata": {"annotations": {PROMOTE_ANNOTATION: format!("step:{target}")}}});
                    asked.lock().unwrap().insert(format!("svc-{i}"), Instant::now());
                    rollouts.patch(&format!("r{i}"), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
                }
            })
            .await;
        let burst = burst_start.elapsed();
        all_paused_at(&rollout_store, a.rollouts, target).await;
        let after = metrics(controller.metrics).await;
        let cpu = cpu_seconds(pid) - cpu_before;
        let asked = asked.lock().unwrap().clone();
        let seen = seen.lock().unwrap();
        let mut latencies: Vec<Duration> = asked
            .iter()
            .map(|(service, t0)| {
                let at = seen
                    .first_seen
                    .get(&(service.clone(), target))
                    .unwrap_or_else(|| {
                        panic!("{service} never reached {target} bp in its WasmPlugin")
                    });
                at.saturating_duration_since(*t0)
            })
            .collect();
        latencies.sort();
        let (b, aft) = (api_requests(&before), api_requests(&after));
        let requests = aft
            .iter()
            .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        let reconciles = after
            .get("wasm_canary_reconciles_total")
            .copied()
            .unwrap_or(0.0)
            - before
                .get("wasm_canary_reconciles_total")
                .copied()
                .unwrap_or(0.0);
        rounds.push(Round {
            target,
            spread,
            latencies,
            burst,
            requests,
            reconciles,
            cpu,
        });
    }
    let rss = memory_mib(pid, "VmRSS");
    let hwm = memory_mib(pid, "VmHWM");
    let total_cpu = cpu_seconds(pid);
    let stale = metrics(controller.metrics)
        .await
        .get("wasm_canary_stale_cache_skips_total")
        .copied()
        .unwrap_or(0.0);
    recorder.abort();
    rollout_watch.abort();
    kubelet.abort();
    drop(controller);

    let n = a.rollouts as f64;
    let mut out = String::new();
    writeln!(
        out,
        "# Controller under load: {} CanaryRollouts at once",
        a.rollouts
    )
    .unwrap();
    writeln!(out).unwrap();
    writeln!(out, "Written by `make bench-controller` ({} s run, {} cores, {}). A real kube-apiserver + etcd on loopback, the release controller binary as a process (`--no-leader-election`), this program playing kubelet. {} rollouts, one service and DestinationRule each, callers in {} groups (so {} composed WasmPlugins of {} entries). All rollouts pause at 10%; then {} promotes spread evenly over 10 s move them to 20% (a steady load), and one burst of as many, sent at once, to 50%.",
        run_started.elapsed().as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d"),
        a.rollouts, a.groups, a.groups, a.rollouts / a.groups, a.rollouts).unwrap();
    writeln!(out).unwrap();
    writeln!(out, "Setup: all {} rollouts Healthy {:.1} s after being applied; all canaries (new template -> ReplicaSet -> Ready pod -> 10% in the WasmPlugin) paused at 10% {:.1} s after the template change.", a.rollouts, healthy_after.as_secs_f64(), canaries_after.as_secs_f64()).unwrap();
    writeln!(out).unwrap();
    writeln!(out, "## Promote -> weight in the WasmPlugin").unwrap();
    writeln!(out).unwrap();
    writeln!(out, "From the moment this program sent a rollout's promote to the moment its watch saw the new weight in that rollout's WasmPlugin entry.").unwrap();
    writeln!(out).unwrap();
    writeln!(out, "| step | promotes | sent in | p50 | p90 | p99 | max |").unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|").unwrap();
    let mut previous = 10;
    for r in &rounds {
        let l = &r.latencies;
        let how = match r.spread {
            Some(s) => format!("{} spread over {} s", a.rollouts, s.as_secs()),
            None => format!("{} at once", a.rollouts),
        };
        writeln!(
            out,
            "| {previous}% -> {}% | {how} | {} | {} | {} | {} | {} |",
            r.target / 100,
            ms(r.burst),
            ms(percentile(l, 0.5)),
            ms(percentile(l, 0.9)),
            ms(percentile(l, 0.99)),
            ms(*l.last().unwrap())
        )
        .unwrap();
        previous = r.target / 100;
    }
    writeln!(out).unwrap();
    writeln!(out, "## API requests per promoted step").unwrap();
    writeln!(out).unwrap();
    writeln!(out, "Counted by the controller itself (`wasm_canary_api_requests_total`) over each round, divided by the {} steps of the round.", a.rollouts).unwrap();
    writeln!(out).unwrap();
    let mut keys: Vec<(String, String)> = rounds
        .iter()
        .flat_map(|r| r.requests.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    write!(out, "| verb | resource |").unwrap();
    for r in &rounds {
        write!(out, " -> {}% |", r.target / 100).unwrap();
    }
    writeln!(out).unwrap();
    writeln!(out, "|---|---|{}", "---|".repeat(rounds.len())).unwrap();
    for k in &keys {
        write!(out, "| {} | {} |", k.0, k.1).unwrap();
        for r in &rounds {
            write!(
                out,
                " {:.2} |",
                r.requests.get(k).copied().unwrap_or(0.0) / n
            )
            .unwrap();
        }
        writeln!(out).unwrap();
    }
    let writes = |r: &Round| {
        r.requests
            .iter()
            .filter(|((v, _), _)| ["create", "update", "patch", "delete"].contains(&v.as_str()))
            .map(|(_, c)| c)
            .sum::<f64>()
            .max(0.0)
            / n
    };
    let reads = |r: &Round| {
        r.requests
            .iter()
            .filter(|((v, _), _)| ["get", "list"].contains(&v.as_str()))
            .map(|(_, c)| c)
            .sum::<f64>()
            .max(0.0)
            / n
    };
    write!(out, "| **writes** | |").unwrap();
    for r in &rounds {
        write!(out, " **{:.2}** |", writes(r)).unwrap();
    }
    writeln!(out).unwrap();
    write!(out, "| **reads (get+list)** | |").unwrap();
    for r in &rounds {
        write!(out, " **{:.2}** |", reads(r)).unwrap();
    }
    writeln!(out).unwrap();
    write!(out, "| reconciles | |").unwrap();
    for r in &rounds {
        write!(out, " {:.2} |", r.reconciles / n).unwrap();
    }
    writeln!(out).unwrap();
    writeln!(out).unwrap();
    writeln!(out, "## Controller process").unwrap();
    writeln!(out).unwrap();
    for r in &rounds {
        writeln!(
            out,
            "- CPU for the round to {}%: {:.2} s ({:.1} ms per step)",
            r.target / 100,
            r.cpu,
            r.cpu * 1000.0 / n
        )
        .unwrap();
    }
    writeln!(out, "- CPU over the whole run: {total_cpu:.1} s").unwrap();
    writeln!(
        out,
        "- memory at the end: RSS {rss:.1} MiB, peak {hwm:.1} MiB"
    )
    .unwrap();
    writeln!(out, "- reconciles not run because the cached rollout was older than the status the controller had written: {stale}").unwrap();
    print!("{out}");
    if let Some(path) = &a.out {
        std::fs::write(path, &out).unwrap();
        eprintln!("wrote {}", path.display());
    }
    drop(plane);
}
