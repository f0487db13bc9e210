//! GitOps with Argo CD (issue 13): the `gitops/` example on the real API server.
//!
//! - Every YAML file under `gitops/` parses, and `gitops/argocd/argocd-cm.yaml` inlines exactly
//!   the Lua files of `gitops/argocd/wasmcanary.io/CanaryRollout/`.
//! - Drift: what Argo CD's server-side diff (`ServerSideDiff=true`) does, done here by hand
//!   because Argo CD's diff code does not build from the Go module proxy (see gitops/README.md):
//!   for each object kept in git, a server-side apply dry run by `argocd-controller` (conflicts
//!   forced, as gitops-engine forces them for server-side apply and diff) against the live
//!   object, compared with the live object after the normalizations the shipped settings
//!   select (an unforced dry run is refused, 409, checked too). Checked before the canary, at
//!   each pause, after a user pause, after an abort and after the promotion; and shown to fail for
//!   an Argo-Rollouts-style VirtualService weight edit.
//! - The rollout is driven by the Argo CD actions' outputs (recorded by the Go test in
//!   `gitops/argocd/luatest`, which runs the Lua scripts on captures of a real rollout), applied
//!   to the live rollout as the patch Argo CD would make; the live CanaryRollout is captured at
//!   each phase for that Go test (`UPDATE_GITOPS_TESTDATA=1` rewrites
//!   `gitops/argocd/testdata/*.json`; then `go test ./... -update` in luatest rewrites
//!   `testdata/actions/`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::path::{Path, PathBuf};

use canary_controller::crd::{CanaryRollout, Phase};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use serde::Deserialize;
use serde_json::{json, Value};
use support::rollout_env::{RolloutEnv, WAIT};
use support::rollout_wait::rollout_until;
use support::versions::Recording;

/// The rollout's name in `gitops/canary/canaryrollout.yaml` (the seed's).
const ROLLOUT: &str = "reviews-rollout";
/// The field manager of Argo CD's server-side apply and server-side diff.
const ARGO_CD: &str = "argocd-controller";
/// The controller's field manager, for `managedFieldsManagers`.
const CONTROLLER: &str = "wasm-canary-controller";
/// The jq path the shipped argocd-cm ignores in DestinationRules.
const IGNORED_HASH_LABEL: &str = r#".spec.subsets[]?.labels["rollouts-pod-template-hash"]"#;

fn gitops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gitops")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents of a (multi-document) YAML file, empty ones left out.
fn yaml_documents(path: &Path) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_yaml_file_under_gitops_is_a_list_of_kubernetes_objects() {
    let mut files = Vec::new();
    yaml_files(&gitops(), &mut files);
    assert!(files.len() >= 9, "{files:?}");
    for file in files {
        let docs = yaml_documents(&file);
        assert!(!docs.is_empty(), "{}: no object", file.display());
        for doc in docs {
            for field in ["apiVersion", "kind"] {
                assert!(doc[field].is_string(), "{}: no {field}", file.display());
            }
            assert!(
                doc["metadata"]["name"].is_string(),
                "{}: an object without a name",
                file.display()
            );
        }
    }
}

#[test]
fn argocd_cm_inlines_exactly_the_lua_files_and_ignores_only_the_hash_label() {
    let lua = gitops().join("argocd/wasmcanary.io/CanaryRollout");
    let cm = yaml_documents(&gitops().join("argocd/argocd-cm.yaml")).remove(0);
    let data = &cm["data"];
    let regenerate = "argocd-cm.yaml must inline the Lua files as they are: python3 gitops/argocd/render-argocd-cm.py";
    assert_eq!(
        data["resource.customizations.health.wasmcanary.io_CanaryRollout"],
        read(&lua.join("health.lua")),
        "{regenerate}"
    );
    let actions: Value = serde_yaml::from_str(
        data["resource.customizations.actions.wasmcanary.io_CanaryRollout"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        actions["discovery.lua"],
        read(&lua.join("actions/discovery.lua")),
        "{regenerate}"
    );
    let definitions = actions["definitions"].as_array().unwrap();
    let names: Vec<&str> = definitions
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "promote",
            "promote-full",
            "abort",
            "retry",
            "pause",
            "resume"
        ]
    );
    for d in definitions {
        let file = lua.join("actions").join(d["name"].as_str().unwrap());
        assert_eq!(
            d["action.lua"],
            read(&file.join("action.lua")),
            "{regenerate}"
        );
    }
    let ignore: Value = serde_yaml::from_str(
        data["resource.customizations.ignoreDifferences.networking.istio.io_DestinationRule"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ignore, json!({"jqPathExpressions": [IGNORED_HASH_LABEL]}));
}

