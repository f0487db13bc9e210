//! `kubectl canary convert`: an Argo Rollouts `Rollout` (canary strategy, Istio subset routing)
//! becomes a `CanaryRollout`, plus the Istio objects it needs: the DestinationRule with subsets
//! that select by `rollouts-pod-template-hash` only (the controller writes those labels), and
//! the VirtualService made fixed and header-routed (no weights: the weight lives in the
//! WasmPlugin the controller owns). Pure: objects in, objects and notes out.
//!
//! Nothing is dropped silently: every field that has no equivalent is named in a note.

use std::collections::{BTreeMap, BTreeSet};

use crate::analysis::AnalysisTemplateSpec;
use crate::crd::CanaryRollout;
use crate::steps;
use anyhow::{anyhow, bail, Context, Result};
use canary_core::config::{DEFAULT_DECISION_HEADER, POD_TEMPLATE_HASH_LABEL};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Where the filter module is fetched from when `--wasm-url` is not given: the image `make oci`
/// builds, under the registry name the README uses.
pub const DEFAULT_WASM_URL: &str = "oci://registry.example.com/wasm-canary/filter:0.1.0";

/// Choices the Argo Rollout cannot tell us.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Namespace for every object (default: each object's own, else none).
    pub namespace: Option<String>,
    /// `trafficRouting.wasm.wasmPlugin.url`.
    pub wasm_url: Option<String>,
    /// Labels of the workloads that call the service (the client WasmPlugin's selector).
    pub client_selector: Option<BTreeMap<String, String>>,
    /// The header the filter writes and the VirtualService routes on.
    pub decision_header: Option<String>,
    /// The Kubernetes Service under canary (default: the DestinationRule's host).
    pub service: Option<String>,
    /// Leave `analysis` out instead of carrying it (the rollout then runs without metric checks).
    pub drop_analysis: bool,
}

/// One object of the output, with a comment saying what it is.
#[derive(Debug, Clone)]
pub struct Document {
    /// One line, printed as a YAML comment above the object.
    pub comment: String,
    /// The object.
    pub object: Value,
}

/// What `convert` produced.
#[derive(Debug, Clone, Default)]
pub struct Conversion {
    /// The objects to apply, in apply order.
    pub documents: Vec<Document>,
    /// What was not carried over, or needs the user's attention.
    pub notes: Vec<String>,
}

impl Conversion {
    /// The documents as one multi-document YAML stream.
    pub fn to_yaml(&self) -> Result<String> {
        let mut out = String::new();
        for (i, d) in self.documents.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(&format!("# {}\n", d.comment));
            out.push_str(&serde_yaml::to_string(&d.object).context("rendering YAML")?);
        }
        Ok(out)
    }
}

/// Parses a (multi-document) YAML stream; a `v1` `List` is flattened into its items.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Value>> {
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc)
            .with_context(|| format!("{source}: document {} is not valid YAML", i + 1))?;
        flatten(value, &mut objects);
    }
    Ok(objects)
}

fn flatten(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Null => {}
        Value::Object(ref o)
            if o.get("kind").and_then(Value::as_str) == Some("List")
                || o.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List") && o.contains_key("items")) =>
        {
            if let Some(items) = o.get("items").and_then(Value::as_array) {
                for item in items {
                    flatten(item.clone(), out);
                }
            }
        }
        other => out.push(other),
    }
}

fn kind_of(o: &Value) -> (&str, &str) {
    (
        o["apiVersion"].as_str().unwrap_or_default(),
        o["kind"].as_str().unwrap_or_default(),
    )
}

fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn is_istio(o: &Value, kind: &str) -> bool {
    let (api, k) = kind_of(o);
    group_of(api) == "networking.istio.io" && k == kind
}

