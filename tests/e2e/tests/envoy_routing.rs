//! What a user of the mesh sees when the filter routes: the split, header routes, stickiness,
//! untrusted client headers, and the version tag on every response. Real Envoys, real filter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use canary_core::{sticky_bucket, sticky_bucket_bytes};
use wasm_canary_e2e::app::App;
use wasm_canary_e2e::envoy::Envoy;
use wasm_canary_e2e::http::{run_load, Client};
use wasm_canary_e2e::mesh::{
    canary_virtual_host, cluster, reviews_config, start_client_sidecar, start_server_sidecar, Mesh,
    Push, CANARY_HASH, STABLE_HASH,
};
use wasm_canary_e2e::{assert_binomial, filter_wasm};

const LOAD_DEADLINE: Duration = Duration::from_secs(60);

fn no_headers(_: u64) -> Vec<(String, String)> {
    Vec::new()
}

#[test]
fn weighted_split_matches_the_configured_weight_at_0_half_percent_20_and_100() {
    let mesh = Mesh::start(&reviews_config(0)).unwrap();
    // (weight in basis points, requests): n is chosen so each check has real power; at 0.5%
    // 20,000 requests give a mean of 100 canary responses, accepted 55..=152 (exact binomial,
    // false alarms 1e-6).
    for (weight, n) in [
        (0u32, 2_000u64),
        (50, 20_000),
        (2_000, 5_000),
        (10_000, 2_000),
    ] {
        assert_eq!(
            mesh.push_config(&reviews_config(weight)).unwrap(),
            Push::Accepted
        );
        let report = run_load(
            mesh.client_addr,
            "reviews:9080",
            n,
            8,
            LOAD_DEADLINE,
            no_headers,
        );
        assert_eq!(report.sent, n, "load finished within its deadline");
        assert_eq!(report.non_2xx(), 0, "at {weight} bp: {report:?}");
        let canary = report.version("canary");
        assert_eq!(canary + report.version("stable"), n);
        match weight {
            0 => assert_eq!(canary, 0, "weight 0 sends no one to canary"),
            10_000 => assert_eq!(canary, n, "weight 100% sends everyone to canary"),
            w => assert_binomial(
                canary,
                n,
                f64::from(w) / 10_000.0,
                &format!("canary share at {w} bp"),
            ),
        }
    }
}

#[test]
fn header_routes_reach_canary_at_weight_zero_and_near_misses_do_not() {
    let mesh = Mesh::start(&reviews_config(0)).unwrap();
    let mut http = mesh.http();
    let forced: [&[(&str, &str)]; 5] = [
        &[("x-canary", "always")],
        &[("x-team", "qa-payments")],
        &[("user-agent", "Mozilla/5.0 CanaryTester/7 (X11)")],
        &[("cookie", "theme=dark; canary=yes")],
        &[("x-canary", "always"), ("x-user-id", "u-1")],
    ];
    for headers in forced {
        for _ in 0..20 {
            let r = http
                .get("reviews.bookinfo.svc.cluster.local:9080", "/", headers)
                .unwrap();
            assert_eq!(r.header("x-app-version"), Some("canary"), "{headers:?}");
        }
    }
    let near_misses: [&[(&str, &str)]; 5] = [
        &[("x-canary", "Always")],
        &[("x-team", "dev-qa-")],
        &[("user-agent", "CanaryTester/x")],
        &[("cookie", "canary=no; notcanary=yes")],
        &[],
    ];
    for headers in near_misses {
        for _ in 0..20 {
            let r = http.get("reviews:9080", "/", headers).unwrap();
            assert_eq!(r.header("x-app-version"), Some("stable"), "{headers:?}");
        }
    }
    // The filter publishes its decision counts once a second (and when a config is replaced).
    let counted = mesh
        .client
        .wait_for_stat(
            "wasmcustom.wasmcanary.decision.bookinfo_reviews.canary.header_route",
            Duration::from_secs(5),
            |n| n >= 100,
        )
        .unwrap();
    assert_eq!(
        counted, 100,
        "every header-routed request is counted by reason"
    );
}

