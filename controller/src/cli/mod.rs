//! The pieces of `kubectl canary`: [`convert`] (Argo Rollout -> CanaryRollout, pure),
//! [`status`] (what a rollout looks like, rendered), [`envoy`] (the filter's observed split
//! from an Envoy admin endpoint), [`actions`] (the patches behind promote/abort/retry/pause).

pub mod actions;
pub mod convert;
pub mod envoy;
pub mod status;