/// Converts every Argo `Rollout` in `objects`, using the Istio objects found next to it.
pub fn convert(objects: &[Value], opts: &ConvertOptions) -> Result<Conversion> {
    let rollouts: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            let (api, kind) = kind_of(o);
            group_of(api) == "argoproj.io" && kind == "Rollout"
        })
        .collect();
    if rollouts.is_empty() {
        bail!(
            "no Argo Rollout (apiVersion argoproj.io/v1alpha1, kind Rollout) in the input; \
             pass the Rollout's file with -f (and its VirtualService/DestinationRule with another -f)"
        );
    }
    let mut out = Conversion::default();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for rollout in rollouts {
        convert_one(rollout, objects, opts, &mut out, &mut used)?;
    }
    let mut ignored: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unchanged = Vec::new();
    for o in objects {
        let (api, kind) = kind_of(o);
        if group_of(api) == "argoproj.io" && kind == "Rollout" {
            continue;
        }
        // Argo's AnalysisTemplate schema is ours: only the apiVersion changes.
        if group_of(api) == "argoproj.io"
            && matches!(kind, "AnalysisTemplate" | "ClusterAnalysisTemplate")
            && !opts.drop_analysis
        {
            let mut t = o.clone();
            t["apiVersion"] = Value::from("wasmcanary.io/v1alpha1");
            t["metadata"] = clean_metadata(&o["metadata"], o["metadata"]["namespace"].as_str());
            if let Some(m) = t.as_object_mut() {
                m.remove("status");
            }
            // Same schema, but not every Argo field has an equivalent here: name each one the
            // API server would prune, rather than let it vanish.
            match serde_json::from_value::<AnalysisTemplateSpec>(t["spec"].clone())
                .map_err(|e| e.to_string())
                .and_then(|typed| serde_json::to_value(typed).map_err(|e| e.to_string()))
            {
                Ok(kept) => {
                    for path in missing_paths(&t["spec"], &kept, "spec") {
                        out.notes.push(format!(
                            "{kind} {}: {path}: not supported, dropped by the API server",
                            name_of(o)
                        ));
                    }
                }
                Err(e) => out.notes.push(format!(
                    "{kind} {}: spec does not fit wasmcanary.io's schema: {e}",
                    name_of(o)
                )),
            }
            for note in idle_minute_warnings(&t) {
                out.notes.push(format!("{kind} {}: {note}", name_of(o)));
            }
            out.documents.insert(
                0,
                Document {
                    comment: format!("{kind} {}: converted (apiVersion only)", name_of(o)),
                    object: t,
                },
            );
            continue;
        }
        if used.contains(&(kind.to_owned(), name_of(o).to_owned())) {
            continue;
        }
        if group_of(api).ends_with("istio.io") && !group_of(api).ends_with("tetrate.io") {
            unchanged.push(format!("{kind}/{}", name_of(o)));
        } else {
            ignored
                .entry(api.to_owned())
                .or_default()
                .push(format!("{kind}/{}", name_of(o)));
        }
    }
    if !unchanged.is_empty() {
        out.notes.push(format!(
            "not printed, unchanged (they do not route the rollout's service): {}",
            unchanged.join(", ")
        ));
    }
    // istiod reads an object labelled `istio.io/rev` only if it runs that revision; the
    // WasmPlugin the controller writes has no such label, so every revision reads it. Without
    // this note a user on another revision gets a VirtualService and DestinationRule that
    // istiod silently ignores: requests spread over every pod of the service.
    let mut revisions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in &out.documents {
        if let Some(rev) = d.object["metadata"]["labels"]["istio.io/rev"].as_str() {
            let (_, kind) = kind_of(&d.object);
            revisions
                .entry(rev.to_owned())
                .or_default()
                .push(format!("{kind}/{}", name_of(&d.object)));
        }
    }
    for (rev, names) in revisions {
        out.notes.push(format!(
            "{}: label istio.io/rev={rev} kept: only an istiod of revision {rev} reads them; \
             remove the label if your istiod runs another revision, or traffic ignores the subsets",
            names.join(", ")
        ));
    }
    for (api, names) in ignored {
        let why = if api.contains("tetrate.io") {
            "TSB wrappers ignored: they do not change with the rollout; keep applying them as before"
        } else {
            "ignored: not part of an Argo Rollout's traffic routing"
        };
        out.notes.push(format!("{api} {}: {why}", names.join(", ")));
    }
    Ok(out)
}

/// The paths of `original` that `kept` lacks (objects by key, arrays by index).
fn missing_paths(original: &Value, kept: &Value, at: &str) -> Vec<String> {
    match (original, kept) {
        (Value::Object(o), Value::Object(k)) => o
            .iter()
            .flat_map(|(key, v)| match k.get(key) {
                Some(kv) => missing_paths(v, kv, &format!("{at}.{key}")),
                // Null and empty lists/maps carry nothing; omitting them loses nothing.
                None if v.is_null()
                    || v.as_array().is_some_and(Vec::is_empty)
                    || v.as_object().is_some_and(Map::is_empty) =>
                {
                    Vec::new()
                }
                None => vec![format!("{at}.{key}")],
            })
            .collect(),
        (Value::Array(o), Value::Array(k)) => o
            .iter()
            .zip(k)
            .enumerate()
            .flat_map(|(i, (v, kv))| missing_paths(v, kv, &format!("{at}[{i}]")))
            .collect(),
        _ => Vec::new(),
    }
}

fn note(out: &mut Conversion, rollout: &str, text: impl AsRef<str>) {
    out.notes
        .push(format!("Rollout {rollout}: {}", text.as_ref()));
}

/// Fields of an object that only the API server sets.
const SERVER_FIELDS: [&str; 7] = [
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
];