#[test]
fn a_user_keeps_their_version_and_canary_users_stay_canary_as_the_weight_grows() {
    let mesh = Mesh::start(&reviews_config(1_000)).unwrap();
    let users: Vec<String> = (0..1_000).map(|i| format!("user-{i}")).collect();
    let versions_at = |mesh: &Mesh| -> Vec<String> {
        let mut http = mesh.http();
        users
            .iter()
            .map(|u| {
                let first = http.get("reviews", "/", &[("x-user-id", u)]).unwrap();
                let v = first.header("x-app-version").unwrap().to_owned();
                for _ in 0..2 {
                    let again = http.get("reviews", "/", &[("x-user-id", u)]).unwrap();
                    assert_eq!(
                        again.header("x-app-version"),
                        Some(v.as_str()),
                        "{u} changed version at a fixed weight"
                    );
                }
                v
            })
            .collect()
    };
    let at_10: Vec<String> = versions_at(&mesh);
    let canary_at_10: HashSet<&String> = users
        .iter()
        .zip(&at_10)
        .filter(|(_, v)| *v == "canary")
        .map(|(u, _)| u)
        .collect();
    assert_binomial(
        canary_at_10.len() as u64,
        users.len() as u64,
        0.10,
        "sticky users on canary at 10%",
    );

    assert_eq!(
        mesh.push_config(&reviews_config(3_000)).unwrap(),
        Push::Accepted
    );
    let at_30 = versions_at(&mesh);
    let canary_at_30: HashSet<&String> = users
        .iter()
        .zip(&at_30)
        .filter(|(_, v)| *v == "canary")
        .map(|(u, _)| u)
        .collect();
    assert!(
        canary_at_10.is_subset(&canary_at_30),
        "every user on canary at 10% is still on canary at 30%"
    );
    assert_binomial(
        canary_at_30.len() as u64,
        users.len() as u64,
        0.30,
        "sticky users on canary at 30%",
    );
}

#[test]
fn a_client_sent_decision_header_does_not_choose_the_version() {
    let mesh = Mesh::start(&reviews_config(0)).unwrap();
    let mut http = mesh.http();
    for _ in 0..50 {
        let r = http
            .get(
                "reviews:9080",
                "/",
                &[
                    ("x-canary-subset", "canary"),
                    ("x-canary-pod-template-hash", CANARY_HASH),
                ],
            )
            .unwrap();
        assert_eq!(r.header("x-app-version"), Some("stable"));
        assert_eq!(
            r.header("x-seen-x-canary-subset"),
            Some("stable"),
            "overwritten, not appended"
        );
        assert_eq!(
            r.header("x-seen-x-canary-pod-template-hash"),
            Some(STABLE_HASH)
        );
    }
    // A host not under canary: the header is removed before routing and never reaches upstream.
    let r = http
        .get("details:9080", "/", &[("x-canary-subset", "canary")])
        .unwrap();
    assert_eq!(r.header("x-app-version"), Some("details"));
    assert_eq!(r.header("x-seen-x-canary-subset"), None);
}

#[test]
fn every_response_carries_the_serving_versions_pod_template_hash() {
    let mesh = Mesh::start(&reviews_config(5_000)).unwrap();
    let mut http = mesh.http();
    let mut seen = HashSet::new();
    for i in 0..200 {
        // A client cannot fake it either: the serving sidecar overwrites it.
        let r = http
            .get(
                "reviews",
                "/",
                &[("x-rollouts-pod-template-hash", &format!("fake-{i}"))],
            )
            .unwrap();
        let expected = match r.header("x-app-version") {
            Some("stable") => STABLE_HASH,
            Some("canary") => CANARY_HASH,
            other => panic!("unexpected version {other:?}"),
        };
        assert_eq!(
            r.header("x-rollouts-pod-template-hash"),
            Some(expected),
            "response tag"
        );
        assert_eq!(
            r.header("x-seen-x-rollouts-pod-template-hash"),
            Some(expected),
            "request tag the app saw"
        );
        seen.insert(expected);
    }
    assert_eq!(seen.len(), 2, "both versions answered at 50%");
}

