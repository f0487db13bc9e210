//! A real Apache SkyWalking OAP server (the pinned `server-starter` of `tests/oap/pom.xml`, from
//! `make oap-build`) with the project's own minimal configuration (`tests/oap/config`): H2 in
//! memory, GraphQL query, the trace receiver, one OAL line (`service_apdex`). Every listener is
//! on 127.0.0.1 at free ports; started and awaited (GraphQL answering) by [`Oap::start`], killed
//! when dropped. Fed with SkyWalking segments over HTTP ([`Oap::send_segments`]), or by Envoy
//! access logs (ALS) on its gRPC port ([`AlsGateway`]), as the seed's mesh feeds it.
#![allow(dead_code, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Start to GraphQL answering: 12-26 s measured here; generous for a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// The OAP version `tests/oap/pom.xml` pins.
pub fn oap_version() -> String {
    let pom = std::fs::read_to_string(workspace().join("tests/oap/pom.xml")).unwrap_or_default();
    pom.split("<skywalking.version>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap_or("unknown")
        .to_owned()
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running OAP. Dropping it kills the JVM.
pub struct Oap {
    child: Child,
    dir: tempfile::TempDir,
    /// The REST port: GraphQL (`/graphql`) and the segment receiver (`/v3/segments`).
    pub rest: SocketAddr,
    /// The gRPC port: Envoy's access log service (ALS), analysed by `mx-mesh`.
    pub grpc: SocketAddr,
}

impl Drop for Oap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Oap {
    /// Starts OAP writing what it aggregated to storage every `persistent_period` (OAP's
    /// `core.persistentPeriod`: a minute reads 0 until then; 25 s by default).
    pub fn start(persistent_period: Duration) -> Oap {
        let lib = workspace()
            .join("build/oap")
            .join(oap_version())
            .join("lib");
        assert!(
            lib.join(format!("server-starter-{}.jar", oap_version()))
                .exists(),
            "{} has no OAP: run `make oap-build`",
            lib.display()
        );
        let config = workspace().join("tests/oap/config");
        let dir = tempfile::Builder::new().prefix("oap-").tempdir().unwrap();
        let [rest, grpc] = canary_cluster::ports::free_loopback_ports::<2>().unwrap();
        let log = std::fs::File::create(dir.path().join("oap.log")).unwrap();
        let child = Command::new("java")
            .args(["-Xms256m", "-Xmx1g", "-XX:+UseSerialGC"])
            // Native libraries the JVM unpacks (brotli4j, netty) go in this OAP's folder, which
            // the test removes, not in /tmp.
            .arg(format!("-Djava.io.tmpdir={}", dir.path().display()))
            .arg("-cp")
            .arg(format!("{}:{}/*", config.display(), lib.display()))
            .arg("org.apache.skywalking.oap.server.starter.OAPServerStartUp")
            .current_dir(dir.path())
            .env("SW_CORE_REST_PORT", rest.to_string())
            .env("SW_CORE_GRPC_PORT", grpc.to_string())
            .env(
                "SW_CORE_PERSISTENT_PERIOD",
                persistent_period.as_secs().max(1).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting java (OpenJDK 17): {e}"));
        let mut oap = Oap {
            child,
            dir,
            rest: SocketAddr::from(([127, 0, 0, 1], rest)),
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
        };
        let start = Instant::now();
        loop {
            if let Some(status) = oap.child.try_wait().unwrap() {
                panic!(
                    "OAP exited during start-up ({status}):\n{}",
                    oap.log_tail(40)
                );
            }
            if oap
                .graphql("{ version }")
                .is_some_and(|v| v["data"]["version"].is_string())
            {
                return oap;
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "OAP not answering GraphQL after {START_TIMEOUT:?}:\n{}",
                oap.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(250)); // polling interval
        }
    }

    /// `http://127.0.0.1:<rest>`: what an AnalysisTemplate's `skywalking.address` names.
    pub fn url(&self) -> String {
        format!("http://{}", self.rest)
    }

    /// Runs a GraphQL query; the answer, if OAP gave one.
    pub fn graphql(&self, query: &str) -> Option<Value> {
        self.post("/graphql", &json!({"query": query}))
            .and_then(|body| serde_json::from_str(&body).ok())
    }

    fn post(&self, path: &str, body: &Value) -> Option<String> {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect_timeout(&self.rest, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let body = body.to_string();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nhost: oap\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    }

    /// Reports one request per entry of `latencies_ms` to `service` (an entry span each, ending
    /// at `end`, epoch milliseconds), as SkyWalking agents report segments.
    pub fn send_segments(&self, service: &str, latencies_ms: &[u64], end: i64) {
        let segments: Vec<Value> = latencies_ms
            .iter()
            .enumerate()
            .map(|(i, latency)| {
                let id = format!("{end}-{i}-{}", std::process::id());
                json!({
                    "traceId": id, "traceSegmentId": id,
                    "service": service, "serviceInstance": "pod-1",
                    "spans": [{
                        "operationName": "/reviews", "spanId": 0, "parentSpanId": -1,
                        "startTime": end - i64::try_from(*latency).unwrap_or(0), "endTime": end,
                        "spanType": "Entry", "spanLayer": "Http", "componentId": 1,
                        "isError": false, "peer": ""
                    }]
                })
            })
            .collect();
        assert!(
            self.post("/v3/segments", &Value::Array(segments)).is_some(),
            "OAP refused segments:\n{}",
            self.log_tail(20)
        );
    }

    /// The end of OAP's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("oap.log")).unwrap_or_default();
        wasm_canary_e2e::tail(&log, lines)
    }
}

/// An Envoy in front of a version's app, as the seed's mesh has a proxy there, sending its
/// access logs to OAP (ALS): node id `router~...` (the role OAP's `mx-mesh` analyzer makes
/// service metrics for), node metadata naming the service (`service.istio.io/canonical-*`
/// labels, namespace, cluster), and a filter-state object in each entry (`mx-mesh` skips an
/// entry without one). OAP names the service `<revision>|<service>|<namespace>|cluster-1|-`.
pub struct AlsGateway {
    pub envoy: wasm_canary_e2e::envoy::Envoy,
    pub app: wasm_canary_e2e::app::App,
    /// Where requests enter the gateway.
    pub addr: SocketAddr,
}

impl AlsGateway {
    /// Starts `revision`'s app (answering after `latency`) behind a gateway logging to `oap`.
    pub fn start(oap: &Oap, namespace: &str, revision: &str, latency: Duration) -> AlsGateway {
        let app = wasm_canary_e2e::app::App::start(revision).unwrap();
        app.set_delay(latency);
        let node_id =
            format!("router~127.0.0.1~gw-{revision}.{namespace}~{namespace}.svc.cluster.local");
        let cluster = |name: &str, addr: SocketAddr, http2: bool| {
            let mut c = json!({
                "name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}]}]}
            });
            if http2 {
                c["typed_extension_protocol_options"] = json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                });
            }
            c
        };
        let bootstrap = json!({
            "node": {"id": node_id, "cluster": format!("gw.{namespace}"), "metadata": {
                "NAME": format!("gw-{revision}"), "NAMESPACE": namespace, "CLUSTER_ID": "cluster-1",
                "LABELS": {"service.istio.io/canonical-name": "reviews",
                           "service.istio.io/canonical-revision": revision}
            }},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "in",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "in",
                            "access_log": [{"name": "envoy.access_loggers.http_grpc", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
                                "common_config": {
                                    "log_name": "als", "transport_api_version": "V3",
                                    "grpc_service": {"envoy_grpc": {"cluster_name": "oap"}},
                                    "filter_state_objects_to_log": ["wasmcanary.gateway"]
                                }
                            }}],
                            "http_filters": [
                                {"name": "envoy.filters.http.set_filter_state", "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
                                    "on_request_headers": [{"object_key": "wasmcanary.gateway", "factory_key": "envoy.string",
                                        "format_string": {"text_format_source": {"inline_string": "reviews"}}}]
                                }},
                                {"name": "envoy.filters.http.router", "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                            ],
                            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                                {"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "30s"}}
                            ]}]}
                        }
                    }]}]
                }],
                "clusters": [cluster("oap", oap.grpc, true), cluster("app", app.addr, false)]
            }
        });
        let options = wasm_canary_e2e::envoy::EnvoyOptions {
            service_node: Some(node_id),
            ..wasm_canary_e2e::envoy::EnvoyOptions::default()
        };
        let envoy = wasm_canary_e2e::envoy::Envoy::start(
            &format!("gw-{revision}"),
            &bootstrap.to_string(),
            &options,
            |_| Ok(()),
        )
        .unwrap();
        let addr = envoy.listener("in").unwrap();
        AlsGateway { envoy, app, addr }
    }
}