fn clean_metadata(meta: &Value, namespace: Option<&str>) -> Value {
    let mut m = meta.as_object().cloned().unwrap_or_default();
    for f in SERVER_FIELDS {
        m.remove(f);
    }
    if let Some(Value::Object(a)) = m.get_mut("annotations") {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
        a.retain(|k, _| !k.starts_with("rollout.argoproj.io/"));
        if a.is_empty() {
            m.remove("annotations");
        }
    }
    if let Some(ns) = namespace {
        m.insert("namespace".into(), json!(ns));
    }
    Value::Object(m)
}

/// Canary strategy fields carried over as they are.
const CARRIED_CANARY: [&str; 4] = [
    "canaryMetadata",
    "stableMetadata",
    "scaleDownDelaySeconds",
    "abortScaleDownDelaySeconds",
];

fn convert_one(
    rollout: &Value,
    objects: &[Value],
    opts: &ConvertOptions,
    out: &mut Conversion,
    used: &mut BTreeSet<(String, String)>,
) -> Result<()> {
    let name = name_of(rollout).to_owned();
    let spec = rollout["spec"]
        .as_object()
        .ok_or_else(|| anyhow!("Rollout {name} has no spec"))?;
    let namespace = opts
        .namespace
        .clone()
        .or_else(|| rollout["metadata"]["namespace"].as_str().map(str::to_owned));
    let strategy = spec
        .get("strategy")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("Rollout {name} has no spec.strategy"))?;
    if let Some(bg) = strategy.get("blueGreen").and_then(Value::as_object) {
        return convert_blue_green(rollout, spec, bg, namespace, opts, out);
    }
    let canary = strategy
        .get("canary")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("Rollout {name} has no spec.strategy.canary"))?;
    for k in strategy.keys().filter(|k| k.as_str() != "canary") {
        note(
            out,
            &name,
            format!("spec.strategy.{k}: not carried over (unknown)"),
        );
    }

    let mut new_spec = convert_spec_fields(spec, &name, out);

    // strategy.canary
    let mut new_canary = Map::new();
    for k in CARRIED_CANARY {
        if let Some(v) = canary.get(k) {
            new_canary.insert(k.into(), v.clone());
        }
    }
    if let Some(a) = canary.get("analysis") {
        if opts.drop_analysis {
            note(
                out,
                &name,
                "spec.strategy.canary.analysis (background analysis): DROPPED (--drop-analysis); \
                              the rollout will run without metric checks",
            );
        } else {
            new_canary.insert("analysis".into(), a.clone());
            note(out, &name, "spec.strategy.canary.analysis (background analysis): carried over; its AnalysisTemplates \
                              must exist as wasmcanary.io/v1alpha1 AnalysisTemplate (pass their files with -f to convert \
                              them too: only the apiVersion changes)");
        }
    }
    new_canary.insert(
        "steps".into(),
        Value::Array(convert_steps(&name, canary.get("steps"), opts, out)),
    );
    for (k, _) in canary {
        let known = CARRIED_CANARY.contains(&k.as_str())
            || matches!(k.as_str(), "analysis" | "steps" | "trafficRouting");
        if !known {
            let why = match k.as_str() {
                "canaryService" | "stableService" => {
                    "not needed: traffic is split by DestinationRule subsets on the one service"
                }
                "maxSurge" | "maxUnavailable" => {
                    "not supported: the canary ReplicaSet is sized from the weight, the stable one stays at full size"
                }
                _ => "not supported by CanaryRollout",
            };
            note(
                out,
                &name,
                format!("spec.strategy.canary.{k}: not carried over ({why})"),
            );
        }
    }

    // trafficRouting
    let routing = canary
        .get("trafficRouting")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            anyhow!(
                "Rollout {name} has no spec.strategy.canary.trafficRouting; \
                               only rollouts with Istio subset routing can be converted"
            )
        })?;
    for k in routing.keys().filter(|k| k.as_str() != "istio") {
        note(out, &name, format!("spec.strategy.canary.trafficRouting.{k}: not carried over (only istio routing is converted)"));
    }
    let istio = routing
        .get("istio")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("Rollout {name}: trafficRouting.istio is missing; only Istio routing can be converted"))?;
    let dr_ref = istio
        .get("destinationRule")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!(
            "Rollout {name}: trafficRouting.istio.destinationRule is missing (host-level splitting with \
             canaryService/stableService); wasm-canary needs subsets: add a DestinationRule with subsets \
             stable and canary and reference it there, then convert again"
        ))?;
    let dr_name = dr_ref["name"].as_str().unwrap_or_default().to_owned();
    let stable_subset = dr_ref
        .get("stableSubsetName")
        .and_then(Value::as_str)
        .unwrap_or("stable")
        .to_owned();
    let canary_subset = dr_ref
        .get("canarySubsetName")
        .and_then(Value::as_str)
        .unwrap_or("canary")
        .to_owned();
    let mut vs_names = Vec::new();
    if let Some(vs) = istio.get("virtualService") {
        vs_names.push(vs.clone());
    }
    if let Some(Value::Array(list)) = istio.get("virtualServices") {
        vs_names.extend(list.iter().cloned());
    }
    for (i, vs) in vs_names.iter().enumerate() {
        for k in ["routes", "tlsRoutes", "tcpRoutes"] {
            if vs.get(k).is_some() {
                note(out, &name, format!(
                    "trafficRouting.istio.virtualService{}.{k}: not carried over; every HTTP route of the VirtualService \
                     that sends to the two subsets is made header-routed",
                    if istio.contains_key("virtualServices") { format!("s[{i}]") } else { String::new() }
                ));
            }
        }
    }
    for k in istio.keys().filter(|k| {
        !matches!(
            k.as_str(),
            "virtualService" | "virtualServices" | "destinationRule"
        )
    }) {
        note(
            out,
            &name,
            format!("trafficRouting.istio.{k}: not carried over (unknown)"),
        );
    }

    let dr = objects
        .iter()
        .find(|o| is_istio(o, "DestinationRule") && name_of(o) == dr_name);
    let host = dr
        .and_then(|d| d["spec"]["host"].as_str())
        .map(str::to_owned);
    let service = opts
        .service
        .clone()
        .or_else(|| {
            host.as_deref()
                .map(|h| h.split('.').next().unwrap_or(h).to_owned())
        })
        .unwrap_or_else(|| dr_name.clone());
    if host.is_none() && opts.service.is_none() {
        note(out, &name, format!(
            "DestinationRule {dr_name} not in the input: assumed service {service:?}; pass its file with -f \
             (or --service) to be sure, and make sure it has subsets {stable_subset} and {canary_subset}"
        ));
    }
    let decision_header = opts
        .decision_header
        .clone()
        .unwrap_or_else(|| DEFAULT_DECISION_HEADER.to_owned());

    let mut extra_hosts = BTreeSet::new();
    let mut vs_docs = Vec::new();
    for vs_ref in &vs_names {
        let vs_name = vs_ref["name"].as_str().unwrap_or_default();
        let Some(vs) = objects
            .iter()
            .find(|o| is_istio(o, "VirtualService") && name_of(o) == vs_name)
        else {
            note(out, &name, format!(
                "VirtualService {vs_name} not in the input: pass its file with -f to get its header-routed version \
                 (the route to {canary_subset} must match header {decision_header}: canary, the default route goes to {stable_subset})"
            ));
            continue;
        };
        used.insert(("VirtualService".into(), vs_name.to_owned()));
        let standard = standard_hosts(&service, namespace.as_deref());
        for h in vs["spec"]["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !standard.contains(h) && !h.contains('*') {
                extra_hosts.insert(h.to_owned());
            }
        }
        let converted = header_routed_virtual_service(
            vs,
            &service,
            host.as_deref(),
            &stable_subset,
            &canary_subset,
            &decision_header,
            namespace.as_deref(),
            &name,
            out,
        );
        vs_docs.push(Document {
            comment: format!("VirtualService {vs_name}: fixed, routes on {decision_header} (no weights; the weight lives in the WasmPlugin)"),
            object: converted,
        });
    }

    let mut wasm = wasm_routing(&name, &service, &dr_name, opts, out);
    wasm["service"] = json!(service);
    if stable_subset != "stable" {
        wasm["destinationRule"]["stableSubsetName"] = json!(stable_subset);
    }
    if canary_subset != "canary" {
        wasm["destinationRule"]["canarySubsetName"] = json!(canary_subset);
    }
    if !extra_hosts.is_empty() {
        wasm["hosts"] = json!(extra_hosts);
    }
    new_canary.insert("trafficRouting".into(), json!({"wasm": wasm}));
    new_spec.insert("strategy".into(), json!({"canary": new_canary}));
    let (canary_rollout, typed) =
        canary_rollout_object(rollout, &name, namespace.as_deref(), new_spec)?;
    if let Err(e) = steps::validate(&typed.spec) {
        let strategy = typed.spec.strategy.effective();
        if !(strategy.analysis.is_some() || strategy.steps.iter().any(|s| s.analysis.is_some())) {
            note(
                out,
                &name,
                format!("the controller will refuse this CanaryRollout until fixed: {e}"),
            );
        }
    }
    out.documents.push(Document {
        comment: format!("CanaryRollout {name}, converted from Argo Rollout {name}"),
        object: canary_rollout,
    });

    let labels_to_strip: BTreeSet<String> = ["canaryMetadata", "stableMetadata"]
        .iter()
        .filter_map(|k| canary.get(*k)?.get("labels")?.as_object())
        .flat_map(|m| m.keys().cloned())
        .collect();
    if let Some(dr) = dr {
        {
            used.insert(("DestinationRule".into(), dr_name.clone()));
            let converted = hash_selected_destination_rule(
                dr,
                &stable_subset,
                &canary_subset,
                &labels_to_strip,
                namespace.as_deref(),
                &name,
                out,
            )?;
            out.documents.push(Document {
                comment: format!(
                    "DestinationRule {dr_name}: subsets {stable_subset}/{canary_subset} select by {POD_TEMPLATE_HASH_LABEL}, which the controller sets"
                ),
                object: converted,
            });
        }
    }
    out.documents.extend(vs_docs);
    out.documents.push(Document {
        comment: format!(
            "WasmPlugin {service}-canary-server: tags requests and responses with the serving pod's hash \
             (the client WasmPlugins are created by the controller, one per group of callers; do not apply wasm-plugin/client-wasmplugin.yaml too)"
        ),
        object: server_wasm_plugin(&service, rollout, opts, namespace.as_deref()),
    });
    Ok(())
}

