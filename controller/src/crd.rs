//! The `CanaryRollout` resource (`wasmcanary.io/v1alpha1`).
//!
//! Its spec follows Argo Rollouts' canary strategy, so an Argo `Rollout` carries over by changing
//! `apiVersion`/`kind` and replacing `trafficRouting.istio` with `trafficRouting.wasm`. Doc
//! comments here become the CRD's descriptions (`kubectl explain canaryrollout.spec`).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::analysis::{AnalysisRunStatus, RolloutAnalysis};

/// A canary rollout: runs a new pod template next to the current one and moves traffic to it
/// step by step through the wasm-canary filter, then promotes it or rolls back.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "wasmcanary.io",
    version = "v1alpha1",
    kind = "CanaryRollout",
    namespaced,
    status = "CanaryRolloutStatus",
    shortname = "cro",
    category = "all",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.currentStep"}"#,
    printcolumn = r#"{"name":"Weight","type":"string","jsonPath":".status.weight"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stableHash"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".status.canaryHash"}"#,
    printcolumn = r#"{"name":"Analysis","type":"string","jsonPath":".status.analysisRuns[*].phase"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRolloutSpec {
    /// Number of pods when fully rolled out. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Selects the pods of this rollout; must match the template's labels.
    pub selector: LabelSelector,
    /// The pod template. Exactly one of `template` and `workloadRef` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplateSpec>,
    /// Take the pod template from an existing Deployment (Argo's `workloadRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<WorkloadRef>,
    /// How to roll out.
    pub strategy: RolloutStrategy,
    /// Hold the rollout where it is (no step advances) while true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Abort: all traffic back to stable at once, header routes removed, then the canary scaled
    /// down after `abortScaleDownDelaySeconds`. Setting it back to false retries from step 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
}

/// Reference to the workload whose pod template is rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// `apps/v1`.
    pub api_version: String,
    /// `Deployment`.
    pub kind: String,
    /// Name of the Deployment in the rollout's namespace.
    pub name: String,
}

/// The rollout strategy: exactly one of `canary` and `blueGreen`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// Canary strategy, as Argo Rollouts' `strategy.canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStrategy>,
    /// Blue-green strategy, as Argo Rollouts' `strategy.blueGreen`: the new version (green)
    /// runs next to the current one (blue) and is reached only by testers (preview), then every
    /// caller switches to it at once; blue stays up until the post-promotion analysis passed
    /// and `scaleDownDelaySeconds` went by, so an abort until then is a switch back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStrategy>,
}

/// Blue-green strategy, with Argo Rollouts' fields and meanings. The controller runs it as the
/// canary steps it amounts to (`kubectl canary status` lists them): preview header route, then
/// `prePromotionAnalysis`, then the auto-promotion pause, then the switch (weight 100% to
/// green at every caller), then `postPromotionAnalysis`, then promotion (the DestinationRule's
/// stable subset moves to green, blue is scaled down after `scaleDownDelaySeconds`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStrategy {
    /// The Service users call (Argo's active Service): the one the filter splits, whose
    /// DestinationRule subsets select blue (stable) and green (canary). Its selector is left
    /// alone (the subsets choose the pods).
    pub active_service: String,
    /// A Service that selects the green pods while there are (blue's when there are none),
    /// as Argo's preview Service: the controller sets its selector's
    /// `rollouts-pod-template-hash`. Callers that name it reach green directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_service: Option<String>,
    /// Requests to `activeService` matching these headers reach green (preview) once its pods
    /// are Ready, and until the switch; everyone else stays on blue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_header_route: Option<PreviewHeaderRoute>,
    /// Switch without waiting for a promote. Default true (Argo's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_enabled: Option<bool>,
    /// With auto-promotion, switch this many seconds after green is ready (and the
    /// pre-promotion analysis passed). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_seconds: Option<i32>,
    /// Green pods before the switch (green is scaled to `replicas` before traffic switches).
    /// Default `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_replica_count: Option<i32>,
    /// Seconds blue keeps its pods after the promotion. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_seconds: Option<i32>,
    /// Seconds green keeps its pods after an abort (traffic is already back on blue). Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_scale_down_delay_seconds: Option<i32>,
    /// Analysis of green before the switch (testers only reach it): Failed or Error aborts,
    /// nothing switches. Its metrics need a finite `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<RolloutAnalysis>,
    /// Analysis after the switch, while blue is still up: Failed or Error switches every
    /// caller back to blue. Its metrics need a finite `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<RolloutAnalysis>,
    /// Labels and annotations added to green pods only (Argo's `previewMetadata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_metadata: Option<PodMetadata>,
    /// Labels and annotations added to blue pods only (Argo's `activeMetadata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_metadata: Option<PodMetadata>,
    /// How traffic is split, as for a canary (`wasm.service` may be left out: it is
    /// `activeService`).
    pub traffic_routing: TrafficRouting,
}

