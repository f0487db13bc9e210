//! The filter in a real Istio mesh: istiod reads the user's manifests (`wasm-plugin/`) from a
//! real kube-apiserver and pushes them to Envoy sidecars; requests go into the caller's sidecar
//! as productpage's would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use canary_cluster::ControlPlane;
use canary_mesh::bookinfo::{user_manifests, Version, MANIFEST_CANARY, MANIFEST_STABLE};
use canary_mesh::{eventually, objects, Bookinfo, Istiod};
use wasm_canary_e2e::assert_binomial;

/// The hashes in `wasm-plugin/` (the user's example pluginConfig and DestinationRule).
const STABLE: Version = MANIFEST_STABLE;
const CANARY: Version = MANIFEST_CANARY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_manifests_in_a_real_mesh_route_testers_to_canary_and_tag_every_response() {
    let plane = ControlPlane::start().await.unwrap();
    let client = plane.client().await.unwrap();
    let istiod = Istiod::start(&plane, &client).await.unwrap();
    let ns = "bookinfo";
    let mesh = Bookinfo::start(&plane, &client, &istiod, ns, &[STABLE, CANARY])
        .await
        .unwrap();
    let wasm = wasm_canary_e2e::filter_wasm().unwrap();
    for object in user_manifests(&wasm, ns).unwrap() {
        objects::apply(&client, ns, &object).await.unwrap();
    }

    // istiod pushes the two WasmPlugins to the caller and to the reviews pods independently:
    // the mesh is ready once a tester's request reaches canary (the caller's filter) and comes
    // back tagged by the canary pod's filter, and a user's comes back tagged by stable's.
    let mut http = mesh.http();
    let tagged = |r: &wasm_canary_e2e::http::Response, v: &Version| {
        r.status == 200
            && r.header("x-app-version") == Some(v.version)
            && r.header("x-rollouts-pod-template-hash") == Some(v.hash)
    };
    eventually(
        "the filters running in every sidecar",
        Duration::from_secs(60),
        || {
            let tester = http
                .get("reviews:9080", "/", &[("x-canary", "always")])
                .ok()?;
            let user = http
                .get("reviews:9080", "/", &[("x-user-id", "u-stable")])
                .ok()?;
            (tagged(&tester, &CANARY) && tagged(&user, &STABLE)).then_some(())
        },
    );
    // From then on, every tester reaches canary.
    for _ in 0..50 {
        let r = http
            .get("reviews:9080", "/", &[("x-canary", "always")])
            .unwrap();
        assert!(tagged(&r, &CANARY), "a tester on canary: {r:?}");
    }

    // Users: the example config sends 50 bp (0.5%) to canary; a client-sent decision header is
    // not trusted. Every response is tagged by the pod that served it.
    let n = 4_000u64;
    let mut canary = 0u64;
    for i in 0..n {
        let forged = [("x-canary-subset", "canary")];
        let headers: &[(&str, &str)] = if i % 2 == 0 { &forged } else { &[] };
        let r = http.get("reviews:9080", "/", headers).unwrap();
        assert_eq!(r.status, 200, "request {i}");
        let served = r.header("x-app-version").unwrap();
        let tag = r.header("x-rollouts-pod-template-hash");
        match served {
            "canary" => {
                canary += 1;
                assert_eq!(tag, Some(CANARY.hash));
            }
            "stable" => assert_eq!(tag, Some(STABLE.hash)),
            other => panic!("served by {other}"),
        }
    }
    assert_binomial(canary, n, 0.005, "users at the manifest's 50 bp");
}