#[test]
fn the_applications_point_at_folders_of_this_example() {
    let repo = gitops().join("..");
    for app in yaml_documents(&gitops().join("argocd/applications.yaml")) {
        assert_eq!(app["kind"], "Application");
        let path = app["spec"]["source"]["path"].as_str().unwrap();
        assert!(repo.join(path).is_dir(), "{path} is not a folder");
        let options = app["metadata"]["annotations"]["argocd.argoproj.io/compare-options"]
            .as_str()
            .unwrap();
        assert!(options.contains("ServerSideDiff=true"), "{options}");
    }
}

/// The objects of `gitops/canary/` as the test applies them in `ns`. The CanaryRollout differs
/// from git in three ways only, for a cluster without SkyWalking or the Bookinfo Deployment:
/// no `analysis`, a pod `template` of image `image` instead of `workloadRef`, 2 replicas.
fn git_canary(ns: &str, image: &str) -> Vec<Value> {
    let mut objects = Vec::new();
    for file in [
        "analysistemplate.yaml",
        "canaryrollout.yaml",
        "destinationrule.yaml",
        "virtualservice.yaml",
        "server-wasmplugin.yaml",
    ] {
        for mut object in yaml_documents(&gitops().join("canary").join(file)) {
            object["metadata"]["namespace"] = json!(ns);
            if object["kind"] == "CanaryRollout" {
                let spec = object["spec"].as_object_mut().unwrap();
                spec["strategy"]["canary"]
                    .as_object_mut()
                    .unwrap()
                    .remove("analysis");
                spec.remove("workloadRef");
                spec.insert("replicas".into(), json!(2));
                spec.insert(
                    "template".into(),
                    json!({"metadata": {"labels": {"app": "reviews"}},
                           "spec": {"containers": [{"name": "reviews", "image": image}]}}),
                );
            }
            objects.push(object);
        }
    }
    objects
}

fn api_for(client: &Client, object: &Value) -> Api<DynamicObject> {
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, object["kind"].as_str().unwrap());
    Api::namespaced_with(
        client.clone(),
        object["metadata"]["namespace"].as_str().unwrap(),
        &ApiResource::from_gvk(&gvk),
    )
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap()
}

/// An Argo CD sync with `ServerSideApply=true`: each object applied by `argocd-controller`,
/// conflicts forced, unknown fields refused (strict validation). Returns what the API server
/// stored.
async fn sync(client: &Client, objects: &[Value]) -> Vec<Value> {
    let mut stored = Vec::new();
    for object in objects {
        let params = PatchParams::apply(ARGO_CD).force().validation_strict();
        let written = api_for(client, object)
            .patch(name(object), &params, &Patch::Apply(object))
            .await
            .unwrap_or_else(|e| panic!("applying {} {}: {e}", object["kind"], name(object)));
        stored.push(serde_json::to_value(written).unwrap());
    }
    stored
}

/// Which differences the comparison leaves out, besides status and server-set metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ignore {
    /// The shipped argocd-cm: the DestinationRule subsets' `rollouts-pod-template-hash`.
    ShippedSettings,
    /// `managedFieldsManagers: [wasm-canary-controller]`: every field the controller owns.
    ControllerFields,
    /// Nothing more.
    Nothing,
}

fn remove_server_set(object: &mut Value) {
    let map = object.as_object_mut().unwrap();
    map.remove("status");
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "managedFields",
            "resourceVersion",
            "generation",
            "uid",
            "creationTimestamp",
        ] {
            meta.remove(field);
        }
    }
}

