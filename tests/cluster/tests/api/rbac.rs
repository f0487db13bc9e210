//! RBAC as the API server enforces it, for a ServiceAccount with a TokenRequest token.

use crate::support::{destination_rule, eventually, refusal, wasm_plugin, within};
use canary_cluster::ControlPlane;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

#[tokio::test]
async fn a_service_account_can_do_what_its_role_allows_and_is_forbidden_the_rest() {
    let plane = ControlPlane::shared().await.expect("control plane");
    let admin = plane.client().await.expect("admin client");
    let (namespace, elsewhere) = ("rbac-allowed", "rbac-elsewhere");
    plane
        .create_namespace(&admin, namespace)
        .await
        .expect("namespace");
    plane
        .create_namespace(&admin, elsewhere)
        .await
        .expect("namespace");

    // Read WasmPlugins, and patch DestinationRules, in one namespace.
    let apply = PatchParams::apply("wasm-canary-test");
    let objects = [
        (
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "canary-reader"}}),
            "ServiceAccount",
        ),
        (
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "canary-reader"},
            "rules": [
                {"apiGroups": ["extensions.istio.io"], "resources": ["wasmplugins"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["networking.istio.io"], "resources": ["destinationrules"], "verbs": ["get", "patch"]},
            ]}),
            "Role",
        ),
        (
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "canary-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "canary-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "canary-reader", "namespace": namespace}]}),
            "RoleBinding",
        ),
    ];
    for (object, kind) in objects {
        let result = match kind {
            "ServiceAccount" => Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
                .patch("canary-reader", &apply, &Patch::Apply(&object))
                .await
                .map(drop),
            "Role" => Api::<Role>::namespaced(admin.clone(), namespace)
                .patch("canary-reader", &apply, &Patch::Apply(&object))
                .await
                .map(drop),
            _ => Api::<RoleBinding>::namespaced(admin.clone(), namespace)
                .patch("canary-reader", &apply, &Patch::Apply(&object))
                .await
                .map(drop),
        };
        result.unwrap_or_else(|e| panic!("applying the {kind}: {e}"));
    }
    let plugins_as_admin: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), namespace, &wasm_plugin());
    let rules_as_admin: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), namespace, &destination_rule());
    let plugin = DynamicObject::new("reviews", &wasm_plugin())
        .data(json!({"spec": {"url": "oci://registry.example/wasm-canary:0.1.0"}}));
    plugins_as_admin
        .create(&PostParams::default(), &plugin)
        .await
        .expect("create plugin");
    let rule = DynamicObject::new("reviews", &destination_rule())
        .data(json!({"spec": {"host": "reviews"}}));
    rules_as_admin
        .create(&PostParams::default(), &rule)
        .await
        .expect("create rule");

    let reader = plane
        .client_for_service_account(namespace, "canary-reader")
        .await
        .expect("token client");
    let plugins: Api<DynamicObject> =
        Api::namespaced_with(reader.clone(), namespace, &wasm_plugin());
    let rules: Api<DynamicObject> =
        Api::namespaced_with(reader.clone(), namespace, &destination_rule());

    // The authorizer reads RBAC objects from a cache: the binding applies a moment later.
    let listed = eventually("the RoleBinding takes effect", || async {
        plugins.list(&ListParams::default()).await.ok()
    })
    .await;
    assert_eq!(listed.items.len(), 1);
    within("get", plugins.get("reviews"))
        .await
        .expect("get is allowed");
    let patch = Patch::Merge(
        json!({"spec": {"subsets": [{"name": "canary", "labels": {"version": "v2"}}]}}),
    );
    within(
        "patch",
        rules.patch("reviews", &PatchParams::default(), &patch),
    )
    .await
    .expect("patch is allowed");

    let forbidden = [
        (
            "create a WasmPlugin",
            refusal(
                within(
                    "create",
                    plugins.create(
                        &PostParams::default(),
                        &DynamicObject::new("other", &wasm_plugin())
                            .data(json!({"spec": {"url": "oci://x/y:1"}})),
                    ),
                )
                .await,
            ),
        ),
        (
            "delete a WasmPlugin",
            refusal(within("delete", plugins.delete("reviews", &Default::default())).await),
        ),
        (
            "list DestinationRules",
            refusal(within("list rules", rules.list(&ListParams::default())).await),
        ),
        (
            "list WasmPlugins elsewhere",
            refusal(
                within(
                    "list elsewhere",
                    Api::<DynamicObject>::namespaced_with(
                        reader.clone(),
                        elsewhere,
                        &wasm_plugin(),
                    )
                    .list(&ListParams::default()),
                )
                .await,
            ),
        ),
        (
            "list Pods",
            refusal(
                within(
                    "list pods",
                    Api::<Pod>::namespaced(reader.clone(), namespace).list(&ListParams::default()),
                )
                .await,
            ),
        ),
    ];
    for (action, status) in forbidden {
        assert_eq!(status.code, 403, "{action}: {status:?}");
        assert!(
            status
                .message
                .contains("system:serviceaccount:rbac-allowed:canary-reader"),
            "{action}: {}",
            status.message
        );
    }
}
