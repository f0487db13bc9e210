//! Taking a measurement: the HTTP call to SkyWalking, Prometheus or a web endpoint (I/O), and
//! the pure pieces around it (request bodies, response shapes, JSON paths) that tests pin down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::condition::judge;
use super::redact::Redactor;
use super::run::{AnalysisPhase, Measurement};
use super::template::{substitute_value, Metric};
use crate::duration::parse_duration;

/// Default SkyWalking query window (`skywalking.interval`).
pub const DEFAULT_SKYWALKING_WINDOW: Duration = Duration::from_secs(300);
/// Default Prometheus query timeout (Argo's).
pub const DEFAULT_PROMETHEUS_TIMEOUT_SECONDS: i64 = 30;
/// Default web request timeout.
pub const DEFAULT_WEB_TIMEOUT_SECONDS: i64 = 10;
/// Largest answer read from a provider.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> Result<&'static HttpsClient, String> {
    static CLIENT: OnceLock<Result<HttpsClient, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| format!("loading the system's TLS roots: {e}"))?
                .https_or_http()
                .enable_http1()
                .build();
            Ok(Client::builder(TokioExecutor::new()).build(https))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// SkyWalking's `$duration` variable as Argo builds it: the window `[now - window, now]` at
/// minute precision, times as `YYYY-MM-DD HHmm` (Go layout `2006-01-02 1504`), step `MINUTE`.
/// Argo formats in the controller's local zone; this controller uses UTC (a container's zone,
/// and SkyWalking OAP's default).
pub fn skywalking_duration(now: DateTime<Utc>, window: Duration) -> Value {
    let start = now - chrono::Duration::from_std(window).unwrap_or_default();
    json!({
        "start": start.format("%Y-%m-%d %H%M").to_string(),
        "end": now.format("%Y-%m-%d %H%M").to_string(),
        "step": "MINUTE",
    })
}

/// The GraphQL request body sent to `<address>/graphql`.
pub fn skywalking_request(query: &str, now: DateTime<Utc>, window: Duration) -> Value {
    json!({"query": query, "variables": {"duration": skywalking_duration(now, window)}})
}

/// The GraphQL answer's `data` (what conditions see as `result`), or the server's errors.
/// `no_data` when it carries no number at all.
pub fn skywalking_result(answer: &Value) -> Result<(Value, bool), String> {
    if let Some(errors) = answer.get("errors").filter(|e| !e.is_null()) {
        let messages: Vec<String> = errors
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["message"].as_str().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        return Err(format!(
            "SkyWalking answered errors: {}",
            messages.join("; ")
        ));
    }
    let data = answer
        .get("data")
        .filter(|d| !d.is_null())
        .cloned()
        .ok_or("no results returned from SkyWalking query")?;
    let no_data = !has_number(&data);
    Ok((data, no_data))
}

/// Whether `v` holds a number anywhere. SkyWalking's MQE (`execExpression`) gives values as
/// strings (`"9950"`) and a minute without data as null: a numeric string counts.
fn has_number(v: &Value) -> bool {
    match v {
        Value::Number(_) => true,
        Value::String(s) => s.trim().parse::<f64>().is_ok_and(f64::is_finite),
        Value::Array(a) => a.iter().any(has_number),
        Value::Object(o) => o.values().any(has_number),
        _ => false,
    }
}

