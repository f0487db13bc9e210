//! Push fan-out of three ways to place the filter config, simulated with the controller's own
//! placement code ([`traffic::targets`], [`traffic::composed_selector`]) and the filter's own
//! serialization ([`PluginConfig::to_json_value`]): what one rollout step costs istiod and the
//! mesh, how big each sidecar's config is, and how many filters a sidecar runs.
//!
//! `cargo run --release -p wasm-canary-controller --example push_fanout -- [--out FILE]`
//! (`make bench-fanout` writes bench/FANOUT.md). Deterministic: a fixed-seed generator.

// A simulation over fixed inputs it builds itself: an out-of-range index or a bad literal is a
// bug in this program, and a panic is the right report.
#![allow(clippy::indexing_slicing, clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use canary_controller::crd::{CanaryRollout, SetHeaderRoute};
use canary_controller::steps::Traffic;
use canary_controller::traffic;
use canary_core::PluginConfig;
use kube::ResourceExt;
use serde_json::json;

const NAMESPACES: usize = 100;
const APPS_PER_NAMESPACE: usize = 10;
const PODS_PER_APP: usize = 10;
const ROLLOUTS: usize = 1000;
/// Steps per rollout per hour for the hourly figure (one step every 10 minutes).
const STEPS_PER_ROLLOUT_HOUR: usize = 6;

/// splitmix64: a fixed-seed generator, so every run simulates the same mesh.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Pod {
    namespace: String,
    labels: BTreeMap<String, String>,
}

