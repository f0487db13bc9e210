//! The Envoys `make bench` compares: the same listener and route table, with and without a wasm
//! filter, and the native weighted routing Argo Rollouts + Istio use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use wasm_canary_e2e::envoy::{Envoy, EnvoyOptions};
use wasm_canary_e2e::mesh::{bootstrap, cluster, listener, wasm_plugin_config, FILTER_NAME};

/// The service every benchmark request addresses (one of the services in [`realistic_config`]).
pub const TARGET_SERVICE: usize = 7;
/// How many services the realistic config covers.
pub const SERVICES: usize = 20;
/// The service counts of the scale variants: (c1) and (c200).
pub const FEW_SERVICES: usize = 1;
pub const MANY_SERVICES: usize = 200;
/// The host of variant (u): a service no rollout covers (the config is (c)'s).
pub const UNCOVERED_HOST: &str = "catalog.ns.svc.cluster.local";
/// Canary share for the target service (basis points) and for `weighted_clusters` (percent).
pub const CANARY_WEIGHT_BP: u32 = 1_000;
pub const CANARY_PERCENT: u32 = 10;
/// The decision header the routes match on (the filter's default).
pub const DECISION_HEADER: &str = "x-canary-subset";
/// The listener every variant serves on.
pub const LISTENER: &str = "bench";

/// The request headers of every benchmark request, to every variant. A `user-agent` and a
/// `cookie` are present so the regex and cookie header routes really run their matchers, and
/// none of them matches: every header route is evaluated (worst case), and there is no sticky
/// key, so the weight draw decides.
pub fn request_headers(host: String) -> Vec<(&'static str, String)> {
    vec![
        ("Host", host),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) bench/1".to_owned(),
        ),
        ("Cookie", "session=4f2a9c; theme=dark; lang=en".to_owned()),
        ("Accept", "*/*".to_owned()),
    ]
}

/// The benchmark request as the filter sees it: wrk's headers under Envoy's names, plus the
/// pseudo-headers and the headers the connection manager adds before filters run.
pub fn envoy_request_headers(host: String) -> Vec<(String, String)> {
    let mut out = vec![
        (":authority".to_owned(), host),
        (":path".to_owned(), "/".to_owned()),
        (":method".to_owned(), "GET".to_owned()),
        (":scheme".to_owned(), "http".to_owned()),
    ];
    out.extend(
        request_headers(target_host())
            .into_iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v)),
    );
    out.push(("x-forwarded-proto".to_owned(), "http".to_owned()));
    out.push((
        "x-request-id".to_owned(),
        "8c1f3f4e-2b7d-4a59-9c1e-5d0a6b7e8f90".to_owned(),
    ));
    out
}

/// `Host` of the benchmark requests: the longest form of the target service's hosts.
pub fn target_host() -> String {
    format!("svc-{TARGET_SERVICE}.ns.svc.cluster.local")
}

/// The client-mode `pluginConfig` of variant (c): `services` services (20 in (c)) with 4 host
/// forms each, 2 or 3 header routes each (exact, prefix, regex, cookie, in rotation), a sticky
/// header and pod hashes, as a mesh with many rollouts would carry (no optional hash header
/// unless `BENCH_HASH_HEADER` is set). Service [`TARGET_SERVICE`] is always one of them: a
/// one-service config holds only it.
pub fn realistic_config(services: usize, write_stable_decision: bool) -> String {
    let indices: Vec<usize> = if services <= TARGET_SERVICE {
        (0..services.saturating_sub(1))
            .chain([TARGET_SERVICE])
            .collect()
    } else {
        (0..services).collect()
    };
    let services: Vec<serde_json::Value> = indices
        .into_iter()
        .map(|i| {
            let name = format!("svc-{i}");
            let all_routes = [
                serde_json::json!({"name": "exact", "match": [{"header": "x-canary", "value": {"exact": format!("svc-{i}")}}]}),
                serde_json::json!({"name": "prefix", "match": [{"header": "x-team", "value": {"prefix": "qa-"}}]}),
                serde_json::json!({"name": "regex", "match": [{"header": "user-agent", "value": {"regex": ".*CanaryTester/[0-9]+.*"}}]}),
                serde_json::json!({"name": "cookie", "match": [{"cookie": "canary", "value": {"exact": "yes"}}]}),
            ];
            // Services alternate between 3 routes and 2; the target (7, odd) has 3 including the
            // regex and the cookie, the two that cost the most.
            let routes: Vec<serde_json::Value> = if i % 2 == 1 {
                vec![all_routes[0].clone(), all_routes[2].clone(), all_routes[3].clone()]
            } else {
                vec![all_routes[0].clone(), all_routes[1].clone()]
            };
            serde_json::json!({
                "name": format!("ns/{name}"),
                "hosts": [name.clone(), format!("{name}.ns"), format!("{name}.ns.svc"), format!("{name}.ns.svc.cluster.local")],
                "canaryWeight": if i == TARGET_SERVICE { CANARY_WEIGHT_BP } else { 2_500 },
                "stableHash": format!("{:010x}", 0x006c_9f8d_5b00_u64 + i as u64),
                "canaryHash": format!("{:010x}", 0x0084_b7c6_f500_u64 + i as u64),
                "headerRoutes": routes,
                "sticky": {"header": "x-user-id"}
            })
        })
        .collect();
    let mut config = serde_json::json!({"mode": "client", "services": services});
    if write_stable_decision {
        config["writeStableDecision"] = true.into();
    }
    // The optional hash header costs one more header write (a host call) per request; the
    // default config has none. BENCH_HASH_HEADER=1 measures it.
    if std::env::var_os("BENCH_HASH_HEADER").is_some() {
        config["hashHeader"] = "x-canary-pod-template-hash".into();
    }
    config.to_string()
}

