//! `AnalysisTemplate` (`wasmcanary.io/v1alpha1`): Argo Rollouts' metric schema, so an Argo
//! template carries over by changing `apiVersion` only. Also the analysis references a rollout
//! makes (`strategy.canary.analysis`, the `analysis` step) and the `{{ args.NAME }}` substitution.

use std::collections::{BTreeMap, BTreeSet};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Metrics to measure while a canary runs, and when each measurement passes or fails.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "wasmcanary.io",
    version = "v1alpha1",
    kind = "AnalysisTemplate",
    namespaced,
    category = "all",
    printcolumn = r#"{"name":"Metrics","type":"string","jsonPath":".spec.metrics[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateSpec {
    /// Arguments the metrics use as `{{ args.NAME }}`; the rollout supplies their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Argument>,
    /// The metrics, all measured in parallel.
    pub metrics: Vec<Metric>,
    /// Metrics measured and recorded but never acted on (Argo's dry run): their failures do not
    /// abort or pause the rollout. For trying a new metric on real canaries first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRun>,
    /// How many of a metric's latest measurements the run's status keeps (default 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurement_retention: Vec<MeasurementRetention>,
}

/// Measurements to keep for some metrics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementRetention {
    /// A metric name, or a regular expression matching whole names.
    pub metric_name: String,
    /// Latest measurements kept, 1 to 100 (the status lives in etcd, whose objects are capped
    /// at 1.5 MiB).
    pub limit: i32,
}

/// The most measurements `measurementRetention` may keep per metric.
pub const MAX_MEASUREMENTS_KEPT: i32 = 100;

/// The same metrics, cluster-scoped: shared by every namespace's rollouts (platform-wide checks
/// such as a success rate), referenced with `clusterScope: true`. Argo's ClusterAnalysisTemplate.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "wasmcanary.io",
    version = "v1alpha1",
    kind = "ClusterAnalysisTemplate",
    category = "all",
    printcolumn = r#"{"name":"Metrics","type":"string","jsonPath":".spec.metrics[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ClusterAnalysisTemplateSpec {
    /// Exactly an AnalysisTemplate's spec.
    #[serde(flatten)]
    pub template: AnalysisTemplateSpec,
}

/// Selects metrics for a dry run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    /// A metric name, or a regular expression matching whole names (`.*` for all metrics).
    pub metric_name: String,
}

/// A template argument.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Argument {
    /// Name, used as `{{ args.NAME }}`.
    pub name: String,
    /// Default value (the rollout's value wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Where the value comes from instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ArgumentValueFrom>,
}

/// Source of an argument's value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArgumentValueFrom {
    /// A key of a Secret in the rollout's namespace; read at each measurement, never stored in
    /// the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// A key of a Secret.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key in its data.
    pub key: String,
}

/// One metric: a query, how often to run it, and how to judge its result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    /// Name, unique in the template.
    pub name: String,
    /// Time between measurements (a Go duration: `30s`, `5m`, `1m30s`). Without it (and without `count`) the
    /// metric is measured once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Wait this long after the analysis starts before the first measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<String>,
    /// Number of measurements; the metric is Successful after this many without reaching a
    /// limit. Absent with an `interval`: measured until the rollout ends (background analysis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i32>,
    /// expr-lang condition on `result` that makes a measurement Successful, e.g.
    /// `all(result.service_apdex.values.values, {asFloat(.value) >= 9900})`. Functions:
    /// `asFloat`, `asInt`, `isNaN`, `isInf`, `isNil`, `default`, and expr's built-ins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// expr-lang condition on `result` that makes a measurement Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// The metric fails when more measurements than this fail. Default 0; -1: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<i32>,
    /// The metric is Inconclusive (the rollout pauses) when more measurements than this are
    /// inconclusive (neither condition holds). Default 0; -1: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_limit: Option<i32>,
    /// The metric errors (the rollout aborts) when more consecutive measurements than this
    /// cannot be taken or judged. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_error_limit: Option<i32>,
    /// Where the measurement comes from. Exactly one provider.
    pub provider: MetricProvider,
}

/// Measurement source; exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricProvider {
    /// Apache SkyWalking OAP's GraphQL API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skywalking: Option<SkyWalkingMetric>,
    /// A Prometheus instant query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// Any HTTP endpoint answering JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebMetric>,
    /// The split the wasm-canary filter actually made in the callers' sidecars, read from a
    /// Prometheus that scrapes them, checked against the rollout's weight in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_split: Option<WasmSplitMetric>,
}