/// The spec fields besides the strategy, as a CanaryRollout takes them.
fn convert_spec_fields(
    spec: &Map<String, Value>,
    name: &str,
    out: &mut Conversion,
) -> Map<String, Value> {
    let mut new_spec = Map::new();
    for (k, v) in spec {
        match k.as_str() {
            "replicas" | "selector" | "template" | "paused" => {
                new_spec.insert(k.clone(), v.clone());
            }
            "workloadRef" => {
                let mut w = v.as_object().cloned().unwrap_or_default();
                if let Some(sd) = w.remove("scaleDown") {
                    note(out, name, format!(
                        "spec.workloadRef.scaleDown ({sd}): not carried over; the controller only reads the Deployment's \
                         template, so scale the Deployment to 0 yourself once the CanaryRollout's stable ReplicaSet is ready"
                    ));
                } else {
                    note(out, name, format!(
                        "spec.workloadRef: the controller only reads Deployment {}'s pod template; its own pods keep \
                         running (no rollouts-pod-template-hash label, so neither subset selects them) until you scale it to 0",
                        v["name"].as_str().unwrap_or_default()
                    ));
                }
                new_spec.insert(k.clone(), Value::Object(w));
            }
            "strategy" => {}
            other => note(
                out,
                name,
                format!("spec.{other}: not carried over (CanaryRollout has no such field)"),
            ),
        }
    }
    new_spec
}

