//! What a [`Traffic`] plan means for Istio objects: the rollout's entry in the client
//! WasmPlugins of its callers' namespaces (built from the filter's own [`PluginConfig`] type, so
//! what is written is what the filter parses) and the DestinationRule subsets' hash labels.
//!
//! One filter per sidecar: every rollout with callers in a namespace writes into the same
//! client WasmPlugin there ([`targets`]), each with its own field manager ([`field_manager`])
//! over its own key of `pluginConfig.services` (server-side apply merges an object key by key),
//! so a rollout's step changes only its entry, and only in the namespaces of its callers.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use serde_json::{json, Value};

use canary_core::config::{DEFAULT_DECISION_HEADER, POD_TEMPLATE_HASH_LABEL};
use canary_core::{CanaryService, HeaderRoute, PluginConfig, RequestMatch, StickyKey, StringMatch};

use crate::crd::{CanaryRollout, RolloutStrategy, SetHeaderRoute};
use crate::steps::Traffic;
use crate::FIELD_MANAGER;

/// The hosts the rollout's Service answers to inside the cluster (a blue-green rollout's is its
/// `activeService`: [`crate::crd::RolloutStrategy::service`]), plus any extra ones configured.
pub fn service_hosts(strategy: &RolloutStrategy, namespace: &str) -> Vec<String> {
    let s = strategy.service();
    let routing = strategy.routing();
    let mut hosts = vec![
        s.to_string(),
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

/// The default name of the client WasmPlugin in each callers' namespace.
pub const DEFAULT_WASM_PLUGIN: &str = "wasm-canary";

/// The label every client WasmPlugin the controller creates carries: one without it (and with
/// no controller owner) was applied by a user and is only adopted.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", FIELD_MANAGER);

/// Prefix of the field manager of each rollout (see [`field_manager`]).
pub const ROLLOUT_MANAGER_PREFIX: &str = "wasm-canary/";

/// The server-side-apply field manager a rollout writes its WasmPlugin entries with:
/// `wasm-canary/<namespace>/<name>` (its uid when that is over the API server's 128
/// characters). A WasmPlugin shared by several rollouts then says, field by field, which
/// rollout wrote what, and a rollout's write can neither change nor remove another's entry.
pub fn field_manager(rollout: &CanaryRollout) -> String {
    let readable = format!(
        "{ROLLOUT_MANAGER_PREFIX}{}/{}",
        rollout.namespace().unwrap_or_default(),
        rollout.name_any()
    );
    if readable.len() <= 128 {
        readable
    } else {
        format!(
            "{ROLLOUT_MANAGER_PREFIX}{}",
            rollout.uid().unwrap_or_default()
        )
    }
}

/// The key of the rollout's entry in `pluginConfig.services`: `<namespace>/<service>`. It
/// names the filter's metrics and seeds sticky hashing, as before composition.
pub fn service_key(rollout: &CanaryRollout, namespace: &str) -> String {
    format!("{namespace}/{}", rollout.spec.strategy.service())
}

/// One client WasmPlugin a rollout writes into.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PluginTarget {
    /// The callers' namespace (the WasmPlugin's).
    pub namespace: String,
    /// The WasmPlugin's name.
    pub name: String,
    /// The callers' pod labels there (`None`: every workload).
    pub selector: Option<BTreeMap<String, String>>,
}

impl PluginTarget {
    /// `namespace/name`, as status lists it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The callers of a rollout, by namespace: `(namespace, selector)`.
fn callers_of(rollout: &CanaryRollout) -> Vec<(String, Option<BTreeMap<String, String>>)> {
    let routing = rollout.spec.strategy.routing();
    if routing.callers.is_empty() {
        vec![(
            rollout.namespace().unwrap_or_default(),
            routing.wasm_plugin.selector.clone(),
        )]
    } else {
        routing
            .callers
            .iter()
            .map(|c| (c.namespace.clone(), c.selector.clone()))
            .collect()
    }
}

/// Whether two callers selectors may select one pod: yes unless a label is required with two
/// different values (`app: a` and `app: b` never meet; `app: a` and `tier: web` may).
fn may_overlap(a: &Option<BTreeMap<String, String>>, b: &Option<BTreeMap<String, String>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v)),
        _ => true,
    }
}

