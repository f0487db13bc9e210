//! An upstream Envoy as an Istio sidecar: the bootstrap istio-agent would write, connected
//! straight to istiod over plaintext ADS.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::json;
use wasm_canary_e2e::envoy::{Envoy, EnvoyOptions};

use std::net::SocketAddr;

/// The Istio version the sidecars report (istiod gates some features on it).
const PROXY_ISTIO_VERSION: &str = "1.28.0";

/// One pod of the mesh, as its sidecar describes it to istiod.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// The pod's labels (Istio puts them in node metadata `LABELS`; the server-side filter
    /// reads `rollouts-pod-template-hash` there).
    pub labels: BTreeMap<String, String>,
    /// The pod's address: its WorkloadEntry's, and where its listeners bind.
    pub ip: Ipv4Addr,
}

impl Pod {
    /// The node id istio-agent gives a sidecar: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        format!(
            "sidecar~{ip}~{name}.{ns}~{ns}.svc.cluster.local",
            ip = self.ip,
            name = self.name,
            ns = self.namespace
        )
    }

    /// The workload's name: the `app` label, as Istio derives it for a Deployment's pod.
    pub fn workload(&self) -> &str {
        self.labels.get("app").map_or(&self.name, String::as_str)
    }
}

/// The bootstrap: node identity and metadata, admin on 127.0.0.1 (port 0), ADS to istiod.
pub fn bootstrap(xds: SocketAddr, pod: &Pod) -> String {
    json!({
        "node": {
            "id": pod.node_id(),
            "cluster": format!("{}.{}", pod.workload(), pod.namespace),
            "metadata": {
                "NAMESPACE": pod.namespace,
                "NAME": pod.name,
                "LABELS": pod.labels,
                "CLUSTER_ID": "Kubernetes",
                "MESH_ID": "cluster.local",
                "ISTIO_VERSION": PROXY_ISTIO_VERSION,
                "INSTANCE_IPS": pod.ip.to_string(),
                // No iptables: listeners bind real addresses (set by `Sidecar` resources).
                "INTERCEPTION_MODE": "NONE",
                "WORKLOAD_NAME": pod.workload(),
                "SERVICE_ACCOUNT": "default",
                "OWNER": format!("kubernetes://apis/apps/v1/namespaces/{}/deployments/{}", pod.namespace, pod.workload())
            }
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
            "lds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
        },
        "static_resources": {"clusters": [{
            "name": "xds-grpc",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": xds.ip().to_string(), "port_value": xds.port()}}}}]}]}
        }]}
    })
    .to_string()
}

/// Starts the sidecar of `pod` (one worker thread), connected to istiod's plaintext xDS
/// address `xds` ([`crate::Istiod::grpc`]), and waits until Envoy is LIVE, i.e. has
/// its first listeners and clusters from istiod.
pub fn start(xds: SocketAddr, pod: &Pod) -> anyhow::Result<Envoy> {
    let options = EnvoyOptions {
        service_node: Some(pod.node_id()),
        ..EnvoyOptions::default()
    };
    Envoy::start(&pod.name, &bootstrap(xds, pod), &options, |_| Ok(()))
}

/// The `pluginConfig`s of the wasm filters a sidecar runs now, by ECDS resource name (Istio
/// names them `<namespace>.<WasmPlugin>~istio-translated-wasmplugin`), read from its admin
/// `config_dump` (ECDS part only: a NACKed listener elsewhere does not hide them).
pub fn running_plugin_configs(envoy: &Envoy) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let r = wasm_canary_e2e::http::admin_get(envoy.admin, "/config_dump?resource=ecds_filters")?;
    anyhow::ensure!(r.status == 200, "config_dump: {} {}", r.status, r.body);
    let dump: serde_json::Value = serde_json::from_str(&r.body)?;
    let mut out = Vec::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        let filter = &c["ecds_filter"];
        let name = filter["name"].as_str().unwrap_or_default().to_owned();
        let configuration = &filter["typed_config"]["config"]["configuration"];
        let text = configuration["value"].as_str().unwrap_or("{}");
        let value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        out.push((name, value));
    }
    Ok(out)
}

/// The `Sidecar` resource of a calling pod: its outbound listeners bind the pod's own address
/// (no iptables; `captureMode: NONE`), for every service of its namespace.
pub fn caller_sidecar(pod: &Pod) -> serde_json::Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": pod.name, "namespace": pod.namespace},
        "spec": {
            "workloadSelector": {"labels": {crate::bookinfo::POD_LABEL: pod.name}},
            "egress": [{"bind": pod.ip.to_string(), "captureMode": "NONE", "hosts": ["./*"]}]
        }
    })
}
