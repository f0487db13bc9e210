//! Writes a [`Traffic`] plan to the WasmPlugin and the DestinationRule, in the order that keeps
//! traffic safe, and says what could not be written instead of only failing the reconcile.
//!
//! Ownership (see [`WasmPluginOwnership`]): every apply is forced, for the fields the
//! controller is the owner of record of. An edit by anyone else of those fields (`kubectl
//! edit`, another manager's apply) is taken back at the next write instead of locking the
//! controller out with a conflict. A WasmPlugin the user created is written for its
//! `pluginConfig` only; one controlled by another object is not written at all.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tracing::info;

use canary_core::PluginConfig;

use crate::conditions::TrafficReason;
use crate::crd::CanaryRollout;
use crate::reconcile::{destination_rule_resource, wasm_plugin_resource};
use crate::steps::Traffic;
use crate::traffic::{self, WasmPluginOwnership};
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

/// Canary exposure of a filter config: (weight, header routes).
fn exposure(config: Option<&PluginConfig>) -> (u32, usize) {
    config
        .and_then(|c| c.services.first())
        .map_or((0, 0), |s| (s.canary_weight, s.header_routes.len()))
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

/// Writes the DestinationRule subsets and the WasmPlugin. When the plan lowers canary exposure,
/// the WasmPlugin goes first and does not depend on the DestinationRule (traffic leaves the
/// canary before any subset moves, whatever is wrong with the DestinationRule: an abort always
/// takes effect); otherwise the DestinationRule goes first (a subset points at the right pods
/// before traffic arrives) and a problem there stops the WasmPlugin write.
pub async fn apply_traffic(
    client: &Client,
    ns: &str,
    rollout: &CanaryRollout,
    plan: &Traffic,
) -> Result<TrafficWrite> {
    let wp_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &wasm_plugin_resource());
    let dr_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &destination_rule_resource());
    let not_applied = |reason, message: String, filter_written| {
        Ok(TrafficWrite::NotApplied {
            reason,
            message,
            filter_written,
        })
    };

    let wp_name = traffic::wasm_plugin_name(rollout);
    let current = wp_api
        .get_opt(&wp_name)
        .await
        .map_err(kube_err("reading the WasmPlugin"))?
        .map(|w| serde_json::to_value(w).unwrap_or(Value::Null));
    let uid = rollout.uid().unwrap_or_default();
    let ownership = traffic::wasm_plugin_ownership(current.as_ref(), &uid);
    if let WasmPluginOwnership::ControlledByOther(other) = &ownership {
        return not_applied(
            TrafficReason::Misconfigured,
            format!("WasmPlugin {wp_name} is controlled by {other}, not by this rollout: name another one in spec.strategy.canary.trafficRouting.wasm.wasmPlugin.name"),
            false,
        );
    }
    let owner = rollout
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Invalid("rollout has no uid".into()))?;
    let owner = serde_json::to_value(owner).map_err(|source| Error::Json {
        context: "ownerReference".into(),
        source,
    })?;
    let wanted = traffic::wasm_plugin(rollout, ns, plan, &ownership, &owner);
    let wp_in_place = current
        .as_ref()
        .is_some_and(|c| traffic::wasm_plugin_in_place(c, &wanted));
    let current_config = current
        .as_ref()
        .and_then(|w| PluginConfig::from_value(&w["spec"]["pluginConfig"]).ok());
    let (old_weight, old_routes) = exposure(current_config.as_ref());
    let lowering = plan.canary_weight < old_weight || plan.header_routes.len() < old_routes;
    let adopted_now = ownership == WasmPluginOwnership::Adopted
        && !wp_in_place
        && !current.as_ref().is_some_and(managed_by_us);

    let write_wp = || async {
        if wp_in_place {
            return Ok(());
        }
        // Forced: these fields are ours (see WasmPluginOwnership); without force an edit by
        // anyone else would make every later write a conflict, abort included.
        wp_api
            .patch(
                &wp_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&wanted),
            )
            .await
            .map(|_| info!(wasm_plugin = %wp_name, weight = plan.canary_weight, "WasmPlugin written"))
    };
    let wp_refused = |e: kube::Error, filter_written| match refused(&e) {
        Some(m) => not_applied(
            TrafficReason::WriteRefused,
            format!("cannot write WasmPlugin {wp_name}: {m}"),
            filter_written,
        ),
        None => Err(kube_err("applying the WasmPlugin")(e)),
    };

    if lowering {
        if let Err(e) = write_wp().await {
            return wp_refused(e, false);
        }
    }
    let dr_name = &rollout
        .spec
        .strategy
        .canary
        .traffic_routing
        .wasm
        .destination_rule
        .name;
    // The WasmPlugin carries the plan's weight and header routes (written just now or already).
    let filter_holds_plan = lowering || wp_in_place;
    let dr_problem = |message: String| {
        let off_canary = plan.canary_weight == 0 && plan.header_routes.is_empty();
        let message = if filter_holds_plan && off_canary {
            format!("traffic is off the canary in WasmPlugin {wp_name}, but {message}")
        } else {
            message
        };
        not_applied(TrafficReason::Misconfigured, message, filter_holds_plan)
    };
    let Some(dr) = dr_api
        .get_opt(dr_name)
        .await
        .map_err(kube_err("reading the DestinationRule"))?
    else {
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
    if dr_value["spec"]["subsets"] != Value::Array(subsets.clone()) {
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
        if let Err(e) = dr_api
            .patch(
                dr_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&dr_patch),
            )
            .await
        {
            return match refused(&e) {
                Some(m) => dr_problem(format!("cannot write DestinationRule {dr_name}: {m}"))
                    .map(|w| with_reason(w, TrafficReason::WriteRefused)),
                None => Err(kube_err("applying DestinationRule subsets")(e)),
            };
        }
    }
    if !lowering {
        if let Err(e) = write_wp().await {
            return wp_refused(e, false);
        }
    }
    let adopted = if ownership == WasmPluginOwnership::Adopted {
        " (adopted: spec.pluginConfig only)"
    } else {
        ""
    };
    Ok(TrafficWrite::Applied {
        summary: format!("WasmPlugin {wp_name}{adopted}, DestinationRule {dr_name}"),
        adopted_now,
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

/// The controller's field manager already holds fields of the object.
fn managed_by_us(object: &Value) -> bool {
    object["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|m| m.iter().any(|e| e["manager"] == FIELD_MANAGER))
}
