//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas can run and only
//! one acts. The algorithm is client-go's: the holder renews `renewTime` every `renew_every`;
//! a candidate takes the Lease only once `renewTime + leaseDurationSeconds` has passed. Every
//! write carries the resourceVersion it read, so two candidates can never both win a round.
//! A leader that cannot renew within the lease duration stops acting before anyone else can
//! take over (it stops its work when its own view of the lease expires).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tracing::{info, warn};

use crate::telemetry::Metrics;
use crate::{kube_err, Result};

/// Lease parameters.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews and candidates retry.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// Client-go's defaults: 15 s lease, renew every 2 s.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One acquire-or-renew round: `Ok(true)` when this replica holds the lease afterwards.
pub async fn try_acquire_or_renew(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool> {
    let duration_s = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(lease) = api
        .get_opt(&cfg.name)
        .await
        .map_err(kube_err("reading the leader Lease"))?
    else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration_s),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(kube_err("creating the leader Lease")(e)),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let mine = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(d)) => {
            let deadline = renewed.as_millisecond() + i64::from(d) * 1000;
            k8s_openapi::jiff::Timestamp::now().as_millisecond() > deadline
        }
        _ => true,
    };
    if !mine && !expired && spec.holder_identity.is_some() {
        return Ok(false);
    }
    let mut next = lease.clone();
    let s = next.spec.get_or_insert_with(Default::default);
    if !mine {
        s.holder_identity = Some(cfg.identity.clone());
        s.acquire_time = Some(now());
        s.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    s.renew_time = Some(now());
    s.lease_duration_seconds = Some(duration_s);
    // replace() sends the resourceVersion we read: a concurrent writer makes this a 409.
    match api.replace(&cfg.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(kube_err("renewing the leader Lease")(e)),
    }
}

/// Waits to become leader, then runs `work` while renewing. Returns when `work` ends or when
/// leadership is lost (then `work` is dropped: it stops acting at once).
pub async fn run_as_leader<F>(
    client: Client,
    cfg: LeaseConfig,
    metrics: &Metrics,
    work: F,
) -> Result<()>
where
    F: Future<Output = ()>,
{
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    loop {
        match try_acquire_or_renew(&api, &cfg).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
    info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
    metrics.leader.set(1);
    let mut last_renewed = tokio::time::Instant::now();
    tokio::pin!(work);
    let lost = loop {
        tokio::select! {
            () = &mut work => break false,
            () = tokio::time::sleep(cfg.renew_every) => {
                match try_acquire_or_renew(&api, &cfg).await {
                    Ok(true) => last_renewed = tokio::time::Instant::now(),
                    Ok(false) => break true,
                    Err(e) => warn!(error = %e, "renewing the lease"),
                }
                // Stop before anyone else may take over: our lease is valid for `duration`
                // after the last renewal we know succeeded.
                if last_renewed.elapsed() + cfg.renew_every >= cfg.duration {
                    break true;
                }
            }
        }
    };
    metrics.leader.set(0);
    if lost {
        warn!(identity = %cfg.identity, "lost leadership; stopped acting");
    }
    Ok(())
}
