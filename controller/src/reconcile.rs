//! The Kubernetes I/O around [`crate::steps::plan`]: read the rollout's world, plan, write the
//! plan back in a safe order, record Events. Every write uses [`crate::FIELD_MANAGER`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, Patch,
    PatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tracing::{debug, info, warn, Instrument};

use canary_core::config::POD_TEMPLATE_HASH_LABEL;

use crate::analysis::provider;
use crate::analysis::template::{AnalysisTemplateRef, RolloutFields};
use crate::analysis::{
    AnalysisPhase, AnalysisTemplate, AnalysisTemplateSpec, ClusterAnalysisTemplate, Measurement,
    TakenMeasurement,
};
use crate::caches::Caches;
use crate::conditions::{set_traffic_condition, TrafficReason};
use crate::crd::{CanaryRollout, CanaryRolloutStatus};
use crate::hash::pod_template_hash;
use crate::steps::{
    self, MeasureRequest, Observed, ObservedReplicaSet, Plan, Promote, Traffic, Transition,
};
use crate::telemetry::{ErrorLabels, Metrics, RolloutLabels};
use crate::traffic;
use crate::traffic_writes::{apply_traffic, TrafficWrite};
use crate::{kube_err, Error, Result, FIELD_MANAGER};

/// Label on every ReplicaSet a rollout owns: the rollout's name.
pub const ROLLOUT_LABEL: &str = "wasmcanary.io/rollout";
/// Annotation a user (or `kubectl canary promote`) sets to move past pauses: `step` or `full`.
pub const PROMOTE_ANNOTATION: &str = "wasmcanary.io/promote";
/// How often a rollout is looked at even when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(60);

/// Istio's WasmPlugin.
pub fn wasm_plugin_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
    ))
}

/// Istio's DestinationRule.
pub fn destination_rule_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "DestinationRule",
    ))
}

/// Shared by every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Every rollout, as the controller's watch sees them (set once it runs): the callers of
    /// a shared WasmPlugin and the claims on a service are read from it, not listed.
    pub rollouts: std::sync::OnceLock<Store<CanaryRollout>>,
    /// The ReplicaSets, WasmPlugins and DestinationRules reconciles read (set once it runs).
    pub caches: std::sync::OnceLock<Caches>,
    /// The resourceVersion that stored this controller's last write to each rollout (its status,
    /// or the removal of a promote request): a reconcile whose cached rollout is older waits for
    /// the watch to bring it.
    written: std::sync::Mutex<std::collections::HashMap<ObjectRef<CanaryRollout>, String>>,
}

impl Context {
    /// A context for `client` with its own metrics.
    pub fn new(client: Client) -> Self {
        Self::with_metrics(client, Arc::new(Metrics::default()))
    }

    /// A context for `client` recording into `metrics`.
    pub fn with_metrics(client: Client, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            rollouts: std::sync::OnceLock::new(),
            caches: std::sync::OnceLock::new(),
            written: std::sync::Mutex::default(),
        }
    }

    /// The resourceVersion of this controller's last write to the rollout, if any.
    fn last_write(&self, rollout: &ObjectRef<CanaryRollout>) -> Option<String> {
        self.written
            .lock()
            .ok()
            .and_then(|w| w.get(rollout).cloned())
    }

    fn record_written_status(&self, rollout: &CanaryRollout) {
        if let (Ok(mut w), Some(version)) = (self.written.lock(), rollout.resource_version()) {
            w.insert(ObjectRef::from_obj(rollout), version);
        }
    }

    fn forget_written_status(&self, rollout: &CanaryRollout) {
        if let Ok(mut w) = self.written.lock() {
            w.remove(&ObjectRef::from_obj(rollout));
        }
    }

    /// The rollouts in the controller's cache (none before it runs).
    pub fn rollouts(&self) -> Vec<Arc<CanaryRollout>> {
        self.rollouts.get().map(Store::state).unwrap_or_default()
    }
}

/// Runs the controller until the stream ends (watching `namespace`, or all when `None`).
pub async fn run(client: Client, namespace: Option<String>) {
    run_with(Arc::new(Context::new(client)), namespace).await;
}

/// [`run`] with a given context (shared metrics).
///
/// Besides the rollouts, the controller watches everything it writes or reads to plan, and maps
/// a change back to the rollouts concerned, so drift (a deleted WasmPlugin, DestinationRule
/// hash labels taken by another manager) is re-asserted at once, not at the next [`RESYNC`]:
/// its ReplicaSets (owned), the Deployments of `workloadRef`, the WasmPlugins and
/// DestinationRules named in the rollouts, and their (Cluster)AnalysisTemplates.
pub async fn run_with(ctx: Arc<Context>, namespace: Option<String>) {
    run_controller(ctx, namespace, None).await;
}

/// A future that resolves when the controller should stop.
pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>;