/// Header values are bytes on the wire; a client can send ones that are not UTF-8. The filter
/// must not crash its VM on them (a crash would fail requests open or closed for everyone):
/// such a value matches no header route, and the request is decided like any other (a sticky
/// key decides by its bytes; at weight 0 that is stable too).
#[test]
fn header_values_that_are_not_utf8_do_not_break_the_filter() {
    let mesh = Mesh::start(&reviews_config(0)).unwrap();
    let mut http = mesh.http();
    for (name, value) in [
        ("x-user-id", &b"\xff\xfe-user"[..]),
        ("x-canary", &b"alw\xc3ays"[..]),
        ("cookie", &b"canary=\xffyes"[..]),
        ("user-agent", &b"\x80CanaryTester/1"[..]),
    ] {
        for _ in 0..10 {
            let r = http.get_raw("reviews:9080", "/", &[(name, value)]).unwrap();
            assert_eq!(r.status, 200, "{name}");
            assert_eq!(
                r.header("x-app-version"),
                Some("stable"),
                "{name}: a value that is not text matches no route"
            );
        }
    }
    // The VM is still alive and deciding: a proper header route still works afterwards.
    let r = http.get("reviews", "/", &[("x-canary", "always")]).unwrap();
    assert_eq!(
        r.header("x-app-version"),
        Some("canary"),
        "the filter still routes after the odd values"
    );
}

/// By default only `canary` is written: stable requests pass with no decision header (the
/// default route is stable), which saves a header write on most requests. Routing is the same,
/// and a client-sent header is still overwritten. `writeStableDecision: true` writes both.
#[test]
fn only_canary_decisions_are_written_by_default_and_client_headers_are_still_overwritten() {
    let mesh = Mesh::start(&reviews_config(2_000)).unwrap();
    let n = 4_000;
    let report = run_load(
        mesh.client_addr,
        "reviews:9080",
        n,
        8,
        LOAD_DEADLINE,
        no_headers,
    );
    assert_eq!(report.non_2xx(), 0);
    assert_binomial(
        report.version("canary"),
        n,
        0.20,
        "canary share at 20% without stable writes",
    );
    let mut http = mesh.http();
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let r = http.get("reviews", "/", &[]).unwrap();
        let version = r.header("x-app-version").unwrap().to_owned();
        let header = r.header("x-seen-x-canary-subset").map(str::to_owned);
        match version.as_str() {
            "stable" => assert_eq!(header, None, "no header written for stable"),
            _ => assert_eq!(header.as_deref(), Some("canary")),
        }
        seen.insert(version);
    }
    assert_eq!(seen.len(), 2);

    let mut write_all: serde_json::Value = serde_json::from_str(&reviews_config(2_000)).unwrap();
    write_all["writeStableDecision"] = true.into();
    assert_eq!(
        mesh.push_config(&write_all.to_string()).unwrap(),
        Push::Accepted
    );
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let r = http.get("reviews", "/", &[]).unwrap();
        let version = r.header("x-app-version").unwrap().to_owned();
        assert_eq!(
            r.header("x-seen-x-canary-subset"),
            Some(version.as_str()),
            "with writeStableDecision every decision reaches upstream"
        );
        seen.insert(version);
    }
    assert_eq!(seen.len(), 2);
    for _ in 0..50 {
        let r = http
            .get(
                "reviews",
                "/",
                &[
                    ("x-canary-subset", "canary"),
                    ("x-user-id", "stable-user-0"),
                ],
            )
            .unwrap();
        let version = r.header("x-app-version").unwrap();
        assert_eq!(
            r.header("x-seen-x-canary-subset"),
            Some(version),
            "a client-sent header is overwritten with the decision"
        );
    }
}

/// The reviews config with a sticky cookie instead of the sticky header.
fn cookie_sticky_config(weight: u32) -> String {
    let mut config: serde_json::Value = serde_json::from_str(&reviews_config(weight)).unwrap();
    config["services"][0]["sticky"] = serde_json::json!({"cookie": "session"});
    config.to_string()
}

