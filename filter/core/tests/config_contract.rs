//! The pluginConfig contract: what parses, what defaults apply, what is refused and how the
//! refusal names the field.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use canary_core::config::{DEFAULT_DECISION_HEADER, DEFAULT_VERSION_HEADER, MAX_CONFIG_BYTES};
use canary_core::{
    CanaryService, CompiledConfig, ConfigError, FilterMode, HeaderRoute, PluginConfig,
    RequestMatch, StickyKey, StringMatch,
};

fn reviews() -> CanaryService {
    CanaryService {
        name: "bookinfo/reviews".into(),
        hosts: vec![
            "reviews".into(),
            "reviews.bookinfo".into(),
            "reviews.bookinfo.svc".into(),
            "reviews.bookinfo.svc.cluster.local".into(),
        ],
        canary_weight: 50,
        stable_hash: Some("6d5f7c9b8".into()),
        canary_hash: Some("7b9c4d5f6".into()),
        decision_header: None,
        header_routes: vec![HeaderRoute {
            name: "testers".into(),
            matches: vec![RequestMatch::header(
                "x-canary",
                StringMatch::Exact("always".into()),
            )],
        }],
        sticky: Some(StickyKey::Header("x-user-id".into())),
    }
}

#[test]
fn an_empty_object_is_a_client_config_with_default_headers_and_no_services() {
    let config = PluginConfig::from_json(b"{}").unwrap();
    assert_eq!(config.mode, FilterMode::Client);
    assert_eq!(config.decision_header, DEFAULT_DECISION_HEADER);
    assert_eq!(config.version_header, DEFAULT_VERSION_HEADER);
    assert_eq!(config.hash_header, None);
    assert!(
        !config.write_stable_decision,
        "only canary decisions are written unless told otherwise"
    );
    assert!(config.services.is_empty());
    assert!(CompiledConfig::compile(&config).is_ok());
}

#[test]
fn what_the_controller_writes_is_exactly_what_the_filter_parses() {
    let written = PluginConfig {
        hash_header: Some("x-canary-hash".into()),
        write_stable_decision: true,
        services: vec![reviews()],
        ..PluginConfig::default()
    };
    let json = serde_json::to_vec(&written.to_json_value()).unwrap();
    let parsed = PluginConfig::from_json(&json).unwrap();
    assert_eq!(parsed, written);
    CompiledConfig::compile(&parsed).unwrap();
}

#[test]
fn a_documented_example_parses_with_camel_case_fields() {
    let json = br#"{
        "decisionHeader": "X-Canary-Subset",
        "services": [{
            "name": "bookinfo/reviews",
            "hosts": ["reviews", "reviews.bookinfo.svc.cluster.local"],
            "canaryWeight": 5,
            "stableHash": "abc123",
            "canaryHash": "def456",
            "headerRoutes": [
                {"name": "qa", "match": [
                    {"header": "x-qa", "value": {"prefix": "team-"}},
                    {"cookie": "beta", "value": {"regex": "yes|true"}}
                ]}
            ],
            "sticky": {"cookie": "session"}
        }]
    }"#;
    let compiled = CompiledConfig::from_json(json).unwrap();
    assert_eq!(
        compiled.decision_header, "x-canary-subset",
        "header names are lower-cased"
    );
    assert_eq!(compiled.services[0].canary_weight, 5);
    assert_eq!(compiled.number_of_hosts(), 2);
}