/// [`run_with`], stopping gracefully (the reconciles in flight finish) when `shutdown`
/// resolves, instead of on a signal it would only start listening for once running: a binary
/// listens for SIGTERM from its first moment and passes that here.
///
/// The reconciles in flight get [`SHUTDOWN_GRACE`] to finish; then the controller stops anyway
/// (what it was writing is redone by the next leader from the status). kube-runtime waits for
/// the rollout cache before running anything, and a shutdown requested before that cache was
/// filled stopped the watch that would fill it: without the bound, that shutdown never ended.
pub async fn run_until(ctx: Arc<Context>, namespace: Option<String>, shutdown: Shutdown) {
    use futures::FutureExt;
    let requested = shutdown.shared();
    let controller = run_controller(ctx, namespace, Some(Box::pin(requested.clone())));
    tokio::select! {
        () = controller => {}
        () = async {
            requested.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running at the end of the shutdown grace; stopping anyway"),
    }
}

/// How long a requested shutdown waits for the reconciles in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

async fn run_controller(ctx: Arc<Context>, namespace: Option<String>, shutdown: Option<Shutdown>) {
    let client = ctx.client.clone();
    let scoped = |resource: &ApiResource| -> Api<DynamicObject> {
        match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
            None => Api::all_with(client.clone(), resource),
        }
    };
    let (wasm_plugins, destination_rules) = (
        scoped(&wasm_plugin_resource()),
        scoped(&destination_rule_resource()),
    );
    let (rollouts, replica_sets, deployments, templates): (
        Api<CanaryRollout>,
        Api<ReplicaSet>,
        Api<Deployment>,
        Api<AnalysisTemplate>,
    ) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let cluster_templates: Api<ClusterAnalysisTemplate> = Api::all(client.clone());
    // Metadata only (`PartialObjectMeta`): a change of any field bumps the resourceVersion, and
    // nothing of a Service is kept in memory.
    let services: Api<PartialObjectMeta<Service>> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let metrics = ctx.metrics.clone();
    // Each cache is filled by the watch that triggers reconciles: the reflector stores a change
    // before the trigger passes it on.
    let (replica_set_cache, replica_set_writer) = reflector::store::<ReplicaSet>();
    let replica_set_changes = reflector(
        replica_set_writer,
        watcher(
            replica_sets,
            watcher::Config::default().labels(ROLLOUT_LABEL),
        ),
    )
    .default_backoff()
    .touched_objects();
    let wasm_plugin_writer = reflector::store::Writer::new(wasm_plugin_resource());
    let wasm_plugin_cache = wasm_plugin_writer.as_reader();
    let wasm_plugin_changes = reflector(
        wasm_plugin_writer,
        watcher(wasm_plugins, watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let destination_rule_writer = reflector::store::Writer::new(destination_rule_resource());
    let destination_rule_cache = destination_rule_writer.as_reader();
    let destination_rule_changes = reflector(
        destination_rule_writer,
        watcher(destination_rules, watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let caches = Caches {
        replica_sets: replica_set_cache,
        wasm_plugins: wasm_plugin_cache,
        destination_rules: destination_rule_cache,
    };
    let _ = ctx.caches.set(caches.clone());
    // Until then reconciles read from the API server; say when that ends.
    let started = std::time::Instant::now();
    let caches_ready = AbortOnDrop(tokio::spawn(async move {
        let _ = caches.replica_sets.wait_until_ready().await;
        let _ = caches.wasm_plugins.wait_until_ready().await;
        let _ = caches.destination_rules.wait_until_ready().await;
        info!(after = ?started.elapsed(), "ReplicaSet, WasmPlugin and DestinationRule caches filled: reconciles read from them");
    }));
    let controller = Controller::new(rollouts.clone(), watcher::Config::default());
    let store = controller.store();
    let _ = ctx.rollouts.set(store.clone());
    // Ends with the controller (aborted when this function returns or is dropped).
    let releaser = AbortOnDrop(tokio::spawn(release_deleted_rollouts(
        ctx.clone(),
        rollouts,
        scoped(&wasm_plugin_resource()),
    )));
    // The rollouts writing into a client WasmPlugin (any namespace: callers may live elsewhere
    // than their rollout), found in one pass over the rollouts with cheap tests: its
    // managedFields name the rollouts' own field managers, its entries their services, and its
    // selector the callers groups that may write into it (an entry taken over by another
    // writer's forced apply is still found by the last two).
    let plugin_store = store.clone();
    let for_wasm_plugin = move |plugin: DynamicObject| {
        let writers: std::collections::HashSet<&str> = plugin
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.as_deref())
            .filter(|m| m.starts_with(traffic::ROLLOUT_MANAGER_PREFIX))
            .collect();
        let spec = &plugin.data["spec"];
        let entries = spec["pluginConfig"]["services"].as_object();
        let selector: Option<BTreeMap<String, String>> =
            serde_json::from_value(spec["selector"]["matchLabels"].clone()).ok();
        let (namespace, name) = (plugin.namespace().unwrap_or_default(), plugin.name_any());
        plugin_store
            .state()
            .iter()
            .filter(|r| {
                writers.contains(traffic::field_manager(r).as_str())
                    || entries.is_some_and(|e| e.contains_key(&traffic::service_key(r, &namespace)))
                    || traffic::may_write_into(r, &namespace, &name, &selector)
            })
            .map(|r| ObjectRef::from_obj(&**r))
            .collect::<Vec<_>>()
    };
    // The rollouts of `namespace` (any, for `None`) that `refers` to an object named `name`.
    let referring =
        move |namespace: Option<String>, name: String, refers: fn(&CanaryRollout, &str) -> bool| {
            store
                .state()
                .into_iter()
                .filter(|r| namespace.is_none() || r.namespace() == namespace)
                .filter(|r| refers(r, &name))
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
        };
    let by = |refers: fn(&CanaryRollout, &str) -> bool| {
        let referring = referring.clone();
        move |namespace: Option<String>, name: String| referring(namespace, name, refers)
    };
    let for_deployment = by(|r, name| r.spec.workload_ref.as_ref().is_some_and(|w| w.name == name));
    let for_destination_rule =
        by(|r, name| r.spec.strategy.routing().destination_rule.name == name);
    let for_template = by(|r, name| references_template(r, name, false));
    let for_preview_service = by(|r, name| {
        r.spec
            .strategy
            .blue_green_only()
            .and_then(|bg| bg.preview_service.as_deref())
            == Some(name)
    });
    let for_cluster_template = by(|r, name| references_template(r, name, true));
    let controller = match shutdown {
        Some(shutdown) => controller.graceful_shutdown_on(shutdown),
        None => controller.shutdown_on_signal(),
    };
    controller
        .owns_stream(replica_set_changes)
        // A new template in a referenced Deployment (workloadRef) starts a canary at once.
        .watches(
            deployments,
            watcher::Config::default(),
            move |d: Deployment| for_deployment(d.namespace(), d.name_any()),
        )
        .watches_stream_with(wasm_plugin_changes, for_wasm_plugin, wasm_plugin_resource())
        .watches_stream_with(
            destination_rule_changes,
            move |d: DynamicObject| for_destination_rule(d.namespace(), d.name_any()),
            destination_rule_resource(),
        )
        // A user's edit of a blue-green previewService (its selector pointed elsewhere) is taken
        // back at once, not at the next resync.
        .watches_stream(
            watcher(services, watcher::Config::default())
                .default_backoff()
                .touched_objects(),
            move |s: PartialObjectMeta<Service>| for_preview_service(s.namespace(), s.name_any()),
        )
        // A template fixed (or broken) is planned with at once.
        .watches(
            templates,
            watcher::Config::default(),
            move |t: AnalysisTemplate| for_template(t.namespace(), t.name_any()),
        )
        .watches(
            cluster_templates,
            watcher::Config::default(),
            move |t: ClusterAnalysisTemplate| for_cluster_template(None, t.name_any()),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(move |r| {
            // The first result means the watches are established and the queue runs.
            metrics.set_ready(true);
            async move {
                if let Err(e) = r {
                    warn!(error = %e, "reconcile stream");
                }
            }
        })
        .await;
    drop(releaser);
    drop(caches_ready);
}

/// Whether the rollout's analysis (background or a step's) uses the template `name` (a
/// ClusterAnalysisTemplate when `cluster_scope`).
fn references_template(rollout: &CanaryRollout, name: &str, cluster_scope: bool) -> bool {
    let canary = rollout.spec.strategy.effective();
    canary
        .analysis
        .iter()
        .chain(canary.steps.iter().filter_map(|s| s.analysis.as_ref()))
        .flat_map(|a| a.templates.iter())
        .any(|t| t.template_name == name && t.cluster_scope == cluster_scope)
}

fn error_policy(rollout: Arc<CanaryRollout>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            kind: error.metric_label().into(),
        })
        .inc();
    warn!(rollout = %rollout.name_any(), namespace = rollout.namespace().unwrap_or_default(), kind = error.metric_label(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// One reconcile of one rollout.
pub async fn reconcile(rollout: Arc<CanaryRollout>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!(
        "reconcile",
        namespace = %rollout.namespace().unwrap_or_default(),
        rollout = %rollout.name_any()
    );
    let started = std::time::Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_rollout(rollout, ctx.clone())
        .instrument(span)
        .await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Whether the cached rollout is older than the status this controller last wrote to it: the
/// watch has not yet delivered that write. Planning from it would run a step twice, or act on a
/// promote request twice; the watch event carrying the write triggers the next reconcile, so
/// nothing is done now. resourceVersions are compared as the etcd revisions they are; one that
/// is not a number is trusted.
fn cache_behind_own_write(ctx: &Context, cached: &CanaryRollout) -> bool {
    let Some(written) = ctx.last_write(&ObjectRef::from_obj(cached)) else {
        return false;
    };
    let revision = |rv: Option<&str>| rv.and_then(|v| v.parse::<u64>().ok());
    matches!(
        (
            revision(cached.metadata.resource_version.as_deref()),
            revision(Some(&written))
        ),
        (Some(have), Some(wrote)) if have < wrote
    )
}

async fn reconcile_rollout(rollout: Arc<CanaryRollout>, ctx: Arc<Context>) -> Result<Action> {
    let ns = rollout
        .namespace()
        .ok_or_else(|| Error::Invalid("CanaryRollout must be namespaced".into()))?;
    if cache_behind_own_write(&ctx, &rollout) {
        ctx.metrics.stale_cache_skips.inc();
        // The watch brings the newer version (and a reconcile with it) in milliseconds; the
        // requeue is only a net under a lost event.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let name = rollout.name_any();
    let client = &ctx.client;

    if let Some(holder) = claimed_by_another(&ctx.rollouts(), &rollout) {
        return refuse_claimed(&ctx, &ns, &rollout, &holder).await;
    }

    let template = pod_template(client, &ns, &rollout).await?;
    let template_hash = pod_template_hash(&template);
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let caches = ctx.caches.get().filter(|c| c.ready());
    let owned: Vec<Arc<ReplicaSet>> = match caches {
        Some(caches) => caches.replica_sets_of(&ns, &name),
        None => rs_api
            .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={name}")))
            .await
            .map_err(kube_err("listing ReplicaSets"))?
            .items
            .into_iter()
            .map(Arc::new)
            .collect(),
    };
    let replica_sets: Vec<ObservedReplicaSet> = owned
        .iter()
        .filter_map(|rs| {
            let hash = rs.labels().get(POD_TEMPLATE_HASH_LABEL)?.clone();
            Some(ObservedReplicaSet {
                hash,
                replicas: rs.spec.replicas.unwrap_or(0),
                available: rs
                    .status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0),
            })
        })
        .collect();
    let promote_request = rollout.annotations().get(PROMOTE_ANNOTATION).cloned();
    let promote = promote_request.as_deref().map(Promote::from_annotation);
    let mut observed = Observed {
        template_hash: template_hash.clone(),
        replica_sets,
        promote,
        promote_request,
        generation: rollout.metadata.generation,
        now: Utc::now(),
        analysis_templates: analysis_templates(client, &ns, &rollout).await?,
        rollout_fields: RolloutFields::from_meta(&rollout.metadata),
        measurements: Vec::new(),
    };
    let status = rollout.status.clone().unwrap_or_default();
    let mut plan = steps::plan(&rollout.spec, &status, &observed);
    aim_split_checks(&mut plan, &ns, &rollout);
    if !plan.measure.is_empty() {
        // Take what the plan says is due, then plan again from the same status with them: the
        // decision is made by the pure step logic from recorded measurements. A provider may
        // take its whole timeout to answer; a new spec meanwhile (an abort, above all) does not
        // wait for it: the measurements are dropped and the new spec reconciled at once (what
        // is still due then is measured then).
        tokio::select! {
            taken = take_measurements(client, &ns, &plan.measure, observed.now) => {
                observed.measurements = taken;
                // The decision is made now, after the measurement (a provider may take its
                // whole timeout): a delay it starts (blue's or an aborted canary's scale-down)
                // counts from the traffic write that follows, not from before the measurement.
                observed.now = Utc::now();
            }
            () = spec_changed(&ctx, &rollout) => {
                info!("the spec changed while measuring: measurements dropped, the new spec reconciled now");
                return Ok(Action::requeue(Duration::ZERO));
            }
        }
        plan = steps::plan(&rollout.spec, &status, &observed);
    }

    let written = match &plan.traffic {
        Some(traffic) => Some(
            apply_traffic(
                client,
                &ns,
                &rollout,
                traffic,
                &ctx.rollouts(),
                ctx.caches.get(),
            )
            .await?,
        ),
        None => None,
    };
    if let Some(written) = written {
        match written {
            TrafficWrite::Applied {
                summary,
                adopted_now,
                wasm_plugins,
            } => {
                if status.wasm_plugins.is_none() {
                    remove_per_rollout_wasm_plugins(client, &ns, &rollout, &wasm_plugins).await?;
                }
                plan.status.wasm_plugins = Some(wasm_plugins);
                if adopted_now {
                    plan.transitions.push(Transition::new(
                        "WasmPluginAdopted",
                        format!("{summary}: the WasmPlugin was created by someone else; this rollout writes its spec.pluginConfig only (forced), leaves the rest to its owner and never deletes it"),
                    ));
                }
                set_traffic_condition(
                    &mut plan.status,
                    TrafficReason::Applied,
                    summary,
                    observed.now,
                );
            }
            TrafficWrite::NotApplied {
                reason,
                message,
                filter_written,
            } => {
                warn!(reason = reason.as_str(), %message, "traffic not applied");
                plan = plan.traffic_not_applied(
                    &status,
                    reason,
                    message,
                    filter_written,
                    observed.now,
                );
            }
        }
    }
    if let Some(traffic) = &plan.traffic {
        if let Some(t) = apply_preview_service(client, &ns, &rollout, &plan, traffic).await? {
            plan.transitions.push(t);
        }
    }
    apply_replica_sets(&rs_api, caches, &rollout, &template, &template_hash, &plan).await?;
    // A status that would not change is not written (the write would store nothing).
    if rollout.status.as_ref() != Some(&plan.status) {
        let stored = patch_status(client, &ns, &name, &plan.status).await?;
        ctx.record_written_status(&stored);
    }
    ctx.metrics
        .observe_rollout(&ns, &name, plan.status.phase, plan.status.canary_weight);
    if let Some(started) = status
        .step_started_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    {
        let labels = RolloutLabels {
            namespace: ns.clone(),
            rollout: name.clone(),
        };
        for _ in plan
            .transitions
            .iter()
            .filter(|t| t.reason == "StepCompleted")
        {
            let took = (observed.now - started.with_timezone(&Utc))
                .num_milliseconds()
                .max(0) as f64
                / 1000.0;
            ctx.metrics
                .step_seconds
                .get_or_create(&labels)
                .observe(took);
        }
    }
    if plan.promote_consumed {
        if let Some(request) = &observed.promote_request {
            if let Some(stored) = remove_promote_request(client, &ns, &name, request).await? {
                ctx.record_written_status(&stored);
            }
        }
    }
    for t in &plan.transitions {
        info!(reason = t.reason, message = %t.message, "transition");
        let event = Event {
            type_: if matches!(
                t.reason,
                "Aborted" | "CanaryRestarted" | "CanaryCancelled" | "WasmPluginAdopted"
            ) || (t.reason == "AnalysisCompleted" && !t.message.contains("Successful"))
            {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason.into(),
            note: Some(t.message.clone()),
            action: t.action.clone(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &rollout.object_ref(&())).await {
            warn!(error = %e, "recording event");
        }
    }
    Ok(Action::requeue(plan.requeue_after.map_or(RESYNC, |d| {
        d.min(RESYNC) + Duration::from_millis(200)
    })))
}

/// Blue-green with a `previewService`: its selector's `rollouts-pod-template-hash` names green
/// while green runs and is not aborted, blue otherwise (as Argo Rollouts does). Only that key
/// of the selector is written (server-side apply); nothing when it already holds. A missing
/// Service is reported (an Event), not an error: the rollout itself goes on.
async fn apply_preview_service(
    client: &Client,
    ns: &str,
    rollout: &CanaryRollout,
    plan: &steps::Plan,
    traffic: &Traffic,
) -> Result<Option<Transition>> {
    let Some(name) = rollout
        .spec
        .strategy
        .blue_green_only()
        .and_then(|bg| bg.preview_service.as_deref())
    else {
        return Ok(None);
    };
    let hash = match &plan.canary {
        Some(green) if !plan.status.aborted => green,
        _ => &traffic.stable_hash,
    };
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let Some(current) = api
        .get_opt(name)
        .await
        .map_err(kube_err("reading the preview Service"))?
    else {
        return Ok(Some(Transition::new(
            "PreviewServiceMissing",
            format!(
                "previewService {name} does not exist in {ns}: create it to reach green by name"
            ),
        )));
    };
    let selected = current
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL));
    if selected == Some(hash) {
        return Ok(None);
    }
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {POD_TEMPLATE_HASH_LABEL: hash}}
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_err("pointing the preview Service"))?;
    Ok(Some(Transition::new(
        "PreviewServiceSwitched",
        format!("previewService {name} now selects {hash}"),
    )))
}

/// Removes the promote annotation if it still holds the request acted on. A newer request a
/// user wrote since (the status already records the old one as handled) stays for the next
/// reconcile: a JSON patch `test` makes the removal conditional.
async fn remove_promote_request(
    client: &Client,
    ns: &str,
    name: &str,
    request: &str,
) -> Result<Option<CanaryRollout>> {
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    let path = format!(
        "/metadata/annotations/{}",
        PROMOTE_ANNOTATION.replace('~', "~0").replace('/', "~1")
    );
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": request},
        {"op": "remove", "path": path},
    ]))
    .map_err(|e| Error::Invalid(format!("promote annotation patch: {e}")))?;
    match api
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(stored) => Ok(Some(stored)),
        // The test failed: someone wrote a new request (or removed it) since.
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => {
            debug!(request, reason = %e.message, "promote annotation changed since; kept");
            Ok(None)
        }
        Err(e) => Err(kube_err("removing the promote annotation")(e)),
    }
}