fn remove_hash_labels(object: &mut Value) {
    if object["kind"] != "DestinationRule" {
        return;
    }
    for subset in object["spec"]["subsets"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(labels) = subset["labels"].as_object_mut() {
            labels.remove("rollouts-pod-template-hash");
        }
    }
}

/// Removes from `object` the fields a `fieldsV1` set names (`f:` fields, `k:` list items).
fn remove_owned(object: &mut Value, fields: &Value) {
    let Some(fields) = fields.as_object() else {
        return;
    };
    for (key, sub) in fields {
        let whole = sub.as_object().is_none_or(|m| m.keys().all(|k| k == "."));
        if let Some(field) = key.strip_prefix("f:") {
            if whole {
                if let Some(map) = object.as_object_mut() {
                    map.remove(field);
                }
            } else if let Some(child) = object.get_mut(field) {
                remove_owned(child, sub);
            }
        } else if let Some(item) = key.strip_prefix("k:") {
            let item: Value = serde_json::from_str(item).unwrap();
            let Some(list) = object.as_array_mut() else {
                continue;
            };
            let matches = |e: &Value| {
                item.as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| e.get(k) == Some(v))
            };
            if whole {
                list.retain(|e| !matches(e));
            } else if let Some(e) = list.iter_mut().find(|e| matches(e)) {
                remove_owned(e, sub);
            }
        }
    }
}

/// The paths at which `a` and `b` differ.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let (u, v) = (x.get(key), y.get(key));
                differences(
                    &format!("{path}.{key}"),
                    u.unwrap_or(&Value::Null),
                    v.unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}.{i}"), u, v, out);
            }
        }
        _ if a != b => out.push(format!("{path}: git {a} / live {b}")),
        _ => {}
    }
}

/// What Argo CD's server-side diff shows for `git`: the dry-run result of applying it versus
/// the live object, both normalized as `ignore` says. Empty: in sync.
async fn drift(client: &Client, git: &Value, ignore: Ignore) -> Vec<String> {
    let api = api_for(client, git);
    let live = serde_json::to_value(api.get(name(git)).await.unwrap()).unwrap();
    let params = PatchParams::apply(ARGO_CD).force().dry_run();
    let predicted = api
        .patch(name(git), &params, &Patch::Apply(git))
        .await
        .unwrap_or_else(|e| panic!("dry run of {} {}: {e}", git["kind"], name(git)));
    let mut predicted = serde_json::to_value(predicted).unwrap();
    let mut live_normalized = live.clone();
    match ignore {
        Ignore::ShippedSettings => {
            remove_hash_labels(&mut predicted);
            remove_hash_labels(&mut live_normalized);
        }
        Ignore::ControllerFields => {
            for entry in live["metadata"]["managedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["manager"] == CONTROLLER)
            {
                remove_owned(&mut predicted, &entry["fieldsV1"]);
                remove_owned(&mut live_normalized, &entry["fieldsV1"]);
            }
        }
        Ignore::Nothing => {}
    }
    remove_server_set(&mut predicted);
    remove_server_set(&mut live_normalized);
    let mut out = Vec::new();
    differences("", &predicted, &live_normalized, &mut out);
    out
}

/// Every object kept in git is in sync, under the shipped settings and under
/// `managedFieldsManagers: [wasm-canary-controller]` alike.
async fn assert_in_sync(client: &Client, git: &[Value], when: &str) {
    for object in git {
        for ignore in [Ignore::ShippedSettings, Ignore::ControllerFields] {
            let drifted = drift(client, object, ignore).await;
            assert!(
                drifted.is_empty(),
                "{when}: {} {} drifted from git ({ignore:?}): {drifted:#?}",
                object["kind"],
                name(object)
            );
        }
    }
}

/// Saves the live rollout for the Lua tests: under the test's tmpdir always, and into
/// `gitops/argocd/testdata/` with `UPDATE_GITOPS_TESTDATA=1`.
fn capture(rollout: &Value, as_name: &str) {
    let json = serde_json::to_string_pretty(rollout).unwrap() + "\n";
    let mut dirs = vec![Path::new(env!("CARGO_TARGET_TMPDIR")).join("gitops-live")];
    if std::env::var_os("UPDATE_GITOPS_TESTDATA").is_some() {
        dirs.push(gitops().join("argocd/testdata"));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{as_name}.json")), &json).unwrap();
    }
}

fn rollout_resource() -> ApiResource {
    ApiResource::erase::<CanaryRollout>(&())
}

async fn live_rollout(env: &RolloutEnv) -> Value {
    let api: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &rollout_resource());
    serde_json::to_value(api.get(ROLLOUT).await.unwrap()).unwrap()
}