/// Argo `blueGreen` fields carried over as they are (same names, same meanings).
const CARRIED_BLUE_GREEN: [&str; 9] = [
    "activeService",
    "previewService",
    "autoPromotionEnabled",
    "autoPromotionSeconds",
    "previewReplicaCount",
    "scaleDownDelaySeconds",
    "abortScaleDownDelaySeconds",
    "previewMetadata",
    "activeMetadata",
];

/// An Argo `blueGreen` Rollout: its fields carried over; Argo switches Service selectors, so
/// the mesh objects wasm-canary routes with are generated for `activeService` (a DestinationRule
/// with subsets stable/canary, a VirtualService routing on the decision header) with the server
/// WasmPlugin.
fn convert_blue_green(
    rollout: &Value,
    spec: &Map<String, Value>,
    bg: &Map<String, Value>,
    namespace: Option<String>,
    opts: &ConvertOptions,
    out: &mut Conversion,
) -> Result<()> {
    let name = name_of(rollout).to_owned();
    let mut new_spec = convert_spec_fields(spec, &name, out);
    let service = bg
        .get("activeService")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("Rollout {name}: spec.strategy.blueGreen.activeService is missing"))?
        .to_owned();
    let mut new_bg = Map::new();
    for k in CARRIED_BLUE_GREEN {
        if let Some(v) = bg.get(k) {
            new_bg.insert(k.into(), v.clone());
        }
    }
    for k in ["prePromotionAnalysis", "postPromotionAnalysis"] {
        let Some(a) = bg.get(k) else { continue };
        if opts.drop_analysis {
            note(
                out,
                &name,
                format!("spec.strategy.blueGreen.{k}: DROPPED (--drop-analysis)"),
            );
        } else {
            new_bg.insert(k.into(), a.clone());
            note(out, &name, format!(
                "spec.strategy.blueGreen.{k}: carried over; its AnalysisTemplates must exist as \
                 wasmcanary.io/v1alpha1 AnalysisTemplate (pass their files with -f: only the apiVersion changes)"
            ));
        }
    }
    for k in bg.keys() {
        let known = CARRIED_BLUE_GREEN.contains(&k.as_str())
            || matches!(k.as_str(), "prePromotionAnalysis" | "postPromotionAnalysis");
        if !known {
            note(out, &name, format!("spec.strategy.blueGreen.{k}: not carried over (not supported by CanaryRollout)"));
        }
    }
    note(out, &name, format!(
        "blueGreen: Argo switches Service {service}'s selector; here its selector stays as it is and the \
         switch is the filter's (every caller at once), then the DestinationRule's: a DestinationRule \
         {service} and a VirtualService {service} routing on the decision header are generated below \
         (merge them with yours if {service} already has some)"
    ));
    if bg.contains_key("previewService") {
        note(out, &name, "blueGreen.previewService: the controller points its selector's rollouts-pod-template-hash at green (blue when there is none), as Argo does");
    }
    note(out, &name, format!(
        "blueGreen: to let testers reach green through {service} itself before the switch, add \
         spec.strategy.blueGreen.previewHeaderRoute: {{match: [{{headerName: x-preview, headerValue: {{exact: \"yes\"}}}}]}}"
    ));
    let decision_header = opts
        .decision_header
        .clone()
        .unwrap_or_else(|| DEFAULT_DECISION_HEADER.to_owned());
    let wasm = wasm_routing(&name, &service, &service, opts, out);
    new_bg.insert("trafficRouting".into(), json!({"wasm": wasm}));
    new_spec.insert("strategy".into(), json!({"blueGreen": new_bg}));
    let (canary_rollout, typed) =
        canary_rollout_object(rollout, &name, namespace.as_deref(), new_spec)?;
    if let Err(e) = steps::validate(&typed.spec) {
        note(
            out,
            &name,
            format!("the controller will refuse this CanaryRollout until fixed: {e}"),
        );
    }
    out.documents.push(Document {
        comment: format!("CanaryRollout {name} (blue-green), converted from Argo Rollout {name}"),
        object: canary_rollout,
    });
    let object_meta = |n: &str| {
        let mut m = json!({"name": n});
        if let Some(ns) = &namespace {
            m["namespace"] = json!(ns);
        }
        m
    };
    let labels = rollout["spec"]["selector"]["matchLabels"].clone();
    let subset = |n: &str| json!({"name": n, "labels": labels});
    out.documents.push(Document {
        comment: format!(
            "DestinationRule {service}: subsets stable (blue) and canary (green); the controller adds {POD_TEMPLATE_HASH_LABEL} to each"
        ),
        object: json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": object_meta(&service),
            "spec": {"host": service, "subsets": [subset("stable"), subset("canary")]}
        }),
    });
    out.documents.push(Document {
        comment: format!("VirtualService {service}: fixed, routes on {decision_header} (the filter decides; green only on `canary`)"),
        object: json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": object_meta(&service),
            "spec": {
                "hosts": [service],
                "http": [
                    {"name": "canary",
                     "match": [{"headers": {decision_header.clone(): {"exact": "canary"}}}],
                     "route": [{"destination": {"host": service, "subset": "canary"}}]},
                    {"name": "stable",
                     "route": [{"destination": {"host": service, "subset": "stable"}}]}
                ]
            }
        }),
    });
    out.documents.push(Document {
        comment: format!(
            "WasmPlugin {service}-canary-server: tags requests and responses with the serving pod's hash"
        ),
        object: server_wasm_plugin(&service, rollout, opts, namespace.as_deref()),
    });
    Ok(())
}

