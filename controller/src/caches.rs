//! What the controller reads on every reconcile, served from watches instead of the API
//! server: the rollouts' ReplicaSets, the WasmPlugins and the DestinationRules. Each cache is
//! filled by the same watch that triggers reconciles (a reflector in front of the trigger), so
//! a reconcile triggered by a change already sees it. A reconcile run on its own (no
//! controller, as some tests do) reads from the API server instead.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::DynamicObject;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use crate::reconcile::{destination_rule_resource, wasm_plugin_resource, ROLLOUT_LABEL};

/// The caches a running controller keeps.
#[derive(Clone)]
pub struct Caches {
    /// ReplicaSets labelled with [`ROLLOUT_LABEL`].
    pub replica_sets: Store<ReplicaSet>,
    /// Every WasmPlugin in the controller's scope.
    pub wasm_plugins: Store<DynamicObject>,
    /// Every DestinationRule in the controller's scope.
    pub destination_rules: Store<DynamicObject>,
}

impl Caches {
    /// Whether every cache holds its first complete list. Until then reconciles read from the
    /// API server: a reconcile never waits on a cache (its watch is driven by the same
    /// controller loop that runs the reconcile).
    pub fn ready(&self) -> bool {
        use futures::FutureExt;
        self.replica_sets
            .wait_until_ready()
            .now_or_never()
            .is_some()
            && self
                .wasm_plugins
                .wait_until_ready()
                .now_or_never()
                .is_some()
            && self
                .destination_rules
                .wait_until_ready()
                .now_or_never()
                .is_some()
    }

    /// The ReplicaSets of rollout `namespace/name`.
    pub fn replica_sets_of(&self, namespace: &str, rollout: &str) -> Vec<Arc<ReplicaSet>> {
        self.replica_sets
            .state()
            .into_iter()
            .filter(|rs| rs.namespace().as_deref() == Some(namespace))
            .filter(|rs| rs.labels().get(ROLLOUT_LABEL).map(String::as_str) == Some(rollout))
            .collect()
    }

    /// ReplicaSet `namespace/name`.
    pub fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        self.replica_sets
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// WasmPlugin `namespace/name`.
    pub fn wasm_plugin(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.wasm_plugins
            .get(&ObjectRef::new_with(name, wasm_plugin_resource()).within(namespace))
    }

    /// DestinationRule `namespace/name`.
    pub fn destination_rule(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.destination_rules
            .get(&ObjectRef::new_with(name, destination_rule_resource()).within(namespace))
    }
}
