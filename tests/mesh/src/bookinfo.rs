//! The seed's Bookinfo shape in a real mesh: a caller (productpage) and `reviews` pods of
//! several versions, each pod a small app behind its own server-side sidecar, plus the
//! manifests a user applies from `wasm-plugin/`. More of Bookinfo's services (`ratings`, say)
//! can be laid out next to `reviews`, called from the same caller.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use canary_cluster::ControlPlane;
use kube::Client;
use serde_json::{json, Value};
use wasm_canary_e2e::app::App;
use wasm_canary_e2e::envoy::Envoy;

use crate::objects;
use crate::sidecar::{self, Pod};
use crate::Istiod;

/// The port of Service `reviews` (Bookinfo's), which the caller's outbound listener binds
/// on the caller's own loopback address.
pub const REVIEWS_PORT: u16 = 9080;

/// The port of every Bookinfo Service (`reviews`, `ratings`, `details`, `productpage`): the
/// caller's one outbound listener on it carries them all, and its route picks the Service by
/// `Host`, as in a cluster.
pub const BOOKINFO_PORT: u16 = REVIEWS_PORT;

/// The `Host` a caller uses for Bookinfo Service `service`: `ratings:9080`.
pub fn host(service: &str) -> String {
    format!("{service}:{BOOKINFO_PORT}")
}

/// The label that gives each proxy its own `Sidecar` resource (and so its own address).
pub const POD_LABEL: &str = "wasm-canary.io/pod";

/// One `reviews` pod: its app, its sidecar, its pod-template hash.
pub struct ReviewsPod {
    pub pod: Pod,
    pub version: String,
    pub hash: String,
    pub app: App,
    pub sidecar: Envoy,
}

/// A running Bookinfo slice. Dropping it stops every sidecar and app it started (the API
/// objects go with the test's namespace or control plane).
pub struct Bookinfo {
    pub namespace: String,
    pub caller: Envoy,
    pub caller_pod: Pod,
    /// Where requests from "productpage" to `reviews` enter the caller's sidecar (and to every
    /// other Bookinfo Service: they share [`BOOKINFO_PORT`]; the `Host` picks the Service).
    pub caller_addr: SocketAddr,
    pub reviews: Vec<ReviewsPod>,
    /// Where further pods of this mesh get their addresses (see [`crate::kubelet`]).
    pub subnet: std::sync::Arc<Subnet>,
}

/// The stable version the user's manifests in `wasm-plugin/` name (their pluginConfig's and
/// DestinationRule's hashes).
pub const MANIFEST_STABLE: Version<'static> = Version {
    version: "stable",
    hash: "6c9f8d5b7d",
};
/// The canary version the user's manifests in `wasm-plugin/` name.
pub const MANIFEST_CANARY: Version<'static> = Version {
    version: "canary",
    hash: "84b7c6f5d9",
};

/// A version of `reviews` to run: its `version` label and `rollouts-pod-template-hash`.
#[derive(Debug, Clone, Copy)]
pub struct Version<'a> {
    pub version: &'a str,
    pub hash: &'a str,
}

impl Bookinfo {
    /// Lays out namespace `ns` (Service `reviews`, a WorkloadEntry and a `Sidecar` per pod),
    /// then starts one `reviews` pod per entry of `versions` and the caller, and waits until
    /// the caller's sidecar has its outbound listener for `reviews`.
    pub async fn start(
        plane: &ControlPlane,
        client: &Client,
        istiod: &Istiod,
        ns: &str,
        versions: &[Version<'_>],
    ) -> anyhow::Result<Bookinfo> {
        Self::start_with_services(plane, client, istiod, ns, &[], versions).await
    }

    /// [`Bookinfo::start`] with more of Bookinfo's Services next to `reviews` (`ratings`,
    /// say: [`apply_service`]), laid out before the caller starts, so its first route already
    /// names them all. Their pods come from a [`crate::kubelet::MeshKubelet`] each.
    pub async fn start_with_services(
        plane: &ControlPlane,
        client: &Client,
        istiod: &Istiod,
        ns: &str,
        more_services: &[&str],
        versions: &[Version<'_>],
    ) -> anyhow::Result<Bookinfo> {
        plane.create_namespace(client, ns).await?;
        let subnet = std::sync::Arc::new(Subnet::pick()?);
        apply_service(client, ns, "reviews").await?;
        for service in more_services {
            apply_service(client, ns, service).await?;
        }

        let mut reviews = Vec::new();
        for (i, v) in versions.iter().enumerate() {
            let name = format!("reviews-{}-{i}", v.version);
            let pod = Pod {
                labels: labels(&[
                    ("app", "reviews"),
                    ("version", v.version),
                    ("rollouts-pod-template-hash", v.hash),
                    (POD_LABEL, &name),
                ]),
                name,
                namespace: ns.to_owned(),
                ip: subnet.allocate()?,
            };
            let app = App::start(v.version)?;
            register_server_pod(client, &pod, app.addr).await?;
            reviews.push((pod, *v, app));
        }
        let caller_pod = Pod {
            name: "productpage-0".to_owned(),
            namespace: ns.to_owned(),
            labels: labels(&[
                ("app", "productpage"),
                ("version", "v1"),
                (POD_LABEL, "productpage-0"),
            ]),
            ip: subnet.allocate()?,
        };
        objects::apply(
            client,
            ns,
            &json!({
                "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                "metadata": {"name": caller_pod.name},
                "spec": {
                    "workloadSelector": {"labels": {POD_LABEL: caller_pod.name}},
                    "egress": [{"bind": caller_pod.ip.to_string(), "captureMode": "NONE", "hosts": ["./*"]}]
                }
            }),
        )
        .await?;

        let mut pods = Vec::new();
        for (pod, v, app) in reviews {
            let sidecar = sidecar::start(istiod.grpc, &pod)
                .with_context(|| format!("starting the sidecar of {}", pod.name))?;
            pods.push(ReviewsPod {
                pod,
                version: v.version.to_owned(),
                hash: v.hash.to_owned(),
                app,
                sidecar,
            });
        }
        let caller =
            sidecar::start(istiod.grpc, &caller_pod).context("starting the caller's sidecar")?;
        let caller_addr = SocketAddr::from((caller_pod.ip, REVIEWS_PORT));
        let bookinfo = Bookinfo {
            namespace: ns.to_owned(),
            caller,
            caller_pod,
            caller_addr,
            reviews: pods,
            subnet,
        };
        bookinfo.wait_for_caller_listener(Duration::from_secs(60))?;
        Ok(bookinfo)
    }

    fn wait_for_caller_listener(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect_timeout(&self.caller_addr, Duration::from_secs(1))
                .is_ok()
            {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "the caller's sidecar has no listener on {} after {timeout:?}; log tail:\n{}",
                self.caller_addr,
                self.caller.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50)); // polling interval
        }
    }

