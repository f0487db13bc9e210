//! Condition evaluation as tables: expr-lang semantics on `result`, Argo's functions, and the
//! defined outcomes for NaN, empty results and type errors (an Error measurement, never a pass).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use canary_controller::analysis::condition::{current_element_shorthand, judge, Condition};
use canary_controller::analysis::provider::{
    json_path, prometheus_result, skywalking_duration, skywalking_result,
};
use canary_controller::analysis::AnalysisPhase::{self, *};
use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

const APDEX: &str = "all(result.service_apdex.values.values, {asFloat(.value) >= 9900})";

fn apdex(values: &[i64]) -> Value {
    let values: Vec<Value> = values.iter().map(|v| json!({"value": v})).collect();
    json!({"service_apdex": {"label": null, "values": {"values": values}}})
}

fn phase(success: Option<&str>, failure: Option<&str>, result: Value) -> AnalysisPhase {
    judge(success, failure, &result, false).0
}

#[test]
fn the_fixture_apdex_condition_passes_only_when_every_value_is_at_least_9900() {
    let table = [
        (vec![9950, 9990, 9900], Successful),
        (vec![9950, 9899], Failed),
        (vec![5000], Failed),
    ];
    for (values, want) in table {
        assert_eq!(phase(Some(APDEX), None, apdex(&values)), want, "{values:?}");
    }
}

#[test]
fn expr_semantics_hold_for_the_forms_argo_templates_use() {
    let r = json!({"list": [2, 2.5], "s": "0.97", "n": 3, "ok": true, "m": {"a": {"b": 1}}});
    let table: &[(&str, bool)] = &[
        ("result.list[0] == 2", true),
        ("result.list[1] > 2 && result.list[1] < 3", true),
        ("asFloat(result.s) >= 0.95", true),
        ("asInt(result.n) == 3", true),
        ("all(result.list, {# > 1})", true),
        ("any(result.list, {# > 2.4})", true),
        ("all(result.list, {# > 2})", false),
        ("len(result.list) == 2", true),
        ("result.ok", true),
        ("not result.ok || result.m.a.b == 1", true),
        ("result.n in [1, 2, 3]", true),
        ("isNil(result.missing)", true),
        ("default(result.missing, 5) == 5", true),
        ("result.s == \"0.97\"", true),
        ("filter(result.list, {# > 2})[0] == 2.5", true),
    ];
    for (code, want) in table {
        let c = Condition::compile(code).unwrap_or_else(|e| panic!("{code}: {e}"));
        assert_eq!(c.holds(&r), Ok(*want), "{code}");
    }
}

#[test]
fn a_dot_field_starts_the_current_element_only_where_an_operand_begins() {
    let table = [
        ("all(x, {.value > 1})", "all(x, {#.value > 1})"),
        (
            "all(x, {asFloat(.value) >= 1})",
            "all(x, {asFloat(#.value) >= 1})",
        ),
        ("result.a.b", "result.a.b"),
        ("f(1).b + .c", "f(1).b + #.c"),
        ("\"a .b\" == .c", "\"a .b\" == #.c"),
        ("x == 1.5", "x == 1.5"),
        ("all(x, {#.v > 1})", "all(x, {#.v > 1})"),
    ];
    for (input, want) in table {
        assert_eq!(current_element_shorthand(input), want, "{input}");
    }
}

#[test]
fn argo_success_and_failure_rules_decide_the_measurement_phase() {
    let r = json!([0.5]);
    let table = [
        (Some("result[0] > 0.9"), None, Failed),
        (Some("result[0] > 0.1"), None, Successful),
        (None, Some("result[0] > 0.9"), Successful),
        (None, Some("result[0] > 0.1"), Failed),
        (
            Some("result[0] > 0.9"),
            Some("result[0] < 0.1"),
            Inconclusive,
        ),
        (Some("result[0] > 0.1"), Some("result[0] > 0.4"), Failed),
        (None, None, Successful),
    ];
    for (s, f, want) in table {
        assert_eq!(phase(s, f, r.clone()), want, "{s:?} {f:?}");
    }
}

#[test]
fn a_condition_that_does_not_compile_is_an_error_naming_it_never_a_pass() {
    for code in ["result >", "all(result, {", "result[0] >= )"] {
        let err = Condition::compile(code).unwrap_err();
        assert!(
            err.contains("does not compile") && err.contains(code),
            "{err}"
        );
        let (p, message) = judge(Some(code), None, &json!([1]), false);
        assert_eq!(p, Error);
        assert!(message.unwrap().contains("does not compile"));
    }
}