/// The JSON merge patch that turns `before` into `after`.
fn merge_diff(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut patch = serde_json::Map::new();
            for (key, new) in a {
                match b.get(key) {
                    Some(old) if old == new => {}
                    Some(old) if old.is_object() && new.is_object() => {
                        patch.insert(key.clone(), merge_diff(old, new));
                    }
                    _ => {
                        patch.insert(key.clone(), new.clone());
                    }
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => after.clone(),
    }
}

/// What kubectl canary writes for `action` (`src/cli/actions.rs`); a promote's id is free.
fn kubectl_canary_writes(action: &str, patch: &Value) -> bool {
    let promote = |kind: &str| {
        patch["metadata"]["annotations"]["wasmcanary.io/promote"]
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("{kind}:")))
            && patch.as_object().unwrap().len() == 1
            && patch["metadata"].as_object().unwrap().len() == 1
            && patch["metadata"]["annotations"].as_object().unwrap().len() == 1
    };
    match action {
        "promote" => promote("step"),
        "promote-full" => promote("full"),
        "abort" => *patch == json!({"spec": {"abort": true}}),
        "retry" => *patch == json!({"spec": {"abort": null}}),
        "pause" => *patch == json!({"spec": {"paused": true}}),
        "resume" => *patch == json!({"spec": {"paused": null}}),
        _ => false,
    }
}

/// The Argo CD actions as the patches Argo CD makes from their Lua output: the output recorded
/// by `gitops/argocd/luatest` (`testdata/actions/<action>.json`, the script run on a capture),
/// as the merge patch from that capture to the output. Read before the test captures anything.
fn recorded_actions() -> std::collections::BTreeMap<&'static str, Value> {
    let testdata = gitops().join("argocd/testdata");
    [
        "promote",
        "promote-full",
        "abort",
        "retry",
        "pause",
        "resume",
    ]
    .into_iter()
    .map(|action| {
        let recorded: Value =
            serde_json::from_str(&read(&testdata.join(format!("actions/{action}.json")))).unwrap();
        let input: Value = serde_json::from_str(&read(
            &testdata.join(format!("{}.json", recorded["input"].as_str().unwrap())),
        ))
        .unwrap();
        let patch = merge_diff(&input, &recorded["output"]);
        assert!(
            kubectl_canary_writes(action, &patch),
            "the {action} action writes {patch}, not what kubectl canary writes"
        );
        (action, patch)
    })
    .collect()
}

/// Runs `action` on the live rollout as `argocd-server` does.
async fn act(env: &RolloutEnv, actions: &std::collections::BTreeMap<&str, Value>, action: &str) {
    let params = PatchParams {
        field_manager: Some("argocd-server".into()),
        ..PatchParams::default()
    };
    env.rollouts()
        .patch(ROLLOUT, &params, &Patch::Merge(&actions[action]))
        .await
        .unwrap();
}

fn observed(r: &CanaryRollout) -> bool {
    r.status.as_ref().and_then(|s| s.observed_generation) == r.metadata.generation
}

fn phase(r: &CanaryRollout) -> Option<Phase> {
    r.status.as_ref().map(|s| s.phase)
}

fn never(_: &CanaryRollout) -> bool {
    false
}

async fn until(env: &RolloutEnv, what: &str, done: impl Fn(&CanaryRollout) -> bool) {
    rollout_until(&env.client, &env.ns, ROLLOUT, what, WAIT, done, never).await;
}