/// The callers' split, verified where it happens (no Argo equivalent). The filter counts its
/// per-request weighted decisions per service and subset; Envoy exports them
/// (`wasmcanary_decision_<ns>_<service>_<subset>_weight`). A measurement
/// counts those made in `window` (not before the current step began, nor before the weight was
/// written), summed over every scraped sidecar, and checks the canary's share against the
/// weight in force with the exact binomial test. `result` is `{canary, stable, total, weight,
/// expected: [lo, hi], within}`: judge it with `successCondition: result.within`. Sticky and
/// header-route decisions are not counted (they are not independent draws).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmSplitMetric {
    /// Prometheus address, e.g. `http://prometheus.istio-system:9090`.
    pub address: String,
    /// How far back decisions are counted from each measurement (a Go duration). Default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Fewer counted decisions than this: no data (an Error measurement). Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// The probability that a correct split is judged outside the weight. Default 1e-6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_alarm_rate: Option<f64>,
    /// What is measured, set by the controller when it measures (the rollout's service and
    /// weight in force); never stored.
    #[serde(skip)]
    #[schemars(skip)]
    pub target: Option<SplitTarget>,
}

/// The rollout a [`WasmSplitMetric`] measures, as the controller fills it in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SplitTarget {
    /// The rollout's namespace.
    pub namespace: String,
    /// The Service under rollout.
    pub service: String,
    /// The canary weight in force, in basis points.
    pub weight_bp: u32,
    /// Since when that weight is in force (the current step's start).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// A SkyWalking GraphQL query. `result` is the response's `data`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkyWalkingMetric {
    /// OAP address, e.g. `http://oap.istio-system:12800` (the query goes to `<address>/graphql`).
    pub address: String,
    /// The GraphQL query; it receives `$duration: {start, end, step: MINUTE}` covering `interval`.
    pub query: String,
    /// Length of the queried window, ending now (`3m`). Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// A Prometheus instant query. `result` is a list of the vector's sample values (or the scalar).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusMetric {
    /// Server address, e.g. `http://prometheus.istio-system:9090`.
    pub address: String,
    /// PromQL.
    pub query: String,
    /// Query timeout in seconds. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// An HTTP request whose JSON answer is judged. `result` is the value at `jsonPath`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebMetric {
    /// URL.
    pub url: String,
    /// `GET` (default), `POST` or `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<WebMetricHeader>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Where in the JSON answer the result is: `{$.data.ok}` or `$.items[0].value`. Absent: the
    /// whole answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    /// Request timeout. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

impl WebMetric {
    /// The method, upper case; GET by default.
    pub fn method(&self) -> String {
        self.method.as_deref().unwrap_or("GET").to_ascii_uppercase()
    }

    /// What Argo's web provider refuses: a method other than GET, POST or PUT, and a body on
    /// a GET.
    pub fn check(&self) -> Result<(), String> {
        let method = self.method();
        if !matches!(method.as_str(), "GET" | "POST" | "PUT") {
            return Err(format!("web.method {method:?} must be GET, POST or PUT"));
        }
        if method == "GET" && self.body.as_deref().is_some_and(|b| !b.is_empty()) {
            return Err("web.body is sent only with method POST or PUT".into());
        }
        Ok(())
    }
}

/// One header.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct WebMetricHeader {
    /// Name.
    pub key: String,
    /// Value.
    pub value: String,
}

/// The analysis a rollout runs: in the background from `startingStep` (in
/// `strategy.canary.analysis`), or as a step that completes when the analysis succeeds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysis {
    /// Templates whose metrics are measured together, in the rollout's namespace.
    pub templates: Vec<AnalysisTemplateRef>,
    /// Values of the templates' arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<AnalysisRunArgument>,
    /// Background analysis only: the step index from which it runs (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_step: Option<i32>,
    /// Metrics of this analysis to run dry (recorded, never acted on), in addition to the
    /// templates' own `dryRun`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRun>,
    /// Measurements to keep per metric, over the templates' own `measurementRetention`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurement_retention: Vec<MeasurementRetention>,
}

/// A template reference.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateRef {
    /// `metadata.name` of an AnalysisTemplate in the rollout's namespace, or of a
    /// ClusterAnalysisTemplate with `clusterScope: true`.
    pub template_name: String,
    /// The template is a ClusterAnalysisTemplate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_scope: bool,
}

impl AnalysisTemplateRef {
    /// The key of the referenced template in the map [`resolve`] takes: the name, or
    /// `ClusterAnalysisTemplate/NAME` (a name cannot contain `/`, so the two never collide).
    pub fn key(&self) -> String {
        if self.cluster_scope {
            format!("ClusterAnalysisTemplate/{}", self.template_name)
        } else {
            self.template_name.clone()
        }
    }

    /// What to call it in messages.
    pub fn describe(&self) -> String {
        if self.cluster_scope {
            format!("ClusterAnalysisTemplate {}", self.template_name)
        } else {
            format!("AnalysisTemplate {}", self.template_name)
        }
    }
}