/// The older rollout (`namespace/name`) already running the service this rollout names, if any:
/// one service is under one rollout. Older means created first (then by name), so every
/// reconcile, whatever its order, agrees on which one runs.
fn claimed_by_another(rollouts: &[Arc<CanaryRollout>], rollout: &CanaryRollout) -> Option<String> {
    let ns = rollout.namespace();
    let service = rollout.spec.strategy.service();
    let age = |r: &CanaryRollout| (r.metadata.creation_timestamp.clone(), r.name_any());
    rollouts
        .iter()
        .filter(|r| r.namespace() == ns && r.uid() != rollout.uid())
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .filter(|r| r.spec.strategy.service() == service)
        .filter(|r| age(r) < age(rollout))
        .map(|r| format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any()))
        .next()
}

/// A rollout naming a service another rollout runs does nothing (no ReplicaSet, no traffic
/// write: nothing of the other changes) and says why in status.
async fn refuse_claimed(
    ctx: &Context,
    ns: &str,
    rollout: &CanaryRollout,
    holder: &str,
) -> Result<Action> {
    let service = rollout.spec.strategy.service();
    let message = format!(
        "service {service} is already under rollout {holder}: one service is rolled out by one CanaryRollout; delete one of them"
    );
    let mut status = rollout.status.clone().unwrap_or_default();
    if status.phase != crate::crd::Phase::Degraded || status.message.as_deref() != Some(&message) {
        let now = Utc::now();
        status.phase = crate::crd::Phase::Degraded;
        status.message = Some(message.clone());
        status.observed_generation = rollout.metadata.generation;
        crate::conditions::set_phase_conditions(&mut status, now);
        set_traffic_condition(
            &mut status,
            TrafficReason::Misconfigured,
            message.clone(),
            now,
        );
        let stored = patch_status(&ctx.client, ns, &rollout.name_any(), &status).await?;
        ctx.record_written_status(&stored);
        warn!(%message, "rollout refused");
        let event = Event {
            type_: EventType::Warning,
            reason: "ServiceClaimed".into(),
            note: Some(message),
            action: "Refuse".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &rollout.object_ref(&())).await {
            warn!(error = %e, "recording event");
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Upgrade from the versions before composition, where each rollout had its own WasmPlugin
/// (controlled by it, named `<rollout>-canary` by default): once the rollout's entry is in the
/// shared ones, its own goes, so no sidecar runs two filters. Runs once per rollout (until
/// `status.wasmPlugins` is first written).
async fn remove_per_rollout_wasm_plugins(
    client: &Client,
    ns: &str,
    rollout: &CanaryRollout,
    keep: &[String],
) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &wasm_plugin_resource());
    let uid = rollout.uid().unwrap_or_default();
    for plugin in api
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing WasmPlugins to migrate"))?
    {
        let controlled = plugin
            .owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true));
        if controlled && !keep.contains(&format!("{ns}/{}", plugin.name_any())) {
            api.delete(&plugin.name_any(), &Default::default())
                .await
                .map_err(kube_err("deleting a per-rollout WasmPlugin"))?;
            info!(wasm_plugin = %plugin.name_any(), "per-rollout WasmPlugin of an older version removed");
        }
    }
    Ok(())
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removing a rollout removes only its part: when one is deleted, its entries leave the shared
/// WasmPlugins (and a WasmPlugin left with none is deleted). At every (re)start of the watch,
/// entries of rollouts deleted while the controller was away go too.
async fn release_deleted_rollouts(
    ctx: Arc<Context>,
    rollouts: Api<CanaryRollout>,
    wasm_plugins: Api<DynamicObject>,
) {
    let mut events =
        std::pin::pin!(watcher(rollouts, watcher::Config::default()).default_backoff());
    // The rollouts of the current (re)list: only a complete list may say a manager is gone (the
    // controller's own cache may still be empty when this list is done).
    let mut listed: Vec<String> = Vec::new();
    while let Some(event) = events.next().await {
        let result = match event {
            Ok(watcher::Event::Delete(gone)) => {
                ctx.forget_written_status(&gone);
                release_rollout(&ctx, &gone).await
            }
            Ok(watcher::Event::Init) => {
                listed.clear();
                Ok(())
            }
            Ok(watcher::Event::InitApply(r)) => {
                listed.push(traffic::field_manager(&r));
                Ok(())
            }
            Ok(watcher::Event::InitDone) => release_orphans(&ctx, &wasm_plugins, &listed).await,
            Ok(_) => Ok(()),
            Err(e) => {
                warn!(error = %e, "watching rollouts for deletions");
                Ok(())
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "releasing WasmPlugin entries of a deleted rollout");
        }
    }
}

