//! What the control plane itself provides: controllers that turn Deployments into Pods,
//! EndpointSlices for Pods a test marks ready, and a clean stop.

use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;

use crate::support::{eventually, within};
use canary_cluster::{kubelet, ControlPlane};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

async fn reviews_deployment(plane: &ControlPlane, client: &Client, namespace: &str, replicas: i32) {
    plane
        .create_namespace(client, namespace)
        .await
        .expect("namespace");
    let apply = PatchParams::apply("wasm-canary-test");
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "reviews-v1"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "reviews", "version": "v1"}},
            "template": {
                "metadata": {"labels": {"app": "reviews", "version": "v1"}},
                "spec": {"containers": [{"name": "reviews", "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.3", "ports": [{"containerPort": 9080}]}]},
            },
        },
    });
    within(
        "apply deployment",
        Api::<Deployment>::namespaced(client.clone(), namespace).patch(
            "reviews-v1",
            &apply,
            &Patch::Apply(&deployment),
        ),
    )
    .await
    .expect("apply deployment");
}

async fn pods_of_reviews(client: &Client, namespace: &str, at_least: usize) -> Vec<Pod> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    eventually("the ReplicaSet's Pods", || async {
        let list = pods
            .list(&ListParams::default().labels("app=reviews"))
            .await
            .ok()?;
        (list.items.len() >= at_least).then_some(list.items)
    })
    .await
}

#[tokio::test]
async fn a_deployment_gets_a_replica_set_and_pending_pods_from_the_controller_manager() {
    let plane = ControlPlane::shared().await.expect("control plane");
    let client = plane.client().await.expect("admin client");
    reviews_deployment(&plane, &client, "deployment-controllers", 2).await;

    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), "deployment-controllers");
    let replica_set = eventually("a ReplicaSet for the Deployment", || async {
        replica_sets
            .list(&ListParams::default().labels("app=reviews"))
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let template_hash = replica_set
        .metadata
        .labels
        .unwrap_or_default()
        .remove("pod-template-hash")
        .expect("pod-template-hash");

    let pods = pods_of_reviews(&client, "deployment-controllers", 2).await;
    for pod in pods {
        let labels = pod.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("pod-template-hash"), Some(&template_hash));
        // No kubelet and no scheduler: nothing moves a Pod past Pending but a test.
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    }
}

#[tokio::test]
async fn a_pod_the_test_runs_appears_in_its_services_endpoint_slice_ready_then_not_ready() {
    let plane = ControlPlane::shared().await.expect("control plane");
    let client = plane.client().await.expect("admin client");
    let namespace = "endpoint-slices";
    reviews_deployment(&plane, &client, namespace, 1).await;
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews"},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]},
    });
    Api::<Service>::namespaced(client.clone(), namespace)
        .patch(
            "reviews",
            &PatchParams::apply("wasm-canary-test"),
            &Patch::Apply(&service),
        )
        .await
        .expect("apply service");

    // Play scheduler and kubelet: the Pod runs on a node, is Ready and has an address.
    let pod = pods_of_reviews(&client, namespace, 1).await.remove(0);
    let pod_name = pod.metadata.name.expect("pod name");
    within(
        "run the pod",
        kubelet::run_pod(&client, namespace, &pod_name, "192.0.2.10", true),
    )
    .await
    .expect("the API server accepts a Pod bound and given a status by a test");

    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
    let endpoint_readiness = |ready: bool| {
        let slices = slices.clone();
        async move {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=reviews"))
                .await
                .ok()?;
            list.items
                .into_iter()
                .flat_map(|slice| slice.endpoints.unwrap_or_default())
                .find(|e| {
                    e.addresses.iter().any(|a| a == "192.0.2.10")
                        && e.conditions.as_ref().and_then(|c| c.ready) == Some(ready)
                })
        }
    };
    let endpoint = eventually("the Pod as a ready endpoint", || endpoint_readiness(true)).await;
    assert_eq!(
        endpoint.target_ref.and_then(|r| r.name).as_ref(),
        Some(&pod_name)
    );

    // A readiness probe failing, as a kubelet would report it.
    within(
        "pod not ready",
        kubelet::set_pod_status(&client, namespace, &pod_name, "192.0.2.10", false),
    )
    .await
    .expect("status");
    eventually("the Pod as a not-ready endpoint", || {
        endpoint_readiness(false)
    })
    .await;
}

#[tokio::test]
async fn dropping_a_control_plane_stops_every_process_and_frees_its_port() {
    let plane = ControlPlane::start().await.expect("control plane");
    let pids = plane.pids();
    assert_eq!(
        pids.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        ["etcd", "kube-apiserver", "kube-controller-manager"]
    );
    let port: u16 = plane
        .server_url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let dir = plane.dir().unwrap().to_owned();
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok());

    drop(plane);

    for (name, pid) in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) still runs"
        );
    }
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "port {port} still accepts"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