/// An argument value given by the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunArgument {
    /// Argument name.
    pub name: String,
    /// Its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Its value from the rollout itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<RolloutArgumentValueFrom>,
}

/// Values the rollout knows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutArgumentValueFrom {
    /// `Stable` or `Latest` (the canary): that version's `rollouts-pod-template-hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_hash_value: Option<String>,
    /// A field of the rollout itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
}

/// A field of the rollout, in the downward API's syntax.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    /// `metadata.name`, `metadata.namespace`, `metadata.labels['KEY']` or
    /// `metadata.annotations['KEY']`.
    pub field_path: String,
}

/// The rollout's own fields an argument can read (`valueFrom.fieldRef`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutFields {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

impl RolloutFields {
    /// From the rollout's metadata.
    pub fn from_meta(meta: &kube::api::ObjectMeta) -> Self {
        Self {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
        }
    }

    /// The value at `path`; errors say what is supported or missing.
    pub fn get(&self, path: &str) -> Result<String, String> {
        let keyed = |prefix: &str| -> Option<&str> {
            let rest = path.strip_prefix(prefix)?.strip_prefix("['")?;
            rest.strip_suffix("']")
        };
        match path {
            "metadata.name" => Ok(self.name.clone()),
            "metadata.namespace" => Ok(self.namespace.clone()),
            _ => {
                if let Some(k) = keyed("metadata.labels") {
                    self.labels
                        .get(k)
                        .cloned()
                        .ok_or_else(|| format!("the rollout has no label {k:?}"))
                } else if let Some(k) = keyed("metadata.annotations") {
                    self.annotations
                        .get(k)
                        .cloned()
                        .ok_or_else(|| format!("the rollout has no annotation {k:?}"))
                } else {
                    Err(format!(
                        "fieldPath {path:?} is not supported: use metadata.name, metadata.namespace, \
                         metadata.labels['KEY'] or metadata.annotations['KEY']"
                    ))
                }
            }
        }
    }
}

/// The metrics of a run with every argument it can know substituted; `secrets` are the
/// arguments whose value is read from a Secret at measurement time (still `{{ args.NAME }}` in
/// the metrics).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvedAnalysis {
    /// Metrics of all templates, in order.
    pub metrics: Vec<Metric>,
    /// Secret-backed arguments by name.
    pub secrets: BTreeMap<String, SecretKeyRef>,
    /// Names of the metrics that run dry.
    pub dry_run: BTreeSet<String>,
    /// Measurements kept, by metric name, where not the default.
    pub retention: BTreeMap<String, i32>,
}

/// Resolves a rollout's analysis against its templates (by name). `stable`/`canary` are the
/// pod-template hashes for `podTemplateHashValue`. Errors name what is wrong.
pub fn resolve(
    analysis: &RolloutAnalysis,
    templates: &BTreeMap<String, AnalysisTemplateSpec>,
    stable: &str,
    canary: &str,
    fields: &RolloutFields,
) -> Result<ResolvedAnalysis, String> {
    if analysis.templates.is_empty() {
        return Err("templates must name at least one AnalysisTemplate".into());
    }
    let mut given = BTreeMap::new();
    for a in &analysis.args {
        let from = a.value_from.as_ref();
        let hash = from.and_then(|v| v.pod_template_hash_value.as_deref());
        let field = from.and_then(|v| v.field_ref.as_ref());
        let value = match (&a.value, hash, field) {
            (Some(v), None, None) => v.clone(),
            (None, Some("Stable"), None) => stable.to_owned(),
            (None, Some("Latest"), None) => canary.to_owned(),
            (None, Some(other), None) => {
                return Err(format!(
                    "args {}: podTemplateHashValue {other:?} must be Stable or Latest",
                    a.name
                ))
            }
            (None, None, Some(f)) => fields
                .get(&f.field_path)
                .map_err(|e| format!("args {}: valueFrom.fieldRef: {e}", a.name))?,
            _ => {
                return Err(format!(
                    "args {}: set exactly one of value, valueFrom.podTemplateHashValue, valueFrom.fieldRef",
                    a.name
                ))
            }
        };
        given.insert(a.name.clone(), value);
    }
    let mut out = ResolvedAnalysis::default();
    let mut names = BTreeSet::new();
    for t in &analysis.templates {
        let what = t.describe();
        let template = templates
            .get(&t.key())
            .ok_or_else(|| format!("{what} not found"))?;
        let mut values = BTreeMap::new();
        let mut secrets = BTreeSet::new();
        for arg in &template.args {
            if let Some(v) = given.get(&arg.name) {
                values.insert(arg.name.clone(), v.clone());
            } else if let Some(r) = arg
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                secrets.insert(arg.name.clone());
                out.secrets.insert(arg.name.clone(), r.clone());
            } else if let Some(v) = &arg.value {
                values.insert(arg.name.clone(), v.clone());
            } else {
                return Err(format!(
                    "{what}: argument {} has no value (give it in the rollout's analysis args)",
                    arg.name
                ));
            }
        }
        for m in &template.metrics {
            if !names.insert(m.name.clone()) {
                return Err(format!(
                    "{what}: metric {} appears twice in this analysis",
                    m.name
                ));
            }
            let json = serde_json::to_value(m).map_err(|e| e.to_string())?;
            let json = substitute_value(&json, &values, &secrets)
                .map_err(|e| format!("{what}: metric {}: {e}", m.name))?;
            let metric: Metric = serde_json::from_value(json)
                .map_err(|e| format!("{what}: metric {}: {e}", m.name))?;
            out.metrics.push(metric);
        }
        mark_dry_run(
            &mut out.dry_run,
            &template.dry_run,
            &template.metrics,
            &what,
        )?;
        retain(
            &mut out.retention,
            &template.measurement_retention,
            &template.metrics,
            &what,
        )?;
    }
    // The rollout's settings come last, so its retention wins.
    mark_dry_run(
        &mut out.dry_run,
        &analysis.dry_run,
        &out.metrics,
        "analysis",
    )?;
    retain(
        &mut out.retention,
        &analysis.measurement_retention,
        &out.metrics,
        "analysis",
    )?;
    Ok(out)
}

