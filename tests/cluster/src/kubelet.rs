//! Playing scheduler and kubelet, which this control plane does not run.
//!
//! Pods stay `Pending` without a node. A test that needs a running Pod (say, to see it
//! in its Service's EndpointSlice) calls [`run_pod`]: it registers a Node object, binds
//! the Pod to it as the scheduler would, and writes the status a kubelet would.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::error::{Error, Result};
use crate::FIELD_MANAGER;

/// The Node every Pod is bound to. The EndpointSlice controller skips Pods whose
/// node does not exist.
pub const NODE_NAME: &str = "wasm-canary-node";

/// Registers [`NODE_NAME`] (idempotent). No kubelet heartbeats it; nothing here
/// watches node health, so it stays usable.
pub async fn register_node(client: &Client) -> Result<()> {
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": {
            "kubernetes.io/hostname": NODE_NAME,
            "topology.kubernetes.io/zone": "loopback",
        }},
    });
    Api::<Node>::all(client.clone())
        .patch(
            NODE_NAME,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&node),
        )
        .await
        .map_err(Error::api(format!("registering Node {NODE_NAME}")))?;
    Ok(())
}

/// Makes Pod `namespace/name` look like a running Pod at `ip`: binds it to
/// [`NODE_NAME`] if unbound, then sets phase Running, the IP and the readiness
/// conditions (`ready` decides the Ready and ContainersReady conditions).
///
/// Use an address from 192.0.2.0/24 (TEST-NET-1, RFC 5737), e.g. `192.0.2.10`. It is
/// only data: nothing connects to it. A 127.x address is accepted in the Pod status,
/// but the API server refuses loopback addresses in EndpointSlices ("may not be in the
/// loopback range"), so the Pod would never show up as an endpoint.
pub async fn run_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    ip: &str,
    ready: bool,
) -> Result<()> {
    register_node(client).await?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let pod = pods
        .get(name)
        .await
        .map_err(Error::api(format!("reading Pod {namespace}/{name}")))?;
    if pod.spec.and_then(|spec| spec.node_name).is_none() {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
        });
        pods.create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map_err(Error::api(format!(
            "binding Pod {namespace}/{name} to Node {NODE_NAME}"
        )))?;
    }
    set_pod_status(client, namespace, name, ip, ready).await
}

/// Writes the status a kubelet would for a running Pod at `ip`, Ready or not.
pub async fn set_pod_status(
    client: &Client,
    namespace: &str,
    name: &str,
    ip: &str,
    ready: bool,
) -> Result<()> {
    let ready = if ready { "True" } else { "False" };
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": ready},
            {"type": "Ready", "status": ready},
        ],
    }});
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(Error::api(format!(
            "writing the status of Pod {namespace}/{name}"
        )))?;
    Ok(())
}

/// Plays kubelet for a whole namespace until the task is dropped: every Pod that is not
/// Ready is bound and marked Running and Ready (a 192.0.2.x IP), as a kubelet does once the
/// containers pass their readiness probes. Polls every 100 ms; spawn it and abort it at the end
/// of the test.
pub async fn play_kubelet(client: Client, namespace: String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut n = 10u32;
    loop {
        if let Ok(list) = pods.list(&kube::api::ListParams::default()).await {
            for p in list.items {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if !ready && p.metadata.deletion_timestamp.is_none() {
                    n += 1;
                    let ip = format!("192.0.2.{}", n % 250 + 2);
                    let name = p.metadata.name.as_deref().unwrap_or_default();
                    let _ = run_pod(&client, &namespace, name, &ip, true).await;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