/// What answers the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The route answers itself (`direct_response`): only Envoy's own request path is measured.
    Direct,
    /// The route proxies to a second Envoy (`direct_response`), as a sidecar proxies to a pod.
    Upstream,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Upstream => "upstream",
        }
    }
}

/// The configurations compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// (a) No filter.
    NoFilter,
    /// (b) A wasm filter that does nothing.
    NoopWasm,
    /// (c) Our filter, client mode, realistic config (20 services).
    Canary,
    /// (c') The same with `writeStableDecision: true` (stable decisions are written too).
    CanaryWriteAll,
    /// (d) Envoy's native weighted routing, no filter.
    NativeWeighted,
    /// (c1) Our filter with a one-service config.
    CanaryOneService,
    /// (c200) Our filter with a 200-service config (one filter for every rollout of a big mesh).
    CanaryManyServices,
    /// (u) (c)'s filter and config, the request addressing a host no service covers.
    Uncovered,
}

impl Variant {
    pub const ALL: [Variant; 8] = [
        Variant::NoFilter,
        Variant::NoopWasm,
        Variant::Canary,
        Variant::CanaryWriteAll,
        Variant::NativeWeighted,
        Variant::CanaryOneService,
        Variant::CanaryManyServices,
        Variant::Uncovered,
    ];

    pub fn letter(self) -> &'static str {
        match self {
            Self::NoFilter => "a",
            Self::NoopWasm => "b",
            Self::Canary => "c",
            Self::CanaryWriteAll => "c'",
            Self::NativeWeighted => "d",
            Self::CanaryOneService => "c1",
            Self::CanaryManyServices => "c200",
            Self::Uncovered => "u",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::NoFilter => "no filter",
            Self::NoopWasm => "no-op wasm",
            Self::Canary => "wasm-canary",
            Self::CanaryWriteAll => "wasm-canary, stable written too",
            Self::NativeWeighted => "native weighted",
            Self::CanaryOneService => "wasm-canary, 1 service",
            Self::CanaryManyServices => "wasm-canary, 200 services",
            Self::Uncovered => "wasm-canary, uncovered host",
        }
    }

    /// The `Host` of this variant's requests.
    pub fn host(self) -> String {
        match self {
            Self::Uncovered => UNCOVERED_HOST.to_owned(),
            _ => target_host(),
        }
    }

    /// Whether the filter decides this variant's requests (its decision counters move).
    pub fn decides(self) -> bool {
        matches!(
            self,
            Self::Canary | Self::CanaryWriteAll | Self::CanaryOneService | Self::CanaryManyServices
        )
    }

    /// The variant a letter names (`--variants`).
    pub fn from_letter(letter: &str) -> Option<Variant> {
        Self::ALL.into_iter().find(|v| v.letter() == letter)
    }
}

/// The two wasm modules.
#[derive(Debug, Clone)]
pub struct Modules {
    pub canary: PathBuf,
    pub noop: PathBuf,
}

fn direct(body: &str) -> serde_json::Value {
    serde_json::json!({"status": 200, "body": {"inline_string": body}})
}

fn on_decision_header(subset: &str) -> serde_json::Value {
    serde_json::json!({"prefix": "/", "headers": [{"name": DECISION_HEADER, "string_match": {"exact": subset}}]})
}

