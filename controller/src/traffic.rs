//! What a [`Traffic`] plan means for Istio objects: the WasmPlugin's `pluginConfig` (built from
//! the filter's own [`PluginConfig`] type, so what is written is what the filter parses) and the
//! DestinationRule subsets' hash labels.

use serde_json::{json, Value};

use canary_core::config::{DEFAULT_DECISION_HEADER, POD_TEMPLATE_HASH_LABEL};
use canary_core::{CanaryService, HeaderRoute, PluginConfig, RequestMatch, StickyKey, StringMatch};

use crate::crd::{CanaryRollout, SetHeaderRoute, WasmTrafficRouting};
use crate::steps::Traffic;

/// The hosts a Service answers to inside the cluster, plus any extra ones configured.
pub fn service_hosts(routing: &WasmTrafficRouting, namespace: &str) -> Vec<String> {
    let s = &routing.service;
    let mut hosts = vec![
        s.clone(),
        format!("{s}.{namespace}"),
        format!("{s}.{namespace}.svc"),
        format!("{s}.{namespace}.svc.cluster.local"),
    ];
    for h in &routing.hosts {
        if !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    hosts
}

fn header_route(route: &SetHeaderRoute) -> HeaderRoute {
    HeaderRoute {
        name: route.name.clone(),
        matches: route
            .matches
            .iter()
            .map(|m| {
                let v = &m.header_value;
                let value = match (&v.exact, &v.prefix, &v.regex) {
                    (Some(e), _, _) => StringMatch::Exact(e.clone()),
                    (None, Some(p), _) => StringMatch::Prefix(p.clone()),
                    (None, None, Some(r)) => StringMatch::Regex(r.clone()),
                    // validate() guarantees one is set; an empty exact never matches a real header
                    // value the client chose by accident.
                    (None, None, None) => StringMatch::Exact(String::new()),
                };
                RequestMatch::header(m.header_name.clone(), value)
            })
            .collect(),
    }
}

/// The filter configuration for a rollout's traffic plan.
pub fn plugin_config(rollout: &CanaryRollout, namespace: &str, traffic: &Traffic) -> PluginConfig {
    let routing = &rollout.spec.strategy.canary.traffic_routing.wasm;
    let sticky = routing
        .sticky
        .as_ref()
        .and_then(|s| match (&s.header, &s.cookie) {
            (Some(h), _) => Some(StickyKey::Header(h.clone())),
            (None, Some(c)) => Some(StickyKey::Cookie(c.clone())),
            _ => None,
        });
    PluginConfig {
        decision_header: routing
            .decision_header
            .clone()
            .unwrap_or_else(|| DEFAULT_DECISION_HEADER.to_owned()),
        services: vec![CanaryService {
            name: format!("{namespace}/{}", routing.service),
            hosts: service_hosts(routing, namespace),
            canary_weight: traffic.canary_weight,
            stable_hash: Some(traffic.stable_hash.clone()),
            canary_hash: Some(traffic.canary_hash.clone()),
            header_routes: traffic.header_routes.iter().map(header_route).collect(),
            sticky,
        }],
        ..PluginConfig::default()
    }
}

/// The name of the WasmPlugin the rollout owns.
pub fn wasm_plugin_name(rollout: &CanaryRollout) -> String {
    let name = rollout.metadata.name.clone().unwrap_or_default();
    rollout
        .spec
        .strategy
        .canary
        .traffic_routing
        .wasm
        .wasm_plugin
        .name
        .clone()
        .unwrap_or(format!("{name}-canary"))
}

/// The WasmPlugin the controller applies: only the fields it owns.
pub fn wasm_plugin(rollout: &CanaryRollout, namespace: &str, traffic: &Traffic) -> Value {
    let routing = &rollout.spec.strategy.canary.traffic_routing.wasm;
    let mut spec = json!({
        "url": routing.wasm_plugin.url,
        "pluginName": "wasm-canary",
        "failStrategy": "FAIL_OPEN",
        "match": [{"mode": "CLIENT"}],
        "pluginConfig": plugin_config(rollout, namespace, traffic).to_json_value(),
    });
    if let Some(sha) = &routing.wasm_plugin.sha256 {
        spec["sha256"] = json!(sha);
    }
    if let Some(sel) = &routing.wasm_plugin.selector {
        spec["selector"] = json!({"matchLabels": sel});
    }
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": wasm_plugin_name(rollout), "namespace": namespace},
        "spec": spec,
    })
}

/// The DestinationRule's `subsets` with the stable and canary subsets' hash labels set, every
/// other subset and field of each subset as found. Errors when a subset is missing.
pub fn destination_rule_subsets(
    rollout: &CanaryRollout,
    current: &Value,
    traffic: &Traffic,
) -> Result<Vec<Value>, String> {
    let dr = &rollout
        .spec
        .strategy
        .canary
        .traffic_routing
        .wasm
        .destination_rule;
    let stable = dr
        .stable_subset_name
        .clone()
        .unwrap_or_else(|| "stable".into());
    let canary = dr
        .canary_subset_name
        .clone()
        .unwrap_or_else(|| "canary".into());
    let mut subsets = current["spec"]["subsets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (name, hash) in [
        (&stable, &traffic.stable_hash),
        (&canary, &traffic.canary_hash),
    ] {
        let subset = subsets
            .iter_mut()
            .find(|s| s["name"].as_str() == Some(name.as_str()))
            .ok_or_else(|| format!("DestinationRule {} has no subset {name:?}; add it (labels are set by the controller)", dr.name))?;
        if !subset["labels"].is_object() {
            subset["labels"] = json!({});
        }
        subset["labels"][POD_TEMPLATE_HASH_LABEL] = json!(hash);
    }
    Ok(subsets)
}
