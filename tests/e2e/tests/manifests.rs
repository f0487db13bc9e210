//! The manifests a user applies (`wasm-plugin/`) are valid for Istio's own CRD schemas, and each
//! WasmPlugin's `pluginConfig` is accepted by the filter's own config type. (CEL rules need a real
//! API server: the control-plane tests in tests/cluster apply the same files to one.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use canary_core::{CompiledConfig, FilterMode, PluginConfig};
use serde_json::Value;
use wasm_canary_e2e::workspace_root;

fn istio_crds() -> Vec<Value> {
    let path = std::env::var_os("ISTIO_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("../shared/fixtures/istio/customresourcedefinitions.gen.yaml")
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_documents(&text)
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::with::singleton_map_recursive::deserialize::<Value, _>(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn manifests() -> Vec<(String, Value)> {
    let dir = workspace_root().join("wasm-plugin");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
    {
        for doc in yaml_documents(&std::fs::read_to_string(&f).unwrap()) {
            out.push((f.file_name().unwrap().to_string_lossy().into_owned(), doc));
        }
    }
    out
}

/// Kubernetes prunes (and with strict field validation, refuses) fields a structural schema
/// does not declare. JSON Schema allows them unless told otherwise, so say it explicitly.
fn structural(schema: &mut Value) {
    if let Value::Object(m) = schema {
        let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if m.contains_key("properties") && !m.contains_key("additionalProperties") && !preserve {
            m.insert("additionalProperties".into(), Value::Bool(false));
        }
        for v in m.values_mut() {
            structural(v);
        }
    } else if let Value::Array(a) = schema {
        a.iter_mut().for_each(structural);
    }
}

/// The schema Istio's CRD declares for this object's apiVersion and kind.
fn schema_for(crds: &[Value], object: &Value) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap();
    let kind = object["kind"].as_str().unwrap();
    let crd = crds
        .iter()
        .find(|c| c["spec"]["group"] == group && c["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no Istio CRD for {group} {kind}"));
    let v = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version)
        .unwrap_or_else(|| panic!("{kind} has no version {version}"));
    assert_eq!(v["served"], true, "{kind} {version} is served");
    let mut schema = v["schema"]["openAPIV3Schema"].clone();
    structural(&mut schema);
    // metadata is validated by the API server itself, not by the CRD schema.
    schema["properties"]["metadata"] = serde_json::json!({"type": "object"});
    schema["properties"]["apiVersion"] = serde_json::json!({"type": "string"});
    schema["properties"]["kind"] = serde_json::json!({"type": "string"});
    schema
}

fn schema_errors(crds: &[Value], object: &Value) -> Vec<String> {
    let schema = schema_for(crds, object);
    let validator = jsonschema::validator_for(&schema).unwrap();
    validator
        .iter_errors(object)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_manifest_in_wasm_plugin_validates_against_istios_crd_schemas() {
    let crds = istio_crds();
    let manifests = manifests();
    let kinds: Vec<&str> = manifests
        .iter()
        .map(|(_, m)| m["kind"].as_str().unwrap())
        .collect();
    for kind in ["WasmPlugin", "DestinationRule", "VirtualService"] {
        assert!(
            kinds.contains(&kind),
            "wasm-plugin/ ships a {kind}: {kinds:?}"
        );
    }
    for (file, m) in &manifests {
        let errors = schema_errors(&crds, m);
        assert!(errors.is_empty(), "{file} ({}): {errors:#?}", m["kind"]);
    }
}

#[test]
fn the_schema_check_catches_a_misspelt_field_and_a_bad_enum() {
    let crds = istio_crds();
    let (_, plugin) = manifests()
        .into_iter()
        .find(|(_, m)| m["kind"] == "WasmPlugin")
        .unwrap();
    let mut typo = plugin.clone();
    typo["spec"]["pluginConfg"] = typo["spec"]["pluginConfig"].take();
    assert!(
        !schema_errors(&crds, &typo).is_empty(),
        "an unknown spec field is refused"
    );
    let mut bad_enum = plugin;
    bad_enum["spec"]["failStrategy"] = "FAIL_SOMETIMES".into();
    assert!(
        !schema_errors(&crds, &bad_enum).is_empty(),
        "a failStrategy outside the enum is refused"
    );
}

#[test]
fn each_wasmplugins_plugin_config_is_accepted_by_the_filters_config_type() {
    let plugins: Vec<(String, Value)> = manifests()
        .into_iter()
        .filter(|(_, m)| m["kind"] == "WasmPlugin")
        .collect();
    assert!(plugins.len() >= 2, "a client and a server WasmPlugin");
    let mut modes = Vec::new();
    for (file, p) in &plugins {
        let config = PluginConfig::from_value(&p["spec"]["pluginConfig"])
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let compiled = CompiledConfig::compile(&config).unwrap_or_else(|e| panic!("{file}: {e}"));
        let istio_mode = p["spec"]["match"][0]["mode"].as_str().unwrap();
        let expected = if istio_mode == "SERVER" {
            FilterMode::Server
        } else {
            FilterMode::Client
        };
        assert_eq!(
            compiled.mode, expected,
            "{file}: filter mode agrees with the WasmPlugin's match.mode"
        );
        modes.push(compiled.mode);
    }
    assert!(modes.contains(&FilterMode::Client) && modes.contains(&FilterMode::Server));
}

#[test]
fn the_destination_rule_subsets_carry_the_hashes_the_client_plugin_routes_by() {
    let manifests = manifests();
    let dr = &manifests
        .iter()
        .find(|(_, m)| m["kind"] == "DestinationRule")
        .unwrap()
        .1;
    let client = &manifests
        .iter()
        .find(|(_, m)| m["kind"] == "WasmPlugin" && m["spec"]["match"][0]["mode"] == "CLIENT")
        .unwrap()
        .1;
    let config = PluginConfig::from_value(&client["spec"]["pluginConfig"]).unwrap();
    let reviews = &config.services[0];
    let subset_hash = |name: &str| {
        dr["spec"]["subsets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["labels"]["rollouts-pod-template-hash"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(Some(subset_hash("stable")), reviews.stable_hash);
    assert_eq!(Some(subset_hash("canary")), reviews.canary_hash);
    let vs = &manifests
        .iter()
        .find(|(_, m)| m["kind"] == "VirtualService")
        .unwrap()
        .1;
    let header = &vs["spec"]["http"][0]["match"][0]["headers"][config.decision_header.as_str()];
    assert_eq!(
        header["exact"], "canary",
        "the VirtualService matches the header the filter writes"
    );
}
