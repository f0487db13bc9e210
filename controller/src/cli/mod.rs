//! The pieces of `kubectl canary`, also used by the dashboard: [`convert`] (Argo Rollout ->
//! CanaryRollout, pure), [`status`] (what a rollout looks like, rendered), [`envoy`] (the
//! filter's observed split from an Envoy admin endpoint), [`actions`] (the patches behind
//! promote/abort/retry/pause/resume, and the checks before them), [`error`] (what went wrong,
//! said so that the user knows what to do next).

pub mod actions;
pub mod convert;
pub mod envoy;
pub mod error;
pub mod status;