/// Sticky by cookie, end to end: a session cookie among others decides, every request of that
/// session gets the same version, the version is the one the documented bucket predicts, and
/// raising the weight only moves sessions onto canary.
#[test]
fn a_session_cookie_keeps_its_version_and_canary_sessions_stay_canary_as_the_weight_grows() {
    let mesh = Mesh::start(&cookie_sticky_config(1_000)).unwrap();
    let sessions: Vec<String> = (0..300).map(|i| format!("sess-{i:04}")).collect();
    let versions_at = |mesh: &Mesh, weight: u32| -> HashSet<String> {
        let mut http = mesh.http();
        let mut on_canary = HashSet::new();
        for session in &sessions {
            let cookie = format!("theme=dark; session={session}; lang=en");
            let expected = if sticky_bucket("bookinfo/reviews", session) < weight {
                "canary"
            } else {
                "stable"
            };
            for _ in 0..3 {
                let r = http.get("reviews", "/", &[("cookie", &cookie)]).unwrap();
                assert_eq!(
                    r.header("x-app-version"),
                    Some(expected),
                    "{session} at {weight} bp"
                );
            }
            if expected == "canary" {
                on_canary.insert(session.clone());
            }
        }
        on_canary
    };
    let at_10 = versions_at(&mesh, 1_000);
    assert_binomial(
        at_10.len() as u64,
        sessions.len() as u64,
        0.10,
        "sessions on canary at 10%",
    );
    assert_eq!(
        mesh.push_config(&cookie_sticky_config(3_000)).unwrap(),
        Push::Accepted
    );
    let at_30 = versions_at(&mesh, 3_000);
    assert!(
        at_10.is_subset(&at_30),
        "every session on canary at 10% is still on canary at 30%"
    );
    assert!(at_30.len() > at_10.len(), "30% moved more sessions");
}

/// Over HTTP/1.1 a client may split its cookies over several `Cookie` lines, and Envoy passes
/// them to the filter as separate headers: a session cookie in a later line still keeps its
/// version (it is not redrawn per request), and a header-route cookie there still forces canary.
#[test]
fn cookies_in_a_later_cookie_line_are_read() {
    let mesh = Mesh::start(&cookie_sticky_config(5_000)).unwrap();
    let mut http = mesh.http();
    let mut stable_session = None;
    for i in 0..40 {
        let session = format!("sess-{i:04}");
        let expected = if sticky_bucket("bookinfo/reviews", &session) < 5_000 {
            "canary"
        } else {
            stable_session.get_or_insert_with(|| session.clone());
            "stable"
        };
        let cookie = format!("session={session}");
        for _ in 0..5 {
            let r = http
                .get(
                    "reviews",
                    "/",
                    &[("cookie", "theme=dark"), ("cookie", &cookie)],
                )
                .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-app-version"), Some(expected), "{session}");
        }
    }
    let cookie = format!("session={}", stable_session.unwrap());
    for _ in 0..5 {
        let r = http
            .get(
                "reviews",
                "/",
                &[("cookie", &cookie), ("cookie", "canary=yes")],
            )
            .unwrap();
        assert_eq!(
            r.header("x-app-version"),
            Some("canary"),
            "the header-route cookie in the second line beats the session's stable bucket"
        );
    }
}

/// A session cookie decides by its bytes: a byte that is not UTF-8 in another cookie (same line
/// or another) does not hide it, and a session value that is not UTF-8 is still sticky.
#[test]
fn a_session_cookie_decides_by_its_bytes_whatever_the_other_cookies_hold() {
    let mesh = Mesh::start(&cookie_sticky_config(5_000)).unwrap();
    let mut http = mesh.http();
    for i in 0..20 {
        let session = format!("sess-{i:04}");
        let expected = if sticky_bucket("bookinfo/reviews", &session) < 5_000 {
            "canary"
        } else {
            "stable"
        };
        let same_line = [b"theme=\xff\xfe; session=", session.as_bytes()].concat();
        let own_line = [b"session=", session.as_bytes()].concat();
        for _ in 0..3 {
            for headers in [
                vec![("cookie", &same_line[..])],
                vec![("cookie", &b"theme=\xff"[..]), ("cookie", &own_line[..])],
            ] {
                let r = http.get_raw("reviews", "/", &headers).unwrap();
                assert_eq!(r.status, 200);
                assert_eq!(r.header("x-app-version"), Some(expected), "{headers:?}");
            }
        }
        let raw_key = [b"\xff\xfe", session.as_bytes()].concat();
        let expected = if sticky_bucket_bytes("bookinfo/reviews", &raw_key) < 5_000 {
            "canary"
        } else {
            "stable"
        };
        let cookie = [&b"session="[..], &raw_key].concat();
        for _ in 0..3 {
            let r = http
                .get_raw("reviews", "/", &[("cookie", &cookie[..])])
                .unwrap();
            assert_eq!(r.header("x-app-version"), Some(expected), "{cookie:?}");
        }
    }
}