async fn release_rollout(ctx: &Context, gone: &CanaryRollout) -> Result<()> {
    let manager = traffic::field_manager(gone);
    let rollouts = ctx.rollouts();
    let mut keys: Vec<String> = traffic::targets(gone, &rollouts)
        .iter()
        .map(|t| t.key())
        .collect();
    keys.extend(
        gone.status
            .iter()
            .flat_map(|s| s.wasm_plugins.iter().flatten())
            .cloned(),
    );
    keys.sort();
    keys.dedup();
    // A rollout of the same name created since then writes with the same manager: keep it.
    let recreated = rollouts.iter().any(|r| {
        r.namespace() == gone.namespace()
            && r.name_any() == gone.name_any()
            && r.uid() != gone.uid()
    });
    if recreated {
        return Ok(());
    }
    for key in keys {
        if let Some((namespace, name)) = key.split_once('/') {
            crate::traffic_writes::release(&ctx.client, namespace, name, &manager, &rollouts)
                .await?;
        }
    }
    Ok(())
}

/// Entries in the controller's WasmPlugins written by rollouts that no longer exist.
async fn release_orphans(
    ctx: &Context,
    wasm_plugins: &Api<DynamicObject>,
    live: &[String],
) -> Result<()> {
    let rollouts = ctx.rollouts();
    let labelled = ListParams::default().labels(&format!(
        "{}={}",
        traffic::MANAGED_BY.0,
        traffic::MANAGED_BY.1
    ));
    for plugin in wasm_plugins
        .list(&labelled)
        .await
        .map_err(kube_err("listing WasmPlugins"))?
    {
        let namespace = plugin.namespace().unwrap_or_default();
        for manager in plugin
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.as_deref())
            .filter(|m| {
                m.starts_with(traffic::ROLLOUT_MANAGER_PREFIX) && !live.iter().any(|l| l == m)
            })
        {
            crate::traffic_writes::release(
                &ctx.client,
                &namespace,
                &plugin.name_any(),
                manager,
                &rollouts,
            )
            .await?;
        }
    }
    Ok(())
}

