//! Analysis: metric-driven promotion and abort, as Argo Rollouts' `AnalysisTemplate`.
//!
//! - [`template`]: the `AnalysisTemplate` resource, the rollout's references to it, arguments;
//! - [`condition`]: success/failure conditions (expr-lang) and how a result is judged;
//! - [`run`]: runs and measurements in the rollout's status, their state machine (pure);
//! - [`provider`]: taking a measurement (SkyWalking, Prometheus, web): the only I/O here;
//! - [`redact`]: keeping Secret-backed argument values out of status, Events and logs.
//!
//! The step logic ([`crate::steps::plan`]) says which metrics are due; the reconcile takes
//! those measurements and plans again with them, so every decision is made from recorded
//! measurements by pure code.

pub mod condition;
pub mod provider;
pub mod redact;
pub mod run;
pub mod template;

pub use run::{AnalysisPhase, AnalysisRunStatus, Measurement, MetricResult, TakenMeasurement};
pub use template::{
    AnalysisTemplate, AnalysisTemplateSpec, ClusterAnalysisTemplate, ClusterAnalysisTemplateSpec,
    Metric, RolloutAnalysis,
};
