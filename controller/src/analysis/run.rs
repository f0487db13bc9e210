//! Analysis runs as recorded in the rollout's status, and their state machine, pure: which
//! measurements are due, recording a taken measurement, and the phase of a metric and a run
//! (Argo Rollouts' rules). Timers are timestamps in the status, so a restarted controller
//! resumes where it stopped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::template::{Metric, ResolvedAnalysis, SecretKeyRef};
use crate::duration::parse_duration;

/// Default `consecutiveErrorLimit` (Argo's).
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: i32 = 4;
/// Measurements kept per metric in the status (counts cover all of them).
pub const MEASUREMENTS_KEPT: usize = 10;
/// Characters of a measurement's value kept in the status.
pub const VALUE_CHARS_KEPT: usize = 512;

/// Phase of a measurement, a metric or a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AnalysisPhase {
    /// Nothing measured yet.
    #[default]
    Pending,
    /// Measuring.
    Running,
    /// Passed.
    Successful,
    /// Failed: the rollout aborts.
    Failed,
    /// Could not be measured or judged too many times in a row: the rollout aborts.
    Error,
    /// Neither passed nor failed: the rollout pauses until promoted.
    Inconclusive,
}

impl AnalysisPhase {
    /// Whether no more measurements are taken.
    pub fn completed(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

/// One analysis run of a canary: background (from `startingStep`) or an `analysis` step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunStatus {
    /// `background` or `step-<index>`.
    pub name: String,
    /// The canary's pod-template hash the run judges.
    pub canary_hash: String,
    /// Index of the `analysis` step; absent for the background run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_index: Option<i32>,
    /// Overall phase: the worst of its metrics.
    #[serde(default)]
    pub phase: AnalysisPhase,
    /// Why, when not Running/Successful.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the run started (RFC 3339); `initialDelay` counts from here.
    pub started_at: String,
    /// Per metric.
    #[serde(default)]
    pub metrics: Vec<MetricResult>,
    /// The metrics as resolved when the run started (arguments substituted, except
    /// Secret-backed ones, which stay `{{ args.NAME }}` and are read at each measurement).
    /// Like Argo's AnalysisRun, a run keeps what it started with: editing the AnalysisTemplate
    /// affects the next run, not this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spec: Vec<Metric>,
    /// Secret-backed arguments of `spec`: names and Secret keys only, never values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_args: BTreeMap<String, SecretKeyRef>,
}

/// What a metric has measured so far.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    /// Metric name.
    pub name: String,
    /// Dry run: measured and recorded, never acted on (its phase does not count for the run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Measurements kept in `measurements` when not the default (`measurementRetention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<i32>,
    /// Phase.
    #[serde(default)]
    pub phase: AnalysisPhase,
    /// Why, when Failed/Error/Inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Measurements judged (errors are not counted).
    #[serde(default)]
    pub count: i32,
    /// Of which Successful.
    #[serde(default)]
    pub successful: i32,
    /// Of which Failed.
    #[serde(default)]
    pub failed: i32,
    /// Of which Inconclusive.
    #[serde(default)]
    pub inconclusive: i32,
    /// Of which Error.
    #[serde(default)]
    pub error: i32,
    /// Errors in a row, up to the last measurement.
    #[serde(default)]
    pub consecutive_errors: i32,
    /// The last measurements, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
}

/// One measurement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// Successful, Failed, Inconclusive or Error.
    pub phase: AnalysisPhase,
    /// The result as JSON (truncated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Why it errored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it was taken (RFC 3339); the next one is due `interval` later.
    pub started_at: String,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// A measurement the I/O layer took for a run's metric.
#[derive(Clone, Debug, PartialEq)]
pub struct TakenMeasurement {
    /// Run name.
    pub run: String,
    /// Metric name.
    pub metric: String,
    /// The measurement.
    pub measurement: Measurement,
}

fn time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn duration(s: Option<&str>) -> Duration {
    s.and_then(|d| parse_duration(&serde_json::Value::String(d.to_owned())).ok())
        .unwrap_or_default()
}

/// How many measurements a metric takes; `None`: until the run is terminated.
pub fn effective_count(m: &Metric) -> Option<i32> {
    match (m.count, &m.interval) {
        (Some(n), _) if n > 0 => Some(n),
        (_, None) => Some(1),
        _ => None,
    }
}

