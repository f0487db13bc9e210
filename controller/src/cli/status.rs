//! How a rollout looks to a person: the steps with the current one marked, the weight as a
//! bar, each version's hash and ReplicaSet readiness, phase, message, conditions, and the split
//! the filter observed. Pure rendering: objects in, lines out.

use std::fmt::Write as _;

use crate::crd::{CanaryRollout, CanaryStep, Phase};
use crate::steps::format_weight;
use canary_core::config::{BASIS_POINTS, POD_TEMPLATE_HASH_LABEL};
use canary_core::decision::{Reason, Subset};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::ResourceExt;

use super::envoy::ObservedSplit;

/// The filter's view, when `--envoy-admin` is given.
#[derive(Debug, Clone)]
pub enum SplitView {
    /// Not asked for.
    None,
    /// Read; `None` when the filter has not decided any request for this service yet.
    Read {
        /// The admin URL.
        admin: String,
        /// Counts since the counters started.
        total: Option<ObservedSplit>,
        /// Counts since the previous refresh (under `--watch`).
        recent: Option<ObservedSplit>,
    },
    /// Reading failed; the message says why.
    Failed(String),
}

/// One step, in the words a user edits them in.
pub fn describe_step(step: &CanaryStep) -> String {
    if let Some(w) = step.set_weight {
        return format!("setWeight {w}%");
    }
    if let Some(p) = &step.pause {
        return match &p.duration {
            Some(serde_json::Value::String(d)) => format!("pause {d}"),
            Some(d) => format!("pause {d}s"),
            None => "pause (until promoted)".into(),
        };
    }
    if let Some(r) = &step.set_header_route {
        if r.matches.is_empty() {
            return format!("setHeaderRoute {} (remove)", r.name);
        }
        let conds: Vec<String> = r
            .matches
            .iter()
            .map(|m| {
                let v = &m.header_value;
                let (op, val) = match (&v.exact, &v.prefix, &v.regex) {
                    (Some(e), _, _) => ("=", e.as_str()),
                    (None, Some(p), _) => ("^=", p.as_str()),
                    (None, None, Some(r)) => ("~", r.as_str()),
                    _ => ("?", ""),
                };
                format!("{}{op}{val}", m.header_name)
            })
            .collect();
        return format!("setHeaderRoute {} [{}]", r.name, conds.join(", "));
    }
    if let Some(a) = &step.analysis {
        let templates: Vec<&str> = a
            .templates
            .iter()
            .map(|t| t.template_name.as_str())
            .collect();
        return format!("analysis {}", templates.join(", "));
    }
    "(empty step)".into()
}

/// `[######..............]` for a weight in basis points.
pub fn weight_bar(bp: u32, width: usize) -> String {
    let filled =
        (u64::from(bp.min(BASIS_POINTS)) * width as u64 / u64::from(BASIS_POINTS)) as usize;
    format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(width.saturating_sub(filled))
    )
}

/// The phase as the user reads it (and as `status.phase` spells it).
pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Progressing => "Progressing",
        Phase::Paused => "Paused",
        Phase::Healthy => "Healthy",
        Phase::Aborted => "Aborted",
        Phase::Degraded => "Degraded",
    }
}

/// The `rollouts-pod-template-hash` of a ReplicaSet (empty when unlabelled).
pub fn rs_hash(rs: &ReplicaSet) -> String {
    rs.labels()
        .get(POD_TEMPLATE_HASH_LABEL)
        .cloned()
        .unwrap_or_default()
}

fn readiness(rs: &ReplicaSet) -> String {
    let desired = rs.spec.replicas.unwrap_or(0);
    let st = rs.status.as_ref();
    let ready = st.and_then(|s| s.ready_replicas).unwrap_or(0);
    let available = st.and_then(|s| s.available_replicas).unwrap_or(0);
    format!("{ready}/{desired} ready, {available} available")
}