/// The hash header (`hashHeader`) is the filter's, like the decision header: on a host the
/// filter does not cover, a client-sent one is removed before it reaches the upstream.
#[test]
fn a_client_sent_hash_header_is_removed_on_hosts_the_filter_does_not_cover() {
    let mesh = Mesh::start(&reviews_config(0)).unwrap();
    let mut http = mesh.http();
    for headers in [
        &[("x-canary-pod-template-hash", CANARY_HASH)][..],
        &[
            ("x-canary-pod-template-hash", CANARY_HASH),
            ("x-canary-subset", "canary"),
        ],
    ] {
        let r = http.get("details:9080", "/", headers).unwrap();
        assert_eq!(r.header("x-app-version"), Some("details"));
        assert_eq!(
            r.header("x-seen-x-canary-pod-template-hash"),
            None,
            "{headers:?}"
        );
        assert_eq!(r.header("x-seen-x-canary-subset"), None, "{headers:?}");
    }
    // Other client headers pass untouched: only the filter's own are removed.
    let r = http
        .get("details", "/", &[("x-canary-pod-template-hash-other", "1")])
        .unwrap();
    assert_eq!(
        r.header("x-seen-x-canary-pod-template-hash-other"),
        Some("1")
    );
}

/// A server-side sidecar whose pod has no usable `rollouts-pod-template-hash` label (absent,
/// empty, or not a label value) still serves every request; it writes no version tag, removes a
/// forged one so neither the app nor the client sees a version this pod did not state, and says
/// why in Envoy's log.
#[test]
fn a_pod_without_a_valid_hash_label_is_served_untagged_and_forged_tags_are_removed() {
    let wasm = filter_wasm().unwrap();
    let pods = [
        ("unlabelled", None, "no rollouts-pod-template-hash label"),
        ("empty", Some(""), "no rollouts-pod-template-hash label"),
        (
            "odd",
            Some("6c9f8d5b7d\r\nx-injected: yes"),
            "is not a Kubernetes label value",
        ),
    ];
    // All sidecars first: Envoy writes its log file in batches, so the log checks at the end
    // wait for the three at once.
    let sidecars: Vec<(App, Envoy)> = pods
        .iter()
        .map(|(name, label, _)| {
            let app = App::start(name).unwrap();
            let sidecar = start_server_sidecar(name, *label, app.addr, &wasm).unwrap();
            (app, sidecar)
        })
        .collect();
    for ((name, _, _), (_, sidecar)) in pods.iter().zip(&sidecars) {
        let mut http = Client::new(sidecar.listener("inbound").unwrap());
        for i in 0..20 {
            let r = http
                .get(
                    "reviews",
                    "/",
                    &[("x-rollouts-pod-template-hash", &format!("forged-{i}"))],
                )
                .unwrap();
            assert_eq!(r.status, 200, "{name}: served");
            assert_eq!(r.header("x-app-version"), Some(*name));
            assert_eq!(
                r.header("x-rollouts-pod-template-hash"),
                None,
                "{name}: no tag on the response"
            );
            assert_eq!(
                r.header("x-seen-x-rollouts-pod-template-hash"),
                None,
                "{name}: the app saw no tag, forged or not"
            );
            assert_eq!(r.header("x-seen-x-injected"), None, "{name}");
        }
        // One plugin instance per thread; each takes the config (a missing tag is no reason
        // to refuse it).
        assert!(
            sidecar.stat("wasmcustom.wasmcanary.config_accepted") >= 1
                && sidecar.stat("wasmcustom.wasmcanary.config_rejected") == 0,
            "{name}: the config itself is fine"
        );
    }
    for ((name, _, why), (_, sidecar)) in pods.iter().zip(&sidecars) {
        sidecar
            .wait_for_log(why, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !sidecar.log().contains("panic"),
            "{name}: {}",
            sidecar.log_tail(20)
        );
    }
}

