//! Writes a [`Traffic`] plan to the client WasmPlugins of the rollout's callers and to the
//! DestinationRule, in the order that keeps traffic safe, and says what could not be written
//! instead of only failing the reconcile.
//!
//! Ownership (see [`WasmPluginOwnership`]): each rollout applies its entry with its own field
//! manager ([`traffic::field_manager`]). A conflict with another rollout's manager is never
//! forced: that rollout is refused with a status message and nothing of the other changes. A
//! conflict with anyone else (`kubectl edit`, another tool) is forced: the rollout is the owner
//! of record of its entry, and such an edit must not lock it out (abort included). A
//! WasmPlugin the user created is written for `pluginConfig` entries only; one controlled by
//! another object is not written at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tracing::info;

use crate::caches::Caches;
use crate::conditions::TrafficReason;
use crate::crd::CanaryRollout;
use crate::reconcile::{destination_rule_resource, wasm_plugin_resource};
use crate::steps::Traffic;
use crate::traffic::{self, PluginTarget, WasmPluginOwnership};
use crate::{kube_err, Error, Result, FIELD_MANAGER};

/// What came of writing a traffic plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficWrite {
    /// Both objects carry the plan; `summary` names them (and says when the WasmPlugin is
    /// adopted), for the `TrafficApplied` condition.
    Applied {
        /// E.g. `WasmPlugin reviews-canary, DestinationRule reviews`.
        summary: String,
        /// This write adopted a user's WasmPlugin (the first write into it): worth an Event.
        adopted_now: bool,
        /// The client WasmPlugins (`namespace/name`) now holding the rollout's entry.
        wasm_plugins: Vec<String>,
    },
    /// A write could not be made.
    NotApplied {
        /// Why, for the condition.
        reason: TrafficReason,
        /// For the status message and the condition.
        message: String,
        /// The WasmPlugin carries the plan's weight and header routes (a lowering is written
        /// there first): traffic already follows them.
        filter_written: bool,
    },
}

/// Canary exposure of the rollout's entry (`key`) in a WasmPlugin as read: (weight, header
/// routes).
fn exposure(current: Option<&Value>, key: &str) -> (u32, usize) {
    current
        .and_then(|c| traffic::entry_in(c, key))
        .map_or((0, 0), |e| {
            (
                e["canaryWeight"].as_u64().map_or(0, |w| w as u32),
                e["headerRoutes"].as_array().map_or(0, Vec::len),
            )
        })
}

/// A write the API server refused for good (RBAC, admission, validation): reported in status.
/// Conflicts (a DestinationRule changed since it was read), throttling and server errors are
/// transient: the reconcile fails and is retried.
fn refused(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if (400..500).contains(&s.code) && ![409, 429].contains(&s.code) => {
            Some(s.message.clone())
        }
        _ => None,
    }
}

/// One client WasmPlugin as this reconcile sees it.
struct PluginWrite {
    target: PluginTarget,
    ownership: WasmPluginOwnership,
    wanted: Value,
    in_place: bool,
    /// The selector the controller composes for it (only for [`WasmPluginOwnership::Owned`]),
    /// and whether it must be written.
    selector: Option<Option<BTreeMap<String, String>>>,
}

/// Why a rollout's entry cannot be written: another rollout's field manager holds the fields
/// (the shared `url`/`sha256` differ, or the same service).
fn claimed_message(target: &PluginTarget, managers: &[String], message: &str) -> String {
    let fields = message.split(": ").skip(1).collect::<Vec<_>>().join(": ");
    format!(
        "WasmPlugin {} is shared with {} and this rollout disagrees on {fields}: rollouts with callers in one namespace must use the same wasmPlugin url and sha256 (and one service is under one rollout)",
        target.key(),
        managers.join(", ")
    )
}

/// Applies `wanted` with the rollout's field manager: without force first; on a conflict with
/// another rollout's manager, not at all (returned as a message); on a conflict with anyone
/// else (`kubectl edit`, another tool), forced: these fields are the rollout's, and an edit by
/// anyone else must not lock it out (abort included).
async fn apply_entry(
    api: &Api<DynamicObject>,
    target: &PluginTarget,
    manager: &str,
    wanted: &Value,
) -> std::result::Result<std::result::Result<(), String>, kube::Error> {
    let params = PatchParams::apply(manager);
    match api
        .patch(&target.name, &params, &Patch::Apply(wanted))
        .await
    {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let managers = traffic::conflicting_managers(&s.message);
            let rollouts: Vec<String> = managers
                .into_iter()
                .filter(|m| m.starts_with(traffic::ROLLOUT_MANAGER_PREFIX))
                .collect();
            if !rollouts.is_empty() {
                return Ok(Err(claimed_message(target, &rollouts, &s.message)));
            }
            api.patch(&target.name, &params.force(), &Patch::Apply(wanted))
                .await
                .map(|_| Ok(()))
        }
        Err(e) => Err(e),
    }
}