/// The full status, as lines.
pub fn render(
    rollout: &CanaryRollout,
    replica_sets: &[ReplicaSet],
    split: &SplitView,
) -> Vec<String> {
    let mut out = Vec::new();
    let name = rollout.name_any();
    let ns = rollout.namespace().unwrap_or_default();
    let status = rollout.status.clone().unwrap_or_default();
    let (strategy, kinds) = rollout.spec.strategy.compiled();
    let steps = &strategy.steps;
    out.push(format!("Rollout:    {name} (namespace {ns})"));
    let mut phase = phase_name(status.phase).to_owned();
    if rollout.spec.abort {
        phase.push_str("  [spec.abort: true]");
    }
    if rollout.spec.paused {
        phase.push_str("  [spec.paused: true]");
    }
    if status.observed_generation.is_some()
        && status.observed_generation != rollout.metadata.generation
    {
        phase.push_str("  (controller has not seen the latest spec yet)");
    }
    if rollout.status.is_none() {
        phase = "(no status yet: is the controller running?)".into();
    }
    out.push(format!("Phase:      {phase}"));
    if let Some(m) = &status.message {
        out.push(format!("Message:    {m}"));
    }
    let blue_green = rollout.spec.strategy.blue_green_only();
    out.push(format!(
        "Weight:     {} {} to {}",
        weight_bar(status.canary_weight, 30),
        format_weight(status.canary_weight),
        if blue_green.is_some() {
            "green"
        } else {
            "canary"
        }
    ));
    if let Some(a) = rollout
        .annotations()
        .get(crate::reconcile::PROMOTE_ANNOTATION)
    {
        out.push(format!(
            "Promote:    {a} requested, waiting for the controller"
        ));
    }
    let find = |hash: &Option<String>| {
        hash.as_ref()
            .and_then(|h| replica_sets.iter().find(|rs| &rs_hash(rs) == h))
    };
    // Blue-green: blue is the stable version, green the new one; which one users get (active)
    // is what the filter's weight says.
    let (stable_label, canary_label) = if blue_green.is_some() {
        ("Blue:", "Green:")
    } else {
        ("Stable:", "Canary:")
    };
    if let Some(bg) = blue_green {
        let active = match (&status.canary_hash, status.canary_weight) {
            (Some(green), 10_000) if !status.aborted => format!("green {green}"),
            _ => format!("blue {}", status.stable_hash.as_deref().unwrap_or("-")),
        };
        let preview = match (&status.canary_hash, status.aborted) {
            (Some(green), false) => format!(
                "green {green}{}{}",
                if status
                    .header_routes
                    .iter()
                    .any(|r| r.name == crate::strategy::PREVIEW_ROUTE)
                {
                    " (header route preview)"
                } else {
                    ""
                },
                bg.preview_service
                    .as_deref()
                    .map(|s| format!(" (Service {s})"))
                    .unwrap_or_default()
            ),
            _ => "-".into(),
        };
        out.push(format!(
            "Strategy:   blueGreen  active: {active}  preview: {preview}"
        ));
    }
    for (label, hash) in [
        (stable_label, &status.stable_hash),
        (canary_label, &status.canary_hash),
    ] {
        match (hash, find(hash)) {
            (None, _) => out.push(format!("{label:<11}-")),
            (Some(h), Some(rs)) => out.push(format!(
                "{label:<11}{h}  {}  {}",
                rs.name_any(),
                readiness(rs)
            )),
            (Some(h), None) => {
                out.push(format!("{label:<11}{h}  (ReplicaSet {name}-{h} not found)"))
            }
        }
    }
    let others: Vec<&ReplicaSet> = replica_sets
        .iter()
        .filter(|rs| {
            let h = Some(rs_hash(rs));
            h != status.stable_hash && h != status.canary_hash
        })
        .collect();
    for rs in others {
        out.push(format!(
            "Old:        {}  {}  {}",
            rs_hash(rs),
            rs.name_any(),
            readiness(rs)
        ));
    }
    if !status.header_routes.is_empty() {
        let routes: Vec<String> = status
            .header_routes
            .iter()
            .map(|r| r.name.clone())
            .collect();
        out.push(format!("Header routes to canary: {}", routes.join(", ")));
    }
    for s in &status.scale_downs {
        out.push(format!("Scale-down: {} at {}", s.hash, s.at));
    }
    // Numbered from 1, as the controller's messages and `status.currentStep` count them.
    out.push(format!("Steps ({}):", steps.len()));
    let current = status
        .current_step_index
        .and_then(|i| usize::try_from(i).ok());
    let running = status.canary_hash.is_some();
    for (i, step) in steps.iter().enumerate() {
        let (mark, state) = match current {
            Some(c) if running && i < c => ("  ", "done"),
            Some(c) if running && i == c => ("->", "current"),
            _ => ("  ", ""),
        };
        let described = match kinds.get(i) {
            Some(bg) => format!("{}: {}", bg.label(), describe_step(step)),
            None => describe_step(step),
        };
        out.push(
            format!("  {mark} {:>2}  {:<40} {state}", i + 1, described)
                .trim_end()
                .to_owned(),
        );
    }
    if steps.is_empty() {
        out.push("     (none: a new version is promoted as soon as its pods are available)".into());
    }
    if !status.analysis_runs.is_empty() {
        out.push(format!(
            "Analysis{}:",
            if status.analysis_aborted {
                " (aborted the rollout; retry: `kubectl canary retry`)"
            } else {
                ""
            }
        ));
        for run in &status.analysis_runs {
            out.push(
                format!(
                    "  {:<12} {:<12?} {}",
                    run.name,
                    run.phase,
                    run.message.clone().unwrap_or_default()
                )
                .trim_end()
                .to_owned(),
            );
            for m in &run.metrics {
                let last = m
                    .measurements
                    .last()
                    .and_then(|x| x.value.clone())
                    .unwrap_or_default();
                let last: String = last.chars().take(40).collect();
                out.push(
                    format!(
                        "    {:<14} {:<12?} {}/{} ok, {} failed, {} inconclusive, {} error ({} in a row)  last {}{}",
                        m.name, m.phase, m.successful, m.count, m.failed, m.inconclusive, m.error, m.consecutive_errors, last,
                        if m.dry_run { "  (dry run)" } else { "" }
                    )
                    .trim_end()
                    .to_owned(),
                );
            }
        }
    }
    if !status.conditions.is_empty() {
        out.push("Conditions:".into());
        for c in &status.conditions {
            out.push(
                format!(
                    "  {:<12} {:<6} {:<20} {}",
                    c.type_, c.status, c.reason, c.message
                )
                .trim_end()
                .to_owned(),
            );
        }
    }
    match split {
        SplitView::None => {}
        SplitView::Failed(e) => out.push(format!("Observed split: unavailable: {e}")),
        SplitView::Read {
            admin,
            total,
            recent,
        } => {
            out.push(format!("Observed split (filter counters at {admin}):"));
            match total {
                None => out.push(format!(
                    "  no decisions counted for {ns}/{} yet (is this the admin port of a CLIENT sidecar that calls it?)",
                    rollout.spec.strategy.service()
                )),
                Some(t) => {
                    out.push(format!("  since start:  {}", split_line(t)));
                    if let Some(r) = recent {
                        out.push(format!("  last refresh: {}", split_line(r)));
                    }
                }
            }
        }
    }
    out
}

