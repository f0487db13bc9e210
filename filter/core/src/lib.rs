//! The pure core of the wasm-canary filter.
//!
//! - [`config`]: the `pluginConfig` contract, shared with the controller.
//! - [`compiled`]: validation and compilation, done once per config.
//! - [`decision`]: the routing decision, a pure function of (config, request view, draw).
//! - [`header_map`]: the request header map as the host returns it, read in place.
//! - [`header_edits`]: what the filter writes and removes, as data the plugin applies.
//! - [`metrics`]: the names of the counters the filter exports.
//! - [`binomial`]: exact binomial acceptance regions, to check that a split is what its weight
//!   says (used by the tests and the controller; not linked into the filter).
//!
//! No proxy-wasm types appear here, so everything is tested natively and under
//! `wasm32-unknown-unknown` with wasm-bindgen-test.

pub mod binomial;
pub mod compiled;
pub mod config;
pub mod decision;
mod decode;
pub mod error;
pub mod header_edits;
pub mod header_map;
pub mod metrics;
pub mod regex;

pub use compiled::{authority_host, CompiledConfig, CompiledService};
pub use config::{
    CanaryService, FilterMode, HeaderRoute, PluginConfig, RequestMatch, StickyKey, StringMatch,
};
pub use decision::{
    decide_route, sticky_bucket, sticky_bucket_bytes, Decision, Draws, Reason, RequestHeaders,
    Subset,
};
pub use error::ConfigError;