/// A Prometheus `/api/v1/query` answer as Argo shapes it: a vector becomes the list of its
/// sample values (`result[0]`), a scalar its value. Values are numbers, NaN/±Inf as Prometheus
/// spells them (`"NaN"`). `no_data` for an empty vector.
pub fn prometheus_result(answer: &Value) -> Result<(Value, bool), String> {
    if answer["status"] != "success" {
        return Err(format!(
            "Prometheus answered {}: {}",
            answer["errorType"].as_str().unwrap_or("an error"),
            answer["error"].as_str().unwrap_or("no message")
        ));
    }
    let data = &answer["data"];
    let number = |v: &Value| -> Result<Value, String> {
        let s = v
            .as_str()
            .ok_or_else(|| format!("sample value {v} is not a string"))?;
        match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(json!(f)),
            Ok(_) | Err(_) if matches!(s, "NaN" | "+Inf" | "-Inf" | "Inf") => Ok(json!(s)),
            _ => Err(format!("sample value {s:?} is not a number")),
        }
    };
    match data["resultType"].as_str() {
        Some("vector") => {
            let samples = data["result"].as_array().cloned().unwrap_or_default();
            let values = samples
                .iter()
                .map(|s| number(&s["value"][1]))
                .collect::<Result<Vec<_>, _>>()?;
            let empty = values.is_empty();
            Ok((Value::Array(values), empty))
        }
        Some("scalar") => Ok((number(&data["result"][1])?, false)),
        other => Err(format!(
            "Prometheus result type {} is not supported (use a query giving a vector or a scalar)",
            other.unwrap_or("missing")
        )),
    }
}

/// Reads `path` (`{$.a.b[0].c}`, `$.a.b`, or `{$}`) from `v`. A missing key is an error.
pub fn json_path(v: &Value, path: &str) -> Result<Value, String> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(p)
        .trim();
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut cur = v;
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let (key, tail) = r.split_at(end);
            cur = cur
                .get(key)
                .ok_or_else(|| format!("jsonPath {path}: no field {key:?}"))?;
            rest = tail;
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r
                .find(']')
                .ok_or_else(|| format!("jsonPath {path}: unclosed ["))?;
            let (index, tail) = r.split_at(end);
            let index = index.trim().trim_matches(|c| c == '\'' || c == '"');
            cur = match index.parse::<usize>() {
                Ok(i) => cur.get(i),
                Err(_) => cur.get(index),
            }
            .ok_or_else(|| format!("jsonPath {path}: nothing at [{index}]"))?;
            rest = tail.get(1..).unwrap_or_default();
        } else {
            return Err(format!("jsonPath {path}: cannot read {rest:?}"));
        }
    }
    Ok(cur.clone())
}

/// Characters of a measurement's message kept (after redaction).
pub const MESSAGE_CHARS_KEPT: usize = 512;

