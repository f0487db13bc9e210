//! The split the filter actually made, read every few seconds for every rollout in scope:
//! from a CLIENT sidecar's Envoy admin counters (`--envoy-admin`, the same reading as
//! `kubectl canary status --envoy-admin`), or from Prometheus scraping the sidecars
//! (`--prometheus`, summed over every sidecar it scrapes).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::view::{split_view, ObservedSplitView};
use super::watch::{key_of, ClusterState, Source};
use crate::analysis::provider::prometheus_query;
use crate::cli::envoy::{fetch_stats, split_from_stats};

/// Time between readings.
pub const READ_EVERY: Duration = Duration::from_secs(2);

/// The window of Prometheus' `rate()`.
const RATE_WINDOW: &str = "1m";

/// Where the observed split comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitSource {
    /// An Envoy admin URL of a client sidecar, `http://127.0.0.1:15000`.
    EnvoyAdmin(String),
    /// A Prometheus URL, `http://prometheus.istio-system:9090`.
    Prometheus(String),
}

impl SplitSource {
    /// `Envoy admin http://...` or `Prometheus http://...`.
    pub fn describe(&self) -> String {
        match self {
            Self::EnvoyAdmin(url) => format!("Envoy admin {url}"),
            Self::Prometheus(url) => format!("Prometheus {url}"),
        }
    }
}

/// The page's view of a rollout's observed split.
pub fn view_of(
    source: &SplitSource,
    state: &ClusterState,
    key: &(String, String),
) -> ObservedSplitView {
    state.with_split(key, |h| {
        split_view(
            source.describe(),
            h.total.as_ref(),
            h.samples(),
            h.error.clone(),
        )
    })
}

/// Reads the split every [`READ_EVERY`] for every rollout in the state, until dropped.
pub async fn read_forever(source: SplitSource, state: Arc<ClusterState>) {
    let mut tick = tokio::time::interval(READ_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match &source {
            SplitSource::EnvoyAdmin(url) => read_envoy(url, &state).await,
            SplitSource::Prometheus(url) => read_prometheus(url, &state).await,
        };
        state.set_problem(Source::Split, result.err());
        state.changed();
    }
}

async fn read_envoy(url: &str, state: &ClusterState) -> Result<(), String> {
    let admin = url.trim_end_matches('/').to_owned();
    let body = tokio::task::spawn_blocking(move || fetch_stats(&admin, Duration::from_secs(3)))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let now = chrono::Utc::now().timestamp_millis();
    for rollout in state.rollouts.state() {
        let key = key_of(&rollout);
        let service = rollout.spec.strategy.service();
        state.with_split(&key, |h| match &body {
            Ok(body) => h.record_counts(now, split_from_stats(body, &key.0, &service)),
            Err(e) => h.record_error(e.clone()),
        });
    }
    body.map(|_| ())
}

async fn read_prometheus(url: &str, state: &ClusterState) -> Result<(), String> {
    let mut last_error = None;
    for rollout in state.rollouts.state() {
        let key = key_of(&rollout);
        let service = rollout.spec.strategy.service();
        let (canary_q, total_q) = prometheus_queries(&key.0, &service);
        let timeout = Duration::from_secs(5);
        let read = tokio::try_join!(
            prometheus_query(url, &canary_q, None, timeout),
            prometheus_query(url, &total_q, None, timeout),
        )
        .map(|(canary, total)| (rate_of(&canary.0), rate_of(&total.0)));
        let now = chrono::Utc::now().timestamp_millis();
        state.with_split(&key, |h| match &read {
            Ok((canary, total)) => h.record_rates(now, *canary, *total),
            Err(e) => h.record_error(e.clone()),
        });
        if let Err(e) = read {
            last_error = Some(e);
        }
    }
    last_error.map_or(Ok(()), Err)
}

/// The PromQL for the canary decisions per second and all decisions per second of
/// `service` in `namespace`, summed over every scraped sidecar (names:
/// [`crate::analysis::provider::decision_metric`]).
pub fn prometheus_queries(namespace: &str, service: &str) -> (String, String) {
    let name = |subsets: &str| {
        crate::analysis::provider::decision_metric(namespace, service, subsets, ".+")
    };
    let query = |subsets: &str| {
        format!(
            "sum(rate({{__name__=~\"{}\"}}[{RATE_WINDOW}]))",
            name(subsets)
        )
    };
    (query("canary"), query("(stable|canary)"))
}

/// The number in a summed query's result (`[rate]`); no sample means no decisions.
fn rate_of(result: &Value) -> f64 {
    result
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::provider::prometheus_result;
    use serde_json::json;

    #[test]
    fn the_prometheus_queries_name_the_counters_envoy_exports() {
        let (canary, total) = prometheus_queries("bookinfo", "reviews-v2");
        assert_eq!(
            canary,
            "sum(rate({__name__=~\"wasmcanary_decision_bookinfo_reviews_v2_canary_.+\"}[1m]))"
        );
        assert_eq!(
            total,
            "sum(rate({__name__=~\"wasmcanary_decision_bookinfo_reviews_v2_(stable|canary)_.+\"}[1m]))"
        );
    }

    #[test]
    fn a_summed_rate_is_read_and_no_sample_is_zero() {
        let answer = json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [1700000000.0, "12.5"]}]}});
        assert_eq!(rate_of(&prometheus_result(&answer).unwrap().0), 12.5);
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(rate_of(&prometheus_result(&empty).unwrap().0), 0.0);
    }
}
