//! Playing kubelet for a real mesh: each Pod of a served app that the API server holds (created
//! by the ReplicaSets a controller scales) becomes a running app behind its own Envoy sidecar on
//! its own loopback address, registered with istiod as a WorkloadEntry; it is marked Ready only
//! once its sidecar's inbound listener answers. A Pod being deleted is torn down, then removed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::Client;
use serde_json::json;
use wasm_canary_e2e::app::App;
use wasm_canary_e2e::envoy::Envoy;

use crate::bookinfo::{register_server_pod, Subnet, POD_LABEL, REVIEWS_PORT};
use crate::sidecar::{self, Pod};

/// A Pod this kubelet runs.
pub struct RunningPod {
    pub pod: Pod,
    /// Its `rollouts-pod-template-hash` (the app answers `x-app-version: <hash>`).
    pub hash: String,
    pub app: App,
    pub sidecar: Envoy,
}

/// Runs the Pods labelled `app=<app>` of one namespace until dropped (then every app and
/// sidecar it started is stopped).
pub struct MeshKubelet {
    task: tokio::task::JoinHandle<()>,
    running: Arc<Mutex<BTreeMap<String, RunningPod>>>,
}

impl MeshKubelet {
    pub fn start(
        client: Client,
        xds: SocketAddr,
        namespace: &str,
        app: &str,
        subnet: Arc<Subnet>,
    ) -> MeshKubelet {
        let running = Arc::new(Mutex::new(BTreeMap::new()));
        let task = tokio::spawn(run(
            client,
            xds,
            namespace.to_owned(),
            app.to_owned(),
            subnet,
            running.clone(),
        ));
        MeshKubelet { task, running }
    }

    /// Every stat whose name contains `filter`, per sidecar of the Pods running now.
    pub fn sidecar_stats_matching(
        &self,
        filter: &str,
    ) -> Vec<std::collections::HashMap<String, u64>> {
        self.running
            .lock()
            .map(|r| {
                r.values()
                    .map(|p| p.sidecar.stats(filter).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for MeshKubelet {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut running) = self.running.lock() {
            running.clear();
        }
    }
}

fn workload_entry_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "WorkloadEntry"),
        "workloadentries",
    )
}

fn sidecar_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "Sidecar"),
        "sidecars",
    )
}

async fn run(
    client: Client,
    xds: SocketAddr,
    ns: String,
    app: String,
    subnet: Arc<Subnet>,
    running: Arc<Mutex<BTreeMap<String, RunningPod>>>,
) {
    let pods: Api<KubePod> = Api::namespaced(client.clone(), &ns);
    let selector = ListParams::default().labels(&format!("app={app}"));
    loop {
        if let Ok(list) = pods.list(&selector).await {
            let names: Vec<String> = list
                .items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            for p in &list.items {
                let name = p.metadata.name.clone().unwrap_or_default();
                let known = running
                    .lock()
                    .map(|r| r.contains_key(&name))
                    .unwrap_or(true);
                if p.metadata.deletion_timestamp.is_some() {
                    stop_pod(&client, &ns, &name, &running).await;
                } else if !known {
                    match start_pod(&client, xds, &ns, p, &subnet).await {
                        Ok(r) => {
                            if let Ok(mut running) = running.lock() {
                                running.insert(name, r);
                            }
                        }
                        Err(e) => eprintln!("mesh kubelet: starting pod {ns}/{name}: {e:#}"),
                    }
                } else {
                    sync_labels(&client, p, &running).await;
                }
            }
            // Pods deleted outright (grace period 0) are gone from the list.
            let gone: Vec<String> = running
                .lock()
                .map(|r| r.keys().filter(|k| !names.contains(k)).cloned().collect())
                .unwrap_or_default();
            for name in gone {
                stop_pod(&client, &ns, &name, &running).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polling interval
    }
}

async fn start_pod(
    client: &Client,
    xds: SocketAddr,
    ns: &str,
    p: &KubePod,
    subnet: &Subnet,
) -> anyhow::Result<RunningPod> {
    let name = p.metadata.name.clone().context("pod name")?;
    let mut labels: BTreeMap<String, String> = p.metadata.labels.clone().unwrap_or_default();
    labels.insert(POD_LABEL.to_owned(), name.clone());
    let hash = labels
        .get("rollouts-pod-template-hash")
        .cloned()
        .unwrap_or_default();
    let ip = subnet.allocate()?;
    // istiod finds a proxy's workload labels on the Pod with its IP: give the Pod the label its
    // own `Sidecar` resource selects.
    Api::<KubePod>::namespaced(client.clone(), ns)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {POD_LABEL: name}}})),
        )
        .await?;
    let pod = Pod {
        name: name.clone(),
        namespace: ns.to_owned(),
        labels,
        ip,
    };
    let app = App::start(&hash)?;
    register_server_pod(client, &pod, app.addr).await?;
    let sidecar = {
        let pod = pod.clone();
        tokio::task::spawn_blocking(move || sidecar::start(xds, &pod)).await??
    };
    // Ready = the sidecar's inbound listener (from istiod) accepts connections, as a readiness
    // probe through the sidecar would see it.
    let inbound = SocketAddr::from((ip, REVIEWS_PORT));
    let start = Instant::now();
    while std::net::TcpStream::connect_timeout(&inbound, Duration::from_millis(500)).is_err() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "no inbound listener on {inbound} after 60 s; sidecar log tail:\n{}",
            sidecar.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    canary_cluster::kubelet::run_pod(client, ns, &name, &ip.to_string(), true).await?;
    Ok(RunningPod {
        pod,
        hash,
        app,
        sidecar,
    })
}

/// Keeps the WorkloadEntry's labels those of the Pod (the controller relabels promoted pods).
async fn sync_labels(client: &Client, p: &KubePod, running: &Mutex<BTreeMap<String, RunningPod>>) {
    let Some(name) = p.metadata.name.clone() else {
        return;
    };
    let labels = p.metadata.labels.clone().unwrap_or_default();
    let changed = running.lock().ok().and_then(|mut r| {
        let r = r.get_mut(&name)?;
        let mut want = labels.clone();
        want.insert(POD_LABEL.to_owned(), name.clone());
        (r.pod.labels != want).then(|| {
            r.pod.labels = want;
            r.pod.clone()
        })
    });
    if let Some(pod) = changed {
        let entries: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &pod.namespace, &workload_entry_resource());
        let _ = entries
            .patch(
                &pod.name,
                &PatchParams::apply(crate::objects::FIELD_MANAGER).force(),
                &Patch::Apply(json!({
                    "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                    "metadata": {"name": pod.name},
                    "spec": {"address": pod.ip.to_string(), "labels": pod.labels, "serviceAccount": "default"}
                })),
            )
            .await;
    }
}

async fn stop_pod(
    client: &Client,
    ns: &str,
    name: &str,
    running: &Mutex<BTreeMap<String, RunningPod>>,
) {
    // Out of istiod's endpoints first, then the process goes, then the Pod object.
    for resource in [workload_entry_resource(), sidecar_resource()] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    let stopped = running.lock().ok().and_then(|mut r| r.remove(name));
    drop(stopped);
    let _ = Api::<KubePod>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default().grace_period(0))
        .await;
}
