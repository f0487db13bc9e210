//! Failures a real API server cannot produce on demand, against a mock that answers each
//! request as the test says (the kube-rs controller-rs pattern). Everything else is tested on a
//! real API server (cluster_rollout.rs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::time::Duration;

use canary_controller::crd::CanaryRollout;
use canary_controller::reconcile::{reconcile, Context};
use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::json;

fn rollout() -> CanaryRollout {
    serde_json::from_value(json!({
        "apiVersion": "wasmcanary.io/v1alpha1", "kind": "CanaryRollout",
        "metadata": {"name": "reviews", "namespace": "bookinfo", "uid": "1234", "generation": 1},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "reviews"}},
            "template": {"metadata": {"labels": {"app": "reviews"}}, "spec": {"containers": [{"name": "r", "image": "reviews:v1"}]}},
            "strategy": {"canary": {"steps": [{"setWeight": 10}],
                "trafficRouting": {"wasm": {"service": "reviews", "wasmPlugin": {"url": "oci://x/y:1"}, "destinationRule": {"name": "reviews"}}}}}}
    }))
    .unwrap()
}

#[tokio::test]
async fn an_api_server_500_fails_the_reconcile_naming_the_call_and_writes_nothing_after_it() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(Client::new(service, "default")));
    let server = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("a first request");
        assert_eq!(request.method(), http::Method::GET);
        assert!(
            request
                .uri()
                .path()
                .ends_with("/namespaces/bookinfo/replicasets"),
            "{}",
            request.uri()
        );
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcdserver: leader changed", "reason": "InternalError", "code": 500});
        send.send_response(
            Response::builder()
                .status(500)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        // Nothing else may be sent: no traffic or status write on a failed read.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), handle.next_request())
                .await
                .is_err(),
            "no further request"
        );
    });
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile(Arc::new(rollout()), ctx.clone()),
    )
    .await
    .expect("reconcile returns");
    let err = result.expect_err("a 500 fails the reconcile");
    assert_eq!(err.metric_label(), "kube");
    assert!(err.to_string().contains("listing ReplicaSets"), "{err}");
    assert!(err.to_string().contains("leader changed"), "{err}");
    server.await.unwrap();
    assert_eq!(ctx.metrics.reconciles.get(), 1);
}
