//! A miniature Istio mesh on loopback, built from real Envoys running the real filter.
//!
//! ```text
//!  test client ──> client sidecar (filter: client mode, config by ECDS from a watched file)
//!                     route "canary": header x-canary-subset = canary ─> reviews-canary cluster
//!                     route "stable": default                          ─> reviews-stable cluster
//!                     any other host                                   ─> details app
//!  reviews-stable cluster ─> sidecar (filter: server mode, node LABELS hash 6c9f8d5b7d) ─> app "stable"
//!  reviews-canary cluster ─> sidecar (filter: server mode, node LABELS hash 84b7c6f5d9) ─> app "canary"
//! ```
//!
//! The client sidecar's routes are what Istio generates from `wasm-plugin/virtualservice.yaml`;
//! the ECDS file is how istiod delivers a WasmPlugin's `pluginConfig` (a new config reaches the
//! running Envoy without a restart). Each server sidecar carries its pod's labels in node
//! metadata `LABELS`, as an Istio sidecar does.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use canary_core::config::DEFAULT_DECISION_HEADER;

use crate::app::App;
use crate::envoy::{Envoy, EnvoyOptions};

pub const FILTER_NAME: &str = "wasm-canary";
pub const STABLE_HASH: &str = "6c9f8d5b7d";
pub const CANARY_HASH: &str = "84b7c6f5d9";
/// The hosts of the service under canary, as a Kubernetes client would address it.
pub const REVIEWS_HOSTS: [&str; 4] = [
    "reviews",
    "reviews.bookinfo",
    "reviews.bookinfo.svc",
    "reviews.bookinfo.svc.cluster.local",
];

/// A client-mode pluginConfig for `reviews` with the given weight (basis points) and the
/// header routes and sticky key the tests use.
pub fn reviews_config(weight: u32) -> String {
    serde_json::json!({
        "hashHeader": "x-canary-pod-template-hash",
        "services": [{
            "name": "bookinfo/reviews",
            "hosts": REVIEWS_HOSTS,
            "canaryWeight": weight,
            "stableHash": STABLE_HASH,
            "canaryHash": CANARY_HASH,
            "headerRoutes": [
                {"name": "exact", "match": [{"header": "x-canary", "value": {"exact": "always"}}]},
                {"name": "prefix", "match": [{"header": "x-team", "value": {"prefix": "qa-"}}]},
                {"name": "regex", "match": [{"header": "user-agent", "value": {"regex": ".*CanaryTester/[0-9]+.*"}}]},
                {"name": "cookie", "match": [{"cookie": "canary", "value": {"exact": "yes"}}]}
            ],
            "sticky": {"header": "x-user-id"}
        }]
    })
    .to_string()
}

/// The wasm filter's `config` (envoy.extensions.wasm.v3.PluginConfig) with `plugin_config` as
/// its `configuration` string, as Istio builds it from a WasmPlugin.
pub fn wasm_plugin_config(wasm: &Path, plugin_config: &str) -> serde_json::Value {
    serde_json::json!({
        "name": FILTER_NAME,
        "root_id": FILTER_NAME,
        "vm_config": {
            "vm_id": FILTER_NAME,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": wasm.display().to_string()}}
        },
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config},
        // If the VM cannot be created or crashes, requests pass without the filter: no decision
        // header, so the default route (stable) applies. Istio's failStrategy: FAIL_OPEN.
        "failure_policy": "FAIL_OPEN"
    })
}

/// The ECDS resource file for the filter.
pub fn ecds_resource(wasm: &Path, plugin_config: &str, version: u64) -> String {
    serde_json::json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": FILTER_NAME,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": wasm_plugin_config(wasm, plugin_config)
            }
        }]
    })
    .to_string()
}

fn http_connection_manager(
    stat_prefix: &str,
    route_config: serde_json::Value,
    filters: serde_json::Value,
) -> serde_json::Value {
    let mut http_filters = filters.as_array().cloned().unwrap_or_default();
    http_filters.push(serde_json::json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    serde_json::json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": route_config,
            "http_filters": http_filters
        }
    })
}

