//! What "no data" means with a real SkyWalking OAP (`make oap-build`), measured by the
//! controller's own provider code (`provider::measure`): `readMetricsValues` answers 0 for a
//! minute without data, so the fixture's template fails a healthy canary that started inside its
//! window and counts an idle one as measured; SkyWalking's MQE (`execExpression`) answers null
//! for such minutes, and the template the README ships on it judges only the minutes with data
//! and says "no data" when there are none.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use canary_controller::analysis::provider::measure;
use canary_controller::analysis::{AnalysisPhase, Measurement, Metric};
use chrono::Utc;
use serde_json::{json, Value};
use support::oap::Oap;

/// The fixture's metric (tse-gitops-demo `argo/rollout/analysis.yaml`), its address pointed at
/// `oap` and its `service-name` argument substituted, as the controller resolves it.
fn fixture_metric(oap: &Oap, service: &str) -> Metric {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/tse-gitops-demo/argo/rollout/analysis.yaml");
    let template: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut metric = template["spec"]["metrics"][0].clone();
    let sw = &mut metric["provider"]["skywalking"];
    sw["address"] = json!(oap.url());
    sw["query"] = json!(sw["query"]
        .as_str()
        .unwrap()
        .replace("{{ args.service-name }}", service));
    serde_json::from_value(metric).unwrap()
}

/// The same check on MQE, as the README ships it: minutes without data are null and left out;
/// none left is "no data" (an Error measurement: inconclusive, never a pass).
fn mqe_metric(oap: &Oap, service: &str) -> Metric {
    serde_json::from_value(json!({
        "name": "apdex", "interval": "1m", "failureLimit": 3,
        "successCondition": "all(filter(result.service_apdex.results[0].values, {.value != nil}), {asFloat(.value) >= 9900})",
        "provider": {"skywalking": {
            "address": oap.url(), "interval": "3m",
            "query": format!(
                "query queryData($duration: Duration!) {{ service_apdex: execExpression(expression: \"service_apdex\", \
                 entity: {{ serviceName: \"{service}\", normal: true }}, duration: $duration) {{ type error results {{ values {{ value }} }} }} }}"
            )
        }}
    }))
    .unwrap()
}

async fn take(metric: &Metric) -> Measurement {
    measure(metric, &BTreeMap::new(), Utc::now()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_real_oap_empty_minutes_read_zero_and_only_mqe_tells_them_from_a_slow_canary() {
    const STARTED: &str = "canary|reviews|just-started|cluster-1|-";
    const IDLE: &str = "canary|reviews|idle|cluster-1|-";
    let oap = tokio::task::spawn_blocking(|| Oap::start(Duration::from_secs(1)))
        .await
        .unwrap();
    // A healthy canary whose first requests are now (50 ms: satisfied, apdex 10000).
    oap.send_segments(STARTED, &[50; 20], Utc::now().timestamp_millis());
    // OAP makes the minute readable within persistentPeriod (1 s): wait (bounded) until MQE
    // shows it, so both queries read the same stored minutes.
    let mqe = mqe_metric(&oap, STARTED);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let started_mqe = loop {
        let m = take(&mqe).await;
        if m.phase == AnalysisPhase::Successful {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "OAP never showed the canary's minute: {m:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // readMetricsValues: the 3 minutes before the first request read 0, so the fixture's
    // all(... >= 9900) fails the healthy canary.
    let started_fixture = take(&fixture_metric(&oap, STARTED)).await;
    assert_eq!(
        started_fixture.phase,
        AnalysisPhase::Failed,
        "{started_fixture:#?}"
    );
    let value: Value = serde_json::from_str(started_fixture.value.as_deref().unwrap()).unwrap();
    let points: Vec<i64> = value["service_apdex"]["values"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_i64().unwrap())
        .collect();
    assert_eq!(points.len(), 4, "a 3-minute window, both ends: {value}");
    assert!(
        points.contains(&10_000) && points.contains(&0),
        "{points:?}"
    );
    // MQE: the same minutes, the empty ones null; the check passes on the minute with data.
    let value: Value = serde_json::from_str(started_mqe.value.as_deref().unwrap()).unwrap();
    let values = value["service_apdex"]["results"][0]["values"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(values.len(), 4, "{value}");
    assert!(values.iter().any(|v| v["value"].is_null()), "{value}");
    assert!(values.iter().any(|v| v["value"] == "10000"), "{value}");

    // An idle canary (no request at all): readMetricsValues still answers numbers (all 0), a
    // measured failure; MQE answers only nulls: no data, an Error (inconclusive), never a pass.
    let idle_fixture = take(&fixture_metric(&oap, IDLE)).await;
    assert_eq!(
        idle_fixture.phase,
        AnalysisPhase::Failed,
        "{idle_fixture:#?}"
    );
    let idle_mqe = take(&mqe_metric(&oap, IDLE)).await;
    assert_eq!(idle_mqe.phase, AnalysisPhase::Error, "{idle_mqe:#?}");
}