async fn paused_at(env: &RolloutEnv, weight_bp: u32) {
    until(env, &format!("a pause at {weight_bp} bp"), |r| {
        observed(r)
            && !r.spec.paused
            && r.status
                .as_ref()
                .is_some_and(|s| s.phase == Phase::Paused && s.canary_weight == weight_bp)
    })
    .await;
}

#[tokio::test]
async fn nothing_kept_in_git_drifts_while_argo_cd_actions_drive_a_rollout_through_every_phase() {
    let actions = recorded_actions();
    let env = RolloutEnv::new("gitops-rollout").await;
    let (client, ns) = (&env.client, env.ns.as_str());

    let git_v1 = git_canary(ns, "reviews:v1");
    sync(client, &git_v1).await;
    until(&env, "v1 to become the healthy stable", |r| {
        observed(r) && phase(r) == Some(Phase::Healthy)
    })
    .await;
    assert_in_sync(client, &git_v1, "before the canary").await;

    // A new version is a commit; Argo CD syncs it.
    let rollouts: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &rollout_resource());
    let recording = Recording::start(rollouts, "", &format!("metadata.name={ROLLOUT}")).await;
    let git = git_canary(ns, "reviews:v2");
    let stored = sync(client, &git).await;
    let just_synced = stored
        .iter()
        .find(|o| o["kind"] == "CanaryRollout")
        .unwrap();
    assert!(
        just_synced["status"]["observedGeneration"].as_i64()
            < just_synced["metadata"]["generation"].as_i64(),
        "the sync's response already carries a status for the new spec"
    );
    capture(just_synced, "progressing-generation-not-observed");

    let progressing = recording
        .until("a Progressing status of the new canary", WAIT, |versions| {
            versions.iter().find_map(|v| {
                let o = serde_json::to_value(&v.object).unwrap();
                let s = &o["status"];
                (s["phase"] == "Progressing"
                    && s["canaryHash"].is_string()
                    && s["observedGeneration"] == o["metadata"]["generation"])
                    .then_some(o)
            })
        })
        .await;
    drop(recording);
    capture(&progressing, "progressing");

    paused_at(&env, 1000).await;
    capture(&live_rollout(&env).await, "paused-at-step");
    assert_in_sync(client, &git, "at the first pause (10%)").await;

    // Without the shipped settings the subsets the controller wrote would show, and a dry run
    // that did not force conflicts would be refused: what the settings are for.
    let rule = git.iter().find(|o| o["kind"] == "DestinationRule").unwrap();
    let unignored = drift(client, rule, Ignore::Nothing).await;
    assert!(
        unignored
            .iter()
            .any(|d| d.starts_with(".spec.subsets.0.labels.rollouts-pod-template-hash")),
        "{unignored:#?}"
    );
    let unforced = api_for(client, rule)
        .patch(
            name(rule),
            &PatchParams::apply(ARGO_CD).dry_run(),
            &Patch::Apply(rule),
        )
        .await;
    assert!(
        matches!(&unforced, Err(kube::Error::Api(e)) if e.code == 409),
        "{unforced:?}"
    );

    act(&env, &actions, "promote").await;
    paused_at(&env, 2000).await;
    assert_in_sync(client, &git, "at the second pause (20%)").await;

    act(&env, &actions, "pause").await;
    until(&env, "the user's pause", |r| {
        observed(r) && r.spec.paused && phase(r) == Some(Phase::Paused)
    })
    .await;
    capture(&live_rollout(&env).await, "paused-by-user");
    assert_in_sync(client, &git, "paused by the user").await;

    act(&env, &actions, "resume").await;
    paused_at(&env, 2000).await;

    act(&env, &actions, "abort").await;
    until(&env, "the abort", |r| {
        observed(r)
            && r.status
                .as_ref()
                .is_some_and(|s| s.phase == Phase::Aborted && s.canary_weight == 0)
    })
    .await;
    assert_eq!(
        env.filter_weight(&support::productpage_plugin()).await,
        Some(0),
        "an abort from Argo CD takes the canary's traffic away as kubectl canary abort does"
    );
    capture(&live_rollout(&env).await, "aborted");
    assert_in_sync(client, &git, "after the abort").await;

    act(&env, &actions, "retry").await;
    paused_at(&env, 1000).await;
    let canary_hash = env
        .rollouts()
        .get(ROLLOUT)
        .await
        .unwrap()
        .status
        .unwrap()
        .canary_hash
        .unwrap();
    act(&env, &actions, "promote-full").await;
    until(&env, "the full promotion", |r| {
        observed(r)
            && r.status.as_ref().is_some_and(|s| {
                s.phase == Phase::Healthy && s.stable_hash.as_ref() == Some(&canary_hash)
            })
    })
    .await;
    capture(&live_rollout(&env).await, "healthy-after-promotion");
    assert_in_sync(client, &git, "after the promotion").await;

    // Someone deletes the DestinationRule, then v3 is committed: the controller cannot route.
    api_for(client, rule)
        .delete(name(rule), &Default::default())
        .await
        .unwrap();
    let v3 = git_canary(ns, "reviews:v3");
    sync(client, &v3[1..2]).await;
    until(&env, "the rollout to be Degraded", |r| {
        observed(r) && phase(r) == Some(Phase::Degraded)
    })
    .await;
    capture(&live_rollout(&env).await, "degraded");
}

