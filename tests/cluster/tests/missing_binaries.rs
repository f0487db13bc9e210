//! What a developer sees before `make cluster-build` has run. A test binary of its own:
//! it changes an environment variable the other tests read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use canary_cluster::binaries::KUBE_BIN_DIR_ENV;
use canary_cluster::ControlPlane;

#[tokio::test]
async fn starting_without_the_kube_binaries_says_to_run_make_cluster_build() {
    std::env::set_var(KUBE_BIN_DIR_ENV, "/nonexistent/wasm-canary/kube");
    let error = ControlPlane::start()
        .await
        .expect_err("no binaries, no control plane");
    let message = error.to_string();
    assert!(message.contains("run `make cluster-build`"), "{message}");
    assert!(
        message.contains("/nonexistent/wasm-canary/kube/kube-apiserver"),
        "{message}"
    );
}