#[test]
fn type_errors_missing_fields_and_non_boolean_conditions_are_error_measurements() {
    let r = json!({"s": "x", "list": [1]});
    for code in [
        "result.s > 1",
        "asFloat(result.s) > 1",
        "result.list[5] > 1",
        "result.missing.deeper > 1",
        "result.list[0] + 1",
        "unknownFunction(result) > 1",
    ] {
        let (p, message) = judge(Some(code), None, &r, false);
        assert_eq!(p, Error, "{code}");
        assert!(message.is_some_and(|m| !m.is_empty()), "{code}");
    }
}

#[test]
fn nan_is_an_error_measurement_unless_the_condition_asks_isnan() {
    let (p, message) = judge(Some("result[0] < 0.05"), None, &json!(["NaN"]), false);
    assert_eq!(p, Error);
    assert!(message.unwrap().contains("NaN"));
    assert_eq!(
        phase(
            Some("isNaN(result[0]) || result[0] < 0.05"),
            None,
            json!(["NaN"])
        ),
        Successful
    );
    assert_eq!(phase(Some("isNaN(result[0])"), None, json!([0.01])), Failed);
}

/// `isInf` (Argo's): true for +Inf and -Inf in any spelling Prometheus uses, false for NaN and
/// finite numbers, an error (never a pass) for what is not a number.
#[test]
fn is_inf_is_true_only_for_infinities_and_an_error_for_non_numbers() {
    let holds = |v: Value| Condition::compile("isInf(result)").unwrap().holds(&v);
    let table = [
        (json!("+Inf"), Ok(true)),
        (json!("Inf"), Ok(true)),
        (json!("-Inf"), Ok(true)),
        (json!("NaN"), Ok(false)),
        (json!(1.5), Ok(false)),
        (json!(-1e308), Ok(false)),
        (json!(0), Ok(false)),
        (json!(42), Ok(false)),
    ];
    for (v, want) in table {
        assert_eq!(holds(v.clone()), want, "isInf({v})");
    }
    for v in [json!("fast"), json!(true), json!(null), json!([1.0])] {
        let err = holds(v.clone()).unwrap_err();
        assert!(err.contains("isInf"), "isInf({v}): {err}");
    }
    // In a rule: an infinite latency fails the measurement; a finite one passes.
    let rule = |v: Value| {
        phase(
            Some("result[0] < 0.5"),
            Some("isInf(result[0])"),
            json!([v]),
        )
    };
    assert_eq!(rule(json!("+Inf")), Failed);
    assert_eq!(rule(json!(0.25)), Successful);
    assert_eq!(rule(json!(0.75)), Inconclusive);
}

#[test]
fn an_empty_result_is_an_error_measurement_not_a_vacuous_pass() {
    // all() over no values is true in expr: without the no-data rule this would promote.
    assert_eq!(
        Condition::compile(APDEX).unwrap().holds(&apdex(&[])),
        Ok(true)
    );
    let (sw, no_data) = skywalking_result(&json!({"data": apdex(&[])})).unwrap();
    assert!(no_data);
    assert_eq!(judge(Some(APDEX), None, &sw, no_data).0, Error);
    let (prom, no_data) = prometheus_result(
        &json!({"status": "success", "data": {"resultType": "vector", "result": []}}),
    )
    .unwrap();
    assert_eq!((prom, no_data), (json!([]), true));
}

#[test]
fn prometheus_vectors_become_lists_of_values_and_scalars_values() {
    let vector = json!({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"a": "1"}, "value": [1700000000.0, "0.25"]},
        {"metric": {"a": "2"}, "value": [1700000000.0, "NaN"]}]}});
    assert_eq!(
        prometheus_result(&vector).unwrap(),
        (json!([0.25, "NaN"]), false)
    );
    let scalar =
        json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}});
    assert_eq!(prometheus_result(&scalar).unwrap(), (json!(3.0), false));
    let err = json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
    assert!(prometheus_result(&err).unwrap_err().contains("parse error"));
}

#[test]
fn skywalking_duration_is_the_window_ending_now_at_minute_precision() {
    let now = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 59).unwrap();
    assert_eq!(
        skywalking_duration(now, std::time::Duration::from_secs(180)),
        json!({"start": "2026-03-04 0503", "end": "2026-03-04 0506", "step": "MINUTE"})
    );
    let errors = json!({"data": null, "errors": [{"message": "no such metric"}]});
    assert!(skywalking_result(&errors)
        .unwrap_err()
        .contains("no such metric"));
}

#[test]
fn web_json_paths_read_fields_and_indexes() {
    let v = json!({"data": {"items": [{"ok": true}, {"ok": false}]}});
    assert_eq!(json_path(&v, "{$.data.items[1].ok}").unwrap(), json!(false));
    assert_eq!(
        json_path(&v, "$.data.items[0]").unwrap(),
        json!({"ok": true})
    );
    assert_eq!(json_path(&v, "{$}").unwrap(), v);
    assert!(json_path(&v, "$.data.nope").is_err());
}