/// The AnalysisTemplates and ClusterAnalysisTemplates the rollout references, keyed as
/// [`AnalysisTemplateRef::key`] (a missing one is left out; the plan says so).
async fn analysis_templates(
    client: &Client,
    ns: &str,
    rollout: &CanaryRollout,
) -> Result<BTreeMap<String, AnalysisTemplateSpec>> {
    let canary = rollout.spec.strategy.effective();
    let refs: BTreeMap<String, &AnalysisTemplateRef> = canary
        .analysis
        .iter()
        .chain(canary.steps.iter().filter_map(|s| s.analysis.as_ref()))
        .flat_map(|a| a.templates.iter().map(|t| (t.key(), t)))
        .collect();
    let mut out = BTreeMap::new();
    let namespaced: Api<AnalysisTemplate> = Api::namespaced(client.clone(), ns);
    let cluster: Api<ClusterAnalysisTemplate> = Api::all(client.clone());
    for (key, t) in refs {
        let name = t.template_name.as_str();
        let got = if t.cluster_scope {
            cluster.get(name).await.map(|c| c.spec.template)
        } else {
            namespaced.get(name).await.map(|t| t.spec)
        };
        match got {
            Ok(spec) => {
                out.insert(key, spec);
            }
            // A plain 404 (not a Status) also means the CRD is not installed: the template is
            // missing either way, and the plan says so in the status.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err(format!("reading {}", t.describe()))(e)),
        }
    }
    Ok(out)
}

