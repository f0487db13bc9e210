//! What the cluster tests share: bounded waits and the Istio kinds they use.
#![allow(dead_code, clippy::panic)]

use std::future::Future;
use std::time::{Duration, Instant};

use kube::core::{ApiResource, GroupVersionKind, Status};

/// The most any single step may take: a missing event or answer fails the test fast.
pub const STEP: Duration = Duration::from_secs(20);

/// Awaits `future` for at most [`STEP`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing within {STEP:?}"),
    }
}

/// Polls `check` until it returns `Some`, for at most [`STEP`]. For effects that
/// controllers and the RBAC cache apply a moment after the write.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("{what}: not seen within {STEP:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status of a refused API call; panics on success or a transport error.
pub fn refusal<T: std::fmt::Debug>(result: kube::Result<T>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected the API server to refuse the call, got {other:?}"),
    }
}

/// Istio's WasmPlugin, reached through discovery-free GVK, not a copied schema.
pub fn wasm_plugin() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
    ))
}

/// Istio's DestinationRule (networking.istio.io/v1).
pub fn destination_rule() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "DestinationRule",
    ))
}
