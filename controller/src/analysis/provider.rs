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
        let metric: Metric = serde_json::from_value(json).map_err(|e| e.to_string())?;
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
    if let Some(prom) = &p.prometheus {
        let timeout = prom
            .timeout
            .unwrap_or(DEFAULT_PROMETHEUS_TIMEOUT_SECONDS)
            .max(1);
        let url = format!(
            "{}/api/v1/query?query={}&time={}&timeout={timeout}s",
            prom.address.trim_end_matches('/'),
            percent_encode(&prom.query),
            now.timestamp_millis() as f64 / 1000.0,
        );
        let answer = call(
            "GET",
            &url,
            &[],
            None,
            Duration::from_secs(timeout.unsigned_abs()),
        )
        .await?;
        return prometheus_result(&answer);
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

/// One Prometheus instant query at `address` (`/api/v1/query`, evaluated now), its answer
/// shaped as for analysis ([`prometheus_result`]). For the dashboard's observed split.
pub async fn prometheus_query(
    address: &str,
    query: &str,
    timeout: Duration,
) -> Result<(Value, bool), String> {
    let url = format!(
        "{}/api/v1/query?query={}&timeout={}s",
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
