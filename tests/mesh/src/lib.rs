//! A real Istio mesh on loopback, for tests.
//!
//! [`Istiod`] runs istiod (`pilot-discovery`, built by `make mesh-build` from the Go module
//! `istio.io/istio` pinned in `tests/mesh/istio/go.mod`) against the API server of
//! [`canary_cluster::ControlPlane`]. [`sidecar::start`] runs an upstream Envoy with the bootstrap
//! istio-agent would write (node id, node metadata with the pod's `LABELS`,
//! `INTERCEPTION_MODE: NONE`), connected straight to istiod over plaintext ADS. [`Bookinfo`]
//! lays out the seed's shape: a caller (productpage) and `reviews` pods of two versions (and
//! more of Bookinfo's Services, `ratings` say), each a small app behind its own server-side
//! sidecar on its own 127.x address, registered with WorkloadEntries that carry the pod labels
//! (`rollouts-pod-template-hash`).
//!
//! What istiod needs that a real cluster would give it, and how it is given here:
//! - no iptables: each proxy's listeners bind its own loopback address, set by a `Sidecar`
//!   resource (`captureMode: NONE`, `bind`), outbound and inbound;
//! - no pod IPs (EndpointSlices refuse loopback addresses): WorkloadEntries at 127.x;
//! - no certificates (no istio-agent): mTLS off (mesh `enableAutoMtls: false` and a mesh-wide
//!   PeerAuthentication `DISABLE`), and the Istio-only extensions upstream Envoy lacks turned
//!   off (`istio.metadata_exchange`, `istio.alpn`, `istio.stats`).
//!
//! Every process is killed when its owner is dropped, also when a test panics.

pub mod agent;
pub mod bookinfo;
pub mod istiod;
pub mod kubelet;
pub mod objects;
pub mod registry;
pub mod sidecar;

pub use bookinfo::Bookinfo;
pub use istiod::Istiod;

use std::path::PathBuf;

/// The pinned `istio.io/istio` version (from `tests/mesh/istio/go.mod`).
pub fn istio_version() -> &'static str {
    const GO_MOD: &str = include_str!("../istio/go.mod");
    GO_MOD
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("istio.io/istio")).then(|| words.next())?
        })
        .next()
        .unwrap_or("unknown")
}

/// Where `make mesh-build` puts istiod and pilot-agent: `build/istio/<version>/`, or
/// `$WASM_CANARY_ISTIO_DIR`.
pub fn istio_bin_dir() -> PathBuf {
    std::env::var_os("WASM_CANARY_ISTIO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            wasm_canary_e2e::workspace_root()
                .join("build/istio")
                .join(istio_version())
        })
}

/// Retries `check` until it returns `Some`, for at most `timeout` (istiod pushes in well under a
/// second when idle; deadlines are for a loaded 2-core machine). Panics naming `what` when the
/// time is up: for tests.
#[allow(clippy::panic)]
pub fn eventually<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100)); // polling interval
    }
}
