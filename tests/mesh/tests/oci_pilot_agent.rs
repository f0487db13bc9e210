//! The real image path: the image `make oci` builds, pushed to a local OCI registry, named by a
//! WasmPlugin `url: oci://...` with its `sha256`, pulled by **pilot-agent** (in the pod's own
//! network and mount namespaces), checked against the digest, and run by the Envoy it manages.
//! Requests go into that caller's sidecar as productpage's would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use canary_cluster::ControlPlane;
use canary_mesh::agent::{AgentPod, Reach};
use canary_mesh::bookinfo::{
    user_manifests, Version, MANIFEST_CANARY, MANIFEST_STABLE, POD_LABEL, REVIEWS_PORT,
};
use canary_mesh::registry::{built_layout, Registry};
use canary_mesh::sidecar::Pod;
use canary_mesh::{eventually, objects, Bookinfo, Istiod};
use serde_json::json;
use wasm_canary_e2e::assert_binomial;
use wasm_canary_e2e::http::{Client as Http, Response};

/// The hashes in `wasm-plugin/` (the user's example pluginConfig and DestinationRule).
const STABLE: Version = MANIFEST_STABLE;
const CANARY: Version = MANIFEST_CANARY;
/// The client WasmPlugin of `wasm-plugin/client-wasmplugin.yaml`.
const CLIENT_PLUGIN: &str = "reviews-canary-client";
/// A module fetch and an istiod push on a loaded 2-core machine.
const PUSH: Duration = Duration::from_secs(60);

fn served_by(r: &Response, v: &Version) -> bool {
    r.status == 200
        && r.header("x-app-version") == Some(v.version)
        && r.header("x-rollouts-pod-template-hash") == Some(v.hash)
}

fn tester(http: &mut Http) -> Option<Response> {
    http.get("reviews:9080", "/", &[("x-canary", "always")])
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pilot_agent_pulls_the_filter_image_from_a_registry_checks_its_digest_and_envoy_runs_it() {
    let registry = Registry::start().unwrap();
    let (layout, tag) = built_layout().unwrap();
    let image = registry
        .push_layout(&layout, &tag, "wasm-canary/filter")
        .unwrap();

    let plane = ControlPlane::start().await.unwrap();
    let client = plane.client().await.unwrap();
    let istiod = Istiod::start(&plane, &client).await.unwrap();
    let ns = "bookinfo";
    let mesh = Bookinfo::start(&plane, &client, &istiod, ns, &[STABLE, CANARY])
        .await
        .unwrap();
    // The user's manifests, the client WasmPlugin as a user with a registry writes it. The
    // reviews pods' Envoys here have no pilot-agent: their server WasmPlugin stays `file://`.
    let wasm = wasm_canary_e2e::filter_wasm().unwrap();
    for mut object in user_manifests(&wasm, ns).unwrap() {
        if object["metadata"]["name"] == CLIENT_PLUGIN {
            object["spec"]["url"] = json!(image.url);
            object["spec"]["sha256"] = json!(image.digest);
        }
        objects::apply(&client, ns, &object).await.unwrap();
    }

    let pod = Pod {
        name: "productpage-agent-0".to_owned(),
        namespace: ns.to_owned(),
        labels: [
            ("app", "productpage"),
            ("version", "v1"),
            (POD_LABEL, "productpage-agent-0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ip: mesh.subnet.allocate().unwrap(),
    };
    let listener = SocketAddr::from((pod.ip, REVIEWS_PORT));
    let reach = Reach {
        out: mesh
            .reviews
            .iter()
            .map(|r| SocketAddr::from((r.pod.ip, REVIEWS_PORT)))
            .collect(),
        into: vec![listener],
        insecure_registries: vec![registry.addr],
    };
    let caller = AgentPod::start_caller(&client, &istiod, pod, reach)
        .await
        .unwrap();
    caller.wait_for_listener(listener, PUSH).unwrap();
    let mut http = Http::new(caller.outside(listener).unwrap());

    // A tester reaches canary once pilot-agent has pulled the module and Envoy runs it; the
    // stable pod's own filter (its own ECDS stream) tags a user's response.
    eventually(
        "a tester on canary through the pulled filter, a user tagged by stable",
        PUSH,
        || {
            let tester = tester(&mut http)?;
            let user = http.get("reviews:9080", "/", &[]).ok()?;
            (served_by(&tester, &CANARY) && served_by(&user, &STABLE)).then_some(())
        },
    );
    // What ran is the image's module, byte for byte, pulled from the registry and named by the
    // manifest digest the WasmPlugin gave.
    let cached = caller.cached_modules();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(
        cached[0].file_name().unwrap().to_str().unwrap(),
        format!("{}.wasm", image.digest)
    );
    assert!(
        std::fs::read(&cached[0]).unwrap() == std::fs::read(&wasm).unwrap(),
        "the pulled module is not the built one"
    );
    let log = registry.log();
    assert!(
        log.contains(&format!("GET /v2/wasm-canary/filter/manifests/{tag}")),
        "no manifest pull in the registry's log:\n{log}"
    );
    let ecds = wasm_canary_e2e::http::admin_get(caller.admin, "/config_dump?resource=ecds_filters")
        .unwrap();
    assert!(
        ecds.body.contains("/var/lib/istio/data/")
            && ecds.body.contains(&format!("{}.wasm", image.digest)),
        "Envoy's ECDS config does not name the pulled file:\n{}",
        ecds.body
    );

    // Users at the manifest's 50 bp; a client-sent decision header is not trusted.
    let n = 2_000u64;
    let mut canary = 0u64;
    for i in 0..n {
        let r = http
            .get("reviews:9080", "/", &[("x-canary-subset", "canary")])
            .unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        if served_by(&r, &CANARY) {
            canary += 1;
        } else {
            assert!(served_by(&r, &STABLE), "request {i}: {r:?}");
        }
    }
    assert_binomial(
        canary,
        n,
        0.005,
        "users at 50 bp with a forged decision header",
    );

    // A wrong digest: pilot-agent refuses the module and says why. The manifest's
    // `failStrategy: FAIL_OPEN` makes Istio put an allow-all filter in its place: requests keep
    // flowing, undecided, so the VirtualService's default (stable) serves them, testers too.
    let plugins: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource {
            group: "extensions.istio.io".into(),
            version: "v1alpha1".into(),
            api_version: "extensions.istio.io/v1alpha1".into(),
            kind: "WasmPlugin".into(),
            plural: "wasmplugins".into(),
        },
    );
    let wrong = "0".repeat(64);
    let set_digest = |digest: String| {
        let plugins = plugins.clone();
        async move {
            plugins
                .patch(
                    CLIENT_PLUGIN,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(json!({"spec": {"sha256": digest}})),
                )
                .await
                .unwrap();
        }
    };
    set_digest(wrong.clone()).await;
    eventually("pilot-agent refusing the wrong digest", PUSH, || {
        caller
            .log()
            .contains(&format!(
                "has checksum {}, which does not match: {wrong}",
                image.digest
            ))
            .then_some(())
    });
    eventually("the filter out of the caller's path", PUSH, || {
        tester(&mut http).filter(|r| served_by(r, &STABLE))
    });
    for i in 0..200 {
        let r = tester(&mut http).unwrap();
        assert!(
            served_by(&r, &STABLE),
            "request {i} without the filter: {r:?}"
        );
    }

    // The right digest again: the module is back and testers reach canary.
    set_digest(image.digest.clone()).await;
    eventually("a tester on canary again", PUSH, || {
        tester(&mut http).filter(|r| served_by(r, &CANARY))
    });
}