    /// A keep-alive client into the caller's sidecar (as productpage calling `reviews`, or any
    /// Service laid out here with `Host:` [`host`]).
    pub fn http(&self) -> wasm_canary_e2e::http::Client {
        wasm_canary_e2e::http::Client::new(self.caller_addr)
    }
}

/// Bookinfo's Service `name` in `ns`: selector `app: <name>`, port [`BOOKINFO_PORT`]. Its
/// endpoints are the WorkloadEntries of its pods (see [`register_server_pod`]).
pub async fn apply_service(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    objects::apply(
        client,
        ns,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": BOOKINFO_PORT, "targetPort": BOOKINFO_PORT}]}
        }),
    )
    .await
}

/// A user's manifests from `wasm-plugin/` for namespace `ns`, with the WasmPlugins' `url`
/// pointing at `wasm` on this machine (`file://`, as on a node with the module baked in).
pub fn user_manifests(wasm: &Path, ns: &str) -> anyhow::Result<Vec<Value>> {
    let dir = wasm_canary_e2e::workspace_root().join("wasm-plugin");
    let mut out = Vec::new();
    for file in [
        "destinationrule.yaml",
        "virtualservice.yaml",
        "client-wasmplugin.yaml",
        "server-wasmplugin.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file))
            .with_context(|| format!("reading wasm-plugin/{file}"))?;
        let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| anyhow::anyhow!("parsing wasm-plugin/{file}: {e}"))?;
        for mut d in documents.into_iter().filter(|d| !d.is_null()) {
            d["metadata"]["namespace"] = Value::from(ns);
            if d["kind"] == "WasmPlugin" {
                d["spec"]["url"] = Value::from(format!("file://{}", wasm.display()));
            }
            out.push(d);
        }
    }
    Ok(out)
}

/// What a server pod needs in the API: a WorkloadEntry at its address with its labels (so
/// istiod puts it among `reviews`' endpoints) and a `Sidecar` binding its inbound listener to
/// that address and forwarding to the app.
pub async fn register_server_pod(
    client: &Client,
    pod: &Pod,
    app: SocketAddr,
) -> anyhow::Result<()> {
    let ip = pod.ip.to_string();
    objects::apply(
        client,
        &pod.namespace,
        &json!({
            "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": pod.name},
            "spec": {"address": ip, "labels": pod.labels, "serviceAccount": "default"}
        }),
    )
    .await?;
    objects::apply(
        client,
        &pod.namespace,
        &json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": pod.name},
            "spec": {
                "workloadSelector": {"labels": {POD_LABEL: pod.name}},
                "ingress": [{
                    "port": {"number": REVIEWS_PORT, "protocol": "HTTP", "name": "http"},
                    "bind": ip,
                    "defaultEndpoint": app.to_string(),
                    "captureMode": "NONE"
                }],
                // Outbound listeners would bind this address too; a server pod calls nothing.
                "egress": [{"bind": ip, "captureMode": "NONE", "hosts": ["istio-system/*"]}]
            }
        }),
    )
    .await
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Loopback addresses for the pods of one mesh: a /24 of 127.0.0.0/8 picked at random (another
/// test may run its own mesh), handed out in order, each checked free on [`REVIEWS_PORT`].
#[derive(Debug)]
pub struct Subnet {
    prefix: [u8; 3],
    next: std::sync::atomic::AtomicU8,
}

impl Subnet {
    /// Picks a /24 where the first addresses have [`REVIEWS_PORT`] free.
    pub fn pick() -> anyhow::Result<Subnet> {
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        for attempt in 0..50u64 {
            let x = seed
                .wrapping_add(attempt)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let prefix = [127, 100 + ((x >> 40) % 100) as u8, ((x >> 20) % 256) as u8];
            let free = (1..=8).all(|i| {
                TcpListener::bind((
                    Ipv4Addr::new(prefix[0], prefix[1], prefix[2], i),
                    REVIEWS_PORT,
                ))
                .is_ok()
            });
            if free {
                return Ok(Subnet {
                    prefix,
                    next: std::sync::atomic::AtomicU8::new(1),
                });
            }
        }
        anyhow::bail!("no loopback /24 with port {REVIEWS_PORT} free after 50 tries")
    }

    /// The next address whose [`REVIEWS_PORT`] is free.
    pub fn allocate(&self) -> anyhow::Result<Ipv4Addr> {
        loop {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            anyhow::ensure!(i < 255, "loopback subnet exhausted");
            let ip = Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], i);
            if TcpListener::bind((ip, REVIEWS_PORT)).is_ok() {
                return Ok(ip);
            }
        }
    }
}