/// The selector the controller writes on a shared client WasmPlugin: composed from the
/// callers of every rollout writing into it (`rollouts`, the controller's cache, plus `also`,
/// the rollout being reconciled, in case the cache lags).
pub fn selector_for(
    rollouts: &[Arc<CanaryRollout>],
    also: Option<&CanaryRollout>,
    namespace: &str,
    name: &str,
) -> Option<BTreeMap<String, String>> {
    let also_uid = also.and_then(|r| r.uid());
    let writers = rollouts
        .iter()
        .map(|r| &**r)
        .filter(|r| r.metadata.deletion_timestamp.is_none() && r.uid() != also_uid)
        .chain(also);
    traffic::plugin_selector(writers, namespace, name)
}

/// Writes the controller's part of a shared client WasmPlugin: its `selector` (and nothing
/// else, so fields a version before composition wrote under this manager, such as its
/// ownerReference, are dropped).
async fn apply_selector(
    api: &Api<DynamicObject>,
    target: &PluginTarget,
    selector: &Option<BTreeMap<String, String>>,
) -> std::result::Result<(), kube::Error> {
    let mut body = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": target.name, "namespace": target.namespace},
        "spec": {},
    });
    if let Some(labels) = selector {
        body["spec"]["selector"] = json!({"matchLabels": labels});
    }
    api.patch(
        &target.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

/// Removes everything the field manager `manager` wrote in the WasmPlugin `namespace/name`
/// (its entry, and its share of url and the rest), then deletes the WasmPlugin if the
/// controller created it and no entry is left, so a sidecar calling no service under rollout
/// runs no filter. Absent: nothing to do.
pub async fn release(
    client: &Client,
    namespace: &str,
    name: &str,
    manager: &str,
    rollouts: &[Arc<CanaryRollout>],
) -> Result<()> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &wasm_plugin_resource());
    let Some(current) = api
        .get_opt(name)
        .await
        .map_err(kube_err("reading a WasmPlugin to release"))?
    else {
        return Ok(());
    };
    let ours = current
        .labels()
        .get(traffic::MANAGED_BY.0)
        .map(String::as_str)
        == Some(traffic::MANAGED_BY.1);
    let holds_fields = current
        .managed_fields()
        .iter()
        .any(|m| m.manager.as_deref() == Some(manager));
    // Entries no other manager keeps: a WasmPlugin the controller created with only this
    // manager's entries left is deleted as it is (an empty apply would strip `spec.url`, which
    // the API server refuses).
    let own_keys: Vec<String> = current
        .managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .filter_map(|m| m.fields_v1.as_ref())
        .flat_map(|f| {
            f.0["f:spec"]["f:pluginConfig"]["f:services"]
                .as_object()
                .into_iter()
                .flat_map(|o| {
                    o.keys()
                        .filter_map(|k| k.strip_prefix("f:"))
                        .map(str::to_owned)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let others_left = current.data["spec"]["pluginConfig"]["services"]
        .as_object()
        .is_some_and(|o| o.keys().any(|k| !own_keys.contains(k)));
    let delete_as_is = ours && !others_left;
    let mut after = current.clone();
    if holds_fields && !delete_as_is {
        // An empty apply drops every field only this manager owned. The resourceVersion makes
        // it fail rather than create the object if it was deleted meanwhile.
        let body = json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {"name": name, "namespace": namespace,
                         "resourceVersion": current.resource_version()},
        });
        after = api
            .patch(
                name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(kube_err("releasing a WasmPlugin entry"))?;
        info!(wasm_plugin = %format!("{namespace}/{name}"), %manager, "entry released");
    }
    let entries = if delete_as_is {
        0
    } else {
        after.data["spec"]["pluginConfig"]["services"]
            .as_object()
            .map_or(0, serde_json::Map::len)
    };
    if !ours {
        return Ok(());
    }
    if entries == 0 {
        let precondition = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version: after.resource_version(),
                uid: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &precondition).await {
            Ok(_) => info!(wasm_plugin = %format!("{namespace}/{name}"), "no entry left: deleted"),
            // Written meanwhile by a rollout: it stays.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => return Err(kube_err("deleting an empty WasmPlugin")(e)),
        }
    } else {
        let target = PluginTarget {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            selector: None,
        };
        let selector = selector_for(rollouts, None, namespace, name);
        apply_selector(&api, &target, &selector)
            .await
            .map_err(kube_err("writing a WasmPlugin's selector"))?;
    }
    Ok(())
}

/// Writes the rollout's entry into every client WasmPlugin of its callers, the DestinationRule
/// subsets, and releases WasmPlugins it no longer writes into. When the plan lowers canary
/// exposure, the WasmPlugins go first and do not depend on the DestinationRule (traffic leaves
/// the canary before any subset moves, whatever is wrong with the DestinationRule: an abort
/// always takes effect); otherwise the DestinationRule goes first (a subset points at the right
/// pods before traffic arrives) and a problem there stops the WasmPlugin writes.
pub async fn apply_traffic(
    client: &Client,
    ns: &str,
    rollout: &CanaryRollout,
    plan: &Traffic,
    rollouts: &[Arc<CanaryRollout>],
    caches: Option<&Caches>,
) -> Result<TrafficWrite> {
    let dr_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &destination_rule_resource());
    let not_applied = |reason, message: String, filter_written| {
        Ok(TrafficWrite::NotApplied {
            reason,
            message,
            filter_written,
        })
    };
    let key = traffic::service_key(rollout, ns);
    let manager = traffic::field_manager(rollout);
    let uid = rollout.uid().unwrap_or_default();

    let mut writes = Vec::new();
    let mut lowering = false;
    // The stable version changes (a promotion): the DestinationRule goes first, its stable
    // subset moving to the new version while the filter still sends the canary share there;
    // lowering the filter first would send every request back to the old version until the
    // DestinationRule followed.
    let mut promoting = false;
    let mut adopted_now = false;
    for target in traffic::targets(rollout, rollouts) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &target.namespace, &wasm_plugin_resource());
        let current = match caches {
            Some(caches) => caches.wasm_plugin(&target.namespace, &target.name),
            None => api
                .get_opt(&target.name)
                .await
                .map_err(kube_err("reading the WasmPlugin"))?
                .map(Arc::new),
        }
        .map(|w| serde_json::to_value(&*w).unwrap_or(Value::Null));
        let ownership = traffic::wasm_plugin_ownership(current.as_ref(), &uid);
        if let WasmPluginOwnership::ControlledByOther(other) = &ownership {
            return not_applied(
                TrafficReason::Misconfigured,
                format!("WasmPlugin {} is controlled by {other}, not by wasm-canary: name another one in spec.strategy.canary.trafficRouting.wasm.wasmPlugin.name", target.key()),
                false,
            );
        }
        let wanted = traffic::wasm_plugin(rollout, &target, plan, &ownership);
        let in_place = current
            .as_ref()
            .is_some_and(|c| traffic::wasm_plugin_in_place(c, &wanted, &key));
        let (old_weight, old_routes) = exposure(current.as_ref(), &key);
        lowering |= plan.canary_weight < old_weight || plan.header_routes.len() < old_routes;
        promoting |= current
            .as_ref()
            .and_then(|c| traffic::entry_in(c, &key))
            .and_then(|e| e["stableHash"].as_str())
            .is_some_and(|old| old != plan.stable_hash);
        adopted_now |= ownership == WasmPluginOwnership::Adopted
            && !in_place
            && !current.as_ref().is_some_and(|c| managed_by(c, &manager));
        let selector = (ownership == WasmPluginOwnership::Owned)
            .then(|| selector_for(rollouts, Some(rollout), &target.namespace, &target.name));
        let selector = selector.filter(|wanted_selector| {
            let have = current
                .as_ref()
                .map(|c| &c["spec"]["selector"]["matchLabels"]);
            let legacy_owner = current.as_ref().is_some_and(|c| {
                c["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
            });
            legacy_owner
                || match (have, wanted_selector) {
                    (Some(Value::Object(h)), Some(w)) => {
                        h.len() != w.len() || w.iter().any(|(k, v)| h.get(k) != Some(&json!(v)))
                    }
                    (Some(Value::Object(_)), None) => true,
                    (_, None) => false,
                    (_, Some(_)) => true,
                }
        });
        writes.push(PluginWrite {
            target,
            ownership,
            wanted,
            in_place,
            selector,
        });
    }
    let plugin_names = writes
        .iter()
        .map(|w| w.target.key())
        .collect::<Vec<_>>()
        .join(", ");

    let write_plugins = || async {
        for w in &writes {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &w.target.namespace, &wasm_plugin_resource());
            if !w.in_place {
                match apply_entry(&api, &w.target, &manager, &w.wanted).await {
                    Ok(Ok(())) => {
                        info!(wasm_plugin = %w.target.key(), weight = plan.canary_weight, "WasmPlugin written");
                    }
                    Ok(Err(claimed)) => return Ok(Err(claimed)),
                    Err(e) => return Err(e),
                }
            }
            if let Some(selector) = &w.selector {
                apply_selector(&api, &w.target, selector).await?;
            }
        }
        Ok(Ok(()))
    };
    let wp_failed = |outcome: std::result::Result<std::result::Result<(), String>, kube::Error>,
                     filter_written| match outcome {
        Ok(Ok(())) => None,
        Ok(Err(claimed)) => Some(not_applied(
            TrafficReason::Misconfigured,
            claimed,
            filter_written,
        )),
        Err(e) => Some(match refused(&e) {
            Some(m) => not_applied(
                TrafficReason::WriteRefused,
                format!("cannot write WasmPlugin {plugin_names}: {m}"),
                filter_written,
            ),
            None => Err(kube_err("applying the WasmPlugin")(e)),
        }),
    };

    let lowering = lowering && !promoting;
    if lowering {
        if let Some(failed) = wp_failed(write_plugins().await, false) {
            return failed;
        }
    }
    let wp_name = plugin_names.clone();
    let dr_name = &rollout.spec.strategy.routing().destination_rule.name;
    // The WasmPlugins carry the plan's weight and header routes (written just now or already).
    let filter_holds_plan = lowering || writes.iter().all(|w| w.in_place);
    let dr_problem = |message: String| {
        let off_canary = plan.canary_weight == 0 && plan.header_routes.is_empty();
        let message = if filter_holds_plan && off_canary {
            format!("traffic is off the canary in WasmPlugin {wp_name}, but {message}")
        } else {
            message
        };
        not_applied(TrafficReason::Misconfigured, message, filter_holds_plan)
    };
    // Read from the cache; a write refused because the cache was behind (409) is made again
    // from a fresh read.
    let mut fresh = caches.is_none();
    loop {
        let dr = match (fresh, caches) {
            (false, Some(caches)) => caches.destination_rule(ns, dr_name).map(|d| (*d).clone()),
            _ => dr_api
                .get_opt(dr_name)
                .await
                .map_err(kube_err("reading the DestinationRule"))?,
        };
        let Some(dr) = dr else {
            return dr_problem(format!(
                "DestinationRule {dr_name} not found in {ns}; create it with subsets stable and canary"
            ));
        };
        let dr_value = serde_json::to_value(&dr).map_err(|source| Error::Json {
            context: "DestinationRule".into(),
            source,
        })?;
        let subsets = match traffic::destination_rule_subsets(rollout, &dr_value, plan) {
            Ok(s) => s,
            Err(message) => return dr_problem(message),
        };
        if dr_value["spec"]["subsets"] == Value::Array(subsets.clone()) {
            break;
        }
        let dr_patch = json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            // The resourceVersion makes the apply fail (409) if someone changed the
            // DestinationRule since we read it: their edit is never overwritten; we retry from a
            // fresh read.
            "metadata": {"name": dr_name, "namespace": ns, "resourceVersion": dr.metadata.resource_version},
            "spec": {"subsets": subsets},
        });
        // subsets is an atomic list in Istio's schema: force takes it over from whoever
        // created the DestinationRule; the resourceVersion above keeps that safe.
        match dr_api
            .patch(
                dr_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&dr_patch),
            )
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 409 && !fresh => fresh = true,
            Err(e) => {
                return match refused(&e) {
                    Some(m) => dr_problem(format!("cannot write DestinationRule {dr_name}: {m}"))
                        .map(|w| with_reason(w, TrafficReason::WriteRefused)),
                    None => Err(kube_err("applying DestinationRule subsets")(e)),
                };
            }
        }
    }
    if !lowering {
        if let Some(failed) = wp_failed(write_plugins().await, false) {
            return failed;
        }
    }
    // Entries in WasmPlugins this rollout no longer writes into (its callers changed).
    let wanted_keys: Vec<String> = writes.iter().map(|w| w.target.key()).collect();
    for stale in rollout
        .status
        .as_ref()
        .and_then(|s| s.wasm_plugins.as_ref())
        .into_iter()
        .flatten()
        .filter(|k| !wanted_keys.contains(k))
    {
        if let Some((namespace, name)) = stale.split_once('/') {
            release(client, namespace, name, &manager, rollouts).await?;
        }
    }
    let adopted = if writes
        .iter()
        .any(|w| w.ownership == WasmPluginOwnership::Adopted)
    {
        " (adopted: spec.pluginConfig only)"
    } else {
        ""
    };
    Ok(TrafficWrite::Applied {
        summary: format!("WasmPlugin {wp_name}{adopted}, DestinationRule {dr_name}"),
        adopted_now,
        wasm_plugins: wanted_keys,
    })
}

fn with_reason(w: TrafficWrite, reason: TrafficReason) -> TrafficWrite {
    match w {
        TrafficWrite::NotApplied {
            message,
            filter_written,
            ..
        } => TrafficWrite::NotApplied {
            reason,
            message,
            filter_written,
        },
        applied => applied,
    }
}

/// The field manager `manager` already holds fields of the object.
fn managed_by(object: &Value, manager: &str) -> bool {
    object["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|m| m.iter().any(|e| e["manager"] == manager))
}