/// `canary 1012/10000 (10.12%) - header_route 3, sticky 500, weight 9497`.
pub fn split_line(s: &ObservedSplit) -> String {
    let total = s.total();
    let canary = s.subset_total(Subset::Canary);
    let pct = if total == 0 {
        0.0
    } else {
        canary as f64 * 100.0 / total as f64
    };
    let mut line = format!("canary {canary}/{total} ({pct:.2}%)");
    let _ = write!(line, " - ");
    let reasons: Vec<String> = Reason::ALL
        .iter()
        .map(|r| format!("{} {}", r.as_str(), s.reason_total(*r)))
        .collect();
    line.push_str(&reasons.join(", "));
    line
}

/// The `list` table.
pub fn table(rollouts: &[CanaryRollout], all_namespaces: bool) -> Vec<String> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec![
        "NAME", "PHASE", "STEP", "WEIGHT", "STABLE", "CANARY", "MESSAGE",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    rows.push(header.into_iter().map(str::to_owned).collect());
    for r in rollouts {
        let s = r.status.clone().unwrap_or_default();
        let mut row = vec![
            r.name_any(),
            if r.status.is_some() {
                phase_name(s.phase).to_owned()
            } else {
                "-".into()
            },
            s.current_step.clone().unwrap_or_else(|| "-".into()),
            format_weight(s.canary_weight),
            s.stable_hash.clone().unwrap_or_else(|| "-".into()),
            s.canary_hash.clone().unwrap_or_else(|| "-".into()),
            s.message.clone().unwrap_or_default(),
        ];
        if all_namespaces {
            row.insert(0, r.namespace().unwrap_or_default());
        }
        rows.push(row);
    }
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect::<Vec<_>>()
                .join("   ")
                .trim_end()
                .to_owned()
        })
        .collect()
}