#[test]
fn server_mode_needs_no_services() {
    let compiled = CompiledConfig::from_json(br#"{"mode": "server"}"#).unwrap();
    assert_eq!(compiled.mode, FilterMode::Server);
    assert_eq!(compiled.version_header, "x-rollouts-pod-template-hash");
}

/// Each bad config, the field its rejection must name, and a word the reason must contain.
#[test]
fn invalid_configs_are_rejected_naming_the_field() {
    let svc = r#""name":"a/b","hosts":["b"]"#;
    let cases: Vec<(String, &str, &str)> = vec![
        ("[]".into(), "(root)", "JSON object"),
        ("\"text\"".into(), "(root)", "JSON object"),
        ("".into(), "(root)", "empty"),
        ("{".into(), "(root)", "EOF"),
        ("{} {}".into(), "(root)", "trailing"),
        (r#"{"mode":"sideways"}"#.into(), "mode", "unknown variant"),
        (
            r#"{"canaryWieght": 5}"#.into(),
            "canaryWieght",
            "unknown field",
        ),
        (
            format!(r#"{{"services":[{{{svc},"canaryWeight":10001}}]}}"#),
            r#"services["a/b"].canaryWeight"#,
            "out of range",
        ),
        (
            format!(r#"{{"services":[{{{svc},"canaryWeight":-1}}]}}"#),
            "services[0].canaryWeight",
            "invalid value",
        ),
        (
            format!(r#"{{"services":[{{{svc},"canaryWeight":12.5}}]}}"#),
            "services[0].canaryWeight",
            "invalid type",
        ),
        (
            format!(r#"{{"services":[{{{svc},"canaryWeight":"10"}}]}}"#),
            "services[0].canaryWeight",
            "invalid type",
        ),
        (
            r#"{"services":[{"name":"a/b","hosts":[]}]}"#.into(),
            r#"services["a/b"].hosts"#,
            "at least one",
        ),
        (
            r#"{"services":[{"name":"a/b"}]}"#.into(),
            "services[0]",
            "missing field `hosts`",
        ),
        (
            r#"{"services":[{"name":"","hosts":["b"]}]}"#.into(),
            "services[0].name",
            "empty",
        ),
        (
            r#"{"services":[{"name":"a/b","hosts":["b:9080"]}]}"#.into(),
            r#"services["a/b"].hosts[0]"#,
            "port",
        ),
        (
            r#"{"services":[{"name":"a/b","hosts":["http://b"]}]}"#.into(),
            r#"services["a/b"].hosts[0]"#,
            "not a hostname",
        ),
        (
            r#"{"services":[{"name":"a/b","hosts":["b"]},{"name":"a/c","hosts":["c","B"]}]}"#
                .into(),
            r#"services["a/c"].hosts[1]"#,
            r#"already claimed by service "a/b""#,
        ),
        (
            r#"{"services":[{"name":"a/b","hosts":["b","b"]}]}"#.into(),
            r#"services["a/b"].hosts[1]"#,
            "listed twice",
        ),
        (
            r#"{"services":[{"name":"a/b","hosts":["b"]},{"name":"a/b","hosts":["c"]}]}"#.into(),
            "services[1].name",
            "already the name",
        ),
        (
            format!(
                r#"{{"services":[{{{svc},"headerRoutes":[{{"name":"r","match":[{{"header":"x","value":{{"contains":"y"}}}}]}}]}}]}}"#
            ),
            "services[0].headerRoutes[0].match[0].value",
            "unknown variant `contains`",
        ),
        (
            format!(
                r#"{{"services":[{{{svc},"headerRoutes":[{{"name":"r","match":[{{"header":"x","value":{{"regex":"(unclosed"}}}}]}}]}}]}}"#
            ),
            r#"services["a/b"].headerRoutes[0].match[0].value.regex"#,
            "invalid regex",
        ),
        (
            format!(r#"{{"services":[{{{svc},"headerRoutes":[{{"name":"r","match":[]}}]}}]}}"#),
            r#"services["a/b"].headerRoutes[0].match"#,
            "at least one",
        ),
        (
            format!(
                r#"{{"services":[{{{svc},"headerRoutes":[{{"name":"r","match":[{{"value":{{"exact":"y"}}}}]}}]}}]}}"#
            ),
            r#"services["a/b"].headerRoutes[0].match[0]"#,
            "needs",
        ),
        (
            format!(
                r#"{{"services":[{{{svc},"headerRoutes":[{{"name":"r","match":[{{"header":"x","cookie":"c","value":{{"exact":"y"}}}}]}}]}}]}}"#
            ),
            r#"services["a/b"].headerRoutes[0].match[0]"#,
            "not both",
        ),
        (
            format!(
                r#"{{"services":[{{{svc},"headerRoutes":[{{"name":"r","match":[{{"header":"bad header","value":{{"exact":"y"}}}}]}}]}}]}}"#
            ),
            r#"services["a/b"].headerRoutes[0].match[0].header"#,
            "not a valid header name",
        ),
        (
            format!(r#"{{"services":[{{{svc},"sticky":{{"query":"u"}}}}]}}"#),
            "services[0].sticky",
            "unknown variant",
        ),
        (
            format!(r#"{{"services":[{{{svc},"stableHash":"not a hash!"}}]}}"#),
            r#"services["a/b"].stableHash"#,
            "label value",
        ),
        (
            r#"{"decisionHeader":":authority"}"#.into(),
            "decisionHeader",
            "not a valid header name",
        ),
        (
            r#"{"hashHeader":"x-canary-subset"}"#.into(),
            "hashHeader",
            "differ",
        ),
    ];
    for (json, field, reason) in cases {
        let err = CompiledConfig::from_json(json.as_bytes())
            .expect_err(&format!("config should be rejected: {json}"));
        assert_eq!(err.field, field, "wrong field for {json}: {err}");
        assert!(
            err.reason.contains(reason),
            "reason for {json} should mention {reason:?}: {err}"
        );
    }
}

#[test]
fn absurdly_large_input_is_rejected_before_parsing() {
    let mut json = String::from(r#"{"services":[],"pad":""#);
    json.push_str(&"x".repeat(MAX_CONFIG_BYTES));
    json.push_str("\"}");
    let err = CompiledConfig::from_json(json.as_bytes()).unwrap_err();
    assert_eq!(err.field, "(root)");
    assert!(err.reason.contains("limit"), "{err}");
}

#[test]
fn regex_that_would_compile_huge_is_rejected() {
    let json = r#"{"services":[{"name":"a/b","hosts":["b"],"headerRoutes":[{"name":"r","match":[{"header":"x","value":{"regex":"((a{100}){100}){100}"}}]}]}]}"#;
    let err = CompiledConfig::from_json(json.as_bytes()).unwrap_err();
    assert_eq!(
        err.field,
        r#"services["a/b"].headerRoutes[0].match[0].value.regex"#
    );
}

#[test]
fn the_error_message_is_one_line_with_field_first() {
    let err = CompiledConfig::from_json(
        br#"{"services":[{"name":"a","hosts":["a"],"canaryWeight":20000}]}"#,
    )
    .unwrap_err();
    let line = err.to_string();
    assert!(
        line.starts_with(r#"services["a"].canaryWeight: "#),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

/// The message is logged as one line by every sidecar: a CR or LF (or another control
/// character) in a refused value must not start a forged log line or drive a terminal.
#[test]
fn control_characters_in_refused_values_are_escaped_in_the_message() {
    let err = CompiledConfig::from_json(
        br#"{"services":[{"name":"a","hosts":["a"],"canaryWeight":10,
            "sticky":{"header":"x\r\n[critical] forged\u001b[2J\t"}}]}"#,
    )
    .unwrap_err();
    let line = err.to_string();
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(
        line.contains(r#""x\r\n[critical] forged\u{1b}[2J\t" is not a valid header name"#),
        "{line}"
    );
    // The fields themselves keep the raw value; only the message escapes.
    assert!(err.reason.contains('\n'));
    let direct = ConfigError::new("services[0].\u{2028}", "bad\0value \"q\" é").to_string();
    assert_eq!(direct, r#"services[0].\u{2028}: bad\0value "q" é"#);
}

#[test]
fn services_are_written_keyed_by_name_so_each_rollout_owns_its_own_entry() {
    let config = PluginConfig {
        services: vec![reviews()],
        ..PluginConfig::default()
    };
    let json = config.to_json_value();
    let entry = &json["services"]["bookinfo/reviews"];
    assert_eq!(entry["canaryWeight"], 50);
    assert!(entry.get("name").is_none(), "the key is the name: {json}");
}

#[test]
fn the_older_list_form_and_the_keyed_form_read_the_same() {
    let keyed = br#"{"services":{"a/b":{"hosts":["b"],"canaryWeight":7}}}"#;
    let listed = br#"{"services":[{"name":"a/b","hosts":["b"],"canaryWeight":7}]}"#;
    let same_name = br#"{"services":{"a/b":{"name":"a/b","hosts":["b"],"canaryWeight":7}}}"#;
    let keyed = PluginConfig::from_json(keyed).unwrap();
    assert_eq!(keyed, PluginConfig::from_json(listed).unwrap());
    assert_eq!(keyed, PluginConfig::from_json(same_name).unwrap());
    assert_eq!(keyed.services[0].name, "a/b");
}

#[test]
fn a_keyed_entry_is_refused_naming_it_when_it_is_wrong() {
    let cases: [(&[u8], &str, &str); 5] = [
        (
            br#"{"services":{"a/b":{"name":"a/c","hosts":["b"]}}}"#,
            r#"services["a/b"].name"#,
            "differs from the entry's key",
        ),
        (
            br#"{"services":{"a/b":{"hosts":["b"],"canaryWeight":"10"}}}"#,
            r#"services["a/b"].canaryWeight"#,
            "invalid type",
        ),
        (
            br#"{"services":"a/b"}"#,
            "services",
            "object keyed by service name",
        ),
        (
            br#"{"services":{"a/b":{"hosts":["b"],"decisionHeader":"bad header"}}}"#,
            r#"services["a/b"].decisionHeader"#,
            "not a valid header name",
        ),
        (
            br#"{"hashHeader":"x-h","services":{"a/b":{"hosts":["b"],"decisionHeader":"X-H"}}}"#,
            r#"services["a/b"].decisionHeader"#,
            "differ from hashHeader",
        ),
    ];
    for (json, field, reason) in cases {
        let err = CompiledConfig::from_json(json).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.reason.contains(reason), "{err}");
    }
}

#[test]
fn more_distinct_decision_headers_than_the_limit_are_refused() {
    use canary_core::compiled::MAX_DECISION_HEADERS;
    let services = |n: usize| {
        (0..n)
            .map(|i| {
                (
                    format!("ns/s{i}"),
                    serde_json::json!({"hosts": [format!("s{i}")], "decisionHeader": format!("x-d{i}")}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
    };
    // The config's default header counts as one.
    let fits = serde_json::json!({ "services": services(MAX_DECISION_HEADERS - 1) });
    let config = CompiledConfig::from_json(fits.to_string().as_bytes()).unwrap();
    assert_eq!(config.decision_headers.len(), MAX_DECISION_HEADERS);
    let over = serde_json::json!({ "services": services(MAX_DECISION_HEADERS) });
    let err = CompiledConfig::from_json(over.to_string().as_bytes()).unwrap_err();
    assert!(err.reason.contains("distinct decision headers"), "{err}");
}