/// How long after a step began its weight is taken to run in every sidecar (istiod's push
/// measured 0.2 s, at most ~1 s under load): `wasmSplit` counts no decision before.
const SPLIT_SETTLE: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// Tells each `wasmSplit` measurement what it checks: this rollout's service and the weight
/// the filter holds now (the plan's, as written), counted from the current step's start.
fn aim_split_checks(plan: &mut Plan, ns: &str, rollout: &CanaryRollout) {
    let weight_bp = plan.traffic.as_ref().map_or(0, |t| t.canary_weight);
    let since = plan
        .status
        .step_started_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc) + SPLIT_SETTLE);
    for request in &mut plan.measure {
        if let Some(split) = request.metric.provider.wasm_split.as_mut() {
            split.target = Some(crate::analysis::template::SplitTarget {
                namespace: ns.to_owned(),
                service: rollout.spec.strategy.service().into_owned(),
                weight_bp,
                since,
            });
        }
    }
}

/// How often the cache is looked at for a new spec while measurements are taken.
const SPEC_CHANGE_POLL: Duration = Duration::from_millis(50);

/// Resolves once the controller's cache holds another generation of `rollout`'s spec (an
/// abort, say); never without a running controller's cache. The cache is filled by the
/// controller's watch while reconciles run.
async fn spec_changed(ctx: &Context, rollout: &CanaryRollout) {
    let Some(store) = ctx.rollouts.get() else {
        return std::future::pending().await;
    };
    let key = ObjectRef::from_obj(rollout);
    loop {
        if store
            .get(&key)
            .is_some_and(|cached| cached.metadata.generation != rollout.metadata.generation)
        {
            return;
        }
        tokio::time::sleep(SPEC_CHANGE_POLL).await;
    }
}