/// What a real SkyWalking OAP does to a template's SkyWalking metrics: `readMetricsValues`
/// answers 0 for a minute without data, so a condition over every point (`all(...)`) fails a
/// canary whose window reaches back before its first request (tests/oap/README.md).
fn idle_minute_warnings(template: &Value) -> Vec<String> {
    template["spec"]["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["provider"]["skywalking"]["query"]
                .as_str()
                .is_some_and(|q| q.contains("readMetricsValues"))
                && m["successCondition"]
                    .as_str()
                    .is_some_and(|c| c.contains("all("))
        })
        .map(|m| {
            format!(
                "metric {}: SkyWalking's readMetricsValues answers 0 for a minute without data, so this \
                 condition fails a canary whose window ({}) reaches back before its first request, and counts \
                 an idle canary as measured; query execExpression (MQE: null for such minutes) and judge only \
                 the minutes with data (controller/README.md, \"SkyWalking and minutes without data\")",
                m["name"].as_str().unwrap_or("?"),
                m["provider"]["skywalking"]["interval"].as_str().unwrap_or("its interval")
            )
        })
        .collect()
}

/// `trafficRouting.wasm` as both strategies have it (the WasmPlugin from the options, the
/// DestinationRule `dr_name`, the decision header when not the default), saying what the user
/// should set.
fn wasm_routing(
    name: &str,
    service: &str,
    dr_name: &str,
    opts: &ConvertOptions,
    out: &mut Conversion,
) -> Value {
    let mut wasm = json!({
        "wasmPlugin": {"url": opts.wasm_url.clone().unwrap_or_else(|| DEFAULT_WASM_URL.to_owned())},
        "destinationRule": {"name": dr_name},
    });
    if opts.wasm_url.is_none() {
        note(out, name, format!(
            "trafficRouting.wasm.wasmPlugin.url set to {DEFAULT_WASM_URL}: point it at your registry (--wasm-url)"
        ));
    }
    match &opts.client_selector {
        Some(sel) => wasm["wasmPlugin"]["selector"] = json!(sel),
        None => note(out, name, format!(
            "trafficRouting.wasm.wasmPlugin.selector not set: the filter runs in every workload of the namespace; \
             restrict it to the callers of {service} with --client-selector app=<caller>"
        )),
    }
    if let Some(header) = opts
        .decision_header
        .as_deref()
        .filter(|h| *h != DEFAULT_DECISION_HEADER)
    {
        wasm["decisionHeader"] = json!(header);
    }
    wasm
}

