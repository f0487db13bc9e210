//! What the controller's traffic objects say, read as the filter and Istio read them: the
//! service the WasmPlugin's pluginConfig routes, and the hash a DestinationRule subset selects.
#![allow(dead_code)]

use canary_core::{CanaryService, PluginConfig};
use kube::api::DynamicObject;

use super::versions::Version;

/// The service the WasmPlugin's pluginConfig routes, as the filter parses it.
pub fn routed_service(wasm_plugin: &DynamicObject) -> CanaryService {
    PluginConfig::from_value(&wasm_plugin.data["spec"]["pluginConfig"])
        .expect("the controller writes what the filter parses")
        .services
        .remove(0)
}

/// The pod-template hash a DestinationRule's subset selects.
pub fn subset_hash_of(rule: &DynamicObject, subset: &str) -> Option<String> {
    rule.data["spec"]["subsets"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == subset)?["labels"]["rollouts-pod-template-hash"]
        .as_str()
        .map(str::to_owned)
}

/// The canary weights in the order the WasmPlugin versions carried them (a run of versions at
/// one weight counts once).
pub fn weight_sequence(versions: &[Version<DynamicObject>]) -> Vec<u32> {
    let mut weights: Vec<u32> = Vec::new();
    for v in versions {
        let weight = routed_service(&v.object).canary_weight;
        if weights.last() != Some(&weight) {
            weights.push(weight);
        }
    }
    weights
}

/// The first entry of a pluginConfig's `services`, keyed by name as the controller writes it
/// (`Null` when there is none).
pub fn first_entry(plugin_config: &serde_json::Value) -> &serde_json::Value {
    plugin_config["services"]
        .as_object()
        .and_then(|m| m.values().next())
        .unwrap_or(&serde_json::Value::Null)
}

/// [`first_entry`], to edit it as another writer would.
pub fn first_entry_mut(plugin_config: &mut serde_json::Value) -> &mut serde_json::Value {
    plugin_config["services"]
        .as_object_mut()
        .and_then(|m| m.values_mut().next())
        .expect("the WasmPlugin has an entry")
}