/// The API server accepts every object of the example exactly as it is in git, unknown fields
/// refused (a server-side apply dry run with strict validation, as `argocd-controller`).
#[tokio::test]
async fn every_object_of_the_example_passes_the_api_servers_strict_validation_as_written() {
    let ns = "gitops-as-written";
    let (_plane, client) = support::namespace(ns).await;
    let mut checked = Vec::new();
    for folder in ["application", "istio", "canary"] {
        let mut files = Vec::new();
        yaml_files(&gitops().join(folder), &mut files);
        for file in files {
            for mut object in yaml_documents(&file) {
                object["metadata"]["namespace"] = json!(ns);
                let params = PatchParams::apply(ARGO_CD)
                    .force()
                    .validation_strict()
                    .dry_run();
                api_for(&client, &object)
                    .patch(name(&object), &params, &Patch::Apply(&object))
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "{}: {} {}: {e}",
                            file.display(),
                            object["kind"],
                            name(&object)
                        )
                    });
                checked.push(format!("{}/{}", object["kind"], name(&object)));
            }
        }
    }
    for expected in [
        "\"CanaryRollout\"/reviews-rollout",
        "\"DestinationRule\"/reviews",
        "\"VirtualService\"/reviews",
        "\"Gateway\"/bookinfo-gateway",
        "\"Deployment\"/reviews",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} not checked: {checked:?}"
        );
    }
}

#[tokio::test]
async fn an_argo_rollouts_style_virtual_service_weight_edit_is_drift() {
    let (_plane, client) = support::namespace("gitops-vs-weights").await;
    // The seed's reviews VirtualService, weights and all, as Argo Rollouts users keep it in git.
    let conf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/tse-gitops-demo/argo/tse/conf.yaml");
    let mut vs = yaml_documents(&conf).remove(0)["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "VirtualService" && o["metadata"]["name"] == "reviews")
        .unwrap()
        .clone();
    vs["metadata"]["namespace"] = json!("gitops-vs-weights");
    sync(&client, std::slice::from_ref(&vs)).await;
    assert!(drift(&client, &vs, Ignore::ShippedSettings)
        .await
        .is_empty());

    // What Argo Rollouts does at `setWeight: 10`.
    let mut http = vs["spec"]["http"].clone();
    http[0]["route"][0]["weight"] = json!(90);
    http[0]["route"][1]["weight"] = json!(10);
    let params = PatchParams {
        field_manager: Some("argo-rollouts".into()),
        ..PatchParams::default()
    };
    api_for(&client, &vs)
        .patch(
            name(&vs),
            &params,
            &Patch::Merge(json!({"spec": {"http": http}})),
        )
        .await
        .unwrap();

    let drifted = drift(&client, &vs, Ignore::ShippedSettings).await;
    assert_eq!(
        drifted,
        [
            ".spec.http.0.route.0.weight: git 100 / live 90",
            ".spec.http.0.route.1.weight: git 0 / live 10"
        ]
    );
}
