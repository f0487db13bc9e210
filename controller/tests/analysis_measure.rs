//! Taking one measurement (`provider::measure`), against a local server that records what it
//! receives: the request each provider sends (Argo Rollouts' web provider semantics: url,
//! method, headers, body, jsonPath, timeoutSeconds; Prometheus' instant query), the measurement
//! made of the answer, failures that become Error measurements saying why, and Secret-backed
//! arguments that reach the provider but never the measurement.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::collections::BTreeMap;

use canary_controller::analysis::provider::measure;
use canary_controller::analysis::{AnalysisPhase, Measurement, Metric};
use chrono::Utc;
use serde_json::{json, Value};
use support::http_stub::{HttpStub, RecordedRequest, Reply};
use support::secret_leaks::{assert_no_token, echo_credentials, TOKEN};

fn metric(v: Value) -> Metric {
    serde_json::from_value(v).unwrap()
}

async fn take(metric: &Metric) -> Measurement {
    measure(metric, &BTreeMap::new(), Utc::now()).await
}

/// An error-rate endpoint: `{"data": {"items": [...]}}` whose second item's ratio depends on
/// the `service` asked for.
fn error_rates(r: &RecordedRequest) -> Reply {
    let ratio = match r.query_param("service").as_deref() {
        Some("reviews") => 0.97,
        _ => 0.5,
    };
    Reply::ok(&json!({"data": {"items": [{"ratio": 0.1}, {"ratio": ratio}]}}))
}