pub fn listener(name: &str, hcm: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [hcm]}]
    })
}

pub fn cluster(name: &str, addr: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}]}]}
    })
}

pub fn bootstrap(
    node: serde_json::Value,
    listeners: Vec<serde_json::Value>,
    clusters: Vec<serde_json::Value>,
) -> String {
    serde_json::json!({
        "node": node,
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
    .to_string()
}

/// The route table an Istio VirtualService with a decision-header match produces.
pub fn reviews_routes(
    canary_cluster: &str,
    stable_cluster: &str,
    other_cluster: &str,
) -> serde_json::Value {
    serde_json::json!({
        "name": "outbound",
        "virtual_hosts": [
            canary_virtual_host(
                "reviews",
                &REVIEWS_HOSTS,
                DEFAULT_DECISION_HEADER,
                canary_cluster,
                stable_cluster
            ),
            {"name": "other", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": other_cluster}}]}
        ]
    })
}

/// The virtual host a decision-header VirtualService produces for one service: `hosts` (with
/// any port) go to `canary_cluster` when `decision_header` is `canary`, else to
/// `stable_cluster`.
pub fn canary_virtual_host(
    name: &str,
    hosts: &[&str],
    decision_header: &str,
    canary_cluster: &str,
    stable_cluster: &str,
) -> serde_json::Value {
    let domains: Vec<String> = hosts
        .iter()
        .flat_map(|h| [h.to_string(), format!("{h}:*")])
        .collect();
    serde_json::json!({"name": name, "domains": domains, "routes": [
        {"name": "canary",
         "match": {"prefix": "/", "headers": [{"name": decision_header, "string_match": {"exact": "canary"}}]},
         "route": {"cluster": canary_cluster}},
        {"name": "stable", "match": {"prefix": "/"}, "route": {"cluster": stable_cluster}}
    ]})
}

/// A client sidecar (listener `outbound`) running the filter with `plugin_config` given in its
/// bootstrap (no ECDS), routing by `route_config` to `clusters`.
pub fn start_client_sidecar(
    plugin_config: &str,
    route_config: serde_json::Value,
    clusters: Vec<serde_json::Value>,
    wasm: &Path,
) -> anyhow::Result<Envoy> {
    let filter = serde_json::json!([{
        "name": FILTER_NAME,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": wasm_plugin_config(wasm, plugin_config)
        }
    }]);
    let config = bootstrap(
        serde_json::json!({"id": "productpage", "cluster": "productpage"}),
        vec![listener(
            "outbound",
            http_connection_manager("outbound", route_config, filter),
        )],
        clusters,
    );
    Envoy::start("client", &config, &EnvoyOptions::default(), |_| Ok(()))
}

/// A server-side sidecar for one version: node metadata carries the pod's labels.
pub fn start_server_sidecar(
    version: &str,
    hash: Option<&str>,
    app: SocketAddr,
    wasm: &Path,
) -> anyhow::Result<Envoy> {
    let mut labels = serde_json::json!({"app": "reviews", "version": version});
    if let Some(h) = hash {
        labels["rollouts-pod-template-hash"] = serde_json::Value::from(h);
    }
    let filter = serde_json::json!([{
        "name": FILTER_NAME,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": wasm_plugin_config(wasm, r#"{"mode":"server"}"#)
        }
    }]);
    let routes = serde_json::json!({"name": "inbound", "virtual_hosts": [{"name": "app", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]});
    let config = bootstrap(
        serde_json::json!({"id": format!("reviews-{version}"), "cluster": "reviews", "metadata": {"LABELS": labels}}),
        vec![listener(
            "inbound",
            http_connection_manager("inbound", routes, filter),
        )],
        vec![cluster("app", app)],
    );
    Envoy::start(
        &format!("sidecar-{version}"),
        &config,
        &EnvoyOptions::default(),
        |_| Ok(()),
    )
}

/// The whole mesh. Dropping it stops every process and thread it started.
pub struct Mesh {
    pub client: Envoy,
    pub client_addr: SocketAddr,
    pub stable_sidecar: Envoy,
    pub canary_sidecar: Envoy,
    pub stable: App,
    pub canary: App,
    pub details: App,
    wasm: PathBuf,
    version: AtomicU64,
}

/// What Envoy did with a pushed config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Accepted,
    Rejected,
}

impl Mesh {
    /// Starts the mesh with `plugin_config` as the client filter's initial config.
    pub fn start(plugin_config: &str) -> anyhow::Result<Mesh> {
        let wasm = crate::filter_wasm()?;
        let stable = App::start("stable")?;
        let canary = App::start("canary")?;
        let details = App::start("details")?;
        let stable_sidecar = start_server_sidecar("stable", Some(STABLE_HASH), stable.addr, &wasm)?;
        let canary_sidecar = start_server_sidecar("canary", Some(CANARY_HASH), canary.addr, &wasm)?;
        let filter = serde_json::json!([{
            "name": FILTER_NAME,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {"path": format!("{{dir}}/{FILTER_NAME}.json"), "watched_directory": {"path": "{dir}"}},
                    "resource_api_version": "V3"
                },
                "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]
            }
        }]);
        let config = bootstrap(
            serde_json::json!({"id": "productpage", "cluster": "productpage"}),
            vec![listener(
                "outbound",
                http_connection_manager(
                    "outbound",
                    reviews_routes("reviews-canary", "reviews-stable", "details"),
                    filter,
                ),
            )],
            vec![
                cluster("reviews-stable", stable_sidecar.listener("inbound")?),
                cluster("reviews-canary", canary_sidecar.listener("inbound")?),
                cluster("details", details.addr),
            ],
        );
        let initial = ecds_resource(&wasm, plugin_config, 1);
        let client = Envoy::start("client", &config, &EnvoyOptions::default(), |dir| {
            fs::write(dir.join(format!("{FILTER_NAME}.json")), &initial)
                .context("writing the ECDS file")
        })?;
        let client_addr = client.listener("outbound")?;
        Ok(Mesh {
            client,
            client_addr,
            stable_sidecar,
            canary_sidecar,
            stable,
            canary,
            details,
            wasm,
            version: AtomicU64::new(1),
        })
    }

    fn ecds_stat(&self, which: &str) -> String {
        format!("extension_config_discovery.http_filter.{FILTER_NAME}.{which}")
    }

    /// Pushes a new pluginConfig the way istiod would (atomic replace of the watched ECDS file)
    /// and waits until Envoy has accepted or rejected it.
    pub fn push_config(&self, plugin_config: &str) -> anyhow::Result<Push> {
        // Each update ends in exactly one of these; a rejected one may also count a reload.
        let outcomes = || {
            let stats = self
                .client
                .stats(&format!(
                    "extension_config_discovery.http_filter.{FILTER_NAME}.update_"
                ))
                .unwrap_or_default();
            let get = |k: &str| stats.get(&self.ecds_stat(k)).copied().unwrap_or(0);
            (
                get("update_success"),
                get("update_rejected") + get("update_failure"),
            )
        };
        let (ok_before, bad_before) = outcomes();
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        let dir = self.client.dir.path();
        let tmp = dir.join(format!(".{FILTER_NAME}.json.tmp"));
        fs::write(&tmp, ecds_resource(&self.wasm, plugin_config, version))?;
        fs::rename(&tmp, dir.join(format!("{FILTER_NAME}.json")))?;
        let start = std::time::Instant::now();
        loop {
            let (ok, bad) = outcomes();
            if bad > bad_before {
                return Ok(Push::Rejected);
            }
            if ok > ok_before {
                return Ok(Push::Accepted);
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(10),
                "config push not seen by Envoy within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A keep-alive client to the client sidecar.
    pub fn http(&self) -> crate::http::Client {
        crate::http::Client::new(self.client_addr)
    }
}