/// The WasmPlugin the rollout names (`wasmPlugin.name`), if it names one.
fn named_plugin(rollout: &CanaryRollout) -> Option<&str> {
    rollout.spec.strategy.routing().wasm_plugin.name.as_deref()
}

/// Whether the rollout may write into the WasmPlugin `namespace/name` selecting `selector`, judged
/// without the other rollouts (cheap, for mapping a WasmPlugin's change to rollouts): it names
/// that WasmPlugin, or one of its callers groups in that namespace may meet the selector. An
/// over-approximation of [`targets`]: it may say yes for a rollout that writes elsewhere.
pub fn may_write_into(
    rollout: &CanaryRollout,
    namespace: &str,
    name: &str,
    selector: &Option<BTreeMap<String, String>>,
) -> bool {
    let named = named_plugin(rollout);
    callers_of(rollout)
        .iter()
        .filter(|(ns, _)| ns == namespace)
        .any(|(_, callers)| match named {
            Some(named) => named == name,
            None => may_overlap(callers, selector),
        })
}

/// The client WasmPlugins the rollout writes into: one per callers' namespace.
///
/// With an explicit `wasmPlugin.name`, that WasmPlugin. By default, the callers selectors of
/// every rollout in a namespace (`all`, plus `rollout` itself) are grouped so that selectors
/// that may select one pod are in one group ([`may_overlap`], transitively); each group gets
/// one WasmPlugin, `wasm-canary-<hash of the group's common labels>` (`wasm-canary` when they
/// have none), selecting those common labels. A pod is selected by at most one group's
/// WasmPlugin (selectors in different groups require some label with different values), so
/// it runs at most one filter; and callers with disjoint selectors (`app: a`, `app: b`) get
/// separate WasmPlugins, so a step of one rollout is pushed only to its own callers.
pub fn targets(rollout: &CanaryRollout, all: &[Arc<CanaryRollout>]) -> Vec<PluginTarget> {
    let routing = rollout.spec.strategy.routing();
    let mut targets: Vec<PluginTarget> = callers_of(rollout)
        .into_iter()
        .map(|(namespace, selector)| {
            let name = match &routing.wasm_plugin.name {
                Some(name) => name.clone(),
                None => group_plugin_name(rollout, all, &namespace, &selector),
            };
            PluginTarget {
                namespace,
                name,
                selector,
            }
        })
        .collect();
    targets.sort();
    targets.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    targets
}

/// The default-named WasmPlugin of the group of `selector` among the callers in `namespace`.
fn group_plugin_name(
    rollout: &CanaryRollout,
    all: &[Arc<CanaryRollout>],
    namespace: &str,
    selector: &Option<BTreeMap<String, String>>,
) -> String {
    let uid = rollout.uid();
    let others = all
        .iter()
        .map(|r| &**r)
        .filter(|r| r.uid() != uid && r.metadata.deletion_timestamp.is_none())
        .filter(|r| named_plugin(r).is_none());
    let mut selectors: Vec<Option<BTreeMap<String, String>>> = std::iter::once(rollout)
        .chain(others)
        .flat_map(callers_of)
        .filter(|(ns, _)| ns == namespace)
        .map(|(_, s)| s)
        .collect();
    selectors.sort();
    selectors.dedup();
    // Grow the group of `selector` until no other selector may overlap it.
    let rest: Vec<_> = selectors.into_iter().filter(|s| s != selector).collect();
    let (group, _) = grow_group(selector.clone(), rest);
    lone_plugin_name(&composed_selector(&group))
}

type Selector = Option<BTreeMap<String, String>>;

/// The group of callers selectors that `first` starts: every selector of `rest` that may
/// overlap one already in the group joins it, until none does. Returns the group and the rest.
fn grow_group(first: Selector, mut rest: Vec<Selector>) -> (Vec<Selector>, Vec<Selector>) {
    let mut group = vec![first];
    loop {
        let (joined, apart): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|s| group.iter().any(|g| may_overlap(g, s)));
        rest = apart;
        if joined.is_empty() {
            return (group, rest);
        }
        group.extend(joined);
    }
}