/// The routes of one variant. (a), (b) and (c) share one table, the one the VirtualService of a
/// decision-header canary produces (canary on the header, stable by default), so that their
/// difference is the filter alone. (d) draws natively: `weighted_clusters` to two clusters in
/// upstream mode; in direct mode, where there is no cluster to weigh, a `runtime_fraction`
/// route match (the same per-request random draw in Envoy's router, ahead of a direct answer).
fn routes(mode: Mode, variant: Variant) -> serde_json::Value {
    let routes = match (mode, variant) {
        (Mode::Direct, Variant::NativeWeighted) => serde_json::json!([
            {"name": "canary",
             "match": {"prefix": "/", "runtime_fraction": {"default_value": {"numerator": CANARY_PERCENT, "denominator": "HUNDRED"}, "runtime_key": "bench.canary_percent"}},
             "direct_response": direct("canary")},
            {"name": "stable", "match": {"prefix": "/"}, "direct_response": direct("stable")}
        ]),
        (Mode::Direct, _) => serde_json::json!([
            {"name": "canary", "match": on_decision_header("canary"), "direct_response": direct("canary")},
            {"name": "stable", "match": {"prefix": "/"}, "direct_response": direct("stable")}
        ]),
        (Mode::Upstream, Variant::NativeWeighted) => serde_json::json!([
            {"name": "weighted", "match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "stable", "weight": 100 - CANARY_PERCENT},
                {"name": "canary", "weight": CANARY_PERCENT}
            ]}}}
        ]),
        (Mode::Upstream, _) => serde_json::json!([
            {"name": "canary", "match": on_decision_header("canary"), "route": {"cluster": "canary"}},
            {"name": "stable", "match": {"prefix": "/"}, "route": {"cluster": "stable"}}
        ]),
    };
    serde_json::json!({"name": "bench", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]})
}

fn wasm_filter(wasm: &Path, plugin_config: &str) -> serde_json::Value {
    serde_json::json!({
        "name": FILTER_NAME,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": wasm_plugin_config(wasm, plugin_config)
        }
    })
}

fn http_connection_manager(
    route_config: serde_json::Value,
    mut filters: Vec<serde_json::Value>,
) -> serde_json::Value {
    filters.push(serde_json::json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    serde_json::json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": LISTENER,
            "route_config": route_config,
            "http_filters": filters
        }
    })
}

/// Starts the Envoy under test for `variant`, pinned as `options` says. `upstream` is the
/// listener of the upstream Envoy (upstream mode only).
pub fn start_under_test(
    mode: Mode,
    variant: Variant,
    modules: &Modules,
    upstream: Option<SocketAddr>,
    options: &EnvoyOptions,
) -> anyhow::Result<Envoy> {
    let filters = match variant {
        Variant::NoFilter | Variant::NativeWeighted => vec![],
        Variant::NoopWasm => vec![wasm_filter(&modules.noop, "")],
        Variant::Canary | Variant::Uncovered => {
            vec![wasm_filter(
                &modules.canary,
                &realistic_config(SERVICES, false),
            )]
        }
        Variant::CanaryWriteAll => {
            vec![wasm_filter(
                &modules.canary,
                &realistic_config(SERVICES, true),
            )]
        }
        Variant::CanaryOneService => {
            vec![wasm_filter(
                &modules.canary,
                &realistic_config(FEW_SERVICES, false),
            )]
        }
        Variant::CanaryManyServices => {
            vec![wasm_filter(
                &modules.canary,
                &realistic_config(MANY_SERVICES, false),
            )]
        }
    };
    let clusters = match upstream {
        Some(addr) => vec![cluster("stable", addr), cluster("canary", addr)],
        None => vec![],
    };
    let config = bootstrap(
        serde_json::json!({"id": format!("bench-{}", variant.letter().replace('\'', "-write-all")), "cluster": "bench"}),
        vec![listener(
            LISTENER,
            http_connection_manager(routes(mode, variant), filters),
        )],
        clusters,
    );
    Envoy::start(
        &format!(
            "bench-{}-{}",
            mode.as_str(),
            variant.letter().replace('\'', "-write-all")
        ),
        &config,
        options,
        |_| Ok(()),
    )
}

/// The upstream of upstream mode: an Envoy that answers every request itself.
pub fn start_upstream(options: &EnvoyOptions) -> anyhow::Result<Envoy> {
    let routes = serde_json::json!({"name": "app", "virtual_hosts": [{"name": "app", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "direct_response": direct("ok")}]}]});
    let config = bootstrap(
        serde_json::json!({"id": "bench-upstream", "cluster": "upstream"}),
        vec![listener("app", http_connection_manager(routes, vec![]))],
        vec![],
    );
    Envoy::start("bench-upstream", &config, options, |_| Ok(()))
}
