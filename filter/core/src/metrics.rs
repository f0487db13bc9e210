//! Names of the Envoy counters the filter defines. Envoy prefixes them with `wasmcustom.` in
//! `/stats`; its Prometheus endpoint shows them as `wasmcanary_...` (a custom stat namespace:
//! no `envoy_` prefix, the namespace stripped), as a real Prometheus scraping Envoy 1.40 reads.

use crate::decision::{Reason, Subset};

/// Prefix of every counter.
pub const PREFIX: &str = "wasmcanary";

/// Counter of rejected configs (parse or validation failures).
pub const CONFIG_REJECTED: &str = "wasmcanary.config_rejected";

/// Counter of accepted configs.
pub const CONFIG_ACCEPTED: &str = "wasmcanary.config_accepted";

/// Counter of decisions for one service, subset and reason:
/// `wasmcanary.decision.<service>.<subset>.<reason>` with the service name made stat-safe
/// (`bookinfo/reviews` -> `bookinfo_reviews`).
pub fn decision_counter(service: &str, subset: Subset, reason: Reason) -> String {
    format!(
        "{PREFIX}.decision.{}.{}.{}",
        stat_safe(service),
        subset.as_str(),
        reason.as_str()
    )
}

/// Replaces every character Envoy's stat names or Prometheus would choke on with `_`.
pub fn stat_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