/// Checks a metric's definition (what the schema cannot): durations, limits, one provider,
/// conditions that compile.
pub fn validate_metric(m: &Metric) -> Result<(), String> {
    for (field, v) in [
        ("interval", &m.interval),
        ("initialDelay", &m.initial_delay),
    ] {
        if let Some(v) = v {
            parse_duration(&serde_json::Value::String(v.clone()))
                .map_err(|e| format!("metric {}: {field}: {e}", m.name))?;
        }
    }
    if m.count.is_some_and(|c| c > 1) && m.interval.is_none() {
        return Err(format!("metric {}: count > 1 needs an interval", m.name));
    }
    let p = &m.provider;
    let n = [
        p.skywalking.is_some(),
        p.prometheus.is_some(),
        p.web.is_some(),
        p.wasm_split.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if n != 1 {
        return Err(format!(
            "metric {}: provider needs exactly one of skywalking, prometheus, web, wasmSplit",
            m.name
        ));
    }
    if let Some(split) = &p.wasm_split {
        if let Some(w) = &split.window {
            parse_duration(&serde_json::Value::String(w.clone()))
                .map_err(|e| format!("metric {}: wasmSplit.window: {e}", m.name))?;
        }
        if split
            .false_alarm_rate
            .is_some_and(|a| !(a > 0.0 && a < 1.0))
        {
            return Err(format!(
                "metric {}: wasmSplit.falseAlarmRate must be between 0 and 1",
                m.name
            ));
        }
    }
    if let Some(w) = &p.web {
        w.check().map_err(|e| format!("metric {}: {e}", m.name))?;
    }
    if let Some(s) = &p.skywalking {
        if let Some(i) = &s.interval {
            parse_duration(&serde_json::Value::String(i.clone()))
                .map_err(|e| format!("metric {}: skywalking.interval: {e}", m.name))?;
        }
    }
    for c in [&m.success_condition, &m.failure_condition]
        .into_iter()
        .flatten()
    {
        super::condition::Condition::compile(c).map_err(|e| format!("metric {}: {e}", m.name))?;
    }
    Ok(())
}

impl AnalysisRunStatus {
    /// A new run of `metrics`, started `now`.
    pub fn start(
        name: &str,
        canary_hash: &str,
        step_index: Option<i32>,
        resolved: &ResolvedAnalysis,
        now: DateTime<Utc>,
    ) -> Self {
        let metrics = &resolved.metrics;
        Self {
            name: name.to_owned(),
            canary_hash: canary_hash.to_owned(),
            step_index,
            phase: AnalysisPhase::Running,
            message: None,
            started_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            metrics: metrics
                .iter()
                .map(|m| MetricResult {
                    name: m.name.clone(),
                    dry_run: resolved.dry_run.contains(&m.name),
                    retention: resolved.retention.get(&m.name).copied(),
                    ..MetricResult::default()
                })
                .collect(),
            spec: metrics.clone(),
            secret_args: resolved.secrets.clone(),
        }
    }

    /// When each not-completed metric is next due: `(metric, at)`.
    pub fn next_due(&self, metrics: &[Metric]) -> Vec<(String, DateTime<Utc>)> {
        if self.phase.completed() {
            return Vec::new();
        }
        let started = time(&self.started_at).unwrap_or_default();
        metrics
            .iter()
            .filter_map(|m| {
                let r = self.metrics.iter().find(|r| r.name == m.name)?;
                if r.phase.completed() {
                    return None;
                }
                let at = match r.measurements.last() {
                    None => {
                        started
                            + chrono::Duration::from_std(duration(m.initial_delay.as_deref()))
                                .unwrap_or_default()
                    }
                    Some(last) => {
                        time(&last.started_at).unwrap_or(started)
                            + chrono::Duration::from_std(duration(m.interval.as_deref()))
                                .unwrap_or_default()
                    }
                };
                Some((m.name.clone(), at))
            })
            .collect()
    }

    /// Records a measurement of `metric` and reassesses the run.
    pub fn record(&mut self, metrics: &[Metric], metric: &str, mut measurement: Measurement) {
        let Some(r) = self.metrics.iter_mut().find(|r| r.name == metric) else {
            return;
        };
        if r.phase.completed() {
            return;
        }
        if let Some(v) = &mut measurement.value {
            if v.chars().count() > VALUE_CHARS_KEPT {
                *v = format!(
                    "{}...",
                    v.chars().take(VALUE_CHARS_KEPT).collect::<String>()
                );
            }
        }
        // As Argo: `count` counts judged measurements; an error is retried, not counted.
        match measurement.phase {
            AnalysisPhase::Successful => r.successful += 1,
            AnalysisPhase::Failed => r.failed += 1,
            AnalysisPhase::Inconclusive => r.inconclusive += 1,
            _ => r.error += 1,
        }
        if measurement.phase != AnalysisPhase::Error {
            r.count += 1;
        }
        if measurement.phase == AnalysisPhase::Error {
            r.consecutive_errors += 1;
            r.message = measurement.message.clone();
        } else {
            r.consecutive_errors = 0;
        }
        r.measurements.push(measurement);
        let kept = r
            .retention
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(MEASUREMENTS_KEPT);
        let excess = r.measurements.len().saturating_sub(kept);
        r.measurements.drain(..excess);
        if let Some(m) = metrics.iter().find(|m| m.name == metric) {
            r.phase = assess_metric(m, r);
            if r.phase == AnalysisPhase::Running {
                r.message = None;
            }
        }
        self.assess();
    }

    /// The run's phase from its metrics: Failed, else Error, else Inconclusive, else Running
    /// while any runs, else Successful. Dry-run metrics do not count, unless every metric is
    /// one: then the run is Successful once they have all completed, whatever they found.
    pub fn assess(&mut self) {
        let acting: Vec<&MetricResult> = self.metrics.iter().filter(|m| !m.dry_run).collect();
        let phases: Vec<AnalysisPhase> = if acting.is_empty() {
            self.metrics
                .iter()
                .map(|m| {
                    if m.phase.completed() {
                        AnalysisPhase::Successful
                    } else {
                        m.phase
                    }
                })
                .collect()
        } else {
            acting.iter().map(|m| m.phase).collect()
        };
        let worst = [
            AnalysisPhase::Failed,
            AnalysisPhase::Error,
            AnalysisPhase::Inconclusive,
        ]
        .into_iter()
        .find(|p| phases.contains(p));
        self.phase = match worst {
            Some(p) => p,
            None if phases.iter().all(|p| *p == AnalysisPhase::Successful) => {
                AnalysisPhase::Successful
            }
            None => AnalysisPhase::Running,
        };
        let dry_findings = self
            .metrics
            .iter()
            .filter(|m| {
                m.dry_run
                    && matches!(
                        m.phase,
                        AnalysisPhase::Failed | AnalysisPhase::Error | AnalysisPhase::Inconclusive
                    )
            })
            .map(|m| format!("{} {:?}", m.name, m.phase))
            .collect::<Vec<_>>();
        self.message = self
            .metrics
            .iter()
            .find(|m| !m.dry_run && Some(m.phase) == worst)
            .map(|m| {
                format!(
                    "metric {} {:?}{}",
                    m.name,
                    m.phase,
                    m.message
                        .as_deref()
                        .map(|x| format!(": {x}"))
                        .unwrap_or_default()
                )
            });
        if !dry_findings.is_empty() {
            let note = format!("dry run, not acted on: {}", dry_findings.join(", "));
            self.message = Some(match self.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
    }

    /// Ends a run that measures indefinitely (the rollout promoted): metrics without a verdict
    /// become Successful, as Argo does when it terminates a run.
    pub fn terminate(&mut self) {
        if self.phase.completed() {
            return;
        }
        for m in &mut self.metrics {
            if !m.phase.completed() {
                m.phase = AnalysisPhase::Successful;
            }
        }
        self.assess();
        self.message = Some("terminated: the rollout finished".into());
    }
}

/// A metric's phase from its counts (Argo's rules): Failed when `failed > failureLimit`,
/// Inconclusive when `inconclusive > inconclusiveLimit`, Error when
/// `consecutiveErrors > consecutiveErrorLimit`, Successful when `count` measurements were
/// taken, else Running. A limit of -1 never trips.
pub fn assess_metric(m: &Metric, r: &MetricResult) -> AnalysisPhase {
    let over = |n: i32, limit: Option<i32>, default: i32| {
        let limit = limit.unwrap_or(default);
        limit >= 0 && n > limit
    };
    if over(r.failed, m.failure_limit, 0) {
        AnalysisPhase::Failed
    } else if over(r.inconclusive, m.inconclusive_limit, 0) {
        AnalysisPhase::Inconclusive
    } else if over(
        r.consecutive_errors,
        m.consecutive_error_limit,
        DEFAULT_CONSECUTIVE_ERROR_LIMIT,
    ) {
        AnalysisPhase::Error
    } else if effective_count(m).is_some_and(|n| r.count >= n) {
        AnalysisPhase::Successful
    } else {
        AnalysisPhase::Running
    }
}