#[tokio::test]
async fn a_web_metric_sends_its_method_url_headers_and_body_and_judges_the_value_at_its_json_path()
{
    let stub = HttpStub::start(error_rates).await;
    let web = |service: &str| {
        metric(json!({
            "name": "success-ratio", "successCondition": "result > 0.9",
            "provider": {"web": {
                "url": format!("{}/api/v1/health?service={service}&window=5m", stub.url),
                "method": "post",
                "headers": [{"key": "X-Team", "value": "payments"},
                            {"key": "Content-Type", "value": "application/json"}],
                "body": r#"{"query": "success-ratio"}"#,
                "jsonPath": "{$.data.items[1].ratio}",
                "timeoutSeconds": 5
            }}
        }))
    };

    let healthy = take(&web("reviews")).await;
    assert_eq!(
        (healthy.phase, healthy.value.as_deref()),
        (AnalysisPhase::Successful, Some("0.97")),
        "{healthy:?}"
    );
    let degraded = take(&web("ratings")).await;
    assert_eq!(
        (degraded.phase, degraded.value.as_deref()),
        (AnalysisPhase::Failed, Some("0.5")),
        "the value at jsonPath for this request, judged: {degraded:?}"
    );

    let requests = stub.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r.method, "POST", "method, upper-cased");
    assert_eq!(r.target, "/api/v1/health?service=reviews&window=5m");
    assert_eq!(r.header("x-team"), Some("payments"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body_text(), r#"{"query": "success-ratio"}"#);
    assert_eq!(
        requests[1].query_param("service").as_deref(),
        Some("ratings")
    );
}

#[tokio::test]
async fn a_web_metric_is_a_get_without_a_body_by_default_and_judges_the_whole_answer() {
    let stub = HttpStub::start(|_| Reply::ok(&json!({"ok": true, "version": "v2"}))).await;
    let m = metric(json!({
        "name": "ready", "successCondition": "result.ok && result.version == \"v2\"",
        "provider": {"web": {"url": format!("{}/ready", stub.url)}}
    }));
    let taken = take(&m).await;
    assert_eq!(taken.phase, AnalysisPhase::Successful, "{taken:?}");
    assert_eq!(
        serde_json::from_str::<Value>(taken.value.as_deref().unwrap()).unwrap(),
        json!({"ok": true, "version": "v2"}),
        "no jsonPath: the whole answer"
    );
    let r = &stub.requests()[0];
    assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/ready"));
    assert!(r.body.is_empty(), "{r:?}");
}

#[tokio::test]
async fn a_body_on_a_get_is_refused_as_argo_does_before_any_request() {
    let stub = HttpStub::start(|_| Reply::ok(&json!(true))).await;
    let m = metric(json!({
        "name": "ready",
        "provider": {"web": {"url": format!("{}/ready", stub.url), "body": "{}"}}
    }));
    let taken = take(&m).await;
    assert_eq!(taken.phase, AnalysisPhase::Error);
    let message = taken.message.unwrap();
    assert!(
        message.contains("only with method POST or PUT"),
        "{message}"
    );
    assert!(stub.requests().is_empty());
    // The same check stops a rollout whose template has it before any traffic moves.
    let err = canary_controller::analysis::run::validate_metric(&m).unwrap_err();
    assert!(err.contains("metric ready: web.body"), "{err}");
}

/// Each way the call can fail is an Error measurement (counted against consecutiveErrorLimit,
/// never a pass) whose message names the request and the cause.
#[tokio::test]
async fn failures_of_the_web_call_are_error_measurements_that_say_why() {
    let stub = HttpStub::start(|r| match r.path() {
        "/unavailable" => Reply::Json(503, r#"{"error": "overloaded"}"#.into()),
        "/not-json" => Reply::Json(200, "<html>ok</html>".into()),
        "/hangs" => Reply::Silence,
        _ => Reply::ok(&json!({"data": {}})),
    })
    .await;
    let closed = {
        // A port nothing listens on: bound by the OS, then released.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let table = [
        (
            format!("{}/unavailable", stub.url),
            None,
            "HTTP 503 Service Unavailable: {\"error\": \"overloaded\"}",
        ),
        (
            format!("{}/not-json", stub.url),
            None,
            "the answer is not JSON",
        ),
        (format!("{}/hangs", stub.url), None, "no answer within 1s"),
        (
            format!("{}/fine", stub.url),
            Some("{$.data.ratio}"),
            "jsonPath {$.data.ratio}: no field \"ratio\"",
        ),
        (format!("http://{closed}/fine"), None, "Connection refused"),
    ];
    for (url, json_path, want) in table {
        let m = metric(json!({
            "name": "check", "successCondition": "result == true",
            "provider": {"web": {"url": url, "jsonPath": json_path, "timeoutSeconds": 1}}
        }));
        let taken = take(&m).await;
        assert_eq!(taken.phase, AnalysisPhase::Error, "{url}: {taken:?}");
        let message = taken.message.unwrap_or_default();
        assert!(
            message.contains(want) && message.contains(&url),
            "{url}: {message:?} should name the URL and say {want:?}"
        );
        assert_eq!(taken.value, None, "{url}");
    }
}

/// `timeoutSeconds` bounds the call: a provider that never answers is an Error after that
/// many seconds, not after the default 10 (the bound is the default, far above the setting, so
/// a loaded machine cannot make this fail).
#[tokio::test]
async fn a_web_call_gives_up_after_its_timeout_seconds_not_the_default() {
    let stub = HttpStub::start(|_| Reply::Silence).await;
    let m = metric(json!({
        "name": "check",
        "provider": {"web": {"url": format!("{}/hangs", stub.url), "timeoutSeconds": 1}}
    }));
    let started = std::time::Instant::now();
    let taken = take(&m).await;
    let elapsed = started.elapsed();
    assert_eq!(taken.phase, AnalysisPhase::Error);
    assert!(
        elapsed >= std::time::Duration::from_secs(1)
            && elapsed
                < std::time::Duration::from_secs(
                    canary_controller::analysis::provider::DEFAULT_WEB_TIMEOUT_SECONDS as u64
                ),
        "gave up after {elapsed:?}"
    );
    assert_eq!(stub.requests().len(), 1, "the request was sent");
}

/// Prometheus spells infinities `"+Inf"`/`"-Inf"`; `isInf` sees them as the infinities they
/// are, so a latency quantile with no bucket high enough fails the canary.
#[tokio::test]
async fn a_prometheus_answer_of_plus_inf_drives_an_is_inf_condition() {
    let stub = HttpStub::start(|r| {
        let value = match r.query_param("query").as_deref() {
            Some(q) if q.contains("canary") => "+Inf",
            _ => "0.25",
        };
        Reply::ok(
            &json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [1_700_000_000.0, value]}]}}),
        )
    })
    .await;
    let p99 = |subset: &str| {
        metric(json!({
            "name": "p99", "successCondition": "result[0] < 0.5", "failureCondition": "isInf(result[0])",
            "provider": {"prometheus": {"address": stub.url,
                "query": format!("histogram_quantile(0.99, rate(latency_bucket{{subset=\"{subset}\"}}[1m]))")}}
        }))
    };
    let canary = take(&p99("canary")).await;
    assert_eq!(
        (canary.phase, canary.value.as_deref()),
        (AnalysisPhase::Failed, Some(r#"["+Inf"]"#)),
        "{canary:?}"
    );
    let stable = take(&p99("stable")).await;
    assert_eq!(stable.phase, AnalysisPhase::Successful, "{stable:?}");
    let r = &stub.requests()[0];
    assert_eq!(r.path(), "/api/v1/query");
    assert_eq!(
        r.query_param("query").as_deref(),
        Some("histogram_quantile(0.99, rate(latency_bucket{subset=\"canary\"}[1m]))")
    );
}

/// A token from a Secret, in a header and in a Prometheus query: the provider receives it
/// exactly; whatever the provider echoes back (in a JSON answer, in an error page, in a
/// condition's message, in the percent-encoded URL an error names) reaches the measurement as
/// `*****`, in any spelling and wherever the message is shortened.
#[tokio::test]
async fn a_secret_argument_reaches_the_provider_and_never_the_measurement() {
    let stub = HttpStub::start(echo_credentials).await;
    let secrets = BTreeMap::from([("token".to_owned(), TOKEN.to_owned())]);
    let web = |path: &str, condition: &str| {
        metric(json!({
            "name": "web", "successCondition": condition,
            "provider": {"web": {"url": format!("{}{path}", stub.url), "jsonPath": "{$.check}",
                "headers": [{"key": "Authorization", "value": "Bearer {{ args.token }}"}]}}
        }))
    };
    let prometheus = metric(json!({
        "name": "tenant-errors", "successCondition": "result[0] < 1",
        "provider": {"prometheus": {"address": stub.url,
            "query": "sum(rate(errors{tenant=\"{{ args.token }}\"}[1m]))"}}
    }));
    // Paddings that put the token where a message is cut: at the answer's 190th character,
    // and at the 500th of the whole message (cut at 512) (`{"error":"` + pad + `token Bearer ` precede it).
    let at_190 = 190 - 23;
    let prefix = format!("GET {}/denied?pad=000: HTTP 401 Unauthorized: ", stub.url);
    let at_500 = 500 - prefix.len() - 23;
    let measurements = [
        measure(&web("/whoami", "result.healthy"), &secrets, Utc::now()).await,
        measure(&web("/denied", "result.healthy"), &secrets, Utc::now()).await,
        measure(
            &web(&format!("/denied?pad={at_190}"), "result.healthy"),
            &secrets,
            Utc::now(),
        )
        .await,
        measure(
            &web(&format!("/denied?pad={at_500}"), "result.healthy"),
            &secrets,
            Utc::now(),
        )
        .await,
        // A condition that quotes the value it got instead of a boolean.
        measure(&web("/whoami", "result.caller"), &secrets, Utc::now()).await,
        measure(&prometheus, &secrets, Utc::now()).await,
    ];

    let requests = stub.requests();
    assert_eq!(requests.len(), measurements.len());
    for r in &requests[..5] {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
    assert_eq!(
        requests[5].query_param("query"),
        Some(format!("sum(rate(errors{{tenant=\"{TOKEN}\"}}[1m]))"))
    );

    let phases: Vec<AnalysisPhase> = measurements.iter().map(|m| m.phase).collect();
    use AnalysisPhase::*;
    assert_eq!(
        phases,
        [Successful, Error, Error, Error, Error, Error],
        "{measurements:#?}"
    );
    for m in &measurements {
        let text = serde_json::to_string(m).unwrap();
        assert_no_token("a measurement", &text);
        assert!(
            text.contains("*****"),
            "the echo came back, redacted: {text}"
        );
    }
    let value: Value = serde_json::from_str(measurements[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(value["caller"], "Bearer *****");
}