fn mark_dry_run(
    into: &mut BTreeSet<String>,
    rules: &[DryRun],
    metrics: &[Metric],
    what: &str,
) -> Result<(), String> {
    for (i, d) in rules.iter().enumerate() {
        into.extend(
            selected_metrics(&d.metric_name, metrics)
                .map_err(|e| format!("{what}: dryRun[{i}].metricName: {e}"))?,
        );
    }
    Ok(())
}

fn retain(
    into: &mut BTreeMap<String, i32>,
    rules: &[MeasurementRetention],
    metrics: &[Metric],
    what: &str,
) -> Result<(), String> {
    for (i, r) in rules.iter().enumerate() {
        let field = format!("{what}: measurementRetention[{i}]");
        if !(1..=MAX_MEASUREMENTS_KEPT).contains(&r.limit) {
            return Err(format!(
                "{field}.limit: {} is outside 1..={MAX_MEASUREMENTS_KEPT}",
                r.limit
            ));
        }
        for name in selected_metrics(&r.metric_name, metrics)
            .map_err(|e| format!("{field}.metricName: {e}"))?
        {
            into.insert(name, r.limit);
        }
    }
    Ok(())
}

/// The names of `metrics` that `pattern` selects: the name itself, or a regular expression
/// matching whole names (`dryRun`, `measurementRetention`). A pattern that selects nothing is
/// refused (a typo would otherwise make a metric act when it was meant to run dry).
fn selected_metrics(pattern: &str, metrics: &[Metric]) -> Result<Vec<String>, String> {
    let exact: Vec<String> = metrics
        .iter()
        .filter(|m| m.name == pattern)
        .map(|m| m.name.clone())
        .collect();
    if !exact.is_empty() {
        return Ok(exact);
    }
    let re = canary_core::regex::Regex::new(pattern).map_err(|e| format!("{pattern:?}: {e}"))?;
    let matched: Vec<String> = metrics
        .iter()
        .filter(|m| re.is_match(&m.name))
        .map(|m| m.name.clone())
        .collect();
    if matched.is_empty() {
        return Err(format!(
            "{pattern:?} matches no metric (metrics: {})",
            metrics
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(matched)
}

/// Replaces `{{ args.NAME }}` (spaces optional) in every string of `v`. Names in `pending` are
/// left as they are (filled in later); any other unknown argument is an error.
pub fn substitute_value(
    v: &Value,
    values: &BTreeMap<String, String>,
    pending: &BTreeSet<String>,
) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(substitute(s, values, pending)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| substitute_value(x, values, pending))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), substitute_value(x, values, pending)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// [`substitute_value`] on one string.
pub fn substitute(
    s: &str,
    values: &BTreeMap<String, String>,
    pending: &BTreeSet<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        let Some(close) = after.find("}}") else {
            out.push_str(after);
            return Ok(out);
        };
        let (placeholder, tail) = after.split_at(close + 2);
        let inner = placeholder
            .get(2..placeholder.len() - 2)
            .unwrap_or_default()
            .trim();
        match inner.strip_prefix("args.") {
            Some(name) if values.contains_key(name) => {
                out.push_str(values.get(name).map(String::as_str).unwrap_or_default())
            }
            Some(name) if pending.contains(name) => out.push_str(placeholder),
            Some(name) => return Err(format!("unknown argument {{{{ args.{name} }}}}")),
            None => out.push_str(placeholder),
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}