/// The CanaryRollout named like `rollout` with `spec`, and it parsed as the controller reads it
/// (what is printed must be what the controller reads).
fn canary_rollout_object(
    rollout: &Value,
    name: &str,
    namespace: Option<&str>,
    spec: Map<String, Value>,
) -> Result<(Value, CanaryRollout)> {
    let mut meta = clean_metadata(&rollout["metadata"], namespace);
    if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
        if let Some(ns) = namespace {
            m.insert("namespace".into(), json!(ns));
        }
    }
    let object = json!({
        "apiVersion": "wasmcanary.io/v1alpha1",
        "kind": "CanaryRollout",
        "metadata": meta,
        "spec": spec,
    });
    let typed = serde_json::from_value(object.clone()).with_context(|| {
        format!("the converted Rollout {name} does not parse as a CanaryRollout")
    })?;
    Ok((object, typed))
}

fn standard_hosts(service: &str, namespace: Option<&str>) -> BTreeSet<String> {
    let mut s = BTreeSet::from([service.to_owned()]);
    if let Some(ns) = namespace {
        s.insert(format!("{service}.{ns}"));
        s.insert(format!("{service}.{ns}.svc"));
        s.insert(format!("{service}.{ns}.svc.cluster.local"));
    }
    s
}

fn convert_steps(
    rollout: &str,
    steps: Option<&Value>,
    opts: &ConvertOptions,
    out: &mut Conversion,
) -> Vec<Value> {
    let mut converted = Vec::new();
    for (i, step) in steps
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(obj) = step.as_object() else {
            note(
                out,
                rollout,
                format!("steps[{i}] is not an object: dropped"),
            );
            continue;
        };
        let Some((kind, _)) = obj.iter().next().filter(|_| obj.len() == 1) else {
            note(
                out,
                rollout,
                format!("steps[{i}] must have exactly one field: dropped"),
            );
            continue;
        };
        match kind.as_str() {
            "setWeight" | "pause" | "setHeaderRoute" => {
                if let Some(d) = step.get("pause").and_then(|p| p.get("duration")) {
                    if let Err(e) = crate::duration::parse_duration(d) {
                        note(
                            out,
                            rollout,
                            format!("steps[{i}].pause: {e}; fix it before applying"),
                        );
                    }
                }
                converted.push(step.clone());
            }
            "analysis" if opts.drop_analysis => {
                note(
                    out,
                    rollout,
                    format!("steps[{i}].analysis: DROPPED (--drop-analysis)"),
                );
            }
            "analysis" => {
                note(out, rollout, format!(
                    "steps[{i}].analysis: carried over; its AnalysisTemplates must exist as wasmcanary.io/v1alpha1"
                ));
                converted.push(step.clone());
            }
            other => {
                let why = match other {
                    "setCanaryScale" => "the canary is always sized from the current weight",
                    "setMirrorRoute" => "mirroring is not supported",
                    "experiment" => "experiments are not supported",
                    _ => "unknown step",
                };
                note(
                    out,
                    rollout,
                    format!("steps[{i}].{other}: not carried over ({why}); the step is left out"),
                );
            }
        }
    }
    converted
}

fn subset_destination(d: &Value, host_names: &[&str]) -> bool {
    d["destination"]["host"].as_str().is_some_and(|h| {
        host_names.contains(&h) || host_names.iter().any(|n| h.starts_with(&format!("{n}.")))
    })
}

