//! What the dashboard remembers over time, since it started: each rollout's canary weight and
//! the split the filter made. The API server keeps only the present; these are the page's
//! charts. Bounded: the oldest points go first.

use std::collections::VecDeque;

use serde::Serialize;

use crate::cli::envoy::ObservedSplit;
use canary_core::decision::Subset;

/// Points kept per series: a point a second for a quarter of an hour, or a step change for far
/// longer.
pub const POINTS_KEPT: usize = 900;

/// The canary weight at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WeightPoint {
    /// Milliseconds since the Unix epoch.
    pub t: i64,
    /// Basis points (10000 = 100%).
    pub bp: u32,
}

/// A rollout's canary weight over time: a point when it changes.
#[derive(Debug, Clone, Default)]
pub struct WeightHistory {
    points: VecDeque<WeightPoint>,
}

impl WeightHistory {
    /// Notes the weight seen at `t`; `true` when it differs from the last one noted.
    pub fn record(&mut self, t: i64, bp: u32) -> bool {
        if self.points.back().is_some_and(|p| p.bp == bp) {
            return false;
        }
        push_bounded(&mut self.points, WeightPoint { t, bp });
        true
    }

    /// The points, oldest first.
    pub fn points(&self) -> Vec<WeightPoint> {
        self.points.iter().copied().collect()
    }
}

/// Requests the filter decided between two readings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SplitSample {
    /// Milliseconds since the Unix epoch, at the end of the interval.
    pub t: i64,
    /// Share of them sent to canary, in percent.
    pub canary_percent: f64,
    /// Requests per second decided in the interval.
    pub requests_per_second: f64,
}

/// The split the filter made for one rollout, over time.
#[derive(Debug, Clone, Default)]
pub struct SplitHistory {
    samples: VecDeque<SplitSample>,
    /// The counters at the last reading (Envoy admin), to take the difference from.
    last_counts: Option<(i64, ObservedSplit)>,
    /// Counts since the counters started, at the last reading.
    pub total: Option<ObservedSplit>,
    /// Why the last reading failed, if it did.
    pub error: Option<String>,
}

impl SplitHistory {
    /// Notes Envoy's counters read at `t` (`None`: no decision counted yet). A sample is the
    /// difference from the previous reading; counters that went down (Envoy restarted) start
    /// over.
    pub fn record_counts(&mut self, t: i64, counts: Option<ObservedSplit>) {
        self.error = None;
        self.total = counts.clone();
        let Some(now) = counts else {
            self.last_counts = None;
            return;
        };
        if let Some((then, before)) = &self.last_counts {
            let went_down = now.total() < before.total();
            let delta = if went_down {
                now.clone()
            } else {
                now.since(before)
            };
            let seconds = (t - then) as f64 / 1000.0;
            if delta.total() > 0 && seconds > 0.0 {
                push_bounded(
                    &mut self.samples,
                    SplitSample {
                        t,
                        canary_percent: delta.subset_total(Subset::Canary) as f64 * 100.0
                            / delta.total() as f64,
                        requests_per_second: delta.total() as f64 / seconds,
                    },
                );
            }
        }
        self.last_counts = Some((t, now));
    }

    /// Notes rates read at `t` (Prometheus): canary and all decisions per second.
    pub fn record_rates(&mut self, t: i64, canary_per_second: f64, total_per_second: f64) {
        self.error = None;
        if total_per_second > 0.0 && canary_per_second.is_finite() {
            push_bounded(
                &mut self.samples,
                SplitSample {
                    t,
                    canary_percent: canary_per_second * 100.0 / total_per_second,
                    requests_per_second: total_per_second,
                },
            );
        }
    }

    /// Notes a failed reading.
    pub fn record_error(&mut self, message: String) {
        self.error = Some(message);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<SplitSample> {
        self.samples.iter().copied().collect()
    }
}

fn push_bounded<T>(points: &mut VecDeque<T>, point: T) {
    if points.len() == POINTS_KEPT {
        points.pop_front();
    }
    points.push_back(point);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(stable: u64, canary: u64) -> ObservedSplit {
        ObservedSplit {
            counts: [[0, 0, stable], [0, 0, canary]],
        }
    }

    #[test]
    fn the_weight_history_keeps_a_point_per_change_only() {
        let mut h = WeightHistory::default();
        assert!(h.record(1_000, 0));
        assert!(!h.record(2_000, 0));
        assert!(h.record(3_000, 1_000));
        assert!(!h.record(4_000, 1_000));
        assert!(h.record(5_000, 0));
        assert_eq!(
            h.points(),
            vec![
                WeightPoint { t: 1_000, bp: 0 },
                WeightPoint {
                    t: 3_000,
                    bp: 1_000
                },
                WeightPoint { t: 5_000, bp: 0 }
            ]
        );
    }

    #[test]
    fn the_weight_history_drops_its_oldest_points_beyond_the_bound() {
        let mut h = WeightHistory::default();
        for i in 0..(POINTS_KEPT as u32 + 10) {
            h.record(i64::from(i), i);
        }
        let points = h.points();
        assert_eq!(points.len(), POINTS_KEPT);
        assert_eq!(points[0].bp, 10);
    }

    #[test]
    fn the_observed_split_is_the_difference_between_two_readings() {
        let mut h = SplitHistory::default();
        h.record_counts(0, Some(counts(900, 100)));
        assert!(h.samples().is_empty(), "one reading is no interval");
        h.record_counts(2_000, Some(counts(1_800, 300)));
        assert_eq!(
            h.samples(),
            vec![SplitSample {
                t: 2_000,
                canary_percent: 200.0 * 100.0 / 1_100.0,
                requests_per_second: 550.0
            }]
        );
        assert_eq!(h.total, Some(counts(1_800, 300)));
    }

    #[test]
    fn an_idle_interval_adds_no_sample_and_a_restart_starts_over() {
        let mut h = SplitHistory::default();
        h.record_counts(0, Some(counts(10, 10)));
        h.record_counts(1_000, Some(counts(10, 10)));
        assert!(h.samples().is_empty());
        // Envoy restarted: its counters start from zero again.
        h.record_counts(2_000, Some(counts(3, 1)));
        assert_eq!(h.samples().len(), 1);
        assert_eq!(h.samples()[0].canary_percent, 25.0);
    }

    #[test]
    fn a_failed_reading_is_kept_until_the_next_good_one() {
        let mut h = SplitHistory::default();
        h.record_error("connection refused".into());
        assert_eq!(h.error.as_deref(), Some("connection refused"));
        h.record_rates(1_000, 5.0, 50.0);
        assert_eq!(h.error, None);
        assert_eq!(h.samples()[0].canary_percent, 10.0);
        h.record_rates(2_000, 0.0, 0.0);
        assert_eq!(h.samples().len(), 1, "no traffic, no sample");
    }
}