/// Takes the measurements, concurrently; Secret-backed arguments are read just before and
/// never stored. A Secret that cannot be read makes an Error measurement.
async fn take_measurements(
    client: &Client,
    ns: &str,
    requests: &[MeasureRequest],
    now: chrono::DateTime<Utc>,
) -> Vec<TakenMeasurement> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let one = |r: &MeasureRequest| {
        let secrets = secrets.clone();
        let r = r.clone();
        async move {
            let mut values = BTreeMap::new();
            let mut failure = None;
            for (arg, key_ref) in &r.secrets {
                let value = secrets
                    .get_opt(&key_ref.name)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.ok_or_else(|| "not found".to_owned()))
                    .and_then(|s| {
                        s.data
                            .and_then(|d| d.get(&key_ref.key).cloned())
                            .ok_or_else(|| format!("has no key {}", key_ref.key))
                    })
                    .and_then(|b| String::from_utf8(b.0).map_err(|_| "value is not UTF-8".into()));
                match value {
                    Ok(v) => {
                        values.insert(arg.clone(), v);
                    }
                    Err(e) => {
                        failure = Some(format!(
                            "argument {arg}: Secret {} key {}: {e}",
                            key_ref.name, key_ref.key
                        ));
                    }
                }
            }
            let measurement = match failure {
                Some(message) => Measurement {
                    phase: AnalysisPhase::Error,
                    message: Some(message),
                    started_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    ..Measurement::default()
                },
                None => provider::measure(&r.metric, &values, now).await,
            };
            info!(run = %r.run, metric = %r.metric.name, phase = ?measurement.phase, value = measurement.value.as_deref().unwrap_or_default(), message = measurement.message.as_deref().unwrap_or_default(), "measurement");
            TakenMeasurement {
                run: r.run,
                metric: r.metric.name,
                measurement,
            }
        }
    };
    futures::future::join_all(requests.iter().map(one)).await
}

async fn pod_template(client: &Client, ns: &str, rollout: &CanaryRollout) -> Result<Value> {
    if let Some(t) = &rollout.spec.template {
        return serde_json::to_value(t).map_err(|source| Error::Json {
            context: "pod template".into(),
            source,
        });
    }
    let Some(w) = &rollout.spec.workload_ref else {
        return Err(Error::Invalid(
            "spec.template or spec.workloadRef is required".into(),
        ));
    };
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(&w.name)
        .await
        .map_err(kube_err(format!("reading Deployment {}", w.name)))?;
    serde_json::to_value(d.spec.template).map_err(|source| Error::Json {
        context: "pod template".into(),
        source,
    })
}