/// The header route to the preview (green) version.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviewHeaderRoute {
    /// All must match.
    #[serde(rename = "match")]
    pub matches: Vec<HeaderRouteMatch>,
}

/// Canary strategy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStrategy {
    /// The steps, in order. After the last one the canary is promoted.
    #[serde(default)]
    pub steps: Vec<CanaryStep>,
    /// Labels and annotations added to canary pods only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_metadata: Option<PodMetadata>,
    /// Labels and annotations added to stable pods only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_metadata: Option<PodMetadata>,
    /// Seconds to keep the previous stable ReplicaSet up after a promotion. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_seconds: Option<i32>,
    /// Seconds to keep the canary ReplicaSet up after an abort (traffic is already back on
    /// stable). Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_scale_down_delay_seconds: Option<i32>,
    /// Background analysis (Argo's `strategy.canary.analysis`): measured from `startingStep`
    /// until the canary is promoted; Failed or Error aborts, Inconclusive pauses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<RolloutAnalysis>,
    /// How traffic is split.
    pub traffic_routing: TrafficRouting,
}

/// Extra pod metadata for one side of the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMetadata {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One step. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percentage of traffic to the canary, 0..=100; fractions allowed down to 0.01 (e.g. 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_weight: Option<f64>,
    /// Wait: for `duration` (seconds as an integer, or a Go duration: `30s`, `10m`, `1h30m`), or until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
    /// Send requests matching headers to the canary whatever the weight (Argo's setHeaderRoute).
    /// A route with no `match` removes the route of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_header_route: Option<SetHeaderRoute>,
    /// Inline analysis (Argo's analysis step): the step completes when the analysis is
    /// Successful; Failed or Error aborts, Inconclusive pauses until promoted. Its metrics need
    /// a finite `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<RolloutAnalysis>,
}

/// A pause step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// How long; absent means until promoted (`kubectl annotate cro NAME wasmcanary.io/promote=step`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub duration: Option<serde_json::Value>,
}

/// A header route step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetHeaderRoute {
    /// Route name.
    pub name: String,
    /// All must match.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HeaderRouteMatch>,
}

/// One header condition of a header route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRouteMatch {
    /// Header name.
    pub header_name: String,
    /// How its value must match.
    pub header_value: StringMatchSpec,
}

/// Exactly one of `exact`, `prefix`, `regex` (full match).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StringMatchSpec {
    /// Equal to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Whole value matches (RE2 syntax subset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Traffic routing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    /// Split traffic with the wasm-canary filter.
    pub wasm: WasmTrafficRouting,
}

/// Where the filter's decision takes effect.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmTrafficRouting {
    /// The Kubernetes Service under canary (its name in this namespace). The filter covers
    /// `<service>`, `<service>.<ns>`, `<service>.<ns>.svc`, `<service>.<ns>.svc.cluster.local`
    /// plus `hosts`. Required for a canary; a blue-green rollout takes `activeService`.
    #[serde(default)]
    pub service: String,
    /// Extra hostnames that reach the service (e.g. a gateway host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The client WasmPlugin the filter config goes into, in each callers' namespace.
    pub wasm_plugin: WasmPluginRef,
    /// The workloads that call the service, by namespace: each namespace gets (at most) one
    /// client WasmPlugin, shared by every rollout with callers there; this rollout writes only
    /// its own service's entry in it. Absent: the callers are `wasmPlugin.selector` (or every
    /// workload) in the rollout's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<Callers>,
    /// The DestinationRule whose subsets select stable and canary pods (by
    /// `rollouts-pod-template-hash`). It must exist; the controller edits only the two subsets'
    /// hash labels.
    pub destination_rule: DestinationRuleRef,
    /// Request header the filter writes (`stable`/`canary`) for this service and its
    /// VirtualService routes on. Default `x-canary-subset`; rollouts sharing callers may use
    /// the same header (the filter decides per service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_header: Option<String>,
    /// Where the sticky key is read: `{header: x-user-id}` or `{cookie: session}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyKeySpec>,
}