/// One rollout of [`three_rollouts_config`]: a service, how clients address it, its weight and
/// the header its VirtualService routes on.
struct Rollout {
    service: &'static str,
    /// The short host; the config also lists `<host>.<ns>`, `.svc` and `.svc.cluster.local`.
    host: &'static str,
    namespace: &'static str,
    weight_bp: u32,
    decision_header: &'static str,
    /// Requests to the host for each split check. At 1e-6 false alarms the accepted share is
    /// within ~2.7 points of 10% at 3,000 requests and ~5.5 points of 50% at 2,000: a service
    /// decided with another's weight, or forced by a forged header, fails.
    requests: u64,
}

impl Rollout {
    fn hosts(&self) -> Vec<String> {
        let (h, ns) = (self.host, self.namespace);
        vec![
            h.to_owned(),
            format!("{h}.{ns}"),
            format!("{h}.{ns}.svc"),
            format!("{h}.{ns}.svc.cluster.local"),
        ]
    }
    /// The value of `x-canary` that is this rollout's header route.
    fn tester_value(&self) -> String {
        format!("tester-{}", self.host)
    }
    fn version(&self, subset: &str) -> String {
        format!("{}-{subset}", self.host)
    }
}

/// Three rollouts side by side; the last routes on its own decision header.
const ROLLOUTS: [Rollout; 3] = [
    Rollout {
        service: "bookinfo/reviews",
        host: "reviews",
        namespace: "bookinfo",
        weight_bp: 1_000,
        decision_header: "x-canary-subset",
        requests: 3_000,
    },
    Rollout {
        service: "bookinfo/ratings",
        host: "ratings",
        namespace: "bookinfo",
        weight_bp: 0,
        decision_header: "x-canary-subset",
        requests: 1_000,
    },
    Rollout {
        service: "shop/cart",
        host: "cart",
        namespace: "shop",
        weight_bp: 5_000,
        decision_header: "x-cart-subset",
        requests: 2_000,
    },
];

/// The client filter's config as the controller composes it from the three rollouts: one
/// entry per service, keyed by name, each with its own weight, header route and (for `cart`)
/// decision header.
fn three_rollouts_config() -> String {
    let services: serde_json::Map<String, serde_json::Value> = ROLLOUTS
        .iter()
        .map(|r| {
            let mut entry = serde_json::json!({
                "hosts": r.hosts(),
                "canaryWeight": r.weight_bp,
                "headerRoutes": [{"name": "tester", "match": [{"header": "x-canary", "value": {"exact": r.tester_value()}}]}]
            });
            if r.decision_header != canary_core::config::DEFAULT_DECISION_HEADER {
                entry["decisionHeader"] = r.decision_header.into();
            }
            (r.service.to_owned(), entry)
        })
        .collect();
    serde_json::json!({"services": services}).to_string()
}

