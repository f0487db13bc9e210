//! Rollouts of several Bookinfo services in one real mesh, run by the controller: the API
//! server, istiod (revision `tsb`, as the seed's cluster), the caller's sidecar, a
//! `MeshKubelet` per service running the pods its rollout's ReplicaSets create, and the
//! controller as a process with its shipped RBAC. What the caller's sidecar runs and what its
//! requests reach are read as a user of the mesh would see them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use canary_cluster::ControlPlane;
use canary_controller::crd::CanaryRollout;
use canary_mesh::bookinfo::host;
use canary_mesh::kubelet::MeshKubelet;
use canary_mesh::sidecar::running_plugin_configs;
use canary_mesh::{objects, Bookinfo, Istiod};
use serde_json::Value;

use super::mesh_seed::{seed_app, start_controller, NS};
use super::owned_process::OwnedProcess;
use super::rollout_wait::rollout_until;

/// How long any one awaited state may take on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(120);

/// The response header the server-side filter tags every response with.
pub const VERSION_TAG: &str = "x-rollouts-pod-template-hash";

/// See the module documentation. Dropping it stops every process it started.
pub struct MeshEnv {
    // Dropped in this order: the pods' sidecars, the controller, the caller, istiod, the API
    // server.
    kubelets: Vec<MeshKubelet>,
    pub controller: OwnedProcess,
    pub mesh: Bookinfo,
    pub istiod: Istiod,
    pub client: kube::Client,
    pub plane: ControlPlane,
    /// The services laid out, `reviews` first.
    pub services: Vec<String>,
}

impl MeshEnv {
    /// Starts the mesh with Services `services` (Bookinfo's; `reviews` is always one), a
    /// kubelet for each, the controller, and the seed's ServiceAccounts. The rollouts and
    /// their Istio objects are the test's to [`MeshEnv::apply`].
    pub async fn start(services: &[&str]) -> MeshEnv {
        let (plane, client, istiod) = super::mesh_seed::plane_with_seed_istiod().await;
        let more: Vec<&str> = services
            .iter()
            .copied()
            .filter(|s| *s != "reviews")
            .collect();
        let mesh = Bookinfo::start_with_services(&plane, &client, &istiod, NS, &more, &[])
            .await
            .unwrap();
        let controller = start_controller(&plane, &client).await;
        let mut all = vec!["reviews".to_owned()];
        all.extend(more.iter().map(|s| (*s).to_owned()));
        let kubelets = all
            .iter()
            .map(|s| MeshKubelet::start(client.clone(), istiod.grpc, NS, s, mesh.subnet.clone()))
            .collect();
        for account in seed_app().iter().filter(|d| d["kind"] == "ServiceAccount") {
            objects::apply(&client, NS, account).await.unwrap();
        }
        MeshEnv {
            kubelets,
            controller,
            mesh,
            istiod,
            client,
            plane,
            services: all,
        }
    }

    /// Applies `objects` in order, as `kubectl apply --server-side` would.
    pub async fn apply(&self, objects: &[Value]) {
        for object in objects {
            objects::apply(&self.client, NS, object).await.unwrap();
        }
    }

    /// Waits (a watch) until `check` gives a value for rollout `name`.
    pub async fn until<T>(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&CanaryRollout) -> Option<T>,
    ) -> T {
        let r = rollout_until(
            &self.client,
            NS,
            name,
            what,
            WAIT,
            |r| check(r).is_some(),
            |_| false,
        )
        .await;
        check(&r).expect("the awaited state")
    }

    /// `kubectl canary <args> -n bookinfo`.
    pub fn kubectl_canary(&self, args: &[&str]) {
        super::mesh_seed::kubectl_canary(&self.plane, args);
    }

    /// The entry for `service` (`bookinfo/<service>`) of the client filter config the caller's
    /// sidecar runs now, if any.
    pub fn caller_entry(&self, service: &str) -> Option<Value> {
        running_plugin_configs(&self.mesh.caller)
            .ok()?
            .into_iter()
            .find_map(|(_, c)| {
                let entry = &c["services"][format!("{NS}/{service}")];
                (!entry.is_null()).then(|| entry.clone())
            })
    }

    /// Waits until the caller's sidecar runs an entry for `service` that `check` accepts;
    /// returns how long that took.
    pub async fn until_caller_runs(
        &self,
        service: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let entry = self.caller_entry(service);
            if entry.as_ref().is_some_and(&check) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < WAIT,
                "the caller's sidecar never ran {what} for {service}; it runs {entry:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `service`'s canary weight (basis points) runs in the caller's sidecar.
    pub async fn until_caller_runs_weight(&self, service: &str, weight: u64) -> Duration {
        self.until_caller_runs(service, &format!("canaryWeight {weight}"), |e| {
            e["canaryWeight"].as_u64() == Some(weight)
        })
        .await
    }

    /// Waits until a user's request to `service` through the caller is served by the pods of
    /// `hash` (they are Ready in the mesh and istiod has pushed their endpoints).
    pub async fn until_served_by(&self, service: &str, hash: &str) {
        let start = Instant::now();
        let mut http = self.mesh.http();
        loop {
            if let Ok(r) = http.get(&host(service), "/", &[]) {
                if r.status == 200 && r.header(VERSION_TAG) == Some(hash) {
                    return;
                }
            }
            assert!(
                start.elapsed() < WAIT,
                "{service} never served by {hash} through the mesh"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every stat of the sidecars of `service`'s pods whose name contains `filter`, per pod.
    pub fn sidecar_stats_matching(
        &self,
        service: &str,
        filter: &str,
    ) -> Vec<std::collections::HashMap<String, u64>> {
        let i = self.services.iter().position(|s| s == service).unwrap();
        self.kubelets[i].sidecar_stats_matching(filter)
    }
}

/// Sends one request to `service` with `headers` through the caller's sidecar (`http`);
/// returns the hash of the pod that served it. The response must be a 200 tagged by the
/// serving pod (the server-side filter's tag equals the app's own version).
pub fn serving_hash(
    http: &mut wasm_canary_e2e::http::Client,
    service: &str,
    headers: &[(&str, &str)],
) -> String {
    let r = http.get(&host(service), "/", headers).unwrap();
    assert_eq!(r.status, 200, "{service} with {headers:?}: {r:?}");
    let app = r.header("x-app-version").unwrap();
    assert_eq!(
        r.header(VERSION_TAG),
        Some(app),
        "{service}: tagged with the serving pod's hash"
    );
    app.to_owned()
}

/// Sends `n` requests to `service` with `headers` through the caller's sidecar; returns how
/// many each pod-template hash served (see [`serving_hash`]).
pub fn served_by(
    mesh: &Bookinfo,
    service: &str,
    n: u64,
    headers: &[(&str, &str)],
) -> BTreeMap<String, u64> {
    let mut http = mesh.http();
    let mut by_hash = BTreeMap::new();
    for _ in 0..n {
        *by_hash
            .entry(serving_hash(&mut http, service, headers))
            .or_insert(0) += 1;
    }
    by_hash
}

/// How many of `served` went to `canary`, after checking the rest went to `stable`.
pub fn on_canary(served: &BTreeMap<String, u64>, stable: &str, canary: &str, what: &str) -> u64 {
    for hash in served.keys() {
        assert!(
            hash == stable || hash == canary,
            "{what}: served by {hash}, neither stable {stable} nor canary {canary}: {served:?}"
        );
    }
    served.get(canary).copied().unwrap_or(0)
}