/// The callers selector of the default-named WasmPlugin `namespace/name` (None: every pod),
/// composed from every rollout writing into it: those naming it, and the group of callers
/// selectors that may overlap whose default name it is. One pass over the rollouts (the groups
/// are formed once), where asking [`targets`] of each rollout would take a pass per rollout.
pub fn plugin_selector<'a>(
    rollouts: impl IntoIterator<Item = &'a CanaryRollout>,
    namespace: &str,
    name: &str,
) -> Option<BTreeMap<String, String>> {
    let mut selectors: Vec<Option<BTreeMap<String, String>>> = Vec::new();
    let mut unnamed: Vec<Option<BTreeMap<String, String>>> = Vec::new();
    for r in rollouts {
        let named = named_plugin(r);
        for (ns, selector) in callers_of(r) {
            match named {
                _ if ns != namespace => {}
                Some(named) if named == name => selectors.push(selector),
                Some(_) => {}
                None => unnamed.push(selector),
            }
        }
    }
    unnamed.sort();
    unnamed.dedup();
    // Connected groups of selectors that may overlap, as group_plugin_name forms them.
    while let Some(first) = unnamed.pop() {
        let (group, rest) = grow_group(first, unnamed);
        unnamed = rest;
        if lone_plugin_name(&composed_selector(&group)) == name {
            selectors.extend(group);
        }
    }
    composed_selector(&selectors)
}

/// The default client WasmPlugin name of a rollout that is alone with its callers
/// `selector` in their namespace (e.g. `wasm-canary` without a selector).
pub fn lone_plugin_name(selector: &Option<BTreeMap<String, String>>) -> String {
    match composed_selector([selector]) {
        None => DEFAULT_WASM_PLUGIN.to_owned(),
        Some(common) => format!("{DEFAULT_WASM_PLUGIN}-{}", selector_hash(&common)),
    }
}

/// Ten hex digits of FNV-1a over `k=v,` of the sorted labels: a stable, name-safe suffix.
fn selector_hash(labels: &BTreeMap<String, String>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([b'=']).chain(v.bytes()).chain([b',']) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{:010x}", hash & 0xff_ffff_ffff)
}

/// The rollout's entry in `pluginConfig.services` for a traffic plan.
pub fn service_entry(rollout: &CanaryRollout, namespace: &str, traffic: &Traffic) -> CanaryService {
    let routing = rollout.spec.strategy.routing();
    let sticky = routing
        .sticky
        .as_ref()
        .and_then(|s| match (&s.header, &s.cookie) {
            (Some(h), _) => Some(StickyKey::Header(h.clone())),
            (None, Some(c)) => Some(StickyKey::Cookie(c.clone())),
            _ => None,
        });
    CanaryService {
        name: service_key(rollout, namespace),
        hosts: service_hosts(&rollout.spec.strategy, namespace),
        canary_weight: traffic.canary_weight,
        stable_hash: Some(traffic.stable_hash.clone()),
        canary_hash: Some(traffic.canary_hash.clone()),
        // The config's default header needs no entry field: a rollout that names it writes
        // nothing another rollout could disagree with.
        decision_header: routing
            .decision_header
            .clone()
            .filter(|h| !h.eq_ignore_ascii_case(DEFAULT_DECISION_HEADER)),
        header_routes: traffic.header_routes.iter().map(header_route).collect(),
        sticky,
    }
}

/// The filter configuration holding only this rollout's entry (what its field manager applies
/// in `spec.pluginConfig`).
pub fn plugin_config(rollout: &CanaryRollout, namespace: &str, traffic: &Traffic) -> PluginConfig {
    PluginConfig {
        services: vec![service_entry(rollout, namespace, traffic)],
        ..PluginConfig::default()
    }
}

/// Who a client WasmPlugin belongs to, which decides what a rollout writes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmPluginOwnership {
    /// It does not exist yet, or the controller created it (label [`MANAGED_BY`]): each
    /// rollout writing into it applies `url`, `sha256`, `pluginName`, `match`, `failStrategy`
    /// (shared, so they must agree) and its own entry; the controller writes the `selector`.
    /// Fields it never applies (`priority`, `imagePullPolicy`, ...) stay with whoever set them.
    Owned,
    /// Someone else created it and no object controls it: rollouts write their entries of
    /// `spec.pluginConfig.services` only; url, selector and the rest stay the user's, and the
    /// controller never deletes it.
    Adopted,
    /// Another object controls it (`kind/name`): nothing is written; the status says so.
    ControlledByOther(String),
}