fn selects(selector: &Option<BTreeMap<String, String>>, pod: &Pod) -> bool {
    selector
        .as_ref()
        .is_none_or(|s| s.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
}

fn app(k: usize) -> Option<BTreeMap<String, String>> {
    Some([("app".to_owned(), format!("app-{k}"))].into())
}

fn main() {
    let out = std::env::args().skip_while(|a| a != "--out").nth(1);
    let mut rng = Rng(42);
    let pods: Vec<Pod> = (0..NAMESPACES)
        .flat_map(|n| {
            (0..APPS_PER_NAMESPACE).flat_map(move |a| {
                (0..PODS_PER_APP).map(move |_| Pod {
                    namespace: format!("ns-{n:02}"),
                    labels: app(a).unwrap_or_default(),
                })
            })
        })
        .collect();

    // Rollout i runs service svc-i in ns-(i % 100); its callers: one app of its namespace,
    // and for 30% of them one app of another namespace, for 10% two.
    let rollouts: Vec<Arc<CanaryRollout>> = (0..ROLLOUTS)
        .map(|i| {
            let ns = format!("ns-{:02}", i % NAMESPACES);
            let mut callers = vec![json!({"namespace": ns, "selector": app(rng.below(APPS_PER_NAMESPACE))})];
            let others = match rng.below(10) {
                0 => 2,
                1..=3 => 1,
                _ => 0,
            };
            for _ in 0..others {
                callers.push(json!({"namespace": format!("ns-{:02}", rng.below(NAMESPACES)),
                                    "selector": app(rng.below(APPS_PER_NAMESPACE))}));
            }
            let mut rollout: CanaryRollout = serde_json::from_value(json!({
                "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
                "metadata": {"name": format!("svc-{i}"), "namespace": ns, "uid": format!("uid-{i}")},
                "spec": {"selector": {}, "strategy": {"canary": {"trafficRouting": {"wasm": {
                    "service": format!("svc-{i}"),
                    "wasmPlugin": {"url": "oci://registry.example.com/wasm-canary/filter:0.1.0"},
                    "callers": callers,
                    "sticky": {"cookie": "session"},
                    "destinationRule": {"name": format!("svc-{i}")}}}}}}
            }))
            .expect("a valid rollout");
            rollout.metadata.creation_timestamp = None;
            Arc::new(rollout)
        })
        .collect();
    // Every rollout mid-canary with a header route: the size a config has during a release.
    let plan = Traffic {
        stable_hash: "6d5f7c9b8d".into(),
        canary_hash: "7b9c4d5f6c".into(),
        canary_weight: 2_500,
        header_routes: vec![serde_json::from_value::<SetHeaderRoute>(json!({
            "name": "testers", "match": [{"headerName": "x-canary", "headerValue": {"exact": "always"}}]
        }))
        .expect("a valid route")],
    };
    let entry =
        |r: &CanaryRollout| traffic::service_entry(r, &r.namespace().unwrap_or_default(), &plan);
    let config_bytes = |entries: Vec<canary_core::CanaryService>| {
        PluginConfig {
            services: entries,
            ..PluginConfig::default()
        }
        .to_json_value()
        .to_string()
        .len()
    };

    let mut report = String::new();
    let _ = writeln!(
        report,
        "# Push fan-out: where a rollout step's config goes\n\n\
         Written by `make bench-fanout` (`controller/examples/push_fanout.rs`): a simulated mesh of \
         {} sidecars ({NAMESPACES} namespaces x {APPS_PER_NAMESPACE} apps x {PODS_PER_APP} pods), \
         {ROLLOUTS} rollouts each mid-canary with a header route and a sticky cookie. Rollout i \
         runs `svc-i` in namespace i mod {NAMESPACES}; its callers are one app of its namespace, and \
         for 30% of rollouts one app of another namespace too (10%: two). Placement by the \
         controller's own code, config sizes by the filter's own serialization (bytes of \
         `pluginConfig` JSON; istiod's ECDS envelope adds a little per push). Hourly figures \
         assume {STEPS_PER_ROLLOUT_HOUR} steps per rollout per hour.\n",
        pods.len()
    );
    let _ = writeln!(
        report,
        "| placement | bytes pushed per step (mean) | per hour | config per sidecar (mean / max) | filters per sidecar (max) | sidecars running a filter | callers reached |\n|---|---|---|---|---|---|---|"
    );
    let hour = |per_step: f64| per_step * (ROLLOUTS * STEPS_PER_ROLLOUT_HOUR) as f64;

    // 1. One mesh-wide config (one WasmPlugin in the root namespace) holding every service.
    let all_bytes = config_bytes(rollouts.iter().map(|r| entry(r)).collect());
    let per_step = (all_bytes * pods.len()) as f64;
    let _ = writeln!(
        report,
        "| one mesh-wide config | {} | {} | {} / {} | 1 | {} | all |",
        human(per_step),
        human(hour(per_step)),
        human(all_bytes as f64),
        human(all_bytes as f64),
        pods.len()
    );

    // 2. One WasmPlugin per rollout (versions before composition): its own namespace only.
    let mut filters = vec![0usize; pods.len()];
    let mut bytes = vec![0usize; pods.len()];
    let mut step_total = 0f64;
    let mut reached = 0usize;
    let mut wanted = 0usize;
    for r in &rollouts {
        let one = config_bytes(vec![entry(r)]);
        let ns = r.namespace().unwrap_or_default();
        let own = &r.spec.strategy.routing().callers[0].selector;
        let mut pushed = 0;
        for (i, pod) in pods.iter().enumerate() {
            if pod.namespace == ns && selects(own, pod) {
                filters[i] += 1;
                bytes[i] += one;
                pushed += 1;
            }
        }
        step_total += (one * pushed) as f64;
        let callers = &r.spec.strategy.routing().callers;
        wanted += callers.len();
        reached += 1;
    }
    let per_step = step_total / ROLLOUTS as f64;
    report.push_str(&placement_row(
        "one WasmPlugin per rollout (before)",
        per_step,
        &bytes,
        &filters,
        &format!("{reached} of {wanted} caller groups (none in other namespaces)"),
    ));

    // 3. Composed (now): one WasmPlugin per callers group per namespace, entries by rollout.
    let mut plugins: HashMap<(String, String), Vec<&CanaryRollout>> = HashMap::new();
    for r in &rollouts {
        for t in traffic::targets(r, &rollouts) {
            plugins.entry((t.namespace, t.name)).or_default().push(r);
        }
    }
    let mut plugin_bytes: HashMap<(String, String), usize> = HashMap::new();
    let mut plugin_pods: HashMap<(String, String), Vec<usize>> = HashMap::new();
    let mut filters = vec![0usize; pods.len()];
    let mut bytes = vec![0usize; pods.len()];
    for ((ns, name), members) in &plugins {
        let size = config_bytes(members.iter().map(|r| entry(r)).collect());
        let selectors: Vec<_> = members
            .iter()
            .flat_map(|r| traffic::targets(r, &rollouts))
            .filter(|t| &t.namespace == ns && &t.name == name)
            .map(|t| t.selector)
            .collect();
        let selector = traffic::composed_selector(&selectors);
        let matched: Vec<usize> = pods
            .iter()
            .enumerate()
            .filter(|(_, p)| &p.namespace == ns && selects(&selector, p))
            .map(|(i, _)| i)
            .collect();
        for &i in &matched {
            filters[i] += 1;
            bytes[i] += size;
        }
        plugin_bytes.insert((ns.clone(), name.clone()), size);
        plugin_pods.insert((ns.clone(), name.clone()), matched);
    }
    let mut step_total = 0f64;
    let mut missed = 0usize;
    let mut wanted = 0usize;
    for r in &rollouts {
        for t in traffic::targets(r, &rollouts) {
            let key = (t.namespace.clone(), t.name.clone());
            let matched = &plugin_pods[&key];
            step_total += (plugin_bytes[&key] * matched.len()) as f64;
            wanted += 1;
            let callers_pods = pods
                .iter()
                .enumerate()
                .filter(|(_, p)| p.namespace == t.namespace && selects(&t.selector, p));
            if callers_pods.clone().any(|(i, _)| !matched.contains(&i)) {
                missed += 1;
            }
        }
    }
    let per_step = step_total / ROLLOUTS as f64;
    report.push_str(&placement_row(
        "composed per callers group (now)",
        per_step,
        &bytes,
        &filters,
        &format!("{} of {wanted} caller groups", wanted - missed),
    ));
    let _ = writeln!(
        report,
        "\n{} client WasmPlugins in the composed placement ({} services in the largest).",
        plugins.len(),
        plugins.values().map(Vec::len).max().unwrap_or(0)
    );

    print!("{report}");
    if let Some(path) = out {
        std::fs::write(&path, &report).unwrap_or_else(|e| eprintln!("writing {path}: {e}"));
    }
}

/// A row of the placement table: bytes per step and per hour, config per sidecar (mean of
/// those with one / max), filters per sidecar (max), sidecars running one, callers reached.
fn placement_row(
    label: &str,
    per_step: f64,
    bytes: &[usize],
    filters: &[usize],
    reached: &str,
) -> String {
    format!(
        "| {label} | {} | {} | {} / {} | {} | {} | {reached} |\n",
        human(per_step),
        human(per_step * (ROLLOUTS * STEPS_PER_ROLLOUT_HOUR) as f64),
        human(mean_nonzero(bytes)),
        human(*bytes.iter().max().unwrap_or(&0) as f64),
        filters.iter().max().unwrap_or(&0),
        filters.iter().filter(|f| **f > 0).count(),
    )
}

fn mean_nonzero(v: &[usize]) -> f64 {
    let nz: Vec<_> = v.iter().filter(|b| **b > 0).collect();
    if nz.is_empty() {
        0.0
    } else {
        nz.iter().map(|b| **b as f64).sum::<f64>() / nz.len() as f64
    }
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
