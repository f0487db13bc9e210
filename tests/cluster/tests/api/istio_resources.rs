//! Istio resources through kube-rs against a real API server: create, server-side
//! apply, patch, watch, and the conflicts only a real server produces.

use crate::support::{destination_rule, refusal, wasm_plugin, within};
use canary_cluster::ControlPlane;
use futures::StreamExt;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::{json, Value};

async fn namespaced_api(
    name: &str,
    resource: &ApiResource,
) -> (std::sync::Arc<ControlPlane>, Api<DynamicObject>) {
    let plane = ControlPlane::shared().await.expect("control plane");
    let client: Client = plane.client().await.expect("admin client");
    plane
        .create_namespace(&client, name)
        .await
        .expect("namespace");
    let api = Api::namespaced_with(client, name, resource);
    (plane, api)
}

fn object(resource: &ApiResource, name: &str, spec: Value) -> DynamicObject {
    DynamicObject::new(name, resource).data(json!({ "spec": spec }))
}

/// Waits for the next watch event about `name` that `accept` takes.
async fn next_event<S>(
    stream: &mut S,
    what: &str,
    accept: impl Fn(&Event<DynamicObject>) -> bool,
) -> Event<DynamicObject>
where
    S: futures::Stream<Item = Result<Event<DynamicObject>, watcher::Error>> + Unpin,
{
    within(what, async {
        loop {
            let event = stream
                .next()
                .await
                .expect("watch ended")
                .expect("watch error");
            if accept(&event) {
                return event;
            }
        }
    })
    .await
}

fn spec_field<'a>(object: &'a DynamicObject, pointer: &str) -> &'a Value {
    object
        .data
        .pointer(&format!("/spec{pointer}"))
        .unwrap_or(&Value::Null)
}

/// create -> server-side apply (new field) -> merge patch -> delete, with a watcher
/// started first seeing each change.
async fn lifecycle(
    namespace: &str,
    resource: ApiResource,
    created: Value,
    applied: Value,
    patch: Value,
    checks: [(&str, Value); 3],
) {
    let (_plane, api) = namespaced_api(namespace, &resource).await;
    let name = "reviews";
    let mut events = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    next_event(&mut events, "watch initialised", |e| {
        matches!(e, Event::InitDone)
    })
    .await;

    let is_ours = |e: &Event<DynamicObject>, pointer: &str, value: &Value| matches!(e, Event::Apply(o) if o.metadata.name.as_deref() == Some(name) && spec_field(o, pointer) == value);
    let [(created_at, created_value), (applied_at, applied_value), (patched_at, patched_value)] =
        checks;

    within(
        "create",
        api.create(&PostParams::default(), &object(&resource, name, created)),
    )
    .await
    .expect("create");
    next_event(&mut events, "watch sees the creation", |e| {
        is_ours(e, created_at, &created_value)
    })
    .await;

    // A create is an Update operation, and Istio's schemas make lists such as
    // DestinationRule `subsets` atomic: an apply that changes one conflicts with the
    // creator over the whole list. Force takes them over, as a controller adopting an
    // object it did not create must (the conflict itself is tested below).
    let apply = PatchParams::apply("wasm-canary-test")
        .validation_strict()
        .force();
    let applied_object = object(&resource, name, applied);
    let after_apply = within(
        "apply",
        api.patch(name, &apply, &Patch::Apply(&applied_object)),
    )
    .await
    .expect("apply");
    assert_eq!(spec_field(&after_apply, applied_at), &applied_value);
    next_event(&mut events, "watch sees the apply", |e| {
        is_ours(e, applied_at, &applied_value)
    })
    .await;

    let after_patch = within(
        "patch",
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": patch })),
        ),
    )
    .await
    .expect("merge patch");
    assert_eq!(spec_field(&after_patch, patched_at), &patched_value);
    next_event(&mut events, "watch sees the patch", |e| {
        is_ours(e, patched_at, &patched_value)
    })
    .await;

    within("delete", api.delete(name, &DeleteParams::default()))
        .await
        .expect("delete");
    next_event(
        &mut events,
        "watch sees the deletion",
        |e| matches!(e, Event::Delete(o) if o.metadata.name.as_deref() == Some(name)),
    )
    .await;
}