async fn apply_replica_sets(
    api: &Api<ReplicaSet>,
    caches: Option<&Caches>,
    rollout: &CanaryRollout,
    template: &Value,
    template_hash: &str,
    plan: &Plan,
) -> Result<()> {
    let name = rollout.name_any();
    let ns = rollout.namespace().unwrap_or_default();
    for (hash, replicas) in &plan.replicas {
        let rs_name = format!("{name}-{hash}");
        let cached = caches.map(|c| c.replica_set(&ns, &rs_name));
        if hash == template_hash {
            let strategy = rollout.spec.strategy.effective();
            let role = if plan.canary.as_deref() == Some(hash) {
                strategy.canary_metadata.clone()
            } else {
                strategy.stable_metadata.clone()
            };
            let rs = replica_set(rollout, template, hash, *replicas, role.as_ref())?;
            // Nothing to write when the ReplicaSet already holds everything the apply would
            // (another writer's change to one of those fields makes it differ, and is undone).
            if let Some(Some(current)) = &cached {
                if serde_json::to_value(&**current).is_ok_and(|c| holds(&c, &rs)) {
                    continue;
                }
            }
            api.patch(
                &rs_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&rs),
            )
            .await
            .map_err(kube_err(format!("applying ReplicaSet {rs_name}")))?;
            relabel_pods(api, rollout, hash, role.as_ref()).await?;
        } else if plan.replicas.contains_key(hash) {
            // An older template: only its size changes. Its template is not ours to rewrite.
            let current = match cached {
                Some(cached) => cached.map(|rs| (*rs).clone()),
                None => api
                    .get_opt(&rs_name)
                    .await
                    .map_err(kube_err(format!("reading ReplicaSet {rs_name}")))?,
            };
            match current {
                Some(rs) if rs.spec.replicas != Some(*replicas) => {
                    api.patch_scale(
                        &rs_name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                    )
                    .await
                    .map_err(kube_err(format!("scaling ReplicaSet {rs_name}")))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Whether `have` holds everything in `want`: every key of an object (recursively), every
/// element of an array of the same length, equal scalars. Fields the API server defaults are
/// extra keys in `have`; a value it normalises differently makes them differ (then we write).
fn holds(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| holds(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| holds(hv, wv))
        }
        _ => have == want,
    }
}

/// Pods keep the labels they were created with; a promotion turns canary pods into stable ones.
/// Bring the role labels and annotations (canaryMetadata/stableMetadata) of running pods in line
/// with their ReplicaSet's current role, as Argo Rollouts does, so telemetry keyed on e.g.
/// `version` or `service.istio.io/canonical-revision` is right after a promotion. Traffic never
/// depends on these labels: the DestinationRule subsets select by pod-template hash.
async fn relabel_pods(
    api: &Api<ReplicaSet>,
    rollout: &CanaryRollout,
    hash: &str,
    role: Option<&crate::crd::PodMetadata>,
) -> Result<()> {
    let canary = rollout.spec.strategy.effective();
    let role_keys = |m: &Option<crate::crd::PodMetadata>| {
        m.iter()
            .flat_map(|m| {
                m.labels
                    .keys()
                    .chain(m.annotations.keys())
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    if role_keys(&canary.canary_metadata).is_empty()
        && role_keys(&canary.stable_metadata).is_empty()
    {
        return Ok(());
    }
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(
        api.clone().into_client(),
        &rollout.namespace().unwrap_or_default(),
    );
    let list = pods
        .list(&ListParams::default().labels(&format!("{POD_TEMPLATE_HASH_LABEL}={hash}")))
        .await
        .map_err(kube_err("listing pods to relabel"))?;
    for pod in list.items {
        let mut labels = serde_json::Map::new();
        let mut annotations = serde_json::Map::new();
        for other in [&canary.canary_metadata, &canary.stable_metadata]
            .into_iter()
            .flatten()
        {
            for k in other.labels.keys() {
                labels.insert(k.clone(), Value::Null);
            }
            for k in other.annotations.keys() {
                annotations.insert(k.clone(), Value::Null);
            }
        }
        if let Some(m) = role {
            for (k, v) in &m.labels {
                labels.insert(k.clone(), json!(v));
            }
            for (k, v) in &m.annotations {
                annotations.insert(k.clone(), json!(v));
            }
        }
        let current_labels = pod.labels();
        let current_annotations = pod.annotations();
        let differs = |want: &serde_json::Map<String, Value>, have: &BTreeMap<String, String>| {
            want.iter()
                .any(|(k, v)| v.as_str() != have.get(k).map(String::as_str))
        };
        if differs(&labels, current_labels) || differs(&annotations, current_annotations) {
            let name = pod.name_any();
            pods.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels, "annotations": annotations}})),
            )
            .await
            .map_err(kube_err(format!("relabelling pod {name}")))?;
        }
    }
    Ok(())
}

fn replica_set(
    rollout: &CanaryRollout,
    template: &Value,
    hash: &str,
    replicas: i32,
    role: Option<&crate::crd::PodMetadata>,
) -> Result<Value> {
    let name = rollout.name_any();
    let mut template = template.clone();
    let mut labels: BTreeMap<String, String> =
        serde_json::from_value(template["metadata"]["labels"].clone()).unwrap_or_default();
    let mut annotations: BTreeMap<String, String> =
        serde_json::from_value(template["metadata"]["annotations"].clone()).unwrap_or_default();
    if let Some(m) = role {
        labels.extend(m.labels.clone());
        annotations.extend(m.annotations.clone());
    }
    labels.insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    template["metadata"]["labels"] = json!(labels);
    if !annotations.is_empty() {
        template["metadata"]["annotations"] = json!(annotations);
    }
    let mut selector =
        serde_json::to_value(&rollout.spec.selector).map_err(|source| Error::Json {
            context: "selector".into(),
            source,
        })?;
    selector["matchLabels"][POD_TEMPLATE_HASH_LABEL] = json!(hash);
    let owner = rollout
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Invalid("rollout has no uid".into()))?;
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{name}-{hash}"),
            "labels": {ROLLOUT_LABEL: name, POD_TEMPLATE_HASH_LABEL: hash},
            "ownerReferences": [owner],
        },
        "spec": {"replicas": replicas, "selector": selector, "template": template},
    }))
}

async fn patch_status(
    client: &Client,
    ns: &str,
    name: &str,
    status: &CanaryRolloutStatus,
) -> Result<CanaryRollout> {
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    let body = json!({
        "apiVersion": CanaryRollout::api_version(&()),
        "kind": CanaryRollout::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_err("patching status"))
}
