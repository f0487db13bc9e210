//! The dashboard's copy of the cluster: reflectors of the rollouts, the ReplicaSets they own
//! and the Events in scope, kept current by watches, plus what the dashboard remembers over
//! time. Every change wakes the open pages.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::history::{SplitHistory, WeightHistory};
use crate::crd::CanaryRollout;
use crate::reconcile::ROLLOUT_LABEL;

/// Which namespaces the dashboard shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One namespace (`-n`, or the kubeconfig context's).
    Namespace(String),
    /// Every namespace (`-A`).
    All,
}

impl Scope {
    /// `namespace bookinfo` or `all namespaces`.
    pub fn describe(&self) -> String {
        match self {
            Self::Namespace(ns) => format!("namespace {ns}"),
            Self::All => "all namespaces".into(),
        }
    }

    /// Whether rollouts of `namespace` are shown (and may be acted on).
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Self::Namespace(ns) => ns == namespace,
            Self::All => true,
        }
    }

    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Self::Namespace(ns) => Api::namespaced(client.clone(), ns),
            Self::All => Api::all(client.clone()),
        }
    }
}

/// What a watch mirrors; a failing watch is reported under its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// CanaryRollouts.
    Rollouts,
    /// The rollouts' ReplicaSets.
    ReplicaSets,
    /// Events about rollouts.
    Events,
    /// The observed split (Envoy admin or Prometheus).
    Split,
}

impl Source {
    /// What the user loses while this source fails.
    fn consequence(self) -> &'static str {
        match self {
            Self::Rollouts => {
                "cannot watch CanaryRollouts (list/watch canaryrollouts.wasmcanary.io)"
            }
            Self::ReplicaSets => {
                "cannot watch ReplicaSets, readiness is not shown (list/watch replicasets)"
            }
            Self::Events => "cannot watch Events, none are shown (list/watch events.k8s.io events)",
            Self::Split => "cannot read the observed split",
        }
    }
}

/// A rollout's key: namespace and name.
pub type RolloutKey = (String, String);

/// The key of `rollout`.
pub fn key_of(rollout: &CanaryRollout) -> RolloutKey {
    (rollout.namespace().unwrap_or_default(), rollout.name_any())
}

/// See the module documentation.
pub struct ClusterState {
    /// The CanaryRollouts in scope.
    pub rollouts: Store<CanaryRollout>,
    /// Their ReplicaSets (label `wasmcanary.io/rollout`).
    pub replica_sets: Store<ReplicaSet>,
    /// Events about CanaryRollouts.
    pub events: Store<Event>,
    weights: Mutex<HashMap<RolloutKey, WeightHistory>>,
    splits: Mutex<HashMap<RolloutKey, SplitHistory>>,
    problems: Mutex<BTreeMap<Source, String>>,
    changes: watch::Sender<u64>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent at every await point; a panicking holder cannot leave it torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClusterState {
    /// A receiver whose value changes whenever anything the pages show changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Wakes the open pages.
    pub fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The weight history of a rollout.
    pub fn weights(&self, key: &RolloutKey) -> Vec<super::history::WeightPoint> {
        locked(&self.weights)
            .get(key)
            .map(WeightHistory::points)
            .unwrap_or_default()
    }

    /// Runs `f` on a rollout's split history (created empty when new).
    pub fn with_split<T>(&self, key: &RolloutKey, f: impl FnOnce(&mut SplitHistory) -> T) -> T {
        f(locked(&self.splits).entry(key.clone()).or_default())
    }

    /// What the dashboard cannot see now, in sentences.
    pub fn problems(&self) -> Vec<String> {
        locked(&self.problems)
            .iter()
            .map(|(source, error)| format!("{}: {error}", source.consequence()))
            .collect()
    }

    /// Notes that `source` fails with `error`, or works again (`None`).
    pub fn set_problem(&self, source: Source, error: Option<String>) {
        let mut problems = locked(&self.problems);
        let changed = match error {
            Some(e) => problems.insert(source, e.clone()).as_ref() != Some(&e),
            None => problems.remove(&source).is_some(),
        };
        drop(problems);
        if changed {
            self.changed();
        }
    }

    fn record_weight(&self, rollout: &CanaryRollout, now_ms: i64) {
        let Some(status) = &rollout.status else {
            return;
        };
        locked(&self.weights)
            .entry(key_of(rollout))
            .or_default()
            .record(now_ms, status.canary_weight);
    }
}

/// The watches of a dashboard run; they stop when this is dropped.
pub struct Watching {
    /// What they keep current.
    pub state: Arc<ClusterState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Watching {
    /// Starts watching the rollouts, their ReplicaSets and the Events in `scope`.
    pub fn start(client: &Client, scope: &Scope) -> Watching {
        let (rollouts, rollouts_writer) = reflector::store();
        let (replica_sets, sets_writer) = reflector::store();
        let (events, events_writer) = reflector::store();
        let (changes, _) = watch::channel(0);
        let state = Arc::new(ClusterState {
            rollouts,
            replica_sets,
            events,
            weights: Mutex::default(),
            splits: Mutex::default(),
            problems: Mutex::default(),
            changes,
        });
        let tasks = vec![
            tokio::spawn(mirror(
                scope.api::<CanaryRollout>(client),
                watcher::Config::default(),
                rollouts_writer,
                Source::Rollouts,
                state.clone(),
                |state, rollout| {
                    state.record_weight(rollout, chrono::Utc::now().timestamp_millis())
                },
            )),
            tokio::spawn(mirror(
                scope.api::<ReplicaSet>(client),
                watcher::Config::default().labels(ROLLOUT_LABEL),
                sets_writer,
                Source::ReplicaSets,
                state.clone(),
                |_, _| {},
            )),
            tokio::spawn(mirror(
                scope.api::<Event>(client),
                watcher::Config::default().fields("regarding.kind=CanaryRollout"),
                events_writer,
                Source::Events,
                state.clone(),
                |_, _| {},
            )),
        ];
        Watching { state, tasks }
    }

    /// Runs `task` until the watches stop.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }
}

/// Mirrors one kind of object into its store, reporting a failing watch (it is retried with
/// backoff) and waking the pages at every change.
async fn mirror<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    source: Source,
    state: Arc<ClusterState>,
    on_object: fn(&ClusterState, &K),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                state.set_problem(source, None);
                if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = &event {
                    on_object(&state, o);
                }
                state.changed();
            }
            Err(e) => state.set_problem(source, Some(e.to_string())),
        }
    }
}