/// Takes one measurement of `metric` now: fills in the Secret-backed `secrets`, calls the
/// provider, judges the result. Never fails: a call or judgement that fails is an Error
/// measurement whose message says why. The secrets' values are redacted from the value and the
/// message in every spelling ([`Redactor`]), before either is shortened.
pub async fn measure(
    metric: &Metric,
    secrets: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> Measurement {
    let started_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let outcome = async {
        let json = serde_json::to_value(metric).map_err(|e| e.to_string())?;
        let json = substitute_value(&json, secrets, &BTreeSet::new())?;
        let mut substituted: Metric = serde_json::from_value(json).map_err(|e| e.to_string())?;
        // What the controller set for this measurement only (never serialized) carries over.
        if let (Some(split), Some(given)) = (
            substituted.provider.wasm_split.as_mut(),
            metric.provider.wasm_split.as_ref(),
        ) {
            split.target.clone_from(&given.target);
        }
        let metric = substituted;
        let (result, no_data) = query(&metric, now).await?;
        Ok::<_, String>((metric, result, no_data))
    }
    .await;
    let finished_at = Some(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let redactor =
        Redactor::new(secrets.values().map(String::as_str)).with_spelling(percent_encode);
    let message = |m: String| redactor.redact_and_cut(&m, MESSAGE_CHARS_KEPT);
    match outcome {
        Ok((metric, result, no_data)) => {
            let (phase, why) = judge(
                metric.success_condition.as_deref(),
                metric.failure_condition.as_deref(),
                &result,
                no_data,
            );
            Measurement {
                phase,
                value: Some(redactor.redact_json(&result)),
                message: why.map(message),
                started_at,
                finished_at,
            }
        }
        Err(e) => Measurement {
            phase: AnalysisPhase::Error,
            value: None,
            message: Some(message(e)),
            started_at,
            finished_at,
        },
    }
}

async fn query(metric: &Metric, now: DateTime<Utc>) -> Result<(Value, bool), String> {
    let p = &metric.provider;
    if let Some(sw) = &p.skywalking {
        let window = sw
            .interval
            .as_ref()
            .map(|i| parse_duration(&Value::String(i.clone())))
            .transpose()?
            .unwrap_or(DEFAULT_SKYWALKING_WINDOW);
        let url = format!("{}/graphql", sw.address.trim_end_matches('/'));
        let body = skywalking_request(&sw.query, now, window).to_string();
        let answer = call(
            "POST",
            &url,
            &[("content-type".into(), "application/json".into())],
            Some(body),
            Duration::from_secs(30),
        )
        .await?;
        return skywalking_result(&answer);
    }
    if let Some(split) = &p.wasm_split {
        return wasm_split(split, now).await;
    }
    if let Some(prom) = &p.prometheus {
        let timeout = prom
            .timeout
            .unwrap_or(DEFAULT_PROMETHEUS_TIMEOUT_SECONDS)
            .max(1);
        return prometheus_query(
            &prom.address,
            &prom.query,
            Some(now),
            Duration::from_secs(timeout.unsigned_abs()),
        )
        .await;
    }
    if let Some(web) = &p.web {
        web.check()?;
        let method = web.method();
        let headers: Vec<(String, String)> = web
            .headers
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        // As Argo: zero or less means the default.
        let timeout = web
            .timeout_seconds
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_WEB_TIMEOUT_SECONDS);
        let answer = call(
            &method,
            &web.url,
            &headers,
            web.body.clone(),
            Duration::from_secs(timeout.unsigned_abs()),
        )
        .await?;
        let result = match &web.json_path {
            Some(path) => {
                json_path(&answer, path).map_err(|e| format!("{method} {}: {e}", web.url))?
            }
            None => answer,
        };
        let no_data = result.is_null();
        return Ok((result, no_data));
    }
    Err("metric has no provider".into())
}

/// Default window of a `wasmSplit` measurement.
const DEFAULT_SPLIT_WINDOW: Duration = Duration::from_secs(60);
/// Default least number of counted decisions for a `wasmSplit` verdict.
const DEFAULT_SPLIT_MIN_REQUESTS: u64 = 200;
/// Default false-alarm rate of a `wasmSplit` verdict (as the project's own split tests).
const DEFAULT_SPLIT_FALSE_ALARM_RATE: f64 = 1e-6;

/// The Prometheus name of the filter's decision counter for `subset` (`stable`, `canary`, or a
/// regex of them) and `reason` (`weight`, `sticky`, `header_route`, or a regex) of
/// `namespace/service`. Envoy 1.40 exports the counter
/// `wasmcanary.decision.<ns>_<service>.<subset>.<reason>` as
/// `wasmcanary_decision_<ns>_<service>_<subset>_<reason>` (dots and dashes as `_`; no `envoy_`
/// prefix for a wasm custom stat: read from a real Envoy scraped by a real Prometheus).
pub fn decision_metric(namespace: &str, service: &str, subset: &str, reason: &str) -> String {
    format!(
        "{}_decision_{}_{subset}_{reason}",
        canary_core::metrics::PREFIX,
        canary_core::metrics::stat_safe(&format!("{namespace}/{service}")).replace('-', "_")
    )
}

/// A `wasmSplit` measurement: the weighted decisions counted between `since` (the window's
/// start, not before the weight was in force) and `now`, as the difference of the summed
/// counters at the two instants (exact, no extrapolation), judged by the exact binomial test.
async fn wasm_split(
    split: &crate::analysis::template::WasmSplitMetric,
    now: DateTime<Utc>,
) -> Result<(Value, bool), String> {
    let target = split
        .target
        .as_ref()
        .ok_or("wasmSplit measures a rollout's split: it runs only in a rollout's analysis")?;
    let window = split
        .window
        .as_ref()
        .map(|w| parse_duration(&Value::String(w.clone())))
        .transpose()?
        .unwrap_or(DEFAULT_SPLIT_WINDOW);
    let mut from = now - chrono::Duration::from_std(window).unwrap_or_default();
    if let Some(since) = target.since.filter(|s| *s > from) {
        from = since;
    }
    let timeout = Duration::from_secs(DEFAULT_PROMETHEUS_TIMEOUT_SECONDS.unsigned_abs());
    let query = |subset| {
        format!(
            "sum({})",
            decision_metric(&target.namespace, &target.service, subset, "weight")
        )
    };
    let (canary_query, stable_query) = (query("canary"), query("stable"));
    // The summed counter at an instant (0 when no sidecar has counted yet).
    let sum_at = |query: &str, at: DateTime<Utc>| {
        let query = query.to_owned();
        async move {
            let (result, _) = prometheus_query(&split.address, &query, Some(at), timeout).await?;
            Ok::<f64, String>(
                result
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
            )
        }
    };
    let (canary_from, canary_now, stable_from, stable_now) = tokio::try_join!(
        sum_at(&canary_query, from),
        sum_at(&canary_query, now),
        sum_at(&stable_query, from),
        sum_at(&stable_query, now),
    )?;
    let increase = |subset: &str, before: f64, after: f64| {
        if after < before {
            return Err(format!(
                "the {subset} decision counters went down ({before} -> {after}): a sidecar restarted in the window"
            ));
        }
        Ok((after - before).round() as u64)
    };
    let canary = increase("canary", canary_from, canary_now)?;
    let stable = increase("stable", stable_from, stable_now)?;
    let total = canary + stable;
    let p = f64::from(target.weight_bp) / f64::from(canary_core::config::BASIS_POINTS);
    let alpha = split
        .false_alarm_rate
        .unwrap_or(DEFAULT_SPLIT_FALSE_ALARM_RATE);
    let region = canary_core::binomial::acceptance_region(total, p, alpha)
        .map_err(|e| format!("wasmSplit: {e}"))?;
    let result = json!({
        "canary": canary, "stable": stable, "total": total,
        "weight": p,
        "expected": [region.lo, region.hi],
        "within": region.contains(canary),
        "from": from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let no_data = total < split.min_requests.unwrap_or(DEFAULT_SPLIT_MIN_REQUESTS);
    Ok((result, no_data))
}

/// One Prometheus instant query at `address` (`/api/v1/query`, evaluated `at`, or now), its
/// answer shaped as for analysis ([`prometheus_result`]): the `prometheus` provider, `wasmSplit`
/// and the dashboard's observed split.
pub async fn prometheus_query(
    address: &str,
    query: &str,
    at: Option<DateTime<Utc>>,
    timeout: Duration,
) -> Result<(Value, bool), String> {
    let time = at
        .map(|t| format!("&time={}", t.timestamp_millis() as f64 / 1000.0))
        .unwrap_or_default();
    let url = format!(
        "{}/api/v1/query?query={}{time}&timeout={}s",
        address.trim_end_matches('/'),
        percent_encode(query),
        timeout.as_secs().max(1)
    );
    let answer = call("GET", &url, &[], None, timeout).await?;
    prometheus_result(&answer)
}

/// One HTTP call whose answer must be 2xx JSON, bounded by `timeout`. Errors may quote the
/// URL and the answer in full: the caller redacts and shortens them.
async fn call(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<String>,
    timeout: Duration,
) -> Result<Value, String> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("request to {url}: {e}"))?;
    let exchange = async {
        let resp = client()?
            .request(req)
            .await
            .map_err(|e| format!("{method} {url}: {}", error_chain(&e)))?;
        let status = resp.status();
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            // The whole answer: [`measure`] redacts Secret values, then shortens the message.
            return Err(format!(
                "{method} {url}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ));
        }
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| format!("{method} {url}: the answer is not JSON: {e}"))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{method} {url}: no answer within {}s", timeout.as_secs()))?
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