/// The ownership of `current` (the WasmPlugin as read, `None` if absent) for the rollout with
/// uid `rollout_uid`. A WasmPlugin controlled by this very rollout is the per-rollout one of
/// versions before composition: it is taken over as [`WasmPluginOwnership::Owned`] (and its
/// ownerReference dropped when written).
pub fn wasm_plugin_ownership(current: Option<&Value>, rollout_uid: &str) -> WasmPluginOwnership {
    let Some(current) = current else {
        return WasmPluginOwnership::Owned;
    };
    let controller = current["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|refs| refs.iter().find(|r| r["controller"] == true));
    match controller {
        Some(r) if r["uid"] == rollout_uid => WasmPluginOwnership::Owned,
        Some(r) => WasmPluginOwnership::ControlledByOther(format!(
            "{}/{}",
            r["kind"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or_default()
        )),
        None if current["metadata"]["labels"][MANAGED_BY.0] == MANAGED_BY.1 => {
            WasmPluginOwnership::Owned
        }
        None => WasmPluginOwnership::Adopted,
    }
}

/// What the rollout's field manager applies to the client WasmPlugin `target` for a plan.
pub fn wasm_plugin(
    rollout: &CanaryRollout,
    target: &PluginTarget,
    traffic: &Traffic,
    ownership: &WasmPluginOwnership,
) -> Value {
    let routing = rollout.spec.strategy.routing();
    let ns = rollout.namespace().unwrap_or_default();
    let plugin_config = plugin_config(rollout, &ns, traffic).to_json_value();
    let mut metadata = json!({"name": target.name, "namespace": target.namespace});
    let spec = if *ownership == WasmPluginOwnership::Owned {
        metadata["labels"] = json!({MANAGED_BY.0: MANAGED_BY.1});
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

/// The selector of a shared client WasmPlugin: the labels every one of its rollouts' callers
/// selectors has in common (`None`: some rollout calls from every workload there, or they
/// share no label). A superset of every rollout's callers, so each caller runs the filter; a
/// workload selected only by the common part runs it too, at the cost of a host lookup per
/// request (README, "One filter per sidecar").
pub fn composed_selector<'a>(
    selectors: impl IntoIterator<Item = &'a Option<BTreeMap<String, String>>>,
) -> Option<BTreeMap<String, String>> {
    let mut common: Option<BTreeMap<String, String>> = None;
    for selector in selectors {
        let selector = selector.as_ref()?;
        common = Some(match common {
            None => selector.clone(),
            Some(c) => c
                .into_iter()
                .filter(|(k, v)| selector.get(k) == Some(v))
                .collect(),
        });
    }
    common.filter(|c| !c.is_empty())
}

/// The rollout's own entry in a WasmPlugin as read, as JSON (`None`: not there).
pub fn entry_in<'a>(wasm_plugin: &'a Value, key: &str) -> Option<&'a Value> {
    match &wasm_plugin["spec"]["pluginConfig"]["services"] {
        Value::Object(by_name) => by_name.get(key),
        Value::Array(list) => list.iter().find(|s| s["name"] == key),
        _ => None,
    }
}

/// The field managers another rollout's write conflicts with, read from the API server's 409
/// (`conflict with "wasm-canary/ns/name" using ...`): a rollout never takes fields from
/// another rollout by force.
pub fn conflicting_managers(message: &str) -> Vec<String> {
    message
        .split("conflict with \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Whether `current` already holds everything `wanted` sets: objects field by field (extra
/// fields in `current`, set by others or defaulted by the API server, are fine), lists element
/// by element (same length: they are atomic in Istio's schemas), scalars equal. An apply of
/// `wanted` would change nothing the controller owns, so it is not sent (no write, no istiod
/// push, no watch event that would come back as a reconcile). The rollout's own entry is
/// compared exactly (a field it dropped, e.g. its last header route, must go).
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

/// Whether the WasmPlugin as read (`current`) already carries the apply `wanted` of the
/// rollout whose entry is `key`.
pub fn wasm_plugin_in_place(current: &Value, wanted: &Value, key: &str) -> bool {
    holds(&current["spec"], &wanted["spec"]) && entry_in(current, key) == entry_in(wanted, key)
}

/// The DestinationRule's `subsets` with the stable and canary subsets' hash labels set, every
/// other subset and field of each subset as found. Errors when a subset is missing.
pub fn destination_rule_subsets(
    rollout: &CanaryRollout,
    current: &Value,
    traffic: &Traffic,
) -> Result<Vec<Value>, String> {
    let dr = &rollout.spec.strategy.routing().destination_rule;
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
