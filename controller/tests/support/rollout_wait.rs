//! Waiting on a CanaryRollout with a watch (no polling), bounded by a generous deadline.

#![allow(clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use canary_controller::crd::CanaryRollout;
use kube::api::Api;
use kube::runtime::wait::await_condition;
use kube::Client;

/// Waits until `done` holds for rollout `name` (at most `deadline`) and returns it. `stop`
/// ends the wait at once with a panic saying why, for states that mean the awaited one will
/// never come (an abort while waiting for a promotion, say).
pub async fn rollout_until(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    deadline: Duration,
    done: impl Fn(&CanaryRollout) -> bool,
    stop: impl Fn(&CanaryRollout) -> bool,
) -> CanaryRollout {
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    let settled = await_condition(api.clone(), name, |r: Option<&CanaryRollout>| {
        r.is_some_and(|r| done(r) || stop(r))
    });
    match tokio::time::timeout(deadline, settled).await {
        Ok(Ok(Some(r))) if done(&r) => r,
        Ok(Ok(Some(r))) => panic!(
            "while waiting for {what}, the rollout reached a state it cannot leave: {:#?}",
            r.status
        ),
        Ok(other) => panic!("watching rollout {name} for {what}: {other:?}"),
        Err(_) => {
            let status = api.get(name).await.ok().and_then(|r| r.status);
            panic!("timed out after {deadline:?} waiting for {what}; status: {status:#?}")
        }
    }
}