/// Several rollouts in one filter, as one caller sees them: each service gets its own split,
/// each header route sends to canary only the service it belongs to, `cart`'s decision goes
/// into its own header (the one its VirtualService routes on), and decision headers a client
/// sends choose nothing on any host.
#[test]
fn three_rollouts_in_one_filter_each_get_their_own_split_and_header_route() {
    let wasm = filter_wasm().unwrap();
    let mut apps = Vec::new();
    let mut clusters = Vec::new();
    let mut virtual_hosts = Vec::new();
    for r in &ROLLOUTS {
        for subset in ["stable", "canary"] {
            let app = App::start(&r.version(subset)).unwrap();
            clusters.push(cluster(&r.version(subset), app.addr));
            apps.push(app);
        }
        let hosts = r.hosts();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        virtual_hosts.push(canary_virtual_host(
            r.host,
            &hosts,
            r.decision_header,
            &r.version("canary"),
            &r.version("stable"),
        ));
    }
    let other = App::start("other").unwrap();
    clusters.push(cluster("other", other.addr));
    virtual_hosts.push(serde_json::json!({"name": "other", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "other"}}]}));
    let routes = serde_json::json!({"name": "outbound", "virtual_hosts": virtual_hosts});
    let client = start_client_sidecar(&three_rollouts_config(), routes, clusters, &wasm).unwrap();
    let addr = client.listener("outbound").unwrap();

    // Splits, the three hosts loaded at once from the one caller; then again with every
    // request carrying `canary` in both decision headers, which must change nothing.
    let forged = |_| {
        vec![
            ("x-canary-subset".to_owned(), "canary".to_owned()),
            ("x-cart-subset".to_owned(), "canary".to_owned()),
        ]
    };
    for (what, headers) in [
        (
            "plain",
            &no_headers as &(dyn Fn(u64) -> Vec<(String, String)> + Sync),
        ),
        ("forged decision headers", &forged),
    ] {
        let reports: Vec<_> = std::thread::scope(|s| {
            let loads: Vec<_> = ROLLOUTS
                .iter()
                .map(|r| {
                    let host = format!("{}.{}.svc.cluster.local:9080", r.host, r.namespace);
                    s.spawn(move || run_load(addr, &host, r.requests, 4, LOAD_DEADLINE, headers))
                })
                .collect();
            loads.into_iter().map(|l| l.join().unwrap()).collect()
        });
        for (r, report) in ROLLOUTS.iter().zip(&reports) {
            assert_eq!(report.non_2xx(), 0, "{} ({what}): {report:?}", r.host);
            let canary = report.version(&r.version("canary"));
            assert_eq!(
                canary + report.version(&r.version("stable")),
                r.requests,
                "{} ({what}): every request served by one of its own versions: {report:?}",
                r.host
            );
            match r.weight_bp {
                0 => assert_eq!(canary, 0, "{} ({what}) at 0%: nobody on canary", r.host),
                w => assert_binomial(
                    canary,
                    r.requests,
                    f64::from(w) / 10_000.0,
                    &format!("{} ({what}) canary share at {w} bp", r.host),
                ),
            }
        }
    }

    // Header routes: a rollout's route forces canary on its own service; on another service
    // the request is decided by that service's weight (checked binomially, 0% exactly).
    let mut http = Client::new(addr);
    for target in &ROLLOUTS {
        for route_of in &ROLLOUTS {
            let value = route_of.tester_value();
            let n = if route_of.host == target.host {
                20
            } else {
                400
            };
            let mut canary = 0;
            for _ in 0..n {
                let r = http.get(target.host, "/", &[("x-canary", &value)]).unwrap();
                let version = r.header("x-app-version").unwrap_or("none").to_owned();
                if version == target.version("canary") {
                    canary += 1;
                    assert_eq!(
                        r.header(&format!("x-seen-{}", target.decision_header)),
                        Some("canary"),
                        "{}: the decision is written into the header its routes match",
                        target.host
                    );
                } else {
                    assert_eq!(version, target.version("stable"), "{}", target.host);
                }
            }
            let what = format!("{} with {}'s header route", target.host, route_of.host);
            match (route_of.host == target.host, target.weight_bp) {
                (true, _) => assert_eq!(canary, n, "{what}: always canary"),
                (false, 0) => assert_eq!(canary, 0, "{what}: never canary at 0%"),
                (false, w) => assert_binomial(canary, n, f64::from(w) / 10_000.0, &what),
            }
        }
    }

    // Every decision header of the config is the filter's: a forged one reaches no upstream.
    // On a covered host the service's own is overwritten with the decision and the others
    // are removed; on any other host all are removed.
    for (host, own) in [
        ("cart", Some("x-cart-subset")),
        ("ratings.bookinfo", Some("x-canary-subset")),
        ("other", None),
    ] {
        for _ in 0..20 {
            let r = http
                .get(
                    host,
                    "/",
                    &[("x-canary-subset", "canary"), ("x-cart-subset", "canary")],
                )
                .unwrap();
            let version = r.header("x-app-version").unwrap_or("none");
            let subset = version.rsplit('-').next();
            for header in ["x-canary-subset", "x-cart-subset"] {
                let expected = if own == Some(header) { subset } else { None };
                assert_eq!(
                    r.header(&format!("x-seen-{header}")),
                    expected,
                    "{host} served by {version}: {header}"
                );
            }
        }
    }
}