#[allow(clippy::too_many_arguments)]
fn header_routed_virtual_service(
    vs: &Value,
    service: &str,
    dr_host: Option<&str>,
    stable: &str,
    canary: &str,
    header: &str,
    namespace: Option<&str>,
    rollout: &str,
    out: &mut Conversion,
) -> Value {
    let vs_name = name_of(vs);
    let mut hosts = vec![service];
    if let Some(h) = dr_host {
        hosts.push(h);
    }
    let mut http = Vec::new();
    for (i, route) in vs["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let dests: Vec<&Value> = route["route"].as_array().into_iter().flatten().collect();
        let ours = dests.iter().any(|d| {
            subset_destination(d, &hosts)
                && matches!(d["destination"]["subset"].as_str(), Some(s) if s == stable || s == canary)
        });
        if !ours {
            http.push(route.clone());
            continue;
        }
        let others: Vec<&&Value> = dests
            .iter()
            .filter(|d| !subset_destination(d, &hosts))
            .collect();
        if !others.is_empty() {
            note(out, rollout, format!(
                "VirtualService {vs_name} http[{i}]: destinations other than {service} are dropped from this route \
                 (only the two subsets remain)"
            ));
        }
        let destination = |subset: &str| {
            let template = dests
                .iter()
                .find(|d| d["destination"]["subset"].as_str() == Some(subset))
                .or(dests.first())
                .map(|d| d["destination"].clone())
                .unwrap_or_else(|| json!({"host": service}));
            let mut d = template;
            d["subset"] = json!(subset);
            json!([{"destination": d}])
        };
        let base_name = route["name"].as_str().map(str::to_owned);
        let mut canary_route = route.clone();
        let header_match = json!({header: {"exact": "canary"}});
        let matches: Vec<Value> = match route["match"].as_array() {
            Some(ms) if !ms.is_empty() => ms
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    if !m["headers"].is_object() {
                        m["headers"] = json!({});
                    }
                    m["headers"][header] = json!({"exact": "canary"});
                    m
                })
                .collect(),
            _ => vec![json!({"headers": header_match})],
        };
        canary_route["match"] = Value::Array(matches);
        canary_route["route"] = destination(canary);
        canary_route["name"] = json!(base_name
            .as_ref()
            .map_or_else(|| canary.to_owned(), |n| format!("{n}-{canary}")));
        let mut stable_route = route.clone();
        stable_route["route"] = destination(stable);
        stable_route["name"] = json!(base_name
            .as_ref()
            .map_or_else(|| stable.to_owned(), |n| format!("{n}-{stable}")));
        http.push(canary_route);
        http.push(stable_route);
    }
    let mut spec = vs["spec"].clone();
    spec["http"] = Value::Array(http);
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": clean_metadata(&vs["metadata"], namespace),
        "spec": spec,
    })
}

fn hash_selected_destination_rule(
    dr: &Value,
    stable: &str,
    canary: &str,
    strip: &BTreeSet<String>,
    namespace: Option<&str>,
    rollout: &str,
    out: &mut Conversion,
) -> Result<Value> {
    let dr_name = name_of(dr);
    let mut spec = dr["spec"].clone();
    let subsets = spec["subsets"].as_array_mut().ok_or_else(|| {
        anyhow!("DestinationRule {dr_name} has no subsets; add {stable} and {canary}")
    })?;
    for wanted in [stable, canary] {
        let subset = subsets
            .iter_mut()
            .find(|s| s["name"].as_str() == Some(wanted))
            .ok_or_else(|| anyhow!("DestinationRule {dr_name} has no subset {wanted:?}; add it (the controller sets its labels)"))?;
        if let Some(labels) = subset["labels"].as_object_mut() {
            let removed: Vec<String> = labels
                .keys()
                .filter(|k| strip.contains(*k))
                .cloned()
                .collect();
            for k in &removed {
                labels.remove(k);
            }
            labels.remove(POD_TEMPLATE_HASH_LABEL);
            if !removed.is_empty() {
                note(out, rollout, format!(
                    "DestinationRule {dr_name} subset {wanted}: label(s) {} removed from the selector: they come from \
                     canaryMetadata/stableMetadata, which pods keep after a promotion, so the subset would lose its pods; \
                     the controller selects by {POD_TEMPLATE_HASH_LABEL} instead",
                    removed.join(", ")
                ));
            }
            if labels.is_empty() {
                if let Some(s) = subset.as_object_mut() {
                    s.remove("labels");
                }
            }
        }
    }
    Ok(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": clean_metadata(&dr["metadata"], namespace),
        "spec": spec,
    }))
}

fn server_wasm_plugin(
    service: &str,
    rollout: &Value,
    opts: &ConvertOptions,
    namespace: Option<&str>,
) -> Value {
    let mut meta = json!({"name": format!("{service}-canary-server")});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    let selector = rollout["spec"]["selector"]["matchLabels"].clone();
    let mut spec = json!({
        "url": opts.wasm_url.clone().unwrap_or_else(|| DEFAULT_WASM_URL.to_owned()),
        "pluginName": "wasm-canary",
        "failStrategy": "FAIL_OPEN",
        "match": [{"mode": "SERVER"}],
        "pluginConfig": {"mode": "server"},
    });
    if selector.is_object() {
        spec["selector"] = json!({"matchLabels": selector});
    }
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": meta,
        "spec": spec,
    })
}