/// The callers of the service in one namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Callers {
    /// Their namespace.
    pub namespace: String,
    /// Their pod labels. Absent: every workload of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
}

/// Sticky key source; exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StickyKeySpec {
    /// Request header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Cookie name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// The client WasmPlugin.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmPluginRef {
    /// Its name, in every callers' namespace. Default `wasm-canary`. Rollouts with callers in
    /// one namespace share it (one filter per sidecar); they must then agree on `url` and
    /// `sha256`. A WasmPlugin of that name that a user applied is adopted: rollouts write only
    /// their entries of its `spec.pluginConfig.services`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where Istio fetches the filter: `oci://...`, `https://...` or `file://...`.
    pub url: String,
    /// sha256 of the module (required by Istio for https/file URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Labels of the CLIENT workloads (the callers of the service) in the rollout's namespace,
    /// when `callers` is not given. Absent: every workload in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
}

/// The DestinationRule to update.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleRef {
    /// Its name.
    pub name: String,
    /// Subset of the stable pods. Default `stable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_subset_name: Option<String>,
    /// Subset of the canary pods. Default `canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_subset_name: Option<String>,
}

/// Where a rollout is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Moving through the steps, or waiting for pods.
    #[default]
    Progressing,
    /// Waiting at a pause step, or `spec.paused`.
    Paused,
    /// Fully on one version, nothing in progress.
    Healthy,
    /// Aborted: traffic on stable; waiting for retry (`spec.abort: false`) or a new template.
    Aborted,
    /// Cannot proceed until the spec is fixed (the message says why).
    Degraded,
}

/// Observed state, written only by the controller. A restarted controller resumes from here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRolloutStatus {
    /// Where the rollout is.
    #[serde(default)]
    pub phase: Phase,
    /// Human-readable detail of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Index of the step being executed (== number of steps when all are done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<i32>,
    /// `current/total`, for printing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<String>,
    /// Canary weight in force, in basis points (10000 = 100%).
    #[serde(default)]
    pub canary_weight: u32,
    /// Canary weight as a percentage, for printing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    /// Pod-template hash of the stable version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_hash: Option<String>,
    /// Pod-template hash of the canary version, while a canary runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_hash: Option<String>,
    /// Header routes in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_routes: Vec<SetHeaderRoute>,
    /// When the current step began (RFC 3339 with milliseconds); pause durations count from
    /// here to the millisecond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<String>,
    /// ReplicaSets (by hash) to scale to zero at a time (RFC 3339).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scale_downs: Vec<ScheduledScaleDown>,
    /// The value of the `wasmcanary.io/promote` annotation this controller last acted on, kept
    /// while the annotation is: a request is acted on once even if the controller stops between
    /// writing this status and removing the annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_handled: Option<String>,
    /// Whether the rollout is aborted (traffic on stable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aborted: bool,
    /// Analysis runs of the current canary (background and steps) with their measurements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis_runs: Vec<AnalysisRunStatus>,
    /// The abort was decided by a failed analysis, not by `spec.abort`. Retry: set
    /// `spec.abort` to true, then back to false (`kubectl canary abort`, then `retry`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub analysis_aborted: bool,
    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The client WasmPlugins (`namespace/name`) holding this rollout's entry; an entry in
    /// one no longer named (callers changed) is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_plugins: Option<Vec<String>>,
    /// Standard conditions: `Progressing`, `Paused`, `Healthy`, `Aborted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A scale-down waiting for its delay.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledScaleDown {
    /// Pod-template hash of the ReplicaSet.
    pub hash: String,
    /// When to scale it to zero (RFC 3339).
    pub at: String,
}

fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-int-or-string": true})
}
