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
            decision_header: None,
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

/// Who the named WasmPlugin belongs to, which decides what the controller writes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmPluginOwnership {
    /// It does not exist yet, or this rollout controls it (its controller ownerReference):
    /// the controller is the owner of record of every field it applies (`url`, `pluginName`,
    /// `match`, `selector`, `sha256`, `failStrategy`, `pluginConfig`) and takes them back from
    /// any other writer. Fields it never applies (`priority`, `imagePullPolicy`, ...) stay
    /// with whoever set them.
    Owned,
    /// Someone else created it (named by `wasmPlugin.name`) and no object controls it: the
    /// controller writes `spec.pluginConfig` only, the traffic decision the rollout exists to
    /// make; url, selector and the rest stay the user's, and no ownerReference is added (the
    /// plugin outlives the rollout).
    Adopted,
    /// Another object controls it (`kind/name`): nothing is written; the status says so.
    ControlledByOther(String),
}

/// The ownership of `current` (the WasmPlugin as read, `None` if absent) for the rollout
/// with uid `rollout_uid`.
pub fn wasm_plugin_ownership(current: Option<&Value>, rollout_uid: &str) -> WasmPluginOwnership {
    let Some(current) = current else {
        return WasmPluginOwnership::Owned;
    };
    let controller = current["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|refs| refs.iter().find(|r| r["controller"] == true));
    match controller {
        None => WasmPluginOwnership::Adopted,
        Some(r) if r["uid"] == rollout_uid => WasmPluginOwnership::Owned,
        Some(r) => WasmPluginOwnership::ControlledByOther(format!(
            "{}/{}",
            r["kind"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or_default()
        )),
    }
}

/// What the controller applies to the WasmPlugin for `ownership` (see
/// [`WasmPluginOwnership`]); `owner` is the rollout's controller ownerReference.
pub fn wasm_plugin(
    rollout: &CanaryRollout,
    namespace: &str,
    traffic: &Traffic,
    ownership: &WasmPluginOwnership,
    owner: &Value,
) -> Value {
    let routing = &rollout.spec.strategy.canary.traffic_routing.wasm;
    let plugin_config = plugin_config(rollout, namespace, traffic).to_json_value();
    let mut metadata = json!({"name": wasm_plugin_name(rollout), "namespace": namespace});
    let spec = if *ownership == WasmPluginOwnership::Owned {
        metadata["ownerReferences"] = json!([owner]);
        let mut spec = json!({
            "url": routing.wasm_plugin.url,
            "pluginName": "wasm-canary",
            "failStrategy": "FAIL_OPEN",
            "match": [{"mode": "CLIENT"}],
            "pluginConfig": plugin_config,
        });
        if let Some(sha) = &routing.wasm_plugin.sha256 {
            spec["sha256"] = json!(sha);
        }
        if let Some(sel) = &routing.wasm_plugin.selector {
            spec["selector"] = json!({"matchLabels": sel});
        }
        spec
    } else {
        json!({"pluginConfig": plugin_config})
    };
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": metadata,
        "spec": spec,
    })
}

/// Whether `current` already holds everything `wanted` sets: objects field by field (extra
/// fields in `current`, set by others or defaulted by the API server, are fine), lists element
/// by element (same length: they are atomic in Istio's schemas), scalars equal. An apply of
/// `wanted` would change nothing the controller owns, so it is not sent (no write, no istiod
/// push, no watch event that would come back as a reconcile).
pub fn holds(current: &Value, wanted: &Value) -> bool {
    match (current, wanted) {
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(k, v)| have.get(k).is_some_and(|h| holds(h, v))),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| holds(h, w))
        }
        _ => current == wanted,
    }
}

/// Whether the WasmPlugin as read (`current`) already carries the apply `wanted`: its spec
/// fields and, when it sets one, its ownerReference (other owners may be listed too).
pub fn wasm_plugin_in_place(current: &Value, wanted: &Value) -> bool {
    let owner_in_place = match wanted["metadata"]["ownerReferences"].as_array() {
        Some(ours) => ours.iter().all(|o| {
            current["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == o["uid"]))
        }),
        None => true,
    };
    owner_in_place && holds(&current["spec"], &wanted["spec"])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wasm_plugin_is_owned_when_absent_or_controlled_by_the_rollout_and_adopted_otherwise() {
        let with_owner = |uid: &str| {
            json!({"metadata": {"ownerReferences": [
                {"kind": "Deployment", "name": "x", "uid": "other-owner"},
                {"kind": "CanaryRollout", "name": "reviews", "uid": uid, "controller": true}]}})
        };
        assert_eq!(
            wasm_plugin_ownership(None, "u1"),
            WasmPluginOwnership::Owned
        );
        assert_eq!(
            wasm_plugin_ownership(Some(&with_owner("u1")), "u1"),
            WasmPluginOwnership::Owned
        );
        assert_eq!(
            wasm_plugin_ownership(Some(&json!({"metadata": {}})), "u1"),
            WasmPluginOwnership::Adopted
        );
        assert_eq!(
            wasm_plugin_ownership(Some(&with_owner("u2")), "u1"),
            WasmPluginOwnership::ControlledByOther("CanaryRollout/reviews".into())
        );
    }

    #[test]
    fn fields_set_by_others_or_defaulted_do_not_make_a_write_but_a_changed_list_does() {
        let wanted = json!({"spec": {"pluginConfig": {"services": [{"canaryWeight": 20}]}}});
        let extra = json!({"spec": {"priority": 5, "pluginConfig": {"hashHeader": "x",
            "services": [{"canaryWeight": 20, "sticky": null}]}}});
        assert!(holds(&extra, &wanted));
        let edited = json!({"spec": {"pluginConfig": {"services": [{"canaryWeight": 90}]}}});
        assert!(!holds(&edited, &wanted));
        let longer = json!({"spec": {"pluginConfig": {"services": [{"canaryWeight": 20}, {}]}}});
        assert!(!holds(&longer, &wanted), "an atomic list is replaced whole");
    }
}
