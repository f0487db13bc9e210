//! The planner's analysis half: starting runs, recording the measurements the reconcile took,
//! and acting on their verdicts (abort on Failed/Error, pause on Inconclusive).

#[allow(clippy::wildcard_imports)]
use super::*;

/// Analysis runs: starting them, recording measurements, acting on their verdicts.
impl Planner<'_> {
    /// The analysis a run executes.
    pub(super) fn run_analysis(&self, run: &AnalysisRunStatus) -> Option<&RolloutAnalysis> {
        let canary = &*self.strategy;
        match run.step_index {
            None => canary.analysis.as_ref(),
            Some(i) => canary
                .steps
                .get(usize::try_from(i).ok()?)
                .and_then(|s| s.analysis.as_ref()),
        }
    }

    /// `analysis` against the observed templates and the rollout's fields.
    pub(super) fn resolve(
        &self,
        analysis: &RolloutAnalysis,
        stable: &str,
        canary: &str,
    ) -> Option<ResolvedAnalysis> {
        resolve(
            analysis,
            &self.obs.analysis_templates,
            stable,
            canary,
            &self.obs.rollout_fields,
        )
        .ok()
    }

    pub(super) fn run_metrics(&self, run: &AnalysisRunStatus, stable: &str) -> Vec<Metric> {
        if !run.spec.is_empty() {
            return run.spec.clone();
        }
        self.run_analysis(run)
            .and_then(|a| self.resolve(a, stable, &run.canary_hash))
            .map(|r| r.metrics)
            .unwrap_or_default()
    }

    pub(super) fn start_run(
        &mut self,
        name: &str,
        step: Option<usize>,
        stable: &str,
        canary: &str,
    ) {
        let analysis = match step {
            None => self.strategy.analysis.as_ref(),
            Some(i) => self.strategy.steps.get(i).and_then(|s| s.analysis.as_ref()),
        };
        let Some(resolved) = analysis.and_then(|a| self.resolve(a, stable, canary)) else {
            return;
        };
        let run = AnalysisRunStatus::start(
            name,
            canary,
            step.map(|i| i as i32),
            &resolved,
            self.obs.now,
        );
        let metrics: Vec<&str> = resolved.metrics.iter().map(|m| m.name.as_str()).collect();
        self.note_about(
            "AnalysisStarted",
            name,
            format!("analysis {name} started: metrics {}", metrics.join(", ")),
        );
        self.status.analysis_runs.retain(|r| r.name != name);
        self.status.analysis_runs.push(run);
        self.created_runs.push(name.to_owned());
    }

    pub(super) fn ensure_background_run(&mut self, index: usize, stable: &str, canary: &str) {
        let Some(a) = &self.strategy.analysis else {
            return;
        };
        let from = usize::try_from(a.starting_step.unwrap_or(0)).unwrap_or(0);
        let exists = self
            .status
            .analysis_runs
            .iter()
            .any(|r| r.name == BACKGROUND_RUN);
        if index >= from && !exists {
            self.start_run(BACKGROUND_RUN, None, stable, canary);
        }
    }

    /// Applies the measurements taken for this plan to their runs.
    pub(super) fn record_measurements(&mut self, stable: &str, canary: &str) {
        for taken in &self.obs.measurements {
            let Some(i) = self
                .status
                .analysis_runs
                .iter()
                .position(|r| r.name == taken.run && r.canary_hash == canary)
            else {
                continue;
            };
            let metrics = self.run_metrics(&self.status.analysis_runs[i], stable);
            let run = &mut self.status.analysis_runs[i];
            let before = run.phase;
            run.record(&metrics, &taken.metric, taken.measurement.clone());
            let after = run.phase;
            if after != before && after.completed() {
                let message = format!(
                    "analysis {} {after:?}{}",
                    run.name,
                    run.message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                );
                let run = run.name.clone();
                self.note_about("AnalysisCompleted", &run, message);
            }
        }
    }

    pub(super) fn abort_by_analysis(
        mut self,
        stable: String,
        canary: String,
        run: &AnalysisRunStatus,
    ) -> Plan {
        let now = self.obs.now;
        self.status.aborted = true;
        self.status.analysis_aborted = true;
        let delay = seconds(self.strategy.abort_scale_down_delay_seconds);
        self.schedule_scale_down(&canary, now + delay);
        let why = format!(
            "analysis {} {:?}: {}",
            run.name,
            run.phase,
            run.message.as_deref().unwrap_or_default()
        );
        self.note(
            "Aborted",
            format!(
                "{why}; all traffic back to stable {stable}; canary {canary} scaled down in {}s",
                delay.num_seconds()
            ),
        );
        self.status.canary_weight = 0;
        self.status.header_routes.clear();
        self.status.phase = Phase::Aborted;
        self.status.message = Some(format!(
            "aborted by {why}; traffic on stable. Retry: spec.abort true then false (kubectl canary abort, then retry)"
        ));
        self.canary_plan(stable, canary, 0)
    }

    pub(super) fn execute_analysis(&mut self, index: usize, canary: &str) -> StepOutcome {
        let name = step_run_name(index);
        let stable = self.status.stable_hash.clone().unwrap_or_default();
        if !self.status.analysis_runs.iter().any(|r| r.name == name) {
            self.start_run(&name, Some(index), &stable, canary);
        }
        let Some(run) = self.status.analysis_runs.iter().find(|r| r.name == name) else {
            return StepOutcome::Wait {
                phase: Phase::Degraded,
                message: format!("steps[{index}].analysis cannot be resolved"),
            };
        };
        match run.phase {
            AnalysisPhase::Successful => StepOutcome::Done(format!("analysis {name} Successful")),
            AnalysisPhase::Inconclusive => {
                if self.promote == Some(Promote::Step) && !self.promote_consumed {
                    self.promote_consumed = true;
                    return StepOutcome::Done(format!(
                        "analysis {name} inconclusive; continued by promote"
                    ));
                }
                StepOutcome::Wait {
                    phase: Phase::Paused,
                    message: format!(
                        "paused at step {}: analysis {name} inconclusive ({}); promote to continue, abort to roll back",
                        index + 1,
                        run.message.as_deref().unwrap_or_default()
                    ),
                }
            }
            // Failed and Error abort before steps run; a run is never completed otherwise.
            phase => StepOutcome::Wait {
                phase: Phase::Progressing,
                message: format!(
                    "step {}: analysis {name} {phase:?}: {}",
                    index + 1,
                    self.measured_summary(run)
                ),
            },
        }
    }

    pub(super) fn measured_summary(&self, run: &AnalysisRunStatus) -> String {
        run.metrics
            .iter()
            .map(|m| format!("{} {}/{} ok", m.name, m.successful, m.count))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Measurements due now for the current canary's running analyses (none while aborted or
    /// for a run started by this plan); requeues for the next ones.
    pub(super) fn due_measurements(&mut self) -> Vec<MeasureRequest> {
        let mut out = Vec::new();
        let Some(canary) = self.status.canary_hash.clone() else {
            return out;
        };
        if self.status.aborted {
            return out;
        }
        let stable = self.status.stable_hash.clone().unwrap_or_default();
        let now = self.obs.now;
        for run in self.status.analysis_runs.clone() {
            if run.canary_hash != canary || run.phase.completed() {
                continue;
            }
            // What the run started with; runs recorded before snapshots existed resolve anew.
            let resolved = if run.spec.is_empty() {
                let Some(analysis) = self.run_analysis(&run) else {
                    continue;
                };
                let Some(resolved) = self.resolve(analysis, &stable, &canary) else {
                    continue;
                };
                resolved
            } else {
                // Dry run and retention were recorded per metric when the run started.
                ResolvedAnalysis {
                    metrics: run.spec.clone(),
                    secrets: run.secret_args.clone(),
                    ..ResolvedAnalysis::default()
                }
            };
            let fresh = self.created_runs.contains(&run.name);
            for (metric, at) in run.next_due(&resolved.metrics) {
                if at <= now && !fresh {
                    // Taken by this reconcile if this plan is the first of it; if it is the
                    // one made after a measurement (slower than the interval), by the next.
                    self.requeue_in(Duration::ZERO);
                    if let Some(m) = resolved.metrics.iter().find(|m| m.name == metric) {
                        out.push(MeasureRequest {
                            run: run.name.clone(),
                            metric: m.clone(),
                            secrets: resolved.secrets.clone(),
                        });
                    }
                } else {
                    self.requeue_in((at - now).to_std().unwrap_or_default());
                }
            }
        }
        out
    }
}