#[tokio::test]
async fn a_wasm_plugin_is_created_applied_patched_deleted_and_each_change_is_watched() {
    lifecycle(
        "wasm-plugin-lifecycle",
        wasm_plugin(),
        json!({"url": "oci://registry.example/wasm-canary:0.1.0", "selector": {"matchLabels": {"app": "reviews"}}}),
        json!({
            "url": "oci://registry.example/wasm-canary:0.1.0",
            "selector": {"matchLabels": {"app": "reviews"}},
            "phase": "AUTHZ",
            "pluginConfig": {"services": [{"host": "reviews", "canaryWeight": 10}]},
        }),
        json!({"pluginConfig": {"services": [{"host": "reviews", "canaryWeight": 50}]}}),
        [
            ("/url", json!("oci://registry.example/wasm-canary:0.1.0")),
            ("/phase", json!("AUTHZ")),
            ("/pluginConfig/services/0/canaryWeight", json!(50)),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_destination_rule_is_created_applied_patched_deleted_and_each_change_is_watched() {
    lifecycle(
        "destination-rule-lifecycle",
        destination_rule(),
        json!({"host": "reviews", "subsets": [{"name": "stable", "labels": {"version": "v1"}}]}),
        json!({"host": "reviews", "subsets": [
            {"name": "stable", "labels": {"version": "v1"}},
            {"name": "canary", "labels": {"version": "v2"}},
        ]}),
        json!({"trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}),
        [
            ("/host", json!("reviews")),
            ("/subsets/1/name", json!("canary")),
            ("/trafficPolicy/loadBalancer/simple", json!("ROUND_ROBIN")),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_second_field_manager_applying_a_different_value_without_force_gets_a_409_conflict() {
    let resource = wasm_plugin();
    let (_plane, api) = namespaced_api("apply-conflict", &resource).await;
    let name = "wasm-canary";
    let with_url = |url: &str| object(&resource, name, json!({"url": url}));

    let controller = PatchParams::apply("wasm-canary-controller");
    within(
        "first apply",
        api.patch(
            name,
            &controller,
            &Patch::Apply(with_url("oci://registry.example/canary:1")),
        ),
    )
    .await
    .expect("first apply");

    let someone_else = PatchParams::apply("someone-else");
    let conflict = refusal(
        within(
            "conflicting apply",
            api.patch(
                name,
                &someone_else,
                &Patch::Apply(with_url("oci://registry.example/canary:2")),
            ),
        )
        .await,
    );
    assert_eq!(conflict.code, 409, "{conflict:?}");
    assert_eq!(conflict.reason, "Conflict", "{conflict:?}");
    assert!(
        conflict.message.contains("wasm-canary-controller")
            && conflict.message.contains(".spec.url"),
        "{}",
        conflict.message
    );

    let unchanged = api.get(name).await.expect("get");
    assert_eq!(
        spec_field(&unchanged, "/url"),
        "oci://registry.example/canary:1"
    );

    // Force takes the field over; the first manager no longer owns it.
    let taken = within(
        "forced apply",
        api.patch(
            name,
            &someone_else.force(),
            &Patch::Apply(with_url("oci://registry.example/canary:2")),
        ),
    )
    .await
    .expect("forced apply");
    assert_eq!(
        spec_field(&taken, "/url"),
        "oci://registry.example/canary:2"
    );
    let managers: Vec<_> = taken
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(
        managers,
        ["someone-else"],
        "the forced apply took .spec.url from wasm-canary-controller"
    );
}

#[tokio::test]
async fn a_replace_with_a_stale_resource_version_is_refused_with_a_409_conflict() {
    let resource = destination_rule();
    let (_plane, api) = namespaced_api("stale-resource-version", &resource).await;
    let created = api
        .create(
            &PostParams::default(),
            &object(&resource, "reviews", json!({"host": "reviews"})),
        )
        .await
        .expect("create");

    let mut first = created.clone();
    first.data["spec"]["host"] = json!("reviews.bookinfo.svc.cluster.local");
    within(
        "first replace",
        api.replace("reviews", &PostParams::default(), &first),
    )
    .await
    .expect("first replace");

    // `created` still carries the resourceVersion the first replace superseded.
    let mut stale = created;
    stale.data["spec"]["host"] = json!("ratings");
    let conflict = refusal(
        within(
            "stale replace",
            api.replace("reviews", &PostParams::default(), &stale),
        )
        .await,
    );
    assert_eq!(conflict.code, 409, "{conflict:?}");
    assert!(
        conflict.message.contains("the object has been modified"),
        "{}",
        conflict.message
    );
}
